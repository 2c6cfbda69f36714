"""The SLA engine on a real PostgreSQL with a fake clock: clock rows, scanners, recomputes."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from tierline.domain import commands as c
from tierline.domain.calendar import CalendarSpec
from tierline.domain.clocks import Clock
from tierline.domain.governance import Governance, Priority, SlaPolicy, Tier, Vendor
from tierline.domain.issue import Issue
from tierline.eventlog.cloudevents import LogEvent
from tierline.eventlog.consumer import Record, apply_batch
from tierline.service_layer.issues import SYSTEM, IssueService
from tierline.service_layer.reference import ReferenceData
from tierline.sla.clock_table import ClockTable, IssueClocks
from tierline.sla.scanner import SlaScanner, command_for
from tierline.store.pool import create_pool
from tierline.store.unit_of_work import issue_service
from tierline.store.vendors import insert_vendor, replace_governance

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
EVENTS_AFTER = """
SELECT position, event_id::text, stream_id, version, type, time, data::text, traceparent
FROM events WHERE position > $1 ORDER BY position
"""
ISSUE_EVENT_TYPES = (
    "SELECT stream_id, type, data::text FROM events WHERE stream_type = 'issue' ORDER BY position"
)


@dataclass
class FakeClock:
    """A wall clock the test moves by hand; shared by the write path and the scanner."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        """Move forward and return the new time."""
        self.now += timedelta(**delta)
        return self.now


def policy(tier: int, priority: Priority, respond: float, resolve: float, **kw: Any) -> SlaPolicy:
    """A policy with targets in seconds."""
    return SlaPolicy(
        tier=tier,
        priority=priority,
        respond_within=timedelta(seconds=respond),
        resolve_within=timedelta(seconds=resolve),
        **kw,
    )


def governance(*policies: SlaPolicy, tiers: int = 3) -> Governance:
    """A ladder of `tiers` rungs with the given policies."""
    return Governance(
        tiers=[Tier(level=n, name=f"Tier {n}") for n in range(1, tiers + 1)], sla=list(policies)
    )


@dataclass
class SlaHarness:
    """The write path, clock table and scanners on one test database, on a fake clock."""

    pool: asyncpg.Pool
    clock: FakeClock
    reference: ReferenceData
    service: IssueService
    table: ClockTable
    position: int = 0
    scanners: list[SlaScanner] = field(default_factory=list)

    def scanner(self, **kw: Any) -> SlaScanner:
        """A scanner with its own write path, as a separate worker would have."""
        reference = ReferenceData(self.pool)
        scanner = SlaScanner(
            pool=self.pool,
            service=issue_service(self.pool, reference, clock=self.clock),
            reference=reference,
            clock_table=ClockTable(reference),
            now=self.clock,
            **kw,
        )
        self.scanners.append(scanner)
        return scanner

    async def open(self, priority: Priority = "P1", vendor_id: str = "acme") -> Issue:
        """Open an issue at the fake clock's time."""
        command = c.OpenIssue(vendor_id=vendor_id, title="t", category="quality", priority=priority)
        return (await self.service.open(SYSTEM, command)).issue

    async def run(self, issue_id: str, command: c.Command) -> Issue:
        """Run a command at the fake clock's time."""
        return (await self.service.execute(SYSTEM, issue_id, command)).issue

    async def set_governance(self, document: Governance) -> None:
        """Replace the governance document, as `PUT /v1/governance` does."""
        async with self.pool.acquire() as conn:
            await replace_governance(conn, document, self.clock.now)
        await self.reference.refresh()

    async def catch_up(self) -> int:
        """Feed every event committed since the last call through the SLA consumer's handler."""
        rows = await self.pool.fetch(EVENTS_AFTER, self.position)
        if not rows:
            return 0
        records = [
            Record(0, row[0], LogEvent(row[1], row[2], row[3], row[4], row[5], json.loads(row[6])))
            for row in rows
        ]
        async with self.pool.acquire() as conn:
            await apply_batch(conn, "sla", "test", "identity", records, self.table)
        self.position = rows[-1][0]
        return len(records)

    async def clock_rows(self) -> list[asyncpg.Record]:
        """The clock table, ordered."""
        return await self.pool.fetch("SELECT * FROM sla_clocks ORDER BY issue_id, clock_id")

    async def outcomes(self) -> Counter[tuple[str, str, str, float | None]]:
        """(issue id, event name, clock id, threshold) of every SLA event recorded."""
        found: Counter[tuple[str, str, str, float | None]] = Counter()
        for issue_id, kind, data in await self.pool.fetch(ISSUE_EVENT_TYPES):
            name = kind.split(".")[-2]
            if name in ("sla_warning", "sla_breached"):
                payload = json.loads(data)
                threshold = payload["threshold"] if name == "sla_warning" else None
                found[(issue_id, name, payload["clock_id"], threshold)] += 1
        return found

    async def event_names(self, issue_id: str) -> list[str]:
        """The names of one issue's events, in order."""
        return [name for name, _ in await self.events(issue_id)]

    async def events(self, issue_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(name, data) of one issue's events, in order."""
        rows = await self.pool.fetch(
            "SELECT type, data::text FROM events WHERE stream_id = $1 ORDER BY version", issue_id
        )
        return [(r[0].split(".")[-2], json.loads(r[1])) for r in rows]


@asynccontextmanager
async def sla_harness(
    database_url: str, document: Governance, vendors: Sequence[Vendor] = ()
) -> AsyncIterator[SlaHarness]:
    """A harness with the governance document and vendors in place (default vendor: acme)."""
    pool = await create_pool(database_url, min_size=1, max_size=20)
    try:
        for vendor in vendors or [Vendor(id="acme", name="Acme")]:
            await insert_vendor(pool, vendor)
        clock = FakeClock()
        reference = ReferenceData(pool)
        service = issue_service(pool, reference, clock=clock)
        harness = SlaHarness(pool, clock, reference, service, ClockTable(reference))
        await harness.set_governance(document)
        await harness.catch_up()
        yield harness
    finally:
        await pool.close()


# --- tests ------------------------------------------------------------------------------------

pytestmark = pytest.mark.postgres

SECOND = timedelta(seconds=1)
LADDER = governance(
    *(policy(t, "P1", 60, 600, warn_at=[0.5], auto_escalate=True) for t in (1, 2, 3)),
    *(policy(t, "P2", 120, 1200, warn_at=[0.75]) for t in (1, 2, 3)),
)
WORKWEEK = {day: ["09:00", "17:00"] for day in ("mon", "tue", "wed", "thu", "fri")}


def sent(command: str) -> float:
    """How many commands of a kind the scanners have sent so far (process-wide)."""
    return sum(
        REGISTRY.get_sample_value(
            "tierline_sla_commands_total", {"command": command, "result": result}
        )
        or 0.0
        for result in ("done", "refused", "failed")
    )


async def drain(scanner: SlaScanner, limit: int = 50) -> int:
    """Scan until nothing is due; returns the work done."""
    total = 0
    for _ in range(limit):
        done = await scanner.scan_once()
        if not done:
            return total
        total += done
    raise AssertionError("the scanner never ran out of due clocks")


def fires(rows: Sequence[asyncpg.Record]) -> list[tuple[str, str, float | None, datetime | None]]:
    """(clock id, state, threshold, fire_at) per row."""
    return [(r["clock_id"], r["state"], r["threshold"], r["fire_at"]) for r in rows]


async def test_clock_rows_follow_the_issue_through_its_life(database_url: str) -> None:
    async with sla_harness(database_url, LADDER) as h:
        issue = await h.open("P1")
        await h.catch_up()
        rows = await h.clock_rows()
        assert fires(rows) == [
            ("resolve-1", "running", 0.5, T0 + 300 * SECOND),
            ("respond-1", "running", 0.5, T0 + 30 * SECOND),
        ]
        assert [r["next_fire_at"] for r in rows] == [r["fire_at"] for r in rows]
        assert {r["vendor_id"] for r in rows} == {"acme"}

        h.clock.advance(seconds=10)
        await h.run(issue.id, c.Hold(reason="waiting for the vendor"))
        await h.catch_up()
        assert fires(await h.clock_rows()) == [
            ("resolve-1", "paused", None, None),
            ("respond-1", "paused", None, None),
        ]

        resumed = h.clock.advance(seconds=100)
        await h.run(issue.id, c.Resume())
        await h.catch_up()
        assert fires(await h.clock_rows())[1] == (
            "respond-1",
            "running",
            0.5,
            resumed + 20 * SECOND,
        )

        changed = h.clock.advance(seconds=5)
        await h.run(issue.id, c.ChangePriority(priority="P2"))
        await h.catch_up()
        # 15 s used of the new 120 s target; the 0.75 warning is 75 s of business time away.
        assert fires(await h.clock_rows())[1] == (
            "respond-1",
            "running",
            0.75,
            changed + 75 * SECOND,
        )

        h.clock.advance(seconds=1)
        await h.run(issue.id, c.Acknowledge())
        await h.catch_up()
        assert [r["clock_id"] for r in await h.clock_rows()] == ["resolve-1"]

        await h.run(issue.id, c.Resolve(resolution="fixed"))
        await h.catch_up()
        assert await h.clock_rows() == []


async def test_fire_times_are_in_the_vendors_business_time(database_url: str) -> None:
    berlin = CalendarSpec(timezone="Europe/Berlin", hours=WORKWEEK)
    vendor = Vendor(id="berlin", name="Berlin GmbH", timezone="Europe/Berlin", calendar=berlin)
    async with sla_harness(database_url, LADDER, vendors=[vendor]) as h:
        h.clock.now = datetime(2026, 3, 27, 15, 59, 50, tzinfo=UTC)  # Friday 16:59:50 CET
        issue = await h.open("P1", vendor_id="berlin")
        await h.catch_up()
        respond = (await h.clock_rows())[1]
        # 10 s on Friday, the rest from Monday 09:00 CEST (07:00Z), after the DST change.
        assert respond["due_at"] == datetime(2026, 3, 30, 7, 0, 50, tzinfo=UTC)
        assert respond["fire_at"] == datetime(2026, 3, 30, 7, 0, 20, tzinfo=UTC)
        h.clock.now = datetime(2026, 3, 29, 12, tzinfo=UTC)  # Sunday: nothing is due
        assert await h.scanner().scan_once() == 0
        assert await h.event_names(issue.id) == ["opened"]


async def test_replayed_or_older_states_never_move_rows_back(database_url: str) -> None:
    async with sla_harness(database_url, LADDER) as h:
        issue = await h.open("P1")
        h.clock.advance(seconds=5)
        await h.run(issue.id, c.Acknowledge())
        await h.catch_up()
        before = await h.clock_rows()
        assert [r["clock_id"] for r in before] == ["resolve-1"]
        # The log read again (a rebalance, a refilled log) is skipped by version.
        h.position = 0
        assert await h.catch_up() > 0
        assert await h.clock_rows() == before
        # An older state (a slow worker's command result) does not resurrect the respond clock.
        async with h.pool.acquire() as conn:
            stored = await h.table.store(
                conn, [IssueClocks(issue.id, "acme", issue.version, issue.clocks)]
            )
        assert stored == 0
        assert await h.clock_rows() == before


async def test_warning_breach_and_escalation_up_the_ladder(database_url: str) -> None:
    async with sla_harness(database_url, LADDER) as h:
        issue = await h.open("P1")
        await h.catch_up()
        scanner = h.scanner()
        assert await scanner.scan_once() == 0

        at = T0
        for tier in (1, 2, 3):
            h.clock.now = at + 30 * SECOND
            assert await scanner.scan_once() == 1
            # The scanner stored the command's result: the breach is next, without the log.
            respond = next(r for r in await h.clock_rows() if r["clock_id"] == f"respond-{tier}")
            assert (respond["threshold"], respond["fire_at"]) == (None, at + 60 * SECOND)
            h.clock.now = at = at + 60 * SECOND
            assert await scanner.scan_once() == 1
        names = await h.event_names(issue.id)
        assert names == ["opened"] + ["sla_warning", "sla_breached", "escalated"] * 2 + [
            "sla_warning",
            "sla_breached",
        ]
        current = await h.service.get(SYSTEM, issue.id)
        assert current.tier == 3
        assert [(k.id, k.state) for k in current.clocks if k.tier == 3] == [
            ("respond-3", "breached"),
            ("resolve-3", "running"),
        ]
        escalations = await h.pool.fetch(
            "SELECT data::text FROM events WHERE type LIKE '%escalated%' ORDER BY version"
        )
        assert [json.loads(r[0])["automatic"] for r in escalations] == [True, True]
        # At the top tier only the resolve clock is left to watch.
        assert [r["clock_id"] for r in await h.clock_rows()] == ["resolve-3"]
        # The log brings the same states later; nothing changes or fires again.
        await h.catch_up()
        assert [r["clock_id"] for r in await h.clock_rows()] == ["resolve-3"]
        assert await scanner.scan_once() == 0


async def test_a_clock_found_past_its_deadline_skips_to_the_breach(database_url: str) -> None:
    async with sla_harness(database_url, LADDER) as h:
        issue = await h.open("P2")
        await h.catch_up()
        h.clock.advance(seconds=500)  # e.g. every worker was down for a while
        assert await drain(h.scanner()) == 1
        assert await h.event_names(issue.id) == ["opened", "sla_breached"]


async def test_two_workers_on_the_same_due_clocks_record_each_outcome_once(
    database_url: str,
) -> None:
    async with sla_harness(database_url, LADDER) as h:
        issues = [await h.open("P2") for _ in range(30)]
        await h.catch_up()
        first, second = h.scanner(lease_seconds=0), h.scanner(lease_seconds=0)
        sent_before = sent("RecordSlaWarning") + sent("RecordSlaBreach")
        for seconds in (100, 130):  # past the 0.75 warning, then past the deadline
            h.clock.now = T0 + seconds * SECOND
            # With no lease, both workers claim the very same clocks and race their commands.
            mine = await first.claim_due(h.clock.now)
            theirs = await second.claim_due(h.clock.now)
            assert len(mine) == len(theirs) == 30
            await asyncio.gather(first.fire_all(mine), second.fire_all(theirs))
        outcomes = await h.outcomes()
        assert len(outcomes) == 60
        assert set(outcomes.values()) == {1}
        assert {key[2] for key in outcomes} == {"respond-1"}
        # Every command went out twice; decide recorded each outcome once.
        assert sent("RecordSlaWarning") + sent("RecordSlaBreach") - sent_before == 120
        for issue in issues:
            assert await h.event_names(issue.id) == ["opened", "sla_warning", "sla_breached"]


@pytest.mark.parametrize("groups", [(1, 4), (3, 2)])
async def test_workers_splitting_a_batch_differently_record_each_outcome_once(
    database_url: str, groups: tuple[int, int]
) -> None:
    """Set-based units of work of different shapes over the same issues: no deadlock, no
    repeat, and every outcome in its issue's order (warning, breach, escalation)."""
    async with sla_harness(database_url, LADDER) as h:
        issues = [await h.open("P1") for _ in range(40)]
        await h.catch_up()
        workers = [h.scanner(lease_seconds=0, groups=n, concurrency=4) for n in groups]
        for seconds in (31, 61):  # past the 0.5 warning, then past the deadline
            h.clock.now = T0 + seconds * SECOND
            claims = [await w.claim_due(h.clock.now) for w in workers]
            assert [len(claim) for claim in claims] == [40, 40]
            await asyncio.wait_for(
                asyncio.gather(
                    *(w.fire_all(claim) for w, claim in zip(workers, claims, strict=True))
                ),
                30,
            )
        outcomes = await h.outcomes()
        assert len(outcomes) == 80 and set(outcomes.values()) == {1}
        for issue in issues:
            names = await h.event_names(issue.id)
            assert names == ["opened", "sla_warning", "sla_breached", "escalated"], names


async def test_workers_scanning_side_by_side_record_each_breach_once(database_url: str) -> None:
    async with sla_harness(database_url, LADDER) as h:
        for _ in range(60):
            await h.open("P1")
        await h.catch_up()
        h.clock.now = T0 + 61 * SECOND  # every respond clock is past due
        stop = asyncio.Event()
        workers = [
            asyncio.create_task(h.scanner(batch_size=7, max_sleep=0.02).run(stop)) for _ in range(3)
        ]
        try:
            for _ in range(500):
                if sum((await h.outcomes()).values()) >= 60:
                    break
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await asyncio.gather(*workers)
        outcomes = await h.outcomes()
        assert len(outcomes) == 60 and set(outcomes.values()) == {1}
        escalated = await h.pool.fetchval(
            "SELECT count(*) FROM events WHERE type LIKE '%escalated%'"
        )
        assert escalated == 60


async def test_a_worker_killed_mid_scan_loses_no_breach(database_url: str) -> None:
    async with sla_harness(database_url, LADDER) as h:
        for _ in range(20):
            await h.open("P2")
        await h.catch_up()
        h.clock.now = T0 + 130 * SECOND
        doomed = h.scanner(lease_seconds=5)
        claimed = await doomed.claim_due(h.clock.now)
        assert len(claimed) == 20
        # It got as far as recording half of the breaches, then died before its bookkeeping.
        for due in claimed[:10]:
            await h.run(due.issue_id, command_for(due, h.clock.now))
        survivor = h.scanner(lease_seconds=5)
        assert await survivor.scan_once() == 0, "the dead worker's lease still holds"
        sent_before = sent("RecordSlaBreach")
        h.clock.advance(seconds=5)
        assert await drain(survivor) == 20
        outcomes = await h.outcomes()
        assert len(outcomes) == 20 and set(outcomes.values()) == {1}
        assert sent("RecordSlaBreach") - sent_before == 20
        assert await h.clock_rows() == [] or all(
            r["clock_id"] == "resolve-1" for r in await h.clock_rows()
        )


async def test_a_policy_change_recomputes_live_clocks_keeping_elapsed_time(
    database_url: str,
) -> None:
    async with sla_harness(database_url, LADDER) as h:
        running, held, resolved = [await h.open("P2") for _ in range(3)]
        h.clock.advance(seconds=10)
        await h.run(held.id, c.Hold(reason="r"))
        await h.run(resolved.id, c.Resolve(resolution="done"))
        await h.catch_up()
        changed_at = h.clock.advance(seconds=20)
        tighter = governance(
            *(policy(t, "P1", 60, 600, warn_at=[0.5], auto_escalate=True) for t in (1, 2, 3)),
            *(policy(t, "P2", 60, 1200, warn_at=[0.75]) for t in (1, 2, 3)),
        )
        await h.set_governance(tighter)
        await h.catch_up()
        queued = await h.pool.fetch("SELECT issue_id FROM sla_recompute ORDER BY issue_id")
        assert {r[0] for r in queued} == {running.id, held.id}

        assert await drain(h.scanner()) == 2
        assert await h.pool.fetchval("SELECT count(*) FROM sla_recompute") == 0
        after = await h.service.get(SYSTEM, running.id)
        respond = after.clocks[0]
        assert respond.target_seconds == 60 and respond.due_at == T0 + 60 * SECOND
        assert respond.elapsed_seconds == (changed_at - T0).total_seconds()
        assert (await h.event_names(running.id))[-1] == "priority_changed"
        paused = (await h.service.get(SYSTEM, held.id)).clocks[0]
        assert (paused.state, paused.target_seconds, paused.elapsed_seconds) == ("paused", 60, 10)
        assert await h.event_names(resolved.id) == ["opened", "resolved"]
        # The rows follow at once: the running issue's warning is at 45 s of its new target.
        rows = await h.clock_rows()
        row = next(r for r in rows if (r["issue_id"], r["clock_id"]) == (running.id, "respond-1"))
        assert row["fire_at"] == T0 + 45 * SECOND

        # The same document again changes no issue.
        await h.set_governance(tighter)
        await h.catch_up()
        assert await drain(h.scanner()) == 2
        assert (await h.event_names(running.id)).count("priority_changed") == 1


def clock_of(issue: Issue, clock_id: str) -> Clock:
    """One of the issue's clocks, by id."""
    return next(k for k in issue.clocks if k.id == clock_id)


async def test_hold_pauses_the_clock_and_resume_keeps_the_elapsed_time(database_url: str) -> None:
    async with sla_harness(database_url, LADDER) as h:
        issue = await h.open("P2")  # respond within 120 s, warning at 90 s
        await h.catch_up()
        scanner = h.scanner()
        h.clock.advance(seconds=40)
        held = clock_of(await h.run(issue.id, c.Hold(reason="vendor asked")), "respond-1")
        await h.catch_up()
        assert (held.state, held.due_at, held.elapsed_seconds) == ("paused", None, 40)
        # Long past the original deadline: a held clock has nothing to fire.
        h.clock.now = T0 + 500 * SECOND
        assert await drain(scanner) == 0
        assert await h.event_names(issue.id) == ["opened", "put_on_hold"]

        resumed = clock_of(await h.run(issue.id, c.Resume()), "respond-1")
        await h.catch_up()
        assert resumed.elapsed_seconds == 40 and resumed.running_since == T0 + 500 * SECOND
        assert resumed.due_at == T0 + 580 * SECOND  # the 80 s that were left
        h.clock.now = T0 + 579 * SECOND
        assert await drain(scanner) == 1
        assert await h.event_names(issue.id) == ["opened", "put_on_hold", "resumed", "sla_warning"]
        h.clock.now = T0 + 580 * SECOND
        assert await drain(scanner) == 1
        name, breach = (await h.events(issue.id))[-1]
        assert (name, breach["clock_id"]) == ("sla_breached", "respond-1")
        assert datetime.fromisoformat(breach["due_at"]) == T0 + 580 * SECOND


async def test_a_priority_change_counts_the_new_target_from_the_opening(database_url: str) -> None:
    async with sla_harness(database_url, LADDER) as h:
        issue = await h.open("P2")  # respond within 120 s
        await h.catch_up()
        h.clock.advance(seconds=10)
        changed = clock_of(await h.run(issue.id, c.ChangePriority(priority="P1")), "respond-1")
        await h.catch_up()
        # P1 responds within 60 s of the opening, not of the change.
        assert (changed.target_seconds, changed.elapsed_seconds) == (60, 10)
        assert changed.due_at == T0 + 60 * SECOND
        scanner = h.scanner()
        h.clock.now = T0 + 59 * SECOND
        assert await drain(scanner) == 1
        assert await h.event_names(issue.id) == ["opened", "priority_changed", "sla_warning"]
        h.clock.now = T0 + 60 * SECOND
        assert await drain(scanner) == 1
        events = await h.events(issue.id)
        assert [name for name, _ in events][3:] == ["sla_breached", "escalated"]
        assert datetime.fromisoformat(events[3][1]["due_at"]) == T0 + 60 * SECOND


async def test_acknowledging_meets_the_respond_clock_and_resolve_still_breaches(
    database_url: str,
) -> None:
    async with sla_harness(database_url, LADDER) as h:
        issue = await h.open("P2")  # respond within 120 s, resolve within 1200 s
        await h.catch_up()
        h.clock.advance(seconds=5)
        acknowledged = await h.run(issue.id, c.Acknowledge(note="on it"))
        await h.catch_up()
        assert clock_of(acknowledged, "respond-1").state == "met"
        h.clock.now = T0 + 1200 * SECOND
        assert await drain(h.scanner()) == 1
        events = await h.events(issue.id)
        assert [name for name, _ in events] == ["opened", "acknowledged", "sla_breached"]
        assert (events[2][1]["kind"], events[2][1]["clock_id"]) == ("resolve", "resolve-1")
