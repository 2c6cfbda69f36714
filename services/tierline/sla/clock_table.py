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
from tierline.sqlfile import load_queries
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

QUERIES = load_queries("tierline.sla")

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
        QUERIES["advance_issues"],
        [s.issue_id for s in ordered],
        [s.vendor_id for s in ordered],
        [s.version for s in ordered],
    )
    accepted = [newest[r["issue_id"]] for r in advanced]
    if not accepted:
        return 0
    rows: list[ClockRow] = []
    calendars: dict[str, BusinessCalendar] = {}  # one look-up per vendor, not per issue
    for state in accepted:
        if state.vendor_id not in calendars:
            calendars[state.vendor_id] = await calendar_for(state.vendor_id, conn)
        rows.extend(clock_rows(state, calendars[state.vendor_id]))
    await conn.execute(
        QUERIES["delete_ended_clocks"],
        [s.issue_id for s in accepted],
        [r.issue_id for r in rows],
        [r.clock_id for r in rows],
    )
    if rows:
        await conn.execute(QUERIES["upsert_clocks"], *_columns(rows))
    horizon = datetime.now(UTC) + timedelta(seconds=NOTIFY_HORIZON)
    if any(r.fire_at is not None and r.fire_at <= horizon for r in rows):
        await conn.execute(QUERIES["wake_scanners"], NOTIFY_CHANNEL)
    return len(accepted)


def _columns(rows: Sequence[ClockRow]) -> list[list[object]]:
    """The rows as the column arrays `upsert_clocks` unnests."""
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
            status = await conn.execute(QUERIES["queue_policy_recompute"], *policy)
            await conn.execute(QUERIES["wake_scanners"], NOTIFY_CHANNEL)
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
        await conn.execute(QUERIES["record_vendor_changes"], *columns)
        status = await conn.execute(QUERIES["queue_vendor_recompute"], *columns)
        await conn.execute(QUERIES["wake_scanners"], NOTIFY_CHANNEL)
        log.info("sla_vendor_recompute_queued", vendors=ids, issues=int(status.split()[-1]))

    async def _queue_late_arrivals(
        self, conn: Conn, states: Sequence[IssueClocks], latest: dict[str, LoggedClocks]
    ) -> None:
        """Queue issues read after a change of their vendor but recorded before it."""
        status = await conn.execute(
            QUERIES["queue_late_arrivals"],
            [s.issue_id for s in states],
            [s.vendor_id for s in states],
            [latest[s.issue_id].recorded_at for s in states],
            VENDOR_CHANGE_MARGIN,
        )
        queued = int(status.split()[-1])
        if queued:
            await conn.execute(QUERIES["wake_scanners"], NOTIFY_CHANNEL)
            log.info("sla_late_vendor_recompute_queued", issues=queued)

    async def _states(self, conn: Conn, latest: dict[str, LoggedClocks]) -> list[IssueClocks]:
        """The newest clocks per issue, with each issue's vendor as the log names it."""
        unknown = [issue_id for issue_id, seen in latest.items() if seen.vendor_id is None]
        known: dict[str, str] = {}
        if unknown:
            known = {
                r["issue_id"]: r["vendor_id"]
                for r in await conn.fetch(QUERIES["known_vendors"], unknown)
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
