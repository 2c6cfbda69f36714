"""Rendering board pages: Jinja2 templates (aiohttp-jinja2), security headers, error pages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp_jinja2
import jinja2
from aiohttp import web

from tierline.api.problems import Problem
from tierline.board import session

# Pages carry no inline script or style: everything comes from /board/static/.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
TITLES = {
    400: "Bad request",
    401: "Please sign in",
    403: "Not allowed",
    404: "Not found",
    409: "Not possible now",
    412: "The issue changed",
    413: "Too large",
    414: "Address too long",
    415: "Unsupported form",
    422: "Please check the form",
    429: "Too many requests",
    431: "Headers too large",
    503: "Temporarily unavailable",
}


def setup_templates(app: web.Application) -> None:
    """Templates from the package (they ship in the wheel), autoescaped."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("tierline.board", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = when
    env.filters["duration"] = duration


def when(moment: datetime | None, zone: str = "UTC") -> str:
    """A time as people read it, in a zone: `2026-12-01 14:05 CET`."""
    if moment is None:
        return "—"
    local = moment.astimezone(ZoneInfo(zone))
    return local.strftime("%Y-%m-%d %H:%M ") + (local.tzname() or zone)


def duration(seconds: float | None) -> str:
    """Seconds as `3 d 4 h`, `5 h 12 min` or `45 min`; negative means overdue."""
    if seconds is None:
        return "—"
    sign = "-" if seconds < 0 else ""
    minutes = int(abs(seconds) // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{sign}{days} d {hours} h"
    if hours:
        return f"{sign}{hours} h {mins} min"
    return f"{sign}{mins} min"


async def render(
    request: web.Request,
    template: str,
    context: dict[str, Any],
    status: int = 200,
    *,
    fragment: bool = False,
) -> web.Response:
    """A page with the signed-in key, the CSRF token and any flash message.

    A fragment (the overview's live part, fetched in the background) leaves the flash message
    for the page it was meant for.
    """
    base = {
        "who": request.get(session.BOARD_PRINCIPAL),
        "csrf": await session.csrf_token(request),
        "csrf_field": session.CSRF_FIELD,
        "flash": None if fragment else await session.take_flash(request),
        "now": datetime.now(UTC),
        "path": request.path,
    }
    response = aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status)
    response.headers.update(SECURITY_HEADERS)
    return response


async def render_problem(request: web.Request, problem: Problem) -> web.Response:
    """An error as a page people can read, with the status the JSON API would answer."""
    response = await render(
        request,
        "error.html",
        {
            "status": problem.status,
            "title": TITLES.get(problem.status, "Something went wrong"),
            "detail": problem.detail or problem.kind,
        },
        status=problem.status,
    )
    response.headers.update(problem.headers)
    return response
