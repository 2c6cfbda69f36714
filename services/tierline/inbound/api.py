"""Inbound endpoints: sources (admin), their delivery logs, and the receiving URL itself."""

from __future__ import annotations

import uuid

import structlog
from aiohttp import web

from tierline.api.hardening import parse_json
from tierline.api.idempotency import Rendered, answer_once
from tierline.api.keys import INBOUND, POOL, SETTINGS, UNITS
from tierline.api.paging import (
    PAGE_QUERY,
    VENDOR_PAGE_QUERY,
    cut_page,
    decode_cursor,
    page_limit,
    vendor_page,
)
from tierline.api.problems import Problem
from tierline.api.registry import (
    RouteTable,
    json_response,
    principal,
    read_model,
)
from tierline.inbound import deliveries as delivery_store
from tierline.inbound import sources as source_store
from tierline.inbound.models import (
    CommandOut,
    CreateSource,
    DeliveryOut,
    DeliveryPage,
    Received,
    RotateSecret,
    SourceOut,
    SourcePage,
    ToolPayload,
    UpdateSource,
    reason_and_error,
)
from tierline.inbound.receive import Answer, Unauthorized
from tierline.inbound.verify import new_source_secret
from tierline.store import vendors as vendor_store
from tierline.store.unit_of_work import PostgresUnitOfWork

log = structlog.get_logger(__name__)

routes = RouteTable()
ADMIN = ("admin",)
READERS = ("admin", "integration", "vendor", "viewer")
# The same answer for an unknown source and a bad signature, whatever was wrong.
UNAUTHORIZED = Problem(401, "unauthenticated", "the request is not signed for this URL")


def _base_url(request: web.Request) -> str:
    configured = request.app[SETTINGS].public_base_url
    return (configured or str(request.url.origin())).rstrip("/")


def _source_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["source_id"])
    except ValueError:
        raise Problem(404, "not-found", "no such inbound source") from None


async def _visible_source(request: web.Request) -> source_store.Source:
    """The path's source when the caller may see it; 404 otherwise (also another vendor's)."""
    source = await source_store.get_source(request.app[POOL], _source_id(request))
    who = principal(request)
    if source is None or (who.role == "vendor" and source.vendor_id != who.vendor_id):
        raise Problem(404, "not-found", "no such inbound source")
    return source


async def _check_vendor(request: web.Request, vendor_id: str | None) -> None:
    if (
        vendor_id is not None
        and await vendor_store.get_vendor(request.app[POOL], vendor_id) is None
    ):
        raise Problem(
            422,
            "unknown-vendor",
            f"vendor {vendor_id!r} is not registered",
            errors=[{"pointer": "#/vendor_id", "field": "vendor_id", "detail": "unknown vendor"}],
        )


@routes.route(
    "POST",
    "/v1/inbound-sources",
    idempotent=True,
    headers=("Location",),
    summary="Register a ticketing tool's webhook (Jira, Zendesk, GitHub, generic); the secret is"
    " shown once",
    tag="inbound",
    request=CreateSource,
    response=SourceOut,
    status=201,
    roles=ADMIN,
    errors=(400, 401, 403, 422),
)
async def create_inbound_source(request: web.Request) -> web.Response:
    body, payload = await read_model(request, CreateSource)
    await _check_vendor(request, body.vendor_id)
    base = _base_url(request)

    async def work(uow: PostgresUnitOfWork) -> Rendered:
        secret = body.secret or new_source_secret(body.type)
        source = await source_store.insert_source(
            uow.connection,
            name=body.name,
            kind=body.type,
            vendor_id=body.vendor_id,
            mapping=body.mapping.model_dump(exclude_none=True) if body.mapping else {},
            secret=secret,
        )
        log.info("inbound_source_created", source_id=str(source.id), type=source.type)
        answer = SourceOut.of(source, base, secret).model_dump(mode="json")
        return 201, answer, {"Location": f"/v1/inbound-sources/{source.id}"}

    return await answer_once(request, payload, request.app[UNITS], work, secret_field="secret")


@routes.route(
    "GET",
    "/v1/inbound-sources",
    summary="List inbound sources (vendor keys see their vendor's only)",
    tag="inbound",
    response=SourcePage,
    roles=READERS,
    query=VENDOR_PAGE_QUERY,
    errors=(401, 422),
)
async def list_inbound_sources(request: web.Request) -> web.Response:
    page, cursor = await vendor_page(
        request, request.app[POOL], source_store.list_sources, lambda s: (s.created_at, s.id)
    )
    base = _base_url(request)
    return json_response(
        SourcePage(items=[SourceOut.of(s, base) for s in page], next_cursor=cursor)
    )


@routes.route(
    "GET",
    "/v1/inbound-sources/{source_id}",
    summary="One inbound source (never its secret)",
    tag="inbound",
    response=SourceOut,
    roles=READERS,
    errors=(401, 404),
)
async def get_inbound_source(request: web.Request) -> web.Response:
    return json_response(SourceOut.of(await _visible_source(request), _base_url(request)))


@routes.route(
    "PATCH",
    "/v1/inbound-sources/{source_id}",
    summary="Change a source's name, vendor or mapping overrides",
    tag="inbound",
    request=UpdateSource,
    response=SourceOut,
    roles=ADMIN,
    errors=(400, 401, 403, 404, 422),
)
async def update_inbound_source(request: web.Request) -> web.Response:
    source = await _visible_source(request)
    body, _ = await read_model(request, UpdateSource)
    changes = body.model_dump(exclude_unset=True)
    if "mapping" in changes:
        changes["mapping"] = body.mapping.model_dump(exclude_none=True) if body.mapping else {}
    await _check_vendor(request, changes.get("vendor_id"))
    updated = await source_store.update_source(request.app[POOL], source.id, changes)
    if updated is None:
        raise Problem(404, "not-found", "no such inbound source")
    log.info("inbound_source_updated", source_id=str(source.id), fields=sorted(changes))
    return json_response(SourceOut.of(updated, _base_url(request)))


@routes.route(
    "DELETE",
    "/v1/inbound-sources/{source_id}",
    summary="Delete a source and its delivery log (its URL stops accepting at once)",
    tag="inbound",
    status=204,
    roles=ADMIN,
    errors=(401, 403, 404),
)
async def delete_inbound_source(request: web.Request) -> web.Response:
    source = await _visible_source(request)
    if not await source_store.delete_source(request.app[POOL], source.id):
        raise Problem(404, "not-found", "no such inbound source")
    log.info("inbound_source_deleted", source_id=str(source.id))
    return web.Response(status=204)


@routes.route(
    "POST",
    "/v1/inbound-sources/{source_id}/rotate-secret",
    idempotent=True,
    summary="Issue (or set) a new secret; the previous one keeps verifying for 24 hours",
    tag="inbound",
    request=RotateSecret,
    response=SourceOut,
    roles=ADMIN,
    errors=(401, 403, 404, 422),
)
async def rotate_inbound_secret(request: web.Request) -> web.Response:
    source = await _visible_source(request)
    body, payload = await read_model(request, RotateSecret)
    base = _base_url(request)

    async def work(uow: PostgresUnitOfWork) -> Rendered:
        secret = body.secret or new_source_secret(source.type)
        rotated = await source_store.rotate_secret(uow.connection, source.id, secret)
        if rotated is None:
            raise Problem(404, "not-found", "no such inbound source")
        log.info("inbound_secret_rotated", source_id=str(source.id))
        return 200, SourceOut.of(rotated, base, secret).model_dump(mode="json"), {}

    return await answer_once(request, payload, request.app[UNITS], work, secret_field="secret")


@routes.route(
    "GET",
    "/v1/inbound-sources/{source_id}/deliveries",
    summary="What arrived: verification, the tool's event, mapped commands, outcome, error",
    tag="inbound",
    response=DeliveryPage,
    roles=READERS,
    query=PAGE_QUERY,
    errors=(401, 404, 422),
)
async def list_inbound_deliveries(request: web.Request) -> web.Response:
    source = await _visible_source(request)
    who = principal(request)
    limit = page_limit(request)
    found = await delivery_store.list_deliveries(
        request.app[POOL],
        source.id,
        vendor_id=who.vendor_id if who.role == "vendor" else None,
        before=decode_cursor(request),
        limit=limit + 1,
    )
    page, cursor = cut_page(found, limit, lambda d: (d.received_at, d.id))
    items = [DeliveryOut.of(d) for d in page]
    return json_response(DeliveryPage(items=items, next_cursor=cursor))


@routes.route(
    "POST",
    "/v1/inbound/{source_id}",
    summary="A tool's webhook, verified by its own signature (no API key); 2xx also for events"
    " that are ignored, 401 for an unknown source or a bad signature alike",
    tag="inbound",
    public=True,
    request=ToolPayload,
    response=Received,
    errors=(400, 401, 422),
)
async def receive_inbound(request: web.Request) -> web.Response:
    receiver = request.app[INBOUND]
    body = await request.read()
    headers = dict(request.headers)
    try:
        source = await receiver.verified_source(request.match_info["source_id"], headers, body)
    except Unauthorized:
        raise UNAUTHORIZED from None
    try:
        payload = parse_json(body)
    except Problem as problem:
        await receiver.record_failed(source, headers, body, problem.detail or problem.kind)
        raise
    answer = await receiver.receive(source, headers, body, payload)
    if answer.result.outcome == "failed" and not answer.duplicate:
        raise Problem(
            422,
            "inbound-unmappable",
            answer.result.error or "the delivery could not be mapped",
            delivery_id=answer.delivery_id,
        )
    return json_response(_received(answer))


def _received(answer: Answer) -> Received:
    result = answer.result
    return Received(
        delivery_id=answer.delivery_id,
        outcome=result.outcome,
        duplicate=answer.duplicate,
        issue_id=result.issue_id,
        commands=[CommandOut.model_validate(c) for c in result.commands],
        **reason_and_error(result.outcome, result.error),
    )
