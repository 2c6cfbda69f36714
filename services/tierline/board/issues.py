"""The issue page (read-your-writes, from the write side) and its actions.

Actions go through `IssueService.execute`, the JSON API's write path, with the version the page
was rendered at as `If-Match`: a page that is out of date gets the 412 message and changes
nothing. Which buttons a page shows is asked of the domain itself: an action is offered when
`decide` accepts it for this issue now, and only to keys that may write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from tierline.api.keys import ISSUES, POOL, UNITS
from tierline.api.problems import Problem
from tierline.board import session
from tierline.board.pages import board
from tierline.board.render import render
from tierline.board.routes import READERS, WRITERS, form, principal, see_other
from tierline.domain import commands as c
from tierline.domain.issue import InvalidTransition, Issue, Rules, decide
from tierline.projector.fold import short_name, summarize_event
from tierline.service_layer.issues import IssueNotFound, PreconditionFailed
from tierline.store.event_store import stream_events
from tierline.store.vendors import current_governance, get_vendor


@dataclass(frozen=True)
class Action:
    """A button on the issue page: its command, label and the text field it asks for."""

    command: type[c.Command]
    label: str
    done: str
    field: str | None = None
    field_label: str = ""
    required: bool = False


ACTIONS = (
    Action(c.Acknowledge, "Acknowledge", "Acknowledged.", "note", "Note (optional)"),
    Action(c.AddComment, "Comment", "Comment added.", "body", "Comment", required=True),
    Action(c.Escalate, "Escalate", "Escalated.", "reason", "Reason for escalating", True),
    Action(c.Hold, "Put on hold", "Put on hold.", "reason", "Reason for the hold", True),
    Action(c.Resume, "Resume", "Resumed."),
    Action(c.Resolve, "Resolve", "Resolved.", "resolution", "Resolution", required=True),
)
BY_ROUTE = {a.command.route: a for a in ACTIONS}
# What `decide` is asked with to learn whether an action is possible now.
PROBES: dict[str, dict[str, str]] = {
    "acknowledge": {},
    "comments": {"body": "probe"},
    "escalate": {"reason": "probe"},
    "hold": {"reason": "probe"},
    "resume": {},
    "resolve": {"resolution": "probe"},
}


def possible(issue: Issue, rules: Rules, now: datetime) -> list[Action]:
    """The actions the state machine accepts for this issue now."""
    found = []
    for action in ACTIONS:
        try:
            decide(issue, action.command(**PROBES[action.command.route]), now, rules)
        except InvalidTransition:
            continue
        found.append(action)
    return found


async def _rules(request: web.Request, vendor_id: str) -> Rules:
    async with request.app[UNITS]() as uow:
        rules = await uow.rules_for(vendor_id)
    if rules is None:
        raise Problem(404, "not-found", "no such issue")
    return rules


async def issue_page(
    request: web.Request, issue: Issue, status: int = 200, message: str | None = None
) -> web.Response:
    """The issue page: header, clocks in two zones, timeline, and the allowed actions."""
    who = principal(request)
    now = datetime.now(UTC)
    pool = request.app[POOL]
    rules = await _rules(request, issue.vendor_id)
    vendor = await get_vendor(pool, issue.vendor_id)
    _, governance = await current_governance(pool)
    zone = vendor.effective_timezone(governance) if vendor is not None else "UTC"
    clocks = [
        {
            "clock": k,
            "elapsed": k.elapsed_at(now, rules.calendar),
            "share": min(1.0, k.elapsed_at(now, rules.calendar) / k.target_seconds),
        }
        for k in issue.clocks
    ]
    timeline = []
    for event in await stream_events(pool, issue.id):
        name = short_name(event.type) or event.type
        data: dict[str, Any] = json.loads(event.data_json)
        timeline.append(
            {
                "version": event.version,
                "name": name,
                "time": event.time,
                "summary": summarize_event(name, data),
                "body": data.get("body"),
            }
        )
    actions = possible(issue, rules, now) if who.role in WRITERS else []
    tier_names = {t.level: t.name for t in governance.tiers}
    return await render(
        request,
        "issue.html",
        {
            "issue": issue,
            "vendor_name": vendor.name if vendor is not None else issue.vendor_id,
            "zone": zone,
            "clocks": clocks,
            "timeline": timeline,
            "actions": actions,
            "tier_name": tier_names.get(issue.tier, f"Tier {issue.tier}"),
            "message": message,
        },
        status=status,
    )


@board.page("GET", "/board/issues/{issue_id}", roles=READERS)
async def show_issue(request: web.Request) -> web.StreamResponse:
    try:
        issue = await request.app[ISSUES].get(principal(request), request.match_info["issue_id"])
    except IssueNotFound:
        raise Problem(404, "not-found", "no such issue") from None
    return await issue_page(request, issue)


def _version(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 18:
        raise Problem(
            400, "malformed-request", "the form lost the issue's version: reload the page"
        )
    return int(raw)


def _command(action: Action, fields: Any) -> c.Command:
    payload = {}
    if action.field is not None:
        value = fields.get(action.field, "").strip()
        if value or action.required:
            payload[action.field] = value
    try:
        return action.command.model_validate(payload)
    except ValidationError as exc:
        label = action.field_label or "the form"
        detail = exc.errors(include_url=False)[0]["msg"]
        raise Problem(422, "validation-failed", f"{label}: {detail}") from None


def _action_handler(action: Action) -> None:
    async def act(request: web.Request) -> web.StreamResponse:
        who, service = principal(request), request.app[ISSUES]
        issue_id, fields = request.match_info["issue_id"], form(request)
        version = _version(fields.get("version", ""))
        try:
            issue = await service.get(who, issue_id)
            command = _command(action, fields)
            await service.execute(who, issue_id, command, if_match=version)
        except IssueNotFound:
            raise Problem(404, "not-found", "no such issue") from None
        except PreconditionFailed as exc:
            current = await service.get(who, issue_id)
            message = (
                f"This issue changed while your page was open (you saw version {version}, it is "
                f"now at version {exc.current}). Nothing was changed: check the timeline below "
                "and try again if it is still needed."
            )
            return await issue_page(request, current, 412, message)
        except InvalidTransition as exc:
            message = f"{action.label} is not possible now: {exc.detail}"
            return await issue_page(request, await service.get(who, issue_id), 409, message)
        except Problem as problem:
            return await issue_page(request, issue, problem.status, problem.detail)
        await session.flash(request, action.done)
        return see_other(f"/board/issues/{issue_id}")

    act.__name__ = f"board_{action.command.route}"
    board.page("POST", f"/board/issues/{{issue_id}}/{action.command.route}", roles=WRITERS)(act)


for _action in ACTIONS:
    _action_handler(_action)
