"""The board's read-only pages: sign-in, overview (and its live part), vendors, the report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from importlib import resources
from typing import Any, get_args
from urllib.parse import urlencode

from aiohttp import web

from tierline.api.keys import KEY_CACHE, POOL, SETTINGS
from tierline.api.problems import Problem
from tierline.board import charts, queries, session
from tierline.board.render import render
from tierline.board.routes import READERS, BoardRoutes, form, principal, see_other
from tierline.domain.events import Category
from tierline.domain.governance import PRIORITIES, Governance
from tierline.projector import queries as read_models
from tierline.projector.api import Scorecard, scorecard_of
from tierline.service_layer.issues import Principal
from tierline.store.vendors import current_governance, get_vendor, list_vendors

board = BoardRoutes()
CATEGORIES: tuple[str, ...] = get_args(Category)
STATUSES = read_models.OPEN_STATUSES
RECENT = timedelta(days=7)
DEFAULT_WEEKS = 8
MAX_PERIOD_DAYS = 366
# A clock this close to its due time (as a share of its target) is shown as a warning.
WARN_SHARE = 0.25
STATIC_TYPES = {
    "board.css": "text/css",
    "board.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}


@board.page("GET", "/board", roles=None)
async def board_root(request: web.Request) -> web.StreamResponse:
    return see_other("/board/")


@board.page("GET", "/board/static/{name}", roles=None)
async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    content_type = STATIC_TYPES.get(name)
    if content_type is None:
        raise Problem(404, "not-found", "no such file")
    body = resources.files("tierline.board").joinpath("static", name).read_bytes()
    return web.Response(
        body=body,
        content_type=content_type,
        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@board.page("GET", "/board/signin", roles=None)
async def signin_form(request: web.Request) -> web.StreamResponse:
    if request.get(session.BOARD_PRINCIPAL) is not None:
        return see_other("/board/")
    signed_out = request.query.get("signed_out") == "1"
    return await render(
        request, "signin.html", {"next": _next(request.query.get("next")), "signed_out": signed_out}
    )


@board.page("POST", "/board/signin", roles=None)
async def signin(request: web.Request) -> web.StreamResponse:
    fields = form(request)
    key = fields.get("api_key", "").strip()
    target = _next(fields.get("next"))
    found = await request.app[KEY_CACHE].find(key) if key else None
    if found is None:
        context = {"next": target, "signed_out": False, "error": "Unknown or revoked API key."}
        return await render(request, "signin.html", context, status=401)
    await session.sign_in(request, key)
    return see_other(target)


@board.page("POST", "/board/signout", roles=READERS)
async def signout(request: web.Request) -> web.StreamResponse:
    await session.sign_out(request)
    return see_other("/board/signin?signed_out=1")


def _next(raw: str | None) -> str:
    """Where to go after signing in: a board page of this site, never elsewhere."""
    if raw and raw.startswith("/board/") and "//" not in raw and "\\" not in raw:
        return raw
    return "/board/"


# --- overview -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choices:
    """The overview's filter form: what may be chosen and what is."""

    vendors: list[tuple[str, str]]
    vendor: str
    category: str
    priority: str

    def query(self) -> str:
        """The filters as a query string (for the live refresh)."""
        chosen = {k: v for k, v in self._chosen().items() if v}
        return "?" + urlencode(chosen) if chosen else ""

    def _chosen(self) -> dict[str, str]:
        return {"vendor": self.vendor, "category": self.category, "priority": self.priority}


async def _visible_vendors(request: web.Request, who: Principal) -> list[tuple[str, str]]:
    vendors = await list_vendors(request.app[POOL])
    return [(v.id, v.name) for v in vendors if who.may_see(v.id)]


def _choice(request: web.Request, name: str, allowed: tuple[str, ...]) -> str:
    value = request.query.get(name, "")
    if value and value not in allowed:
        raise Problem(422, "validation-failed", f"unknown {name} {value[:60]!r}")
    return value


async def _choices(request: web.Request, who: Principal) -> Choices:
    vendors = await _visible_vendors(request, who)
    vendor = _choice(request, "vendor", tuple(v for v, _ in vendors))
    return Choices(
        vendors=vendors,
        vendor=vendor,
        category=_choice(request, "category", CATEGORIES),
        priority=_choice(request, "priority", PRIORITIES),
    )


def _filter(who: Principal, chosen: Choices) -> queries.OverviewFilter:
    if chosen.vendor:
        vendor_ids: tuple[str, ...] | None = (chosen.vendor,)
    elif who.role == "vendor":
        vendor_ids = (who.vendor_id or "",)
    else:
        vendor_ids = None
    return queries.OverviewFilter(
        vendor_ids=vendor_ids,
        categories=(chosen.category,) if chosen.category else None,
        priorities=(chosen.priority,) if chosen.priority else None,
    )


def _risk(row: Any, now: datetime) -> dict[str, Any]:
    left = (row["due_at"] - now).total_seconds()
    if row["state"] == "breached" or left <= 0:
        badge = "breached"
    elif row["warned"] or left <= WARN_SHARE * row["target_seconds"]:
        badge = "warning"
    else:
        badge = "on track"
    return {**dict(row), "left": left, "badge": badge}


async def _overview_context(request: web.Request) -> dict[str, Any]:
    who = principal(request)
    chosen = await _choices(request, who)
    now = datetime.now(UTC)
    rows = await queries.overview_rows(request.app[POOL], _filter(who, chosen), now - RECENT)
    _, governance = await current_governance(request.app[POOL])
    counts = {(r["tier"], r["status"]): r["count"] for r in rows.by_tier_status}
    tiers = [
        {
            "level": t.level,
            "name": t.name,
            "owner": t.owner,
            "counts": [counts.get((t.level, s), 0) for s in STATUSES],
            "total": sum(counts.get((t.level, s), 0) for s in STATUSES),
        }
        for t in governance.tiers
    ]
    return {
        "chosen": chosen,
        "categories": CATEGORIES,
        "priorities": PRIORITIES,
        "statuses": STATUSES,
        "tiers": tiers,
        "open_total": sum(counts.values()),
        "at_risk": [_risk(r, now) for r in rows.at_risk],
        "breaches": rows.breaches,
        "escalations": rows.escalations,
        "refresh_ms": int(request.app[SETTINGS].board_refresh_seconds * 1000),
    }


@board.page("GET", "/board/", roles=READERS)
async def overview(request: web.Request) -> web.StreamResponse:
    return await render(request, "overview.html", await _overview_context(request))


@board.page("GET", "/board/live/overview", roles=READERS)
async def overview_live(request: web.Request) -> web.StreamResponse:
    """The overview's figures alone, fetched every few seconds by board.js."""
    context = await _overview_context(request)
    return await render(request, "overview_live.html", context, fragment=True)


# --- vendors --------------------------------------------------------------------------------


@board.page("GET", "/board/vendors", roles=READERS)
async def vendors(request: web.Request) -> web.StreamResponse:
    listed = await _visible_vendors(request, principal(request))
    return await render(request, "vendors.html", {"vendors": listed})


async def _vendor(request: web.Request) -> tuple[Any, Governance]:
    vendor_id = request.match_info["vendor_id"]
    vendor = await get_vendor(request.app[POOL], vendor_id)
    if vendor is None or not principal(request).may_see(vendor_id):
        raise Problem(404, "not-found", "no such vendor")
    _, governance = await current_governance(request.app[POOL])
    return vendor, governance


def _day(request: web.Request, name: str, default: date) -> date:
    raw = request.query.get(name, "")
    if not raw:
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise Problem(422, "validation-failed", f"{name}: use a date such as 2026-11-30") from None


def _period(request: web.Request) -> tuple[date, date]:
    end = _day(request, "to", datetime.now(UTC).date())
    start = _day(request, "from", end - timedelta(weeks=DEFAULT_WEEKS) + timedelta(days=1))
    if start > end:
        raise Problem(422, "validation-failed", "the period must not end before it starts")
    if (end - start).days >= MAX_PERIOD_DAYS:
        raise Problem(422, "validation-failed", f"the period is limited to {MAX_PERIOD_DAYS} days")
    return start, end


async def _figures(
    request: web.Request, vendor_id: str, start: date, end: date
) -> tuple[Scorecard, dict[str, Any]]:
    """The scorecard and the four charts of a vendor for the days `start`..`end`."""
    pool = request.app[POOL]
    since, until = read_models.day_bounds(start, end)
    card = scorecard_of(
        vendor_id, start, end, await read_models.scorecard_rows(pool, vendor_id, start, end)
    )
    series = await queries.vendor_series(pool, vendor_id, start, end, since, until)
    weeks = [w["week"].strftime("%d %b") for w in series.weeks]
    compliance = [
        100 * w["clocks_met"] / (w["clocks_met"] + w["breaches"])
        if w["clocks_met"] + w["breaches"]
        else None
        for w in series.weeks
    ]
    mtta = [
        w["ack_seconds"] / w["acknowledged"] / 3600 if w["acknowledged"] else None
        for w in series.weeks
    ]
    mttr = [
        w["resolve_seconds"] / w["resolved"] / 3600 if w["resolved"] else None for w in series.weeks
    ]
    tiers = sorted(card.escalations_by_tier.items(), key=lambda kv: int(kv[0]))
    drawn = {
        "compliance": charts.line_chart(
            "SLA compliance per week", weeks, [charts.Series("Compliance", compliance)], "%"
        ),
        "times": charts.line_chart(
            "Mean time to acknowledge and to resolve, per week (hours)",
            weeks,
            [charts.Series("MTTA", mtta), charts.Series("MTTR", mttr)],
            "h",
        ),
        "categories": charts.hbar_chart(
            "Breaches by category",
            [r["category"].replace("_", " ") for r in series.breaches_by_category],
            [r["count"] for r in series.breaches_by_category],
        ),
        "tiers": charts.bar_chart(
            "Escalations by tier reached",
            [f"Tier {tier}" for tier, _ in tiers],
            [count for _, count in tiers],
        ),
    }
    return card, drawn


@board.page("GET", "/board/vendors/{vendor_id}", roles=READERS)
async def vendor_page(request: web.Request) -> web.StreamResponse:
    vendor, governance = await _vendor(request)
    start, end = _period(request)
    card, drawn = await _figures(request, vendor.id, start, end)
    return await render(
        request,
        "vendor.html",
        {
            "vendor": vendor,
            "zone": vendor.effective_timezone(governance),
            "card": card,
            "charts": drawn,
            "month": end.strftime("%Y-%m"),
        },
    )


def _month(request: web.Request) -> date:
    raw = request.query.get("month", "")
    if not raw:
        return datetime.now(UTC).date().replace(day=1)
    try:
        return datetime.strptime(raw, "%Y-%m").date()
    except ValueError:
        raise Problem(422, "validation-failed", "month: use YYYY-MM, such as 2026-11") from None


@board.page("GET", "/board/vendors/{vendor_id}/report", roles=READERS)
async def report(request: web.Request) -> web.StreamResponse:
    """The steering committee's monthly report: printable, charts included."""
    vendor, governance = await _vendor(request)
    first = _month(request)
    following = (first + timedelta(days=32)).replace(day=1)
    card, drawn = await _figures(request, vendor.id, first, following - timedelta(days=1))
    since = datetime.combine(first, time(), tzinfo=UTC)
    until = datetime.combine(following, time(), tzinfo=UTC)
    pool = request.app[POOL]
    return await render(
        request,
        "report.html",
        {
            "vendor": vendor,
            "zone": vendor.effective_timezone(governance),
            "month": first,
            "card": card,
            "charts": drawn,
            "top_tier": governance.top_tier,
            "top_escalations": await queries.escalations_to_tier(
                pool, vendor.id, governance.top_tier, since, until
            ),
            "open_breaches": await queries.open_breaches(pool, vendor.id),
        },
    )
