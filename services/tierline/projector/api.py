"""`GET /v1/issues` (filters, cursor pages) and the vendor scorecard, from the read models.

Both read what the projector has committed so far: eventually consistent, unlike
`GET /v1/issues/{id}`, which reads the write side.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any, get_args

from aiohttp import web
from pydantic import BaseModel

from tierline.api.keys import POOL
from tierline.api.problems import Problem
from tierline.api.registry import Query, RouteTable, json_response, principal, query_int
from tierline.domain.clocks import ClockKind, ClockState
from tierline.domain.events import Category, Status
from tierline.domain.governance import PRIORITIES, Priority
from tierline.projector import queries
from tierline.projector.queries import BadCursor, IssueFilter
from tierline.service_layer.issues import Principal
from tierline.store.vendors import get_vendor

routes = RouteTable()
READERS = ("admin", "integration", "vendor", "viewer")
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
DEFAULT_SCORECARD_DAYS = 30
MAX_SCORECARD_DAYS = 3660


def _list_of(description: str, items: dict[str, Any]) -> Query:
    """A comma-separated list parameter (`?status=open,acknowledged`)."""
    return Query(description, {"type": "array", "items": items, "minItems": 1})


LIST_QUERY: dict[str, str | Query] = {
    "vendor_id": _list_of("only these vendors", {"type": "string"}),
    "status": _list_of("only these statuses", {"type": "string", "enum": list(get_args(Status))}),
    "tier": _list_of("only these tiers", {"type": "integer", "minimum": 1, "maximum": 10}),
    "priority": _list_of("only these priorities", {"type": "string", "enum": list(PRIORITIES)}),
    "category": _list_of(
        "only these categories", {"type": "string", "enum": list(get_args(Category))}
    ),
    "breached": Query(
        "true: only issues that ever breached an SLA; false: only those that never did",
        {"type": "boolean"},
    ),
    "limit": Query(
        "page size",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    ),
    "cursor": "next_cursor of the previous page (for the same filters)",
}
_DAY = {"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]}
SCORECARD_QUERY: dict[str, str | Query] = {
    "from": Query(
        "first UTC day (YYYY-MM-DD or an RFC 3339 time); default: 29 days before `to`", _DAY
    ),
    "to": Query("last UTC day, inclusive (YYYY-MM-DD or an RFC 3339 time); default: today", _DAY),
}


class ClockBrief(BaseModel):
    """One of the issue's current SLA clocks."""

    id: str
    kind: ClockKind
    tier: int
    state: ClockState
    due_at: datetime | None
    breached_at: datetime | None


class IssueListItem(BaseModel):
    """An issue as the read model holds it."""

    id: str
    vendor_id: str
    title: str
    category: Category
    priority: Priority
    status: Status
    tier: int
    assignee: str | None
    external_ref: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    breached: bool
    breach_count: int
    escalation_count: int
    next_due_at: datetime | None
    sla: list[ClockBrief]


class IssueListPage(BaseModel):
    """A page of issues in a stable order; follow `next_cursor` until it is null."""

    items: list[IssueListItem]
    next_cursor: str | None = None


class BreachCount(BaseModel):
    """Breaches of one kind of clock at one tier."""

    tier: int
    kind: ClockKind
    count: int


class Breaches(BaseModel):
    """SLA breaches in the period."""

    total: int
    by_tier: list[BreachCount]


class ScorecardDay(BaseModel):
    """One UTC day of a vendor's scorecard (days without activity are left out)."""

    day: date
    opened: int
    acknowledged: int
    resolved: int
    reopened: int
    escalations: int
    breaches: int
    clocks_met: int
    open_at_end_of_day: int
    mtta_seconds: float | None
    mttr_seconds: float | None
    sla_compliance: float | None


class Scorecard(BaseModel):
    """A vendor's governance figures for the UTC days `from_date` to `to_date` inclusive."""

    vendor_id: str
    from_date: date
    to_date: date
    opened: int
    acknowledged: int
    resolved: int
    reopened: int
    closed: int
    open_now: int
    escalations: int
    automatic_escalations: int
    escalations_by_tier: dict[str, int]
    warnings: int
    breaches: Breaches
    sla_compliance: float | None
    mtta_seconds: float | None
    mttr_seconds: float | None
    daily: list[ScorecardDay]


def _values(
    request: web.Request, name: str, allowed: tuple[str, ...] | None
) -> tuple[str, ...] | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    parts = [v.strip() for v in raw.split(",")]
    if not all(parts):
        raise _query_problem(name, "give comma-separated values without empty ones")
    values = tuple(dict.fromkeys(parts))
    bad = [v for v in values if allowed is not None and v not in allowed]
    if bad:
        raise _query_problem(
            name, f"unknown value(s) {', '.join(bad)}; allowed: {', '.join(allowed or ())}"
        )
    return values


def _query_problem(name: str, detail: str) -> Problem:
    return Problem(
        422,
        "validation-failed",
        f"query parameter {name}: {detail}",
        errors=[{"pointer": f"#/query/{name}", "field": name, "detail": detail}],
    )


def _tiers(request: web.Request) -> tuple[int, ...] | None:
    values = _values(request, "tier", None)
    if values is None:
        return None
    if not all(v.isdigit() and 1 <= int(v) <= 10 for v in values):
        raise _query_problem("tier", "tiers are integers from 1 to 10")
    return tuple(int(v) for v in values)


def _breached(request: web.Request) -> bool | None:
    raw = request.query.get("breached")
    if raw is None:
        return None
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise _query_problem("breached", "use true or false")


def _scoped_vendors(who: Principal, requested: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """A vendor key sees its vendor only, whatever it asks for."""
    if who.role != "vendor" or who.vendor_id is None:
        return requested
    if requested is not None and who.vendor_id not in requested:
        return ()
    return (who.vendor_id,)


def _item(row: Any) -> IssueListItem:
    clocks = json.loads(row["clocks"])
    return IssueListItem(
        id=row["issue_id"],
        vendor_id=row["vendor_id"],
        title=row["title"],
        category=row["category"],
        priority=row["priority"],
        status=row["status"],
        tier=row["tier"],
        assignee=row["assignee"],
        external_ref=row["external_ref"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        breached=row["breach_count"] > 0,
        breach_count=row["breach_count"],
        escalation_count=row["escalation_count"],
        next_due_at=row["next_due_at"],
        sla=[ClockBrief.model_validate(c, strict=False) for c in _briefs(clocks)],
    )


def _briefs(clocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    fields = ClockBrief.model_fields
    return [{k: v for k, v in clock.items() if k in fields} for clock in clocks]


@routes.route(
    "GET",
    "/v1/issues",
    summary="List issues from the read model (eventually consistent), filtered, in stable pages",
    tag="issues",
    response=IssueListPage,
    roles=READERS,
    query=LIST_QUERY,
    errors=(401, 403, 422),
)
async def list_issues(request: web.Request) -> web.Response:
    who = principal(request)
    filters = IssueFilter(
        vendor_ids=_scoped_vendors(who, _values(request, "vendor_id", None)),
        statuses=_values(request, "status", get_args(Status)),
        tiers=_tiers(request),
        priorities=_values(request, "priority", PRIORITIES),
        categories=_values(request, "category", get_args(Category)),
        breached=_breached(request),
    )
    limit = query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    after = 0
    cursor = request.query.get("cursor")
    if cursor:
        try:
            after = queries.decode_cursor(cursor, filters)
        except BadCursor as exc:
            raise _query_problem("cursor", str(exc)) from None
    rows, last = await queries.list_issues(request.app[POOL], filters, after, limit)
    page = IssueListPage(
        items=[_item(row) for row in rows],
        next_cursor=None if last is None else queries.encode_cursor(last, filters),
    )
    return json_response(page)


def _day(request: web.Request, name: str) -> date | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        if len(raw) == 10:
            return date.fromisoformat(raw)
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise _query_problem(name, "use YYYY-MM-DD or an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise _query_problem(name, "an RFC 3339 time needs a UTC offset")
    return moment.astimezone(UTC).date()


def _period(request: web.Request) -> tuple[date, date]:
    end = _day(request, "to") or datetime.now(UTC).date()
    start = _day(request, "from") or end - timedelta(days=DEFAULT_SCORECARD_DAYS - 1)
    if start > end:
        raise _query_problem("from", "must not be after `to`")
    if (end - start).days >= MAX_SCORECARD_DAYS:
        raise _query_problem("from", f"the period is limited to {MAX_SCORECARD_DAYS} days")
    return start, end


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def scorecard_of(vendor_id: str, start: date, end: date, rows: queries.ScorecardRows) -> Scorecard:
    """The scorecard of the days `start`..`end` from its rows (the API's and the board's)."""
    t = rows.totals
    breaches = [
        BreachCount(tier=r["tier"], kind=r["kind"], count=r["count"]) for r in rows.breaches
    ]
    return Scorecard(
        vendor_id=vendor_id,
        from_date=start,
        to_date=end,
        opened=t["opened"],
        acknowledged=t["acknowledged"],
        resolved=t["resolved"],
        reopened=t["reopened"],
        closed=t["closed"],
        open_now=rows.open_now,
        escalations=t["escalations"],
        automatic_escalations=t["automatic_escalations"],
        escalations_by_tier={str(r["to_tier"]): r["count"] for r in rows.escalations},
        warnings=t["warnings"],
        breaches=Breaches(total=t["breaches"], by_tier=breaches),
        sla_compliance=_ratio(t["clocks_met"], t["clocks_met"] + t["breaches"]),
        mtta_seconds=_ratio(t["ack_seconds_total"], t["acknowledged"]),
        mttr_seconds=_ratio(t["resolve_seconds_total"], t["resolved"]),
        daily=[ScorecardDay(**dict(r)) for r in rows.days],
    )


@routes.route(
    "GET",
    "/v1/vendors/{vendor_id}/scorecard",
    summary="A vendor's scorecard for a period of UTC days, from the read models",
    tag="vendors",
    response=Scorecard,
    roles=READERS,
    query=SCORECARD_QUERY,
    errors=(401, 403, 404, 422),
)
async def vendor_scorecard(request: web.Request) -> web.Response:
    vendor_id = request.match_info["vendor_id"]
    if not principal(request).may_see(vendor_id):
        raise Problem(404, "not-found", "no such vendor")
    start, end = _period(request)
    pool = request.app[POOL]
    if await get_vendor(pool, vendor_id) is None:
        raise Problem(404, "not-found", "no such vendor")
    rows = await queries.scorecard_rows(pool, vendor_id, start, end)
    return json_response(scorecard_of(vendor_id, start, end, rows))
