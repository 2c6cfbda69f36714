"""PATCH /v1/vendors/{id} on the real stack: versions, problems, the event, recomputed clocks."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest

from tests.fixtures.api import create_vendor, open_issue
from tests.fixtures.stack import Stack

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

KOLKATA = ZoneInfo("Asia/Kolkata")
# Every day 08:00-20:00 in the vendor's zone (the calendar names none): a holiday takes out
# exactly one day, so a deadline behind it moves by exactly 24 hours.
EVERY_DAY = {
    "hours": {day: ["08:00", "20:00"] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
}
GOVERNANCE_EVENTS = (
    "SELECT type, data::text FROM events WHERE stream_id = 'governance' ORDER BY version"
)


def at(text: str) -> datetime:
    """An RFC 3339 timestamp."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def request(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], str | None]:
    """Status, JSON body and ETag of one call."""
    async with http.request(method, path, json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers.get("ETag")


def by_kind(issue: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's clocks by kind."""
    return {clock["kind"]: clock for clock in issue["sla"]}


async def until_moved(
    http: aiohttp.ClientSession, issue_id: str, due_at: str, timeout: float = 60.0
) -> dict[str, Any]:
    """Poll the issue until its resolve deadline differs from `due_at`."""
    deadline = time.monotonic() + timeout
    while True:
        _, issue, _ = await request(http, "GET", f"/v1/issues/{issue_id}")
        if by_kind(issue)["resolve"]["due_at"] != due_at or time.monotonic() > deadline:
            return issue
        await asyncio.sleep(0.1)


async def test_a_new_holiday_moves_running_deadlines_by_that_day(stack: Stack) -> None:
    async with stack.client() as http:
        await create_vendor(
            http, id="globex", name="Globex", timezone="Asia/Kolkata", calendar=EVERY_DAY
        )
        await create_vendor(
            http, id="initech", name="Initech", timezone="Asia/Kolkata", calendar=EVERY_DAY
        )
        issue = await open_issue(http, "globex", priority="P3")
        bystander = await open_issue(http, "initech", priority="P3")
        before = by_kind(issue)
        # 72 business hours are six 12-hour days; the respond deadline (8 h) is a day out at
        # most, so a holiday two days before the resolve deadline moves only that one.
        holiday = (at(before["resolve"]["due_at"]).astimezone(KOLKATA) - timedelta(days=2)).date()
        assert holiday > at(before["respond"]["due_at"]).astimezone(KOLKATA).date()

        status, vendor, etag = await request(http, "GET", "/v1/vendors/globex")
        assert status == 200 and etag == '"1"' and vendor["version"] == 1
        status, vendor, etag = await request(
            http,
            "PATCH",
            "/v1/vendors/globex",
            {"holidays": [holiday.isoformat()]},
            headers={"If-Match": '"1"'},
        )
        assert status == 200, vendor
        assert etag == '"2"' and vendor["version"] == 2
        assert vendor["calendar"]["holidays"] == [holiday.isoformat()]
        assert vendor["calendar"]["hours"] == EVERY_DAY["hours"]
        assert vendor["calendar"]["timezone"] is None
        assert vendor["effective_timezone"] == "Asia/Kolkata"

        after = await until_moved(http, issue["id"], before["resolve"]["due_at"])
        moved = by_kind(after)
        assert at(moved["resolve"]["due_at"]) - at(before["resolve"]["due_at"]) == timedelta(days=1)
        assert moved["respond"] == before["respond"]
        for kind in ("respond", "resolve"):
            unchanged = (
                "state",
                "tier",
                "started_at",
                "target_seconds",
                "elapsed_seconds",
                "warned",
            )
            assert {k: moved[kind][k] for k in unchanged} == {k: before[kind][k] for k in unchanged}
        for field in ("status", "tier", "priority", "assignee", "title"):
            assert after[field] == issue[field], field

        # Only that vendor's issues are recomputed.
        _, other, _ = await request(http, "GET", f"/v1/issues/{bystander['id']}")
        assert other["version"] == 1 and other["sla"] == bystander["sla"]

    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        rows = await conn.fetch(GOVERNANCE_EVENTS)
    finally:
        await conn.close()
    changes = [json.loads(data) for kind, data in rows if kind.endswith(".vendor_changed.v1")]
    assert len(changes) == 1
    assert changes[0]["vendor_id"] == "globex" and changes[0]["vendor_version"] == 2
    assert changes[0]["vendor"]["calendar"]["holidays"] == [holiday.isoformat()]


async def test_vendor_patch_problems(stack: Stack) -> None:
    async with stack.client() as http:
        await create_vendor(http, id="globex", name="Globex", timezone="Asia/Kolkata")
        status, body, etag = await request(
            http, "PATCH", "/v1/vendors/globex", {"name": "Globex India"}, {"If-Match": '"1"'}
        )
        assert status == 200 and etag == '"2"' and body["name"] == "Globex India"

        status, body, _ = await request(
            http, "PATCH", "/v1/vendors/globex", {"name": "Stale"}, {"If-Match": '"1"'}
        )
        assert status == 412 and body["type"].endswith("/precondition-failed")
        assert body["current_version"] == 2

        status, body, _ = await request(
            http, "PATCH", "/v1/vendors/globex", {"timezone": "Mars/Olympus_Mons"}
        )
        assert status == 422 and body["type"].endswith("/validation-failed")
        assert [e["pointer"] for e in body["errors"]] == ["#/timezone"]

        bad_hours = {"calendar": {"hours": {"mon": ["17:00", "09:00"]}}}
        status, body, _ = await request(http, "PATCH", "/v1/vendors/globex", bad_hours)
        assert status == 422
        assert all(e["pointer"].startswith("#/calendar") for e in body["errors"]), body

        no_hours = {"calendar": {"hours": {"mon": []}}}
        status, body, _ = await request(http, "PATCH", "/v1/vendors/globex", no_hours)
        assert status == 422 and [e["pointer"] for e in body["errors"]] == ["#/calendar"]

        status, body, _ = await request(http, "PATCH", "/v1/vendors/nobody", {"name": "x"})
        assert status == 404 and body["type"].endswith("/not-found")

        status, body, etag = await request(http, "GET", "/v1/vendors/globex")
        assert etag == '"2"' and body["name"] == "Globex India", "refused changes changed nothing"

    for key in (await stack.new_key("viewer"), await stack.new_key("vendor", "globex")):
        async with stack.client(key) as http:
            status, body, _ = await request(http, "PATCH", "/v1/vendors/globex", {"name": "Mine"})
            assert status == 403 and body["type"].endswith("/forbidden")
