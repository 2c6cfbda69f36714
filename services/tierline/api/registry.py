"""The route table: each handler declares its models and roles once, for dispatch and OpenAPI."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from tierline.api.hardening import parse_json
from tierline.api.problems import Problem
from tierline.service_layer.issues import Principal

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)

PRINCIPAL_KEY = web.RequestKey("principal", Principal)


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
    query: dict[str, str] = field(default_factory=dict)
    errors: tuple[int, ...] = ()


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
        query: dict[str, str] | None = None,
        errors: tuple[int, ...] = (),
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
    """The body validated against `model`, and the raw JSON (for idempotency hashing)."""
    payload = await read_json(request)
    return parse_model(model, payload), payload


def request_hash(request: web.Request, payload: Any) -> str:
    """What identifies a request for idempotency: method, path and canonical JSON body."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{request.method} {request.path}\n{canonical}".encode()).hexdigest()


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response (pydantic models dumped in JSON mode)."""
    if isinstance(body, BaseModel):
        text = body.model_dump_json()
    else:
        text = json.dumps(body, default=str)
    return web.Response(status=status, text=text, content_type="application/json", headers=headers)


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
