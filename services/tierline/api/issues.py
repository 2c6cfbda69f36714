"""Issue endpoints: open, read, history, and one POST per command."""

from __future__ import annotations

from aiohttp import web

from tierline.api.idempotency import Rendered, answer_once
from tierline.api.keys import COMMAND_UNITS, ISSUE_QUEUE, ISSUES, POOL, UNITS
from tierline.api.problems import Problem
from tierline.api.registry import (
    RouteTable,
    etag,
    if_match_version,
    json_response,
    precondition_failed,
    principal,
    read_model,
)
from tierline.api.schemas import EventPage, IssueOut, issue_body
from tierline.domain import commands as c
from tierline.domain.issue import InvalidTransition
from tierline.eventlog.cloudevents import stored_to_structured
from tierline.service_layer.issues import (
    ExternalRefConflict,
    IssueNotFound,
    Outcome,
    PreconditionFailed,
    UnknownVendor,
)
from tierline.service_layer.unit_of_work import UnitOfWork
from tierline.store.event_store import stream_events

routes = RouteTable()
WRITERS = ("admin", "integration", "vendor")
TRACEPARENT_KEY = web.RequestKey("traceparent", str)


def _rendered(outcome: Outcome, *, opening: bool = False) -> Rendered:
    """An outcome as the API answers it: 201 + Location for a new issue, else 200."""
    issue = outcome.issue
    headers = {"ETag": etag(issue.version)}
    if opening:
        headers["Location"] = f"/v1/issues/{issue.id}"
    status = 201 if outcome.created else 200
    return status, issue_body(issue), headers


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
    who, service = principal(request), request.app[ISSUES]

    async def work(uow: UnitOfWork) -> Rendered:
        outcome = await service.open(
            who, command, uow=uow, traceparent=request.get(TRACEPARENT_KEY)
        )
        return _rendered(outcome, opening=True)

    try:
        return await answer_once(request, payload, request.app[UNITS], work)
    except UnknownVendor:
        raise Problem(
            422,
            "unknown-vendor",
            f"vendor {command.vendor_id!r} is not registered",
            errors=[{"pointer": "#/vendor_id", "field": "vendor_id", "detail": "unknown vendor"}],
        ) from None
    except ExternalRefConflict:
        # The same answer for every caller and every other owner: nothing of it is revealed.
        raise Problem(
            409,
            "external-ref-conflict",
            "this external_ref is already registered for another vendor",
            errors=[{"pointer": "#/external_ref", "field": "external_ref", "detail": "in use"}],
        ) from None


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
        who, service = principal(request), request.app[ISSUES]
        issue_id, if_match = request.match_info["issue_id"], if_match_version(request)

        async def work(uow: UnitOfWork) -> Rendered:
            outcome = await service.execute(
                who,
                issue_id,
                command,
                if_match=if_match,
                uow=uow,
                traceparent=request.get(TRACEPARENT_KEY),
            )
            return _rendered(outcome)

        units, locking = request.app[COMMAND_UNITS], request.app[UNITS]
        try:
            async with request.app[ISSUE_QUEUE].turn(issue_id):
                return await answer_once(
                    request,
                    payload,
                    units,
                    work,
                    last_try=locking,
                    lock_first=lambda uow: uow.issues.get_for_update(issue_id),
                )
        except IssueNotFound:
            raise Problem(404, "not-found", "no such issue") from None
        except PreconditionFailed as exc:
            raise precondition_failed("issue", exc.current) from None
        except InvalidTransition as exc:
            raise Problem(409, "invalid-transition", exc.detail, status_now=exc.status) from None

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
