"""SLA clocks end to end: HTTP API, relay, Kafka (Tansu) and SLA workers, with PT2S policies."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.fixtures.stack import Stack, running_stack, stack_settings
from tierline.devstack.process import ManagedProcess

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

ROLES = ["api", "relay", "sla"]
CONSUMED_GOVERNANCE = """
SELECT 1 FROM consumer_stream_versions WHERE consumer = 'sla' AND stream_id = 'governance'
"""
TIERS = [
    {"level": 1, "name": "Operational", "owner": "service delivery managers"},
    {"level": 2, "name": "Tactical", "owner": "vendor management office"},
    {"level": 3, "name": "Strategic", "owner": "executive steering committee"},
]


def sla(tier: int, priority: str, respond: str, resolve: str, **kw: Any) -> dict[str, Any]:
    """One row of the SLA table."""
    return {
        "tier": tier,
        "priority": priority,
        "respond_within": respond,
        "resolve_within": resolve,
        **kw,
    }


GOVERNANCE = {
    "tiers": TIERS,
    "sla": [
        *(sla(t, "P1", "PT2S", "PT60S", warn_at=[0.5], auto_escalate=True) for t in (1, 2, 3)),
        *(sla(t, "P2", "PT3S", "PT6S", warn_at=[], auto_escalate=False) for t in (1, 2, 3)),
        *(sla(t, "P3", "PT30S", "PT60S", warn_at=[], auto_escalate=False) for t in (1, 2, 3)),
    ],
}


@asynccontextmanager
async def sla_stack(
    database_url: str, tansu: str, topic: str, roles: list[str] = ROLES
) -> AsyncIterator[tuple[Stack, aiohttp.ClientSession]]:
    """The roles running, a vendor `acme`, the second-scale governance, and an admin client."""
    settings = stack_settings(database_url, tansu, topic)
    async with running_stack(settings, roles=roles) as stack, stack.client() as http:
        await call(http, "POST", "/v1/vendors", {"id": "acme", "name": "Acme", "timezone": "UTC"})
        await call(http, "PUT", "/v1/governance", GOVERNANCE)
        if "sla" in roles:
            await consumed_governance(database_url)
        yield stack, http


async def consumed_governance(database_url: str, timeout: float = 30.0) -> None:
    """Wait until the SLA consumer has read the policy change: it is assigned and caught up."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while not await conn.fetchval(CONSUMED_GOVERNANCE):
            assert time.monotonic() < deadline, "the SLA consumer never read the policy change"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def call(http: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> Any:
    """One API call that must succeed; returns the JSON body."""
    async with http.request(method, path, json=body) as resp:
        payload = await resp.json()
        assert resp.status < 300, (method, path, resp.status, payload)
        return payload


async def open_issue(http: aiohttp.ClientSession, priority: str) -> dict[str, Any]:
    """Open an issue against acme."""
    body = {"vendor_id": "acme", "title": "t", "category": "service_delivery", "priority": priority}
    issue: dict[str, Any] = await call(http, "POST", "/v1/issues", body)
    return issue


Events = list[tuple[str, dict[str, Any], datetime]]


async def history(http: aiohttp.ClientSession, issue_id: str) -> Events:
    """(event name, data, time) of the issue's events, in order."""
    page = await call(http, "GET", f"/v1/issues/{issue_id}/events")
    return [(item["type"].split(".")[-2], item["data"], at(item["time"])) for item in page["items"]]


def names(events: Events) -> list[str]:
    """Just the event names."""
    return [event[0] for event in events]


async def wait_for(
    http: aiohttp.ClientSession,
    issue_id: str,
    done: Callable[[Events], bool],
    timeout: float = 30.0,
) -> Events:
    """Poll the issue's history until `done` holds; the timeout only bounds a failing test."""
    deadline = time.monotonic() + timeout
    while True:
        events = await history(http, issue_id)
        if done(events) or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.1)


def at(text: str) -> datetime:
    """An RFC 3339 timestamp."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def clock(events: Events, index: int, clock_id: str) -> dict[str, Any]:
    """A clock as the event at `index` left it."""
    return next(k for k in events[index][1]["clocks"] if k["id"] == clock_id)


async def check_escalation_ladder(http: aiohttp.ClientSession) -> None:
    """P1 warns, breaches and escalates automatically, tier after tier, up to the top."""
    issue = await open_issue(http, "P1")
    events = await wait_for(http, issue["id"], lambda ev: names(ev).count("sla_breached") >= 3)
    cycle = ["sla_warning", "sla_breached", "escalated"]
    assert names(events) == ["opened", *cycle, *cycle, "sla_warning", "sla_breached"]
    for name, data, _ in events:
        if name == "escalated":
            assert data["automatic"] is True and data["to_tier"] == data["from_tier"] + 1
        if name in ("sla_warning", "sla_breached"):
            assert data["kind"] == "respond"
    breaches = [data for name, data, _ in events if name == "sla_breached"]
    assert [b["tier"] for b in breaches] == [1, 2, 3]
    for breach in breaches:
        assert at(breach["breached_at"]) >= at(breach["due_at"])
    warnings = [data for name, data, _ in events if name == "sla_warning"]
    assert [w["threshold"] for w in warnings] == [0.5, 0.5, 0.5]

    current = await call(http, "GET", f"/v1/issues/{issue['id']}")
    assert current["tier"] == 3 and current["status"] == "open"
    by_id = {k["id"]: k for k in current["sla"]}
    assert by_id["respond-3"]["state"] == "breached" and by_id["respond-3"]["breached_at"]
    assert by_id["resolve-3"]["state"] == "running" and by_id["resolve-3"]["tier"] == 3
    assert by_id["respond-1"]["state"] == "breached" and by_id["resolve-1"]["state"] == "stopped"
    # At the top tier the breach is recorded and nothing moves.
    await asyncio.sleep(1.5)
    assert names(await history(http, issue["id"])) == names(events)


async def check_hold(http: aiohttp.ClientSession) -> None:
    """Hold pauses: no breach while held; resume keeps the elapsed time."""
    issue = await open_issue(http, "P2")
    await asyncio.sleep(1.0)
    await call(http, "POST", f"/v1/issues/{issue['id']}/hold", {"reason": "vendor asked"})
    await asyncio.sleep(3.0)  # beyond the original 3 s deadline
    assert "sla_breached" not in names(await history(http, issue["id"]))
    await call(http, "POST", f"/v1/issues/{issue['id']}/resume", {})
    events = await wait_for(http, issue["id"], lambda ev: "sla_breached" in names(ev))
    assert names(events)[:4] == ["opened", "put_on_hold", "resumed", "sla_breached"]
    opened, held, resumed = (clock(events, i, "respond-1") for i in range(3))
    assert held["state"] == "paused" and held["due_at"] is None
    # Kept across the hold: exactly the time that ran between opening and hold (24x7).
    ran = (events[1][2] - events[0][2]).total_seconds()
    assert held["elapsed_seconds"] == pytest.approx(ran, abs=1e-6)
    assert resumed["elapsed_seconds"] == held["elapsed_seconds"]
    assert at(resumed["running_since"]) == events[2][2]
    remaining = timedelta(seconds=3 - held["elapsed_seconds"])
    due = at(resumed["due_at"])
    assert abs(due - (events[2][2] + remaining)) < timedelta(milliseconds=1)
    assert opened["due_at"] is not None and due > at(opened["due_at"])
    breach = events[3][1]
    assert breach["clock_id"] == "respond-1"
    assert at(breach["due_at"]) == at(resumed["due_at"])


async def check_priority_change(http: aiohttp.ClientSession) -> None:
    """A priority change keeps the elapsed time: the new target counts from the opening."""
    issue = await open_issue(http, "P3")
    await asyncio.sleep(0.5)
    await call(http, "POST", f"/v1/issues/{issue['id']}/priority", {"priority": "P2"})
    events = await wait_for(http, issue["id"], lambda ev: "sla_breached" in names(ev))
    assert names(events)[:3] == ["opened", "priority_changed", "sla_breached"]
    opened, changed = clock(events, 0, "respond-1"), clock(events, 1, "respond-1")
    assert changed["target_seconds"] == 3 and changed["elapsed_seconds"] > 0
    expected_due = at(opened["started_at"]) + timedelta(seconds=3)
    assert abs(at(changed["due_at"]) - expected_due) < timedelta(milliseconds=1)


async def check_acknowledge(http: aiohttp.ClientSession) -> None:
    """Acknowledging stops the respond clock as met; the resolve clock still breaches."""
    issue = await open_issue(http, "P2")
    await call(http, "POST", f"/v1/issues/{issue['id']}/acknowledge", {"note": "on it"})
    events = await wait_for(http, issue["id"], lambda ev: "sla_breached" in names(ev))
    assert names(events)[:3] == ["opened", "acknowledged", "sla_breached"]
    assert clock(events, 1, "respond-1")["state"] == "met"
    assert events[2][1]["kind"] == "resolve" and events[2][1]["clock_id"] == "resolve-1"
    assert names(events).count("sla_breached") == 1


async def test_escalation_hold_priority_change_and_acknowledge(
    database_url: str, tansu: str, topic: str
) -> None:
    # One stack for the four stories: starting one costs seconds of consumer-group joining.
    async with sla_stack(database_url, tansu, topic) as (_, http):
        await asyncio.gather(
            check_escalation_ladder(http),
            check_hold(http),
            check_priority_change(http),
            check_acknowledge(http),
        )


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll a condition; the timeout only bounds a failing test."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def until_rows(database_url: str, count: int, timeout: float = 30.0) -> None:
    """Wait until the clock table holds `count` rows."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while await conn.fetchval("SELECT count(*) FROM sla_clocks") < count:
            assert time.monotonic() < deadline, "the clock rows never appeared"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


def sla_worker(stack: Stack, name: str) -> ManagedProcess:
    """`tierline sla` as a separate process on the stack's database and topic."""
    s = stack.settings
    env = {
        **os.environ,
        "TIERLINE_DATABASE_URL": s.database_url,
        "TIERLINE_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "TIERLINE_KAFKA_TOPIC": s.kafka_topic,
        "TIERLINE_KAFKA_PARTITIONS": str(s.kafka_partitions),
        "TIERLINE_KAFKA_IDEMPOTENCE": "false",
        "TIERLINE_DB_POOL_MAX": "6",
        "TIERLINE_METRICS_PORT": "0",
    }
    argv = [sys.executable, "-m", "tierline.cli", "sla"]
    return ManagedProcess(name, argv, env=env, forward=False, stop_signal=signal.SIGKILL)


async def test_two_workers_and_a_killed_one_record_each_breach_once(
    database_url: str, tansu: str, topic: str
) -> None:
    async with sla_stack(database_url, tansu, topic, roles=["api", "relay"]) as (stack, http):
        doomed, survivor = sla_worker(stack, "doomed"), sla_worker(stack, "survivor")
        try:
            # Started together, they join the consumer group in one rebalance.
            doomed.start()
            survivor.start()
            both = (doomed, survivor)
            await until(lambda: all("consumer_assigned" in w.tail() or not w.alive() for w in both))
            assert all("consumer_assigned" in w.tail() for w in both), doomed.tail()
            await consumed_governance(database_url)
            issues = []
            for _ in range(30):  # due times spread over a second, so both workers get some
                issues.append(await open_issue(http, "P2"))
                await asyncio.sleep(0.03)
            await until_rows(database_url, 60)
            # Respond clocks fall due 3 s after opening; kill one worker half-way through,
            # with whatever it claimed then still leased to it.
            dues = sorted(at(issue["sla"][0]["due_at"]) for issue in issues)
            kill_at = dues[len(dues) // 2]
            await asyncio.sleep(max(0.0, (kill_at - datetime.now(UTC)).total_seconds()))
            doomed.stop()

            async def breaches(issue_id: str) -> Counter[str]:
                events = await wait_for(
                    http, issue_id, lambda ev: names(ev).count("sla_breached") >= 2, timeout=40
                )
                return Counter(d["clock_id"] for n, d, _ in events if n == "sla_breached")

            results = await asyncio.gather(*(breaches(issue["id"]) for issue in issues))
        finally:
            doomed.stop()
            survivor.stop()
        assert all(result == Counter({"respond-1": 1, "resolve-1": 1}) for result in results)
