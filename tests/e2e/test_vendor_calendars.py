"""A vendor's inline calendar without a zone counts business hours in the vendor's zone."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

import pytest

from tests.fixtures.api import create_vendor, open_issue
from tests.fixtures.stack import Stack
from tierline.domain.calendar import BusinessCalendar, CalendarSpec

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

KOLKATA = ZoneInfo("Asia/Kolkata")
WORKWEEK = {day: ["09:00", "17:00"] for day in ("mon", "tue", "wed", "thu", "fri")}


def at(text: str) -> datetime:
    """An RFC 3339 timestamp."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_a_kolkata_vendors_deadlines_fall_in_kolkata_business_hours(stack: Stack) -> None:
    async with stack.client() as http:
        created = await create_vendor(
            http, id="globex", name="Globex", timezone="Asia/Kolkata", calendar={"hours": WORKWEEK}
        )
        assert created["calendar"]["timezone"] is None
        assert created["effective_timezone"] == "Asia/Kolkata"
        async with http.get("/v1/vendors/globex") as resp:
            assert resp.status == 200 and resp.headers["ETag"] == '"1"'
            assert (await resp.json())["effective_timezone"] == "Asia/Kolkata"
        async with http.get("/v1/vendors") as resp:
            listed = {v["id"]: v for v in (await resp.json())["items"]}
            assert listed["globex"]["effective_timezone"] == "Asia/Kolkata"
        issue = await open_issue(http, "globex", priority="P3")

    kolkata_hours = BusinessCalendar(CalendarSpec(timezone="Asia/Kolkata", hours=WORKWEEK))
    assert {clock["kind"] for clock in issue["sla"]} == {"respond", "resolve"}
    for clock in issue["sla"]:
        due = at(clock["due_at"])
        local = due.astimezone(KOLKATA)
        assert local.weekday() < 5, f"{clock['kind']} due on a weekend: {local.isoformat()}"
        assert time(9) <= local.time() <= time(17), f"{clock['kind']} due at {local.isoformat()}"
        # Exactly where the target's business seconds run out in Kolkata (5.5 h off in UTC).
        assert due == kolkata_hours.add(at(clock["started_at"]), clock["target_seconds"])
