"""SLA clocks end to end: HTTP API, relay, Kafka (Tansu) and SLA workers, with PT2S policies.

Stories that race a deadline (hold, priority change, acknowledge) run on a fake clock in
test_sla_engine.py: the roles here read the wall clock and offer no clock to inject. What runs
here never acts against a deadline: it waits for what the scanner does on its own, or uses
hour-long targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.fixtures.api import call, create_vendor, open_issue
from tests.fixtures.stack import Stack, running_stack, stack_settings
from tierline.devstack.process import ManagedProcess

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

ROLES = ["api", "relay", "sla"]
WAIT = 30.0
CONSUMED_GOVERNANCE = """
SELECT 1 FROM consumer_stream_versions WHERE consumer = 'sla' AND stream_id = 'governance'
"""
CLOCK_ROWS = "SELECT * FROM sla_clocks WHERE issue_id = $1 ORDER BY clock_id"
# Claimed and not yet answered: a claim moves next_fire_at past the lease and counts an attempt.
LEASED = "SELECT count(*) FROM sla_clocks WHERE attempts > 0 AND next_fire_at > now()"
# Backends of one client process (by its TCP ports) that wait for a lock the test holds.
BLOCKED_BY = """
SELECT count(*) FROM pg_stat_activity
WHERE client_port = ANY($1::int[]) AND $2 = ANY(pg_blocking_pids(pid))
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
        # Far from any deadline, for stories that must not race one.
        *(sla(t, "P4", "PT1H", "PT2H", warn_at=[], auto_escalate=False) for t in (1, 2, 3)),
    ],
}


@asynccontextmanager
async def sla_stack(
    database_url: str, tansu: str, topic: str, roles: Sequence[str] = ROLES
) -> AsyncIterator[tuple[Stack, aiohttp.ClientSession]]:
    """The roles running, a vendor `acme`, the second-scale governance, and an admin client."""
    settings = stack_settings(database_url, tansu, topic)
    async with running_stack(settings, roles=roles) as stack, stack.client() as http:
        await create_vendor(http, id="acme", name="Acme", timezone="UTC")
        await call(http, "PUT", "/v1/governance", 200, GOVERNANCE)
        if "sla" in roles:
            await consumed_governance(database_url)
        yield stack, http


async def poll_database(
    database_url: str, probe: Callable[[asyncpg.Connection], Any], what: str
) -> Any:
    """The first truthy result of `probe` on one connection; fails with `what` after WAIT."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + WAIT
        while not (result := await probe(conn)):
            assert time.monotonic() < deadline, f"never happened: {what}"
            await asyncio.sleep(0.05)
        return result
    finally:
        await conn.close()


async def consumed_governance(database_url: str) -> None:
    """Wait until the SLA consumer has read the policy change: it is assigned and caught up."""
    await poll_database(
        database_url, lambda conn: conn.fetchval(CONSUMED_GOVERNANCE), "the policy change read"
    )


async def clock_rows_when(
    database_url: str, issue_id: str, done: Callable[[list[asyncpg.Record]], bool], what: str
) -> list[asyncpg.Record]:
    """The issue's clock-table rows, once `done` holds for them."""

    async def probe(conn: asyncpg.Connection) -> list[asyncpg.Record] | None:
        rows = await conn.fetch(CLOCK_ROWS, issue_id)
        return rows if done(rows) else None

    rows: list[asyncpg.Record] = await poll_database(database_url, probe, what)
    return rows


async def open_p(http: aiohttp.ClientSession, priority: str) -> dict[str, Any]:
    """Open an issue against acme."""
    return await open_issue(http, "acme", title="t", category="service_delivery", priority=priority)


Events = list[tuple[str, dict[str, Any], datetime]]


async def history(http: aiohttp.ClientSession, issue_id: str) -> Events:
    """(event name, data, time) of the issue's events, in order."""
    page = await call(http, "GET", f"/v1/issues/{issue_id}/events", 200)
    return [(item["type"].split(".")[-2], item["data"], at(item["time"])) for item in page["items"]]


def names(events: Events) -> list[str]:
    """Just the event names."""
    return [event[0] for event in events]


async def wait_for(
    http: aiohttp.ClientSession,
    issue_id: str,
    done: Callable[[Events], bool],
    timeout: float = WAIT,
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


async def check_escalation_ladder(database_url: str, http: aiohttp.ClientSession) -> None:
    """P1 warns, breaches and escalates automatically, tier after tier, up to the top."""
    issue = await open_p(http, "P1")
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

    current = await call(http, "GET", f"/v1/issues/{issue['id']}", 200)
    assert current["tier"] == 3 and current["status"] == "open"
    by_id = {k["id"]: k for k in current["sla"]}
    assert by_id["respond-3"]["state"] == "breached" and by_id["respond-3"]["breached_at"]
    assert by_id["resolve-3"]["state"] == "running" and by_id["resolve-3"]["tier"] == 3
    assert by_id["respond-1"]["state"] == "breached" and by_id["resolve-1"]["state"] == "stopped"
    # At the top tier the breach is recorded and nothing moves: once the scanner has stored the
    # last breach, only the resolve clock is left, its warning half a minute away.
    rows = await clock_rows_when(
        database_url,
        issue["id"],
        lambda rows: [r["clock_id"] for r in rows] == ["resolve-3"],
        "only resolve-3 left to watch",
    )
    assert rows[0]["next_fire_at"] > events[-1][2] + timedelta(seconds=20)
    assert names(await history(http, issue["id"])) == names(events)


async def check_hold_and_resume_reach_the_clock_table(
    database_url: str, http: aiohttp.ClientSession
) -> None:
    """Hold and resume go through the log to the clock rows: paused, then due again."""
    issue = await open_p(http, "P4")
    await call(http, "POST", f"/v1/issues/{issue['id']}/hold", 200, {"reason": "vendor asked"})
    await clock_rows_when(
        database_url,
        issue["id"],
        lambda rows: (
            len(rows) == 2
            and all(r["state"] == "paused" and r["next_fire_at"] is None for r in rows)
        ),
        "both clocks paused",
    )
    resumed = await call(http, "POST", f"/v1/issues/{issue['id']}/resume", 200, {})
    due = {k["id"]: at(k["due_at"]) for k in resumed["sla"] if k["state"] == "running"}
    assert set(due) == {"respond-1", "resolve-1"}

    def resumed_rows(rows: list[asyncpg.Record]) -> bool:
        running = {r["clock_id"]: r["due_at"] for r in rows if r["state"] == "running"}
        return running.keys() == due.keys() and all(
            abs(running[k] - due[k]) < timedelta(milliseconds=1) for k in due
        )

    await clock_rows_when(
        database_url, issue["id"], resumed_rows, "both clocks running to the resumed deadlines"
    )


async def test_escalation_ladder_and_hold_through_the_log(
    database_url: str, tansu: str, topic: str
) -> None:
    # One stack for both stories: starting one costs seconds of consumer-group joining.
    async with sla_stack(database_url, tansu, topic) as (_, http):
        await asyncio.gather(
            check_escalation_ladder(database_url, http),
            check_hold_and_resume_reach_the_clock_table(database_url, http),
        )


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


def tcp_ports(pid: int) -> list[int]:
    """Local ports of a process's TCP sockets (Linux /proc): how PostgreSQL sees its clients."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll a condition; the timeout only bounds a failing test."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def test_two_workers_and_a_killed_one_record_each_breach_once(
    database_url: str, tansu: str, topic: str
) -> None:
    async with sla_stack(database_url, tansu, topic, roles=["api", "relay"]) as (stack, http):
        doomed, survivor = sla_worker(stack, "doomed"), sla_worker(stack, "survivor")
        blocker = await asyncpg.connect(database_url)
        try:
            # Started together, they join the consumer group in one rebalance.
            doomed.start()
            survivor.start()
            both = (doomed, survivor)
            await until(lambda: all("consumer_assigned" in w.tail() or not w.alive() for w in both))
            assert all("consumer_assigned" in w.tail() for w in both), doomed.tail()
            await consumed_governance(database_url)
            issues = [await open_p(http, "P2") for _ in range(30)]
            # Every other issue's stream head stays locked: a worker that claims one of their
            # clocks sends the command and blocks there, mid-batch, its claims still leased.
            # The other issues' commands go through, their bookkeeping waits for the batch.
            locked = blocker.transaction()
            await locked.start()
            await blocker.execute(
                "SELECT 1 FROM streams WHERE stream_id = ANY($1::text[]) FOR UPDATE",
                [issue["id"] for issue in issues[::2]],
            )
            me = blocker.get_server_pid()
            await poll_database(
                database_url,
                lambda conn: conn.fetchval(BLOCKED_BY, tcp_ports(doomed.pid), me),
                "the doomed worker stuck in a claimed batch",
            )
            assert await blocker.fetchval(LEASED) > 0
            doomed.stop()  # SIGKILL while it holds its claims
            assert not doomed.alive()
            await locked.rollback()

            async def breaches(issue_id: str) -> Counter[str]:
                events = await wait_for(
                    http, issue_id, lambda ev: names(ev).count("sla_breached") >= 2, timeout=40
                )
                return Counter(d["clock_id"] for n, d, _ in events if n == "sla_breached")

            results = await asyncio.gather(*(breaches(issue["id"]) for issue in issues))
        finally:
            await blocker.close()
            doomed.stop()
            survivor.stop()
        assert all(result == Counter({"respond-1": 1, "resolve-1": 1}) for result in results)
