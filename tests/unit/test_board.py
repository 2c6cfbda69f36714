"""The board's pure parts: which buttons an issue page offers, charts, the session key."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr

from tests.unit.test_issue_state_machine import ALL_STATUSES, ALLOWED, RULES, T0, issue_in
from tierline.board import charts
from tierline.board.issues import ACTIONS, possible
from tierline.board.render import duration
from tierline.board.session import csrf_token, session_key, session_middleware
from tierline.config import Settings
from tierline.domain.events import Status


@pytest.mark.parametrize("tier", [1, 2, 3])
@pytest.mark.parametrize("status", ALL_STATUSES)
def test_the_buttons_are_exactly_what_the_state_machine_allows(status: Status, tier: int) -> None:
    """The API's transition table, read back through the board: no button that would 409."""
    issue = issue_in(status, tier=tier)
    offered = {a.command.route for a in possible(issue, RULES, T0)}
    expected = {
        a.command.route
        for a in ACTIONS
        if status in ALLOWED[a.command.route]
        and not (a.command.route == "escalate" and tier == RULES.governance.top_tier)
    }
    assert offered == expected


def test_charts_escape_labels_and_state_every_value() -> None:
    svg = str(charts.bar_chart("Escalations", ["<script>x</script>", "Tier 3"], [4, 2]))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    desc = re.search(r"<desc[^>]*>(.*?)</desc>", svg)
    assert desc is not None and "Tier 3: 2" in desc[1]
    assert svg.count("<rect") == 2 and 'role="img"' in svg


def test_line_charts_leave_gaps_and_empty_charts_say_so() -> None:
    line = charts.Series("Compliance", [50.0, None, 100.0])
    svg = str(charts.line_chart("SLA", ["w1", "w2", "w3"], [line], "%"))
    assert svg.count("<circle") == 2 and "w2 no data" in svg and "100%" in svg
    assert "No data in this period" in str(charts.line_chart("SLA", ["w1"], []))
    assert "No data in this period" in str(charts.hbar_chart("Breaches", [], []))
    chart_ids = re.findall(r'id="(chart-[td]\d+)"', svg + str(charts.bar_chart("x", ["a"], [1])))
    assert len(chart_ids) == len(set(chart_ids)), "two charts on one page share an id"


def test_every_api_process_derives_the_same_session_key_and_not_the_secret_key() -> None:
    secret = Fernet.generate_key().decode()
    one = session_key(Settings(secret_key=SecretStr(f"{secret},{Fernet.generate_key().decode()}")))
    two = session_key(Settings(secret_key=SecretStr(secret)))
    assert two.decrypt(one.encrypt(b"session")) == b"session"
    with pytest.raises(InvalidToken):
        Fernet(secret.encode()).decrypt(one.encrypt(b"session"))
    alone = session_key(Settings(secret_key=None))
    with pytest.raises(InvalidToken):
        alone.decrypt(one.encrypt(b"session"))


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "—"), (59, "0 min"), (3600 * 5 + 720, "5 h 12 min"), (-90000, "-1 d 1 h")],
)
def test_durations_read_like_people_write_them(seconds: float | None, shown: str) -> None:
    assert duration(seconds) == shown


@pytest.mark.parametrize(("base_url", "secure"), [(None, False), ("https://gov.example", True)])
async def test_the_cookie_is_secure_behind_tls(
    aiohttp_client: Any, base_url: str | None, secure: bool
) -> None:
    async def touch(request: web.Request) -> web.Response:
        await csrf_token(request)  # a new session: the cookie is set
        return web.Response(text="ok")

    settings = Settings(
        secret_key=SecretStr(Fernet.generate_key().decode()), public_base_url=base_url
    )
    app = web.Application(middlewares=[session_middleware(settings)])
    app.router.add_get("/board/", touch)
    client = await aiohttp_client(app)
    async with client.get("/board/") as resp:
        cookie = resp.cookies["tierline_board"]
    assert bool(cookie["secure"]) is secure
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
