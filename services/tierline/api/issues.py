"""Issue endpoints: open, read, history, and one POST per command."""

from __future__ import annotations

from aiohttp import web

from tierline.api.keys import ISSUES, POOL
from tierline.api.problems import Problem
from tierline.api.registry import (
    RouteTable,
    etag,
    if_match_version,
    json_response,
    principal,
    read_model,
    request_hash,
)
from tierline.api.schemas import EventPage, IssueOut
from tierline.domain import commands as c
from tierline.domain.issue import InvalidTransition, Issue
from tierline.eventlog.cloudevents import stored_to_structured
from tierline.service_layer.issues import (
    ExternalRefConflict,
    IdempotencyRequest,
    IssueNotFound,
    PreconditionFailed,
    Response,
    UnknownVendor,
)
from tierline.store.event_store import stream_events
from tierline.store.idempotency import IdempotencyKeyReused

routes = RouteTable()
WRITERS = ("admin", "integration", "vendor")
TRACEPARENT_KEY = web.RequestKey("traceparent", str)


def _render_open(issue: Issue, created: bool) -> Response:
    headers = {"ETag": etag(issue.version), "Location": f"/v1/issues/{issue.id}"}
    return (201 if created else 200), IssueOut.of(issue).model_dump(mode="json"), headers


def _render_command(issue: Issue, created: bool) -> Response:
    return 200, IssueOut.of(issue).model_dump(mode="json"), {"ETag": etag(issue.version)}


def _idempotency(request: web.Request, payload: object) -> IdempotencyRequest | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255:
        raise Problem(400, "malformed-request", "Idempotency-Key must be 1..255 characters")
    return IdempotencyRequest(key=key, request_hash=request_hash(request, payload))


def _answer(response: Response) -> web.Response:
    status, body, headers = response
    return json_response(body, status=status, headers=headers)


@routes.route(
    "POST",
    "/v1/issues",
    summary=(
        "Open an issue against a vendor (a known external_ref of the same vendor returns the"
        " existing issue with 200; one of another vendor is a 409 external-ref-conflict)"
    ),
    tag="issues",
    request=c.OpenIssue,
    response=IssueOut,
    status=201,
    roles=WRITERS,
    errors=(409, 422),
    idempotent=True,
    headers=("ETag", "Location"),
    also={200: "The external_ref is known for this vendor: the existing issue"},
)
async def open_issue(request: web.Request) -> web.Response:
    command, payload = await read_model(request, c.OpenIssue)
    who = principal(request)
    try:
        response = await request.app[ISSUES].open(
            who,
            command,
            _render_open,
            _idempotency(request, payload),
            request.get(TRACEPARENT_KEY),
        )
    except UnknownVendor:
        raise Problem(
            422,
            "unknown-vendor",
            f"vendor {command.vendor_id!r} is not registered",
            errors=[{"pointer": "#/vendor_id", "field": "vendor_id", "detail": "unknown vendor"}],
        ) from None
    except IdempotencyKeyReused:
        raise Problem(
            422, "idempotency-key-reused", "the key was used for another request"
        ) from None
    except ExternalRefConflict:
        # The same answer for every caller and every other owner: nothing of it is revealed.
        raise Problem(
            409,
            "external-ref-conflict",
            "this external_ref is already registered for another vendor",
            errors=[{"pointer": "#/external_ref", "field": "external_ref", "detail": "in use"}],
        ) from None
    return _answer(response)


@routes.route(
    "GET",
    "/v1/issues/{issue_id}",
    summary="The current issue (read-your-writes, from the write side)",
    tag="issues",
    response=IssueOut,
    errors=(404,),
    headers=("ETag",),
)
async def get_issue(request: web.Request) -> web.Response:
    try:
        issue = await request.app[ISSUES].get(principal(request), request.match_info["issue_id"])
    except IssueNotFound:
        raise Problem(404, "not-found", "no such issue") from None
    return json_response(IssueOut.of(issue), headers={"ETag": etag(issue.version)})


@routes.route(
    "GET",
    "/v1/issues/{issue_id}/events",
    summary="The issue's history as CloudEvents (structured JSON)",
    tag="issues",
    response=EventPage,
    errors=(401, 404),
)
async def issue_events(request: web.Request) -> web.Response:
    issue_id = request.match_info["issue_id"]
    try:
        await request.app[ISSUES].get(principal(request), issue_id)
    except IssueNotFound:
        raise Problem(404, "not-found", "no such issue") from None
    events = await stream_events(request.app[POOL], issue_id)
    return json_response({"items": [stored_to_structured(e) for e in events], "next_cursor": None})


def _command_handler(model: type[c.Command]) -> None:
    async def handle(request: web.Request) -> web.Response:
        command, payload = await read_model(request, model)
        try:
            response = await request.app[ISSUES].execute(
                principal(request),
                request.match_info["issue_id"],
                command,
                _render_command,
                if_match=if_match_version(request),
                idem=_idempotency(request, payload),
                traceparent=request.get(TRACEPARENT_KEY),
            )
        except IssueNotFound:
            raise Problem(404, "not-found", "no such issue") from None
        except PreconditionFailed as exc:
            raise Problem(
                412,
                "precondition-failed",
                f"the issue is at version {exc.current}",
                current_version=exc.current,
            ) from None
        except InvalidTransition as exc:
            raise Problem(409, "invalid-transition", exc.detail, status_now=exc.status) from None
        except IdempotencyKeyReused:
            raise Problem(
                422, "idempotency-key-reused", "the key was used for another request"
            ) from None
        return _answer(response)

    handle.__name__ = f"command_{model.route}"
    routes.route(
        "POST",
        f"/v1/issues/{{issue_id}}/{model.route}",
        summary=(model.__doc__ or model.__name__).strip().splitlines()[0],
        tag="commands",
        request=model,
        response=IssueOut,
        roles=WRITERS,
        errors=(404, 409, 412, 422),
        idempotent=True,
        if_match=True,
        headers=("ETag",),
    )(handle)


for _model in c.ISSUE_COMMANDS:
    _command_handler(_model)
