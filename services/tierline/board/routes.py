"""The board's route table and the guard every board page goes through.

Board pages authenticate with the session cookie, not a bearer key: the API's auth middleware
hands them (`tierline_board`) to `guard`, which applies the same rules as the JSON API in the
same order: the request's head is checked (hardening), the signed-in key is looked up (revoked
keys end their sessions at once), its role is checked, the key's rate limit is spent, forms
must be url-encoded and carry the session's CSRF token. Failures render as HTML pages with the
status a problem would have; GET pages without a session redirect to the sign-in page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from tierline.api.hardening import check_body_encoding, check_request_head, unstorable
from tierline.api.keys import KEY_CACHE, RATE_LIMITER
from tierline.api.problems import Problem
from tierline.api.ratelimit import within_limit
from tierline.board import session
from tierline.board.render import render_problem
from tierline.service_layer.issues import Principal

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
READERS = frozenset({"admin", "integration", "vendor", "viewer"})
WRITERS = frozenset({"admin", "integration", "vendor"})
BOARD_PRINCIPAL = session.BOARD_PRINCIPAL
FORM = web.RequestKey("board_form", MultiDictProxy[str])
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class Page:
    """One board route: who may call it (None: anyone, signed in or not)."""

    method: str
    path: str
    handler: Handler
    roles: frozenset[str] | None


class BoardRoutes:
    """Collects the board's pages; `install` adds them to an app."""

    def __init__(self) -> None:
        self.pages: list[Page] = []

    def page(
        self, method: str, path: str, *, roles: frozenset[str] | None
    ) -> Callable[[Handler], Handler]:
        """Register a handler behind the board's guard."""

        def decorate(handler: Handler) -> Handler:
            async def guarded(request: web.Request) -> web.StreamResponse:
                return await guard(request, handler, roles)

            guarded.__name__ = handler.__name__
            guarded.tierline_board = True  # type: ignore[attr-defined]
            self.pages.append(Page(method, path, guarded, roles))
            return handler

        return decorate

    def install(self, app: web.Application) -> None:
        """Add every page to the app's router."""
        for page in self.pages:
            app.router.add_route(page.method, page.path, page.handler)


def principal(request: web.Request) -> Principal:
    """The signed-in key of a page that requires one (the guard has set it)."""
    who: Principal | None = request.get(BOARD_PRINCIPAL)
    if who is None:
        raise Problem(401, "unauthenticated", "sign in first")
    return who


def form(request: web.Request) -> MultiDictProxy[str]:
    """The checked form of a POST (the guard has read it)."""
    return request[FORM]


async def guard(
    request: web.Request, handler: Handler, roles: frozenset[str] | None
) -> web.StreamResponse:
    """Authenticate, authorise, rate-limit and check a board request; errors as HTML pages."""
    try:
        check_request_head(request)
        who = await _signed_in(request)
        if roles is not None and who is None:
            if request.method == "GET":
                return see_other(f"/board/signin?next={quote(request.path_qs, safe='')}")
            raise Problem(401, "unauthenticated", "your session has ended: sign in again")
        if who is not None:
            request[BOARD_PRINCIPAL] = who
            if roles is not None and who.role not in roles:
                raise Problem(403, "forbidden", f"a {who.role} key may not do this")

        async def proceed() -> web.StreamResponse:
            if request.method == "POST":
                request[FORM] = await _checked_form(request)
            return await handler(request)

        if who is None:
            return await proceed()
        return await within_limit(request.app[RATE_LIMITER], who.key_id, proceed)
    except Problem as problem:
        return await render_problem(request, problem)


async def _signed_in(request: web.Request) -> Principal | None:
    digest = await session.signed_in_key_hash(request)
    if digest is None:
        return None
    found = await request.app[KEY_CACHE].find_hash(digest)
    if found is None:  # revoked since: the session ends here
        await session.sign_out(request)
        return None
    return Principal(str(found.id), found.role, found.vendor_id)


async def _checked_form(request: web.Request) -> MultiDictProxy[str]:
    """A url-encoded form with this session's CSRF token and text PostgreSQL can store."""
    check_body_encoding(request)
    if request.content_type != FORM_CONTENT_TYPE:
        raise Problem(415, "unsupported-media-type", f"send the form as {FORM_CONTENT_TYPE}")
    posted = await request.post()
    fields: dict[str, str] = {}
    for name, value in posted.items():
        if not isinstance(value, str) or unstorable(name) or unstorable(value):
            raise Problem(422, "validation-failed", "the form holds text that cannot be stored")
        fields.setdefault(name, value)
    if not await session.csrf_valid(request, fields.get(session.CSRF_FIELD)):
        raise Problem(
            403,
            "csrf-failed",
            "this form is out of date or did not come from this board: reload the page and "
            "try again",
        )
    return MultiDictProxy(MultiDict(fields))


def see_other(location: str) -> web.Response:
    """303 to another board page (returned, not raised, so no middleware rewrites it)."""
    return web.Response(status=303, headers={"Location": location})
