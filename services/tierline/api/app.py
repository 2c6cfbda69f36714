"""The aiohttp application factory: middlewares, routes and resources."""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from importlib.metadata import version as dist_version

import asyncpg
import structlog
from aiohttp import web
from aiohttp.web_urldispatcher import MatchInfoError
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from tierline import board
from tierline.api import admin, issues
from tierline.api.hardening import check_request
from tierline.api.issue_queue import IssueQueue
from tierline.api.key_cache import ApiKeyCache
from tierline.api.keys import (
    COMMAND_UNITS,
    INBOUND,
    ISSUE_QUEUE,
    ISSUES,
    KAFKA_BOOTSTRAP,
    KEY_CACHE,
    OPENAPI,
    POOL,
    RATE_LIMITER,
    REFERENCE,
    SETTINGS,
    UNITS,
)
from tierline.api.openapi import build_openapi
from tierline.api.problems import Problem, problem_response
from tierline.api.ratelimit import RateLimiter, within_limit
from tierline.api.registry import PRINCIPAL_KEY, Handler, RouteTable, json_response
from tierline.api.schemas import Health
from tierline.board.session import session_middleware
from tierline.config import Settings
from tierline.eventlog.kafka import kafka_ready
from tierline.inbound import api as inbound_api
from tierline.inbound.receive import InboundReceiver
from tierline.projector import api as read_model_api
from tierline.service_layer.issues import IssueService, Principal
from tierline.service_layer.reference import ReferenceData
from tierline.store.group_commit import GroupCommit
from tierline.store.one_statement import OneStatementUnitOfWorkFactory
from tierline.store.pool import PoolBusy, create_pool
from tierline.store.unit_of_work import PostgresUnitOfWorkFactory
from tierline.webhooks import api as webhook_api

log = structlog.get_logger(__name__)

ops = RouteTable()
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Long enough for a fast restart or failover, short enough that clients do not give up.
RETRY_AFTER_SECONDS = 5
REQUESTS = Counter("tierline_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "tierline_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


def all_routes() -> list[RouteTable]:
    """Every route table, in registration order."""
    return [
        ops,
        admin.routes,
        issues.routes,
        read_model_api.routes,
        webhook_api.routes,
        inbound_api.routes,
    ]


def openapi_document() -> dict[str, object]:
    """The OpenAPI document for this code base."""
    operations = [op for table in all_routes() for op in table.operations]
    return build_openapi(operations, dist_version("tierline"))


@ops.route(
    "GET", "/healthz", summary="The process is up", tag="operations", public=True, response=Health
)
async def healthz(request: web.Request) -> web.Response:
    return json_response(Health(status="ok"))


@ops.route(
    "GET",
    "/readyz",
    summary="PostgreSQL and Kafka answer",
    tag="operations",
    public=True,
    response=Health,
    errors=(503,),
)
async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        async with request.app[POOL].acquire(timeout=3) as conn:
            await conn.fetchval("SELECT 1")
        checks["postgres"] = "ok"
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        checks["postgres"] = f"error: {type(exc).__name__}"
    checks["kafka"] = "ok" if await kafka_ready(request.app[KAFKA_BOOTSTRAP]) else "error"
    ready = all(v == "ok" for v in checks.values())
    return json_response(
        Health(status="ready" if ready else "not ready", checks=checks),
        status=200 if ready else 503,
    )


@ops.route("GET", "/metrics", summary="Prometheus metrics", tag="operations", public=True)
async def metrics(request: web.Request) -> web.Response:
    resp = web.Response(body=generate_latest())
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


@ops.route("GET", "/openapi.json", summary="This document", tag="operations", public=True)
async def openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])


def _traceparent(request: web.Request) -> tuple[str, str]:
    """The incoming W3C traceparent (or a new one) and its trace id."""
    incoming = request.headers.get("traceparent", "")
    parts = incoming.split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
        trace_id = parts[1]
    else:
        trace_id = uuid.uuid4().hex
    span_id = os.urandom(8).hex()
    return f"00-{trace_id}-{span_id}-01", trace_id


@web.middleware
async def context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind request and trace ids to the logs; render every error as problem details."""
    traceparent, trace_id = _traceparent(request)
    request_id = request.headers.get("X-Request-Id", "")
    if not REQUEST_ID.fullmatch(request_id):  # echoed and logged: only a sane one is kept
        request_id = uuid.uuid4().hex
    request[issues.TRACEPARENT_KEY] = traceparent
    structlog.contextvars.bind_contextvars(request_id=request_id, trace_id=trace_id)
    route = (
        request.match_info.route.resource.canonical if request.match_info.route.resource else "?"
    )
    started = time.perf_counter()
    try:
        response = await _with_problems(request, handler)
    finally:
        structlog.contextvars.clear_contextvars()
    response.headers["X-Request-Id"] = request_id
    response.headers["traceparent"] = traceparent
    LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
    REQUESTS.labels(request.method, route, str(response.status)).inc()
    return response


async def _with_problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as p:
        return problem_response(p.status, p.kind, p.detail, request.path, p.extra, p.headers)
    except web.HTTPRequestEntityTooLarge as exc:
        return problem_response(413, "payload-too-large", exc.text, request.path)
    except web.HTTPNotFound:
        return problem_response(404, "not-found", "no such resource", request.path)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return problem_response(
            405,
            "method-not-allowed",
            f"{request.method[:20]} is not allowed here; use {allowed}",
            request.path,
            headers={"Allow": allowed},
        )
    except web.HTTPException as exc:
        return problem_response(exc.status, "http-error", exc.reason, request.path)
    except Exception as exc:
        if _dependency_down(exc):
            log.warning("dependency_unavailable", path=request.path, error=type(exc).__name__)
            detail = (
                f"the service is busy: {exc}; retry shortly"
                if isinstance(exc, PoolBusy)
                else "the database is not reachable; retry shortly"
            )
            response = problem_response(503, "unavailable", detail, request.path)
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response
        log.exception("request_failed", method=request.method, path=request.path)
        return problem_response(500, "internal-error", "an internal error occurred", request.path)


def _dependency_down(exc: BaseException) -> bool:
    """Whether an error means PostgreSQL is down or unreachable (not a bug in the request)."""
    if isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.PostgresConnectionError
        | asyncpg.exceptions.OperatorInterventionError
        | asyncpg.exceptions.TooManyConnectionsError,
    ):
        return True
    # A connection whose server went away mid-operation (a fast restart): asyncpg's protocol
    # is left "in progress" (found by the fault drill, bench/drill.py).
    if isinstance(exc, asyncpg.InternalClientError):
        return True
    # The pool hands out a connection whose server went away between two requests.
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate first (401), then check the input (hardening), then the key's rate limit.

    Authentication comes before any other check, so a caller without a valid key learns
    nothing about what else is wrong with its request. Unmatched paths are 404/405 for all.
    """
    match_info = request.match_info
    if getattr(match_info.handler, "tierline_board", False):
        return await handler(request)  # the board authenticates its own sessions (board/pages.py)
    public = getattr(match_info.handler, "tierline_public", False) or isinstance(
        match_info, MatchInfoError
    )
    if public:
        check_request(request)
        return await handler(request)
    header = request.headers.get("Authorization")
    if header is None:
        raise Problem(401, "unauthenticated", "send Authorization: Bearer <api key>")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Problem(401, "unauthenticated", "use Authorization: Bearer <api key>")
    found = await request.app[KEY_CACHE].find(key.strip())
    if found is None:
        raise Problem(401, "unauthenticated", "unknown or revoked API key")
    request[PRINCIPAL_KEY] = Principal(str(found.id), found.role, found.vendor_id)

    async def proceed() -> web.StreamResponse:
        check_request(request)
        return await handler(request)

    return await within_limit(request.app[RATE_LIMITER], str(found.id), proceed)


def create_app(settings: Settings, *, kafka_bootstrap: str | None = None) -> web.Application:
    """The API application; resources are opened and closed through `cleanup_ctx`."""
    app = web.Application(
        # Sessions sit outside auth: the board's guard reads them (API requests never do).
        middlewares=[context_middleware, session_middleware(settings), auth_middleware],
        client_max_size=settings.api_max_body_bytes,
    )
    app[SETTINGS] = settings
    app[KAFKA_BOOTSTRAP] = kafka_bootstrap or settings.kafka_bootstrap
    app[OPENAPI] = openapi_document()
    app[RATE_LIMITER] = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
    for table in all_routes():
        table.install(app)
    board.install(app)
    app.cleanup_ctx.append(_resources)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = await create_pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        wait_bound=settings.db_acquire_timeout_seconds,
    )
    reference = ReferenceData(pool, ttl=settings.reference_ttl_seconds)
    app[POOL] = pool
    app[REFERENCE] = reference
    app[UNITS] = PostgresUnitOfWorkFactory(pool, reference)
    group: GroupCommit | None = None
    if settings.write_path == "one-statement" and settings.write_group_commit_max > 1:
        group = GroupCommit(
            settings.database_url,
            settings.write_group_commit_max,
            settings.write_group_commit_writers,
        )
        await group.start()
    app[COMMAND_UNITS] = (
        OneStatementUnitOfWorkFactory(pool, reference, group=group)
        if settings.write_path == "one-statement"
        else app[UNITS]
    )
    app[ISSUE_QUEUE] = IssueQueue(enabled=settings.write_path == "one-statement")
    app[ISSUES] = IssueService(app[UNITS])
    app[INBOUND] = InboundReceiver(pool, app[UNITS], app[ISSUES])
    app[KEY_CACHE] = ApiKeyCache(pool, settings.database_url)
    app[KEY_CACHE].start()
    yield
    await app[KEY_CACHE].stop()
    if group is not None:
        await group.close()
    await pool.close()
