"""The clock table: one row per live SLA clock with `next_fire_at`, kept from the issue events.

Every issue event carries the issue's clocks after it, so the rows of an issue are simply
replaced by the newest clocks seen. Two writers keep them: the log consumer (this module's
`ClockTable` as a `BatchHandler`) and the scanner, which stores the snapshot a command returned
so the next threshold is scheduled without waiting for the round trip through the log. A
per-issue version decides: rows only move forward, whoever writes them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from prometheus_client import Counter

from tierline.domain.calendar import TWENTY_FOUR_SEVEN, BusinessCalendar
from tierline.domain.clocks import Clock, next_fire_at
from tierline.domain.events import (
    EVENT_TYPE_PREFIX,
    Escalated,
    PolicyChanged,
    SlaBreached,
    SlaWarning,
    VendorChanged,
)
from tierline.eventlog.cloudevents import LogEvent
from tierline.service_layer.reference import ReferenceData
from tierline.store.pool import Conn

log = structlog.get_logger(__name__)

NOTIFY_CHANNEL = "tierline_sla"
# Scanners sleep at most this long, so only clocks due sooner need to wake them.
NOTIFY_HORIZON = 1.0
# An issue event recorded up to this long after a vendor change may still have been decided on
# the old vendor (API processes cache vendors for ~2 s, hosts' clocks differ a little); one read
# after the change is queued for recompute, which records nothing if its deadlines are right.
VENDOR_CHANGE_MARGIN = timedelta(seconds=5)
POLICY_CHANGED_TYPE = PolicyChanged.event_type()
VENDOR_CHANGED_TYPE = VendorChanged.event_type()
WARNING_TYPE = SlaWarning.event_type()
BREACH_TYPE = SlaBreached.event_type()
ESCALATED_TYPE = Escalated.event_type()

CLOCK_STATES_STORED = Counter(
    "tierline_sla_clock_states_stored_total",
    "Issue clock states written to the clock table",
    ["source"],
)
SLA_EVENTS_SEEN = Counter(
    "tierline_sla_events_seen_total",
    "SLA outcomes read back from the log (warnings, breaches, automatic escalations)",
    ["type"],
)

# Rows move forward only: a state older than the one stored is ignored.
ADVANCE_ISSUES = """
INSERT INTO sla_issues (issue_id, vendor_id, version)
SELECT * FROM unnest($1::text[], $2::text[], $3::int[])
ORDER BY 1
ON CONFLICT (issue_id) DO UPDATE
    SET version = EXCLUDED.version, vendor_id = EXCLUDED.vendor_id, updated_at = now()
    WHERE sla_issues.version < EXCLUDED.version
RETURNING issue_id
"""
DELETE_ENDED = """
DELETE FROM sla_clocks AS c
WHERE c.issue_id = ANY($1::text[])
  AND NOT EXISTS (
      SELECT 1 FROM unnest($2::text[], $3::text[]) AS k(issue_id, clock_id)
      WHERE k.issue_id = c.issue_id AND k.clock_id = c.clock_id
  )
"""
# A claimed row keeps its lease while its next action is unchanged, so an unrelated event
# (a comment, an assignment) does not hand the same clock to a second worker.
UPSERT_CLOCKS = """
INSERT INTO sla_clocks (
    issue_id, clock_id, vendor_id, kind, tier, state, due_at, fire_at, threshold, next_fire_at
)
SELECT k.*, k.fire_at
FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[],
    $7::timestamptz[], $8::timestamptz[], $9::float8[]
) AS k(issue_id, clock_id, vendor_id, kind, tier, state, due_at, fire_at, threshold)
ORDER BY 1, 2
ON CONFLICT (issue_id, clock_id) DO UPDATE SET
    vendor_id = EXCLUDED.vendor_id,
    kind = EXCLUDED.kind,
    tier = EXCLUDED.tier,
    state = EXCLUDED.state,
    due_at = EXCLUDED.due_at,
    fire_at = EXCLUDED.fire_at,
    threshold = EXCLUDED.threshold,
    next_fire_at = CASE
        WHEN sla_clocks.fire_at IS NOT DISTINCT FROM EXCLUDED.fire_at
         AND sla_clocks.threshold IS NOT DISTINCT FROM EXCLUDED.threshold
        THEN sla_clocks.next_fire_at ELSE EXCLUDED.fire_at END,
    attempts = CASE
        WHEN sla_clocks.fire_at IS NOT DISTINCT FROM EXCLUDED.fire_at
         AND sla_clocks.threshold IS NOT DISTINCT FROM EXCLUDED.threshold
        THEN sla_clocks.attempts ELSE 0 END
"""
NOTIFY = "SELECT pg_notify($1, '')"
# Only for log records published before events carried `vendorid` (ADR 0009): the vendor this
# consumer stored when it read the issue's `opened` event.
KNOWN_VENDORS = "SELECT issue_id, vendor_id FROM sla_issues WHERE issue_id = ANY($1::text[])"
QUEUE_RECOMPUTE = """
INSERT INTO sla_recompute (issue_id, policy_version, next_attempt_at)
SELECT DISTINCT issue_id, $1::int, $2::timestamptz FROM sla_clocks ORDER BY 1
ON CONFLICT (issue_id) DO UPDATE
    SET policy_version = GREATEST(sla_recompute.policy_version, EXCLUDED.policy_version),
        next_attempt_at = EXCLUDED.next_attempt_at, attempts = 0
"""
RECORD_VENDOR_CHANGES = """
INSERT INTO sla_vendor_changes (vendor_id, vendor_version, changed_at)
SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[]) ORDER BY 1
ON CONFLICT (vendor_id) DO UPDATE
    SET vendor_version = EXCLUDED.vendor_version, changed_at = EXCLUDED.changed_at
    WHERE sla_vendor_changes.vendor_version < EXCLUDED.vendor_version
"""
# The vendor's issues with a running clock that this consumer has stored. Paused clocks have no
# deadline; resuming sets it on the new calendar. Issues whose events it has not read yet (they
# may wait on another partition) are queued when they arrive (QUEUE_LATE_ARRIVALS).
QUEUE_VENDOR_RECOMPUTE = """
INSERT INTO sla_recompute (issue_id, policy_version, vendor_version, next_attempt_at)
SELECT DISTINCT ON (k.issue_id) k.issue_id, 0, changed.vendor_version, changed.at
FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS changed(vendor_id, vendor_version, at)
JOIN sla_clocks AS k ON k.vendor_id = changed.vendor_id AND k.state = 'running'
ORDER BY k.issue_id
ON CONFLICT (issue_id) DO UPDATE
    SET vendor_version = GREATEST(sla_recompute.vendor_version, EXCLUDED.vendor_version),
        next_attempt_at = EXCLUDED.next_attempt_at, attempts = 0
"""
# Issues read now whose event was recorded before (or within the margin after) a vendor change
# this consumer applied earlier: their deadlines may be on the old calendar.
QUEUE_LATE_ARRIVALS = """
INSERT INTO sla_recompute (issue_id, policy_version, vendor_version, next_attempt_at)
SELECT DISTINCT ON (a.issue_id) a.issue_id, 0, v.vendor_version, v.changed_at
FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS a(issue_id, vendor_id, recorded_at)
JOIN sla_vendor_changes AS v
  ON v.vendor_id = a.vendor_id AND a.recorded_at <= v.changed_at + $4::interval
WHERE EXISTS (
    SELECT 1 FROM sla_clocks AS k WHERE k.issue_id = a.issue_id AND k.state = 'running'
)
ORDER BY a.issue_id
ON CONFLICT (issue_id) DO UPDATE
    SET vendor_version = GREATEST(sla_recompute.vendor_version, EXCLUDED.vendor_version),
        next_attempt_at = EXCLUDED.next_attempt_at, attempts = 0
"""

CalendarFor = Callable[[str, Conn], Awaitable[BusinessCalendar]]


@dataclass(frozen=True)
class IssueClocks:
    """An issue's clocks as of one stream version."""

    issue_id: str
    vendor_id: str
    version: int
    # Clocks as models, or as the JSON objects of an event: those are decoded only if the
    # state turns out to be newer than the stored one (most log events are not, once the
    # scanner has stored its own commands' results).
    clocks: Sequence[Clock] | Sequence[dict[str, Any]]


@dataclass(frozen=True)
class LoggedClocks:
    """The newest clocks of an issue in a batch, as the log carried them."""

    version: int
    clocks: list[dict[str, Any]]
    # From the event's `vendorid`, else an `opened` event's data; None for older records.
    vendor_id: str | None
    recorded_at: datetime


@dataclass(frozen=True)
class ClockRow:
    """One live clock as the table stores it."""

    issue_id: str
    clock_id: str
    vendor_id: str
    kind: str
    tier: int
    state: str
    due_at: datetime | None
    fire_at: datetime | None
    threshold: float | None


def clock_rows(state: IssueClocks, calendar: BusinessCalendar) -> list[ClockRow]:
    """The rows for an issue's live clocks; a paused clock has a row but nothing to fire."""
    rows = []
    for item in state.clocks:
        clock = item if isinstance(item, Clock) else Clock.model_validate(item)
        if not clock.is_live:
            continue
        try:
            fire = next_fire_at(clock, calendar)
        except ValueError:
            # A calendar without hours cannot schedule; the breach still fires at due_at.
            fire = None if clock.due_at is None else (clock.due_at, None)
        rows.append(
            ClockRow(
                issue_id=state.issue_id,
                clock_id=clock.id,
                vendor_id=state.vendor_id,
                kind=clock.kind,
                tier=clock.tier,
                state=clock.state,
                due_at=clock.due_at,
                fire_at=None if fire is None else fire[0],
                threshold=None if fire is None else fire[1],
            )
        )
    return rows


async def store_clocks(conn: Conn, states: Sequence[IssueClocks], calendar_for: CalendarFor) -> int:
    """Replace the rows of issues whose state is newer than the stored one; returns how many.

    Call inside a transaction. Wakes the scanners when a clock falls due within NOTIFY_HORIZON.
    """
    newest: dict[str, IssueClocks] = {}
    for state in states:
        known = newest.get(state.issue_id)
        if known is None or known.version < state.version:
            newest[state.issue_id] = state
    if not newest:
        return 0
    ordered = sorted(newest.values(), key=lambda s: s.issue_id)
    advanced = await conn.fetch(
        ADVANCE_ISSUES,
        [s.issue_id for s in ordered],
        [s.vendor_id for s in ordered],
        [s.version for s in ordered],
    )
    accepted = [newest[r["issue_id"]] for r in advanced]
    if not accepted:
        return 0
    rows: list[ClockRow] = []
    for state in accepted:
        rows.extend(clock_rows(state, await calendar_for(state.vendor_id, conn)))
    await conn.execute(
        DELETE_ENDED,
        [s.issue_id for s in accepted],
        [r.issue_id for r in rows],
        [r.clock_id for r in rows],
    )
    if rows:
        await conn.execute(UPSERT_CLOCKS, *_columns(rows))
    horizon = datetime.now(UTC) + timedelta(seconds=NOTIFY_HORIZON)
    if any(r.fire_at is not None and r.fire_at <= horizon for r in rows):
        await conn.execute(NOTIFY, NOTIFY_CHANNEL)
    return len(accepted)


def _columns(rows: Sequence[ClockRow]) -> list[list[object]]:
    """The rows as the column arrays UPSERT_CLOCKS unnests."""
    return [
        [r.issue_id for r in rows],
        [r.clock_id for r in rows],
        [r.vendor_id for r in rows],
        [r.kind for r in rows],
        [r.tier for r in rows],
        [r.state for r in rows],
        [r.due_at for r in rows],
        [r.fire_at for r in rows],
        [r.threshold for r in rows],
    ]


class ClockTable:
    """The SLA consumer's `BatchHandler`: clock rows; recomputes on policy and vendor changes."""

    def __init__(self, reference: ReferenceData) -> None:
        self._reference = reference

    async def calendar_for(self, vendor_id: str, conn: Conn) -> BusinessCalendar:
        """The vendor's business calendar, as the write path uses it (24x7 if unknown)."""
        rules = await self._reference.rules_for(vendor_id, conn)
        if rules is None:
            log.warning("sla_unknown_vendor", vendor_id=vendor_id)
            return BusinessCalendar(TWENTY_FOUR_SEVEN)
        return rules.calendar

    async def store(self, conn: Conn, states: Sequence[IssueClocks]) -> int:
        """Store issue clock states outside the log (the scanner's command results)."""
        async with conn.transaction():
            stored = await store_clocks(conn, states, self.calendar_for)
        CLOCK_STATES_STORED.labels("command").inc(stored)
        return stored

    async def apply(self, conn: Conn, events: Sequence[LogEvent]) -> None:
        """Apply a batch of log events inside the consumer's transaction."""
        latest: dict[str, LoggedClocks] = {}
        policy: tuple[int, datetime] | None = None
        vendors: dict[str, tuple[int, datetime]] = {}
        for event in events:
            if event.type == POLICY_CHANGED_TYPE:
                version = int(event.data.get("policy_version", 0))
                if policy is None or policy[0] < version:
                    policy = (version, event.time)
                continue
            if event.type == VENDOR_CHANGED_TYPE:
                vendor_id, version = str(event.data["vendor_id"]), int(event.data["vendor_version"])
                if vendor_id not in vendors or vendors[vendor_id][0] < version:
                    vendors[vendor_id] = (version, event.time)
                continue
            if not event.type.startswith(EVENT_TYPE_PREFIX):
                continue
            _count_outcome(event)
            raw = event.data.get("clocks")
            if raw is not None:
                # Older records lack `vendorid`: an `opened` earlier in the batch names it.
                earlier = latest.get(event.stream_id)
                issue_vendor = (
                    event.vendor_id
                    or event.data.get("vendor_id")
                    or (earlier.vendor_id if earlier else None)
                )
                latest[event.stream_id] = LoggedClocks(event.version, raw, issue_vendor, event.time)
        states: list[IssueClocks] = []
        for vendor_id, (version, _) in vendors.items():
            # Fire times of the clocks stored below are counted on the new calendar.
            await self._reference.ensure_vendor_version(vendor_id, version, conn)
        if latest:
            states = await self._states(conn, latest)
            stored = await store_clocks(conn, states, self.calendar_for)
            CLOCK_STATES_STORED.labels("log").inc(stored)
        if policy is not None:
            # Queued in this transaction, so a crash cannot lose the recompute; due from the
            # moment the policy changed, on the write path's clock.
            status = await conn.execute(QUEUE_RECOMPUTE, *policy)
            await conn.execute(NOTIFY, NOTIFY_CHANNEL)
            log.info(
                "sla_recompute_queued", policy_version=policy[0], issues=int(status.split()[-1])
            )
        if vendors:
            await self._queue_vendor_recomputes(conn, vendors)
        if states:
            await self._queue_late_arrivals(conn, states, latest)

    async def _queue_vendor_recomputes(
        self, conn: Conn, vendors: dict[str, tuple[int, datetime]]
    ) -> None:
        """Queue the running clocks of changed vendors, in the consumer's transaction."""
        ids = sorted(vendors)
        columns = (ids, [vendors[v][0] for v in ids], [vendors[v][1] for v in ids])
        await conn.execute(RECORD_VENDOR_CHANGES, *columns)
        status = await conn.execute(QUEUE_VENDOR_RECOMPUTE, *columns)
        await conn.execute(NOTIFY, NOTIFY_CHANNEL)
        log.info("sla_vendor_recompute_queued", vendors=ids, issues=int(status.split()[-1]))

    async def _queue_late_arrivals(
        self, conn: Conn, states: Sequence[IssueClocks], latest: dict[str, LoggedClocks]
    ) -> None:
        """Queue issues read after a change of their vendor but recorded before it."""
        status = await conn.execute(
            QUEUE_LATE_ARRIVALS,
            [s.issue_id for s in states],
            [s.vendor_id for s in states],
            [latest[s.issue_id].recorded_at for s in states],
            VENDOR_CHANGE_MARGIN,
        )
        queued = int(status.split()[-1])
        if queued:
            await conn.execute(NOTIFY, NOTIFY_CHANNEL)
            log.info("sla_late_vendor_recompute_queued", issues=queued)

    async def _states(self, conn: Conn, latest: dict[str, LoggedClocks]) -> list[IssueClocks]:
        """The newest clocks per issue, with each issue's vendor as the log names it."""
        unknown = [issue_id for issue_id, seen in latest.items() if seen.vendor_id is None]
        known: dict[str, str] = {}
        if unknown:
            known = {
                r["issue_id"]: r["vendor_id"] for r in await conn.fetch(KNOWN_VENDORS, unknown)
            }
        states = []
        for issue_id, seen in latest.items():
            vendor_id = seen.vendor_id or known.get(issue_id)
            if vendor_id is None:
                log.warning("sla_issue_without_vendor", issue_id=issue_id, version=seen.version)
                continue
            states.append(IssueClocks(issue_id, vendor_id, seen.version, seen.clocks))
        return states


def _count_outcome(event: LogEvent) -> None:
    """Count warnings, breaches and automatic escalations as they reach the log."""
    if event.type == WARNING_TYPE:
        SLA_EVENTS_SEEN.labels("sla_warning").inc()
    elif event.type == BREACH_TYPE:
        SLA_EVENTS_SEEN.labels("sla_breached").inc()
    elif event.type == ESCALATED_TYPE and event.data.get("automatic"):
        SLA_EVENTS_SEEN.labels("escalated_automatic").inc()
