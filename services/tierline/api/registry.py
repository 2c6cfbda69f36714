"""The route table: each handler declares its models and roles once, for dispatch and OpenAPI."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from tierline.api.hardening import parse_json
from tierline.api.problems import Problem
from tierline.service_layer.issues import Principal

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)

PRINCIPAL_KEY = web.RequestKey("principal", Principal)
# One strong or weak entity tag holding a version number.
# Quotes are optional: `If-Match: 3` is read as `"3"`, a common slip worth forgiving.
ETAG = re.compile(r'(?:W/)?"?([0-9]{1,18})"?')


@dataclass(frozen=True)
class Query:
    """A query parameter as OpenAPI shows it: JSON Schema, and `explode=False` for a, b lists."""

    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})

    @property
    def comma_separated(self) -> bool:
        """Arrays are sent as one comma-separated value (`form` style, not exploded)."""
        return self.schema.get("type") == "array"


def query_spec(value: str | Query) -> Query:
    """A route's query declaration, where a plain string is a described string parameter."""
    return value if isinstance(value, Query) else Query(value)


@dataclass(frozen=True)
class Operation:
    """One HTTP operation as OpenAPI describes it."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    roles: frozenset[str] | None = None
    public: bool = False
    query: dict[str, str | Query] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    # Honours `Idempotency-Key` / `If-Match`; both are documented where they are honoured.
    idempotent: bool = False
    if_match: bool = False
    # Response headers of the success answer besides the rate-limit ones (ETag, Location).
    headers: tuple[str, ...] = ()
    # Other success statuses with the same body, and what each means.
    also: dict[int, str] = field(default_factory=dict)


class RouteTable:
    """Collects operations; `install` adds them to an app."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        tag: str,
        request: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        roles: tuple[str, ...] | None = None,
        public: bool = False,
        query: dict[str, str | Query] | None = None,
        errors: tuple[int, ...] = (),
        idempotent: bool = False,
        if_match: bool = False,
        headers: tuple[str, ...] = (),
        also: dict[int, str] | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register a handler; non-public ones get the role check."""

        def decorate(handler: Handler) -> Handler:
            allowed = frozenset(roles) if roles is not None else None

            async def guarded(request_: web.Request) -> web.StreamResponse:
                if not public:
                    who = principal(request_)
                    if allowed is not None and who.role not in allowed:
                        raise Problem(403, "forbidden", f"role {who.role!r} may not do this")
                return await handler(request_)

            guarded.__name__ = handler.__name__
            guarded.tierline_public = public  # type: ignore[attr-defined]
            self.operations.append(
                Operation(
                    method,
                    path,
                    guarded,
                    summary,
                    tag,
                    request,
                    response,
                    status,
                    allowed,
                    public,
                    query or {},
                    errors,
                    idempotent,
                    if_match,
                    headers,
                    also or {},
                )
            )
            return guarded

        return decorate

    def install(self, app: web.Application) -> None:
        """Add every operation to the app's router."""
        for op in self.operations:
            app.router.add_route(op.method, op.path, op.handler)


def principal(request: web.Request) -> Principal:
    """The authenticated caller (set by the auth middleware)."""
    who: Principal | None = request.get(PRINCIPAL_KEY)
    if who is None:
        raise Problem(401, "unauthenticated", "send Authorization: Bearer <api key>")
    return who


async def read_json(request: web.Request) -> Any:
    """The request body as JSON (the hardening layer checked its media type); 400 if not JSON."""
    raw = await request.read()
    if not raw:
        return {}
    return parse_json(raw)


def validation_problem(exc: ValidationError) -> Problem:
    """422 with one entry per invalid field, addressed by JSON pointer and dotted path."""
    errors = []
    for err in exc.errors(include_url=False, include_context=False):
        loc = [str(part) for part in err["loc"]]
        errors.append(
            {
                "pointer": "#/" + "/".join(loc),
                "field": ".".join(loc),
                "detail": err["msg"],
                "code": err["type"],
            }
        )
    return Problem(422, "validation-failed", "the request has invalid fields", errors=errors)


def parse_model(model: type[M], payload: Any) -> M:
    """Validate a payload against a model, as a 422 problem when it does not fit."""
    if not isinstance(payload, dict):
        raise Problem(422, "validation-failed", "the body must be a JSON object", errors=[])
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_problem(exc) from None


async def read_model(request: web.Request, model: type[M]) -> tuple[M, Any]:
    """The body validated against `model`, and the raw JSON (for idempotency hashing).

    Validation is pydantic's strict JSON mode: what the OpenAPI schema says is what passes.
    A "2" is not a tier and `true` is not a version, though dates and durations are strings.
    """
    raw = await request.read()
    payload = parse_json(raw) if raw else {}
    if not isinstance(payload, dict):
        raise Problem(422, "validation-failed", "the body must be a JSON object", errors=[])
    try:
        return model.model_validate_json(raw or b"{}", strict=True), payload
    except ValidationError as exc:
        raise validation_problem(exc) from None


def request_hash(request: web.Request, payload: Any) -> str:
    """What identifies a request for idempotency: method, path and canonical JSON body."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{request.method} {request.path}\n{canonical}".encode()).hexdigest()


_ORJSON_AS_STDLIB = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response (pydantic models dumped in JSON mode)."""
    if isinstance(body, BaseModel):
        data = body.model_dump_json().encode()
    else:
        data = orjson.dumps(body, default=str)
    return web.Response(status=status, body=data, content_type="application/json", headers=headers)


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within bounds, else a 422 problem."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise Problem(
            422,
            "validation-failed",
            f"{name} must be an integer from {lo} to {hi}",
            errors=[{"pointer": f"#/query/{name}", "field": name, "detail": "out of range"}],
        )
    return value


def dump(model: BaseModel) -> dict[str, Any]:
    """A model as JSON-ready data."""
    data: dict[str, Any] = model.model_dump(mode="json")
    return data


def if_match_version(request: web.Request) -> int | None:
    """The version an `If-Match: "<n>"` names (None for none or `*`); 400 if it is no ETag."""
    raw = request.headers.get("If-Match")
    if raw is None or raw.strip() == "*":
        return None
    match = ETAG.fullmatch(raw.strip())
    if match is None:
        raise Problem(
            400,
            "malformed-request",
            'If-Match must be one ETag such as "3" (or *)',
            errors=[{"pointer": "#/headers/If-Match", "detail": "not an ETag"}],
        )
    return int(match.group(1))


def etag(version: int) -> str:
    """The strong ETag of a version."""
    return f'"{version}"'


def precondition_failed(what: str, current: int) -> Problem:
    """412: `If-Match` (or a body's `version`) named another version than the current one."""
    return Problem(
        412,
        "precondition-failed",
        f"the {what} is at version {current}",
        current_version=current,
    )
