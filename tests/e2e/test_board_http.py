"""The board over plain HTTP, as an attacker would use it: cookies, CSRF, revoked keys, media
types, hostile form and query input, rate limits. The browser flows are in tests/browser."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fixtures.board import BoardSession, csrf_in
from tests.fixtures.stack import Stack, stack_on_own_database

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]
RATE, BURST = 5, 40


@pytest.fixture(scope="module")
async def stack(pg_admin_dsn: str, tansu: str) -> AsyncIterator[Stack]:
    """All roles, rate limits on (each test signs in with keys of its own)."""
    overrides = {"rate_limit_rps": RATE, "rate_limit_burst": BURST}
    async with stack_on_own_database(pg_admin_dsn, tansu, **overrides) as running:
        async with running.client() as admin:
            body = {"id": "acme", "name": "Acme", "timezone": "Europe/Berlin"}
            async with admin.post("/v1/vendors", json=body) as resp:
                assert resp.status == 201
        yield running


async def api(stack: Stack, method: str, path: str, **kwargs: Any) -> Any:
    async with stack.client() as admin, admin.request(method, path, **kwargs) as resp:
        assert resp.status < 300, await resp.text()
        return await resp.json()


async def new_issue(stack: Stack) -> str:
    body = {"vendor_id": "acme", "title": "Board HTTP", "category": "quality", "priority": "P3"}
    return str((await api(stack, "POST", "/v1/issues", json=body))["id"])


@pytest.fixture
async def board(stack: Stack) -> AsyncIterator[BoardSession]:
    """A session signed in with an admin key of its own."""
    session = await BoardSession(stack.api_url).start(await stack.new_key("admin"))
    yield session
    await session.close()


async def test_the_session_cookie_is_sealed_http_only_and_same_site_strict(stack: Stack) -> None:
    key = await stack.new_key("admin")
    async with aiohttp.ClientSession(
        stack.api_url, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as http:
        async with http.get("/board/signin") as resp:
            token = csrf_in(await resp.text())
            first = resp.cookies["tierline_board"]
        form = {"csrf_token": token, "api_key": key}
        async with http.post("/board/signin", data=form, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/board/"
            cookie = resp.cookies["tierline_board"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/board/"
    assert not cookie["secure"]  # plain HTTP here; Secure when TIERLINE_PUBLIC_BASE_URL is https
    assert cookie.value != first.value, "signing in starts a new session (no fixation)"
    assert key not in cookie.value and key[3:20] not in cookie.value


async def test_forms_without_this_sessions_csrf_token_change_nothing(
    stack: Stack, board: BoardSession
) -> None:
    issue_id = await new_issue(stack)
    other = await BoardSession(stack.api_url).start(await stack.new_key("admin"))
    path = f"/board/issues/{issue_id}/acknowledge"
    try:
        for token in ("", "forged", other.csrf):
            status, text, _ = await board.send("POST", path, {"version": "1", "csrf_token": token})
            assert status == 403 and "did not come from this board" in text, token
        status, _, _ = await board.send("POST", path, {"version": "1"})
        assert status == 303
    finally:
        await other.close()
    assert (await api(stack, "GET", f"/v1/issues/{issue_id}"))["version"] == 2


async def test_a_revoked_key_ends_its_sessions_at_once(stack: Stack) -> None:
    key = await stack.new_key("integration")
    board = await BoardSession(stack.api_url).start(key)
    issue_id = await new_issue(stack)
    try:
        keys = await api(stack, "GET", "/v1/api-keys")
        (mine,) = [k["id"] for k in keys["items"] if k["prefix"] == key[:10]]
        async with stack.client() as admin, admin.delete(f"/v1/api-keys/{mine}") as resp:
            assert resp.status == 204
        status, _, headers = await board.send("GET", "/board/")
        assert status == 303 and "Location: /board/signin" in headers
        path = f"/board/issues/{issue_id}/acknowledge"
        status, _, _ = await board.send("POST", path, {"version": "1"})
        assert status == 401
    finally:
        await board.close()
    assert (await api(stack, "GET", f"/v1/issues/{issue_id}"))["version"] == 1


async def test_a_tampered_cookie_is_no_session(stack: Stack, board: BoardSession) -> None:
    sealed = {cookie.key: cookie.value for cookie in board.http.cookie_jar}
    assert "tierline_board" in sealed
    status, _, _ = await board.send("GET", "/board/")
    assert status == 200, "the untouched cookie is a session"
    board.http.cookie_jar.clear()
    tampered = sealed["tierline_board"][:-6] + "AAAAAA"
    board.http.cookie_jar.update_cookies({"tierline_board": tampered})
    status, _, headers = await board.send("GET", "/board/")
    assert status == 303 and "/board/signin" in headers


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Content-Type": "application/json"}, b'{"version": "1"}'),
        ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x--\r\n"),
        (
            {"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"},
            b"\x1f\x8b",
        ),
    ],
)
async def test_board_forms_must_be_plain_url_encoded(
    stack: Stack, board: BoardSession, headers: dict[str, str], body: bytes
) -> None:
    issue_id = await new_issue(stack)
    async with board.http.post(
        f"/board/issues/{issue_id}/acknowledge", data=body, headers=headers
    ) as resp:
        assert resp.status == 415
        assert resp.content_type == "text/html"
    assert (await api(stack, "GET", f"/v1/issues/{issue_id}"))["version"] == 1


async def test_hostile_input_is_answered_without_a_5xx(stack: Stack, board: BoardSession) -> None:
    issue_id = await new_issue(stack)
    act = f"/board/issues/{issue_id}"
    cases: list[tuple[str, str, dict[str, str] | None, int]] = [
        ("POST", f"{act}/escalate", {"version": "1", "reason": "nul\x00byte"}, 422),
        ("POST", f"{act}/escalate", {"version": "1", "reason": ""}, 422),
        ("POST", f"{act}/escalate", {"version": "1", "reason": "x" * 5000}, 422),
        ("POST", f"{act}/escalate", {"version": "one", "reason": "why"}, 400),
        ("POST", f"{act}/escalate", {"version": "9" * 40, "reason": "why"}, 400),
        ("POST", f"{act}/escalate", {"reason": "no version"}, 400),
        ("POST", f"{act}/resume", {"version": "1"}, 409),
        ("POST", f"{act}/escalate", {"version": "7", "reason": "stale"}, 412),
        ("POST", "/board/issues/not-an-issue/acknowledge", {"version": "1"}, 404),
        ("GET", "/board/?category=nope", None, 422),
        ("GET", "/board/?priority=P9", None, 422),
        ("GET", "/board/?vendor=%00", None, 422),
        ("GET", "/board/live/overview?vendor=ghost", None, 422),
        ("GET", "/board/vendors/acme?from=2026-13-01", None, 422),
        ("GET", "/board/vendors/acme?from=2026-02-01&to=2026-01-01", None, 422),
        ("GET", "/board/vendors/acme?from=2000-01-01&to=2026-01-01", None, 422),
        ("GET", "/board/vendors/acme/report?month=12-2026", None, 422),
        ("GET", "/board/vendors/%F0%9F%92%A5", None, 404),
        ("GET", "/board/static/..%2F..%2Fconfig.py", None, 404),
        ("GET", "/board/static/board.py", None, 404),
        ("GET", "/board/" + "x" * 9000, None, 414),
    ]
    for method, path, form, expected in cases:
        status, text, _ = await board.send(method, path, form)
        assert status == expected, f"{method} {path[:80]} {form}: {status} {text[:300]}"
        assert "Traceback" not in text
    issue = await api(stack, "GET", f"/v1/issues/{issue_id}")
    assert issue["version"] == 1 and issue["tier"] == 1


async def test_sign_in_refuses_wrong_keys_and_foreign_redirects(stack: Stack) -> None:
    board = await BoardSession(stack.api_url).start(None)
    try:
        for key in ("", "tl_wrong", "x" * 5000):
            status, text, _ = await board.send("POST", "/board/signin", {"api_key": key})
            assert status == 401 and "Unknown or revoked API key" in text
        key = await stack.new_key("viewer")
        for target in (
            "//evil.example/",
            "https://evil.example/board/",
            "/v1/api-keys",
            "/board\\",
        ):
            fresh = await BoardSession(stack.api_url).start(None)
            try:
                form = {"api_key": key, "next": target}
                status, _, headers = await fresh.send("POST", "/board/signin", form)
                assert status == 303 and "Location: /board/\n" in headers + "\n", target
            finally:
                await fresh.close()
    finally:
        await board.close()


async def test_board_requests_spend_the_keys_rate_limit(stack: Stack) -> None:
    key = await stack.new_key("viewer")
    board = await BoardSession(stack.api_url).start(key)
    try:
        first = (await board.send("GET", "/board/live/overview"))[0]
        many = [board.send("GET", "/board/live/overview") for _ in range(BURST + 20)]
        answers = [first] + [status for status, _, _ in await asyncio.gather(*many)]
    finally:
        await board.close()
    assert 429 in answers and answers[0] == 200
    # The same bucket as the key's JSON API calls: far from full there too.
    async with stack.client(key) as http, http.get("/v1/vendors") as resp:
        remaining = int(resp.headers["RateLimit"].split("r=")[1].split(";")[0])
    assert remaining < BURST // 2, resp.headers["RateLimit"]


async def test_pages_carry_a_strict_content_security_policy(board: BoardSession) -> None:
    status, text, headers = await board.send("GET", "/board/")
    assert status == 200
    assert "Content-Security-Policy: default-src 'none'; script-src 'self'" in headers
    assert "Cache-Control: no-store" in headers
    assert "<script>" not in text and " style=" not in text


async def test_the_live_overview_leaves_the_message_for_the_page_it_was_meant_for(
    stack: Stack, board: BoardSession
) -> None:
    issue_id = await new_issue(stack)
    path = f"/board/issues/{issue_id}"
    status, _, headers = await board.send("POST", f"{path}/acknowledge", {"version": "1"})
    assert status == 303 and f"Location: {path}" in headers
    assert (await board.send("GET", "/board/live/overview"))[0] == 200  # another tab polls
    status, text, _ = await board.send("GET", path)
    assert status == 200 and "Acknowledged." in text
    status, text, _ = await board.send("GET", path)
    assert "Acknowledged." not in text, "a message is shown once"
