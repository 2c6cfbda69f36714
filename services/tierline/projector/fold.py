"""Fold a batch of issue events into read-model changes: pure, no I/O, no clock reads.

The projector loads the touched issues' rows, folds the batch in log order and writes the
changes set-based. Replays run the very same fold, which is what makes a rebuilt read model equal
to the one built live. Event data is used as the log carries it (plain JSON), not re-validated
through the domain models: the write side validated it, and the projector must keep up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

import orjson

ISSUE_TYPE_PREFIX = "io.tierline.issue."
LIVE_CLOCK_STATES = ("running", "paused")
OUTCOMES = {"met": "met", "breached": "breached", "stopped": "stopped"}
SUMMARY_LIMIT = 200


def encode_json(value: Any) -> str:
    """Compact UTF-8 JSON text of decoded JSON (orjson: ~5x the standard library's encoder)."""
    return orjson.dumps(value).decode()


Clock = dict[str, Any]


class EventLike(Protocol):
    """What the fold needs of an event (`tierline.eventlog.cloudevents.LogEvent` fits)."""

    @property
    def event_id(self) -> str:
        """The CloudEvents id."""

    @property
    def stream_id(self) -> str:
        """The issue id."""

    @property
    def version(self) -> int:
        """The stream version."""

    @property
    def type(self) -> str:
        """The CloudEvents type."""

    @property
    def time(self) -> datetime:
        """When the event was recorded."""

    @property
    def data(self) -> dict[str, Any]:
        """The event's JSON data."""


@dataclass(slots=True)
class IssueRow:
    """One row of `read.issues` (without `list_seq`) and the fold's per-issue state."""

    issue_id: str
    vendor_id: str
    title: str
    category: str
    priority: str
    status: str
    tier: int
    assignee: str | None
    external_ref: str | None
    reported_by: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    tier_entered_at: datetime
    cycle_started_at: datetime
    acknowledged_at: datetime | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    breach_count: int = 0
    escalation_count: int = 0
    reopen_count: int = 0
    comment_count: int = 0
    clocks: list[Clock] = field(default_factory=list)


@dataclass(slots=True)
class ClockSummary:
    """The issue's current clocks as the list filters and Grafana want them."""

    respond_state: str | None = None
    respond_due_at: datetime | None = None
    resolve_state: str | None = None
    resolve_due_at: datetime | None = None
    next_due_at: datetime | None = None
    sla_breached: bool = False


@dataclass(slots=True)
class ClockRow:
    """One row of `read.sla_clocks`."""

    issue_id: str
    clock_id: str
    vendor_id: str
    tier: int
    kind: str
    priority: str
    state: str
    outcome: str | None
    started_at: datetime
    due_at: datetime | None
    target_seconds: float
    elapsed_seconds: float
    warned: list[float]
    breached_at: datetime | None
    ended_at: datetime | None
    outcome_at: datetime | None
    updated_at: datetime


@dataclass(slots=True)
class ClockChange:
    """The last change of one clock in a batch, turned into a ClockRow only when written."""

    issue_id: str
    vendor_id: str
    priority: str
    clock: Clock
    at: datetime
    stopped: bool = False


@dataclass(slots=True)
class DailyCounts:
    """Increments to one `read.vendor_daily` row."""

    opened: int = 0
    acknowledged: int = 0
    resolved: int = 0
    reopened: int = 0
    closed: int = 0
    escalations: int = 0
    automatic_escalations: int = 0
    deescalations: int = 0
    warnings: int = 0
    breaches: int = 0
    respond_breaches: int = 0
    resolve_breaches: int = 0
    clocks_met: int = 0
    ack_seconds_total: Decimal = Decimal(0)
    resolve_seconds_total: Decimal = Decimal(0)
    open_delta: int = 0


DAILY_FIELDS = tuple(DailyCounts.__dataclass_fields__)


class TimelineRow(NamedTuple):
    """One row of read.issue_timeline, in its column order (it is copied in as a record)."""

    issue_id: str
    version: int
    event_id: str
    event_type: str
    occurred_at: datetime
    vendor_id: str
    status: str
    tier: int
    priority: str
    summary: str
    data: str


class EscalationRow(NamedTuple):
    """One row of read.escalations, in its column order (it is copied in as a record)."""

    issue_id: str
    version: int
    vendor_id: str
    direction: str
    from_tier: int
    to_tier: int
    automatic: bool
    reason: str
    priority: str
    escalated_at: datetime
    from_tier_entered_at: datetime
    seconds_in_from_tier: float


@dataclass
class BatchChanges:
    """What one batch changes, ready to be written set-based."""

    issues: dict[str, IssueRow] = field(default_factory=dict)
    new_issues: list[str] = field(default_factory=list)
    timeline: list[TimelineRow] = field(default_factory=list)
    escalations: list[EscalationRow] = field(default_factory=list)
    clocks: dict[tuple[str, str], ClockChange] = field(default_factory=dict)
    daily: dict[tuple[str, date], DailyCounts] = field(default_factory=dict)
    unprojectable: list[tuple[str, int]] = field(default_factory=list)
    gaps: list[tuple[str, int, int]] = field(default_factory=list)

    def day(self, vendor_id: str, at: datetime) -> DailyCounts:
        """The increments for a vendor on the UTC day of `at`."""
        key = (vendor_id, at.astimezone(UTC).date())
        counts = self.daily.get(key)
        if counts is None:
            counts = self.daily[key] = DailyCounts()
        return counts


def short_name(event_type: str) -> str | None:
    """`io.tierline.issue.escalated.v1` -> `escalated`; None for non-issue events."""
    if not event_type.startswith(ISSUE_TYPE_PREFIX):
        return None
    return event_type[len(ISSUE_TYPE_PREFIX) :].rsplit(".", 1)[0]


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 time from event JSON (None stays None)."""
    return None if value is None else datetime.fromisoformat(value)


def fold(states: dict[str, IssueRow], events: Sequence[EventLike]) -> BatchChanges:
    """Apply events in order to `states` (updated in place) and collect the changes."""
    changes = BatchChanges()
    for event in events:
        name = short_name(event.type)
        if name is not None:
            _fold_one(changes, states, event, name)
    return changes


def _fold_one(
    changes: BatchChanges, states: dict[str, IssueRow], event: EventLike, name: str
) -> None:
    data, at = event.data, event.time
    row = states.get(event.stream_id)
    if name == "opened":
        row = _opened(event)
        states[row.issue_id] = row
        changes.new_issues.append(row.issue_id)
        day = changes.day(row.vendor_id, at)
        day.opened += 1
        day.open_delta += 1
    elif row is None:
        changes.unprojectable.append((event.stream_id, event.version))
        return
    else:
        if event.version != row.version + 1:
            changes.gaps.append((event.stream_id, row.version + 1, event.version))
        row.version = event.version
        apply = EVENT_FOLDS.get(name)
        if apply is not None:
            apply(changes, row, data, at)
    row.updated_at = at
    clocks = data.get("clocks")
    if clocks is not None:
        _fold_clocks(changes, row, clocks, at)
    changes.timeline.append(_timeline_row(event, name, row))
    changes.issues[row.issue_id] = row


def _opened(event: EventLike) -> IssueRow:
    data, at = event.data, event.time
    return IssueRow(
        issue_id=event.stream_id,
        vendor_id=data["vendor_id"],
        title=data["title"],
        category=data["category"],
        priority=data["priority"],
        status="open",
        tier=int(data.get("tier", 1)),
        assignee=None,
        external_ref=data.get("external_ref"),
        reported_by=data.get("reported_by"),
        version=event.version,
        created_at=at,
        updated_at=at,
        tier_entered_at=at,
        cycle_started_at=at,
    )


MICROSECOND = timedelta(microseconds=1)


def _seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


def _exact_seconds(later: datetime, earlier: datetime) -> Decimal:
    """Elapsed seconds as an exact decimal, so totals do not depend on the order of addition."""
    return Decimal((later - earlier) // MICROSECOND).scaleb(-6)


def _acknowledged(changes: BatchChanges, row: IssueRow, data: dict[str, Any], at: datetime) -> None:
    day = changes.day(row.vendor_id, at)
    day.acknowledged += 1
    day.ack_seconds_total += _exact_seconds(at, row.cycle_started_at)
    row.status = "acknowledged"
    row.acknowledged_at = at


def _assigned(changes: BatchChanges, row: IssueRow, data: dict[str, Any], at: datetime) -> None:
    row.assignee = data["assignee"]


def _commented(changes: BatchChanges, row: IssueRow, data: dict[str, Any], at: datetime) -> None:
    row.comment_count += 1


def _priority_changed(
    changes: BatchChanges, row: IssueRow, data: dict[str, Any], at: datetime
) -> None:
    row.priority = data["to_priority"]


def _tier_changed(changes: BatchChanges, row: IssueRow, data: dict[str, Any], at: datetime) -> None:
    up = data["to_tier"] > data["from_tier"]
    automatic = bool(data.get("automatic", False))
    changes.escalations.append(
        EscalationRow(
            issue_id=row.issue_id,
            version=row.version,
            vendor_id=row.vendor_id,
            direction="up" if up else "down",
            from_tier=int(data["from_tier"]),
            to_tier=int(data["to_tier"]),
            automatic=automatic,
            reason=data.get("reason", ""),
            priority=row.priority,
            escalated_at=at,
            from_tier_entered_at=row.tier_entered_at,
            seconds_in_from_tier=_seconds(at, row.tier_entered_at),
        )
    )
    day = changes.day(row.vendor_id, at)
    if up:
        day.escalations += 1
        day.automatic_escalations += automatic
        row.escalation_count += 1
    else:
        day.deescalations += 1
    row.tier = int(data["to_tier"])
    row.status = "open"
    row.tier_entered_at = at


def _put_on_hold(changes: BatchChanges, row: IssueRow, data: dict[str, Any], at: datetime) -> None:
    row.status = "on_hold"


def _resumed(changes: BatchChanges, row: IssueRow, data: dict[str, Any], at: datetime) -> None:
    row.status = data.get("status", "open")


def _resolved(changes: BatchChanges, row: IssueRow, data: dict[str, Any], at: datetime) -> None:
    day = changes.day(row.vendor_id, at)
    day.resolved += 1
    day.resolve_seconds_total += _exact_seconds(at, row.cycle_started_at)
    day.open_delta -= 1
    row.status = "resolved"
    row.resolved_at = at


def _reopened(changes: BatchChanges, row: IssueRow, data: dict[str, Any], at: datetime) -> None:
    day = changes.day(row.vendor_id, at)
    day.reopened += 1
    day.open_delta += 1
    row.status = "open"
    row.reopen_count += 1
    row.cycle_started_at = at
    # acknowledged_at and resolved_at describe the current cycle, which starts afresh.
    row.acknowledged_at = None
    row.resolved_at = None


def _closed(changes: BatchChanges, row: IssueRow, data: dict[str, Any], at: datetime) -> None:
    changes.day(row.vendor_id, at).closed += 1
    row.status = "closed"
    row.closed_at = at


def _sla_warning(changes: BatchChanges, row: IssueRow, data: dict[str, Any], at: datetime) -> None:
    changes.day(row.vendor_id, at).warnings += 1


def _sla_breached(changes: BatchChanges, row: IssueRow, data: dict[str, Any], at: datetime) -> None:
    day = changes.day(row.vendor_id, at)
    day.breaches += 1
    if data.get("kind") == "respond":
        day.respond_breaches += 1
    else:
        day.resolve_breaches += 1
    row.breach_count += 1


EventFold = Callable[[BatchChanges, IssueRow, dict[str, Any], datetime], None]
EVENT_FOLDS: dict[str, EventFold] = {
    "acknowledged": _acknowledged,
    "assigned": _assigned,
    "commented": _commented,
    "priority_changed": _priority_changed,
    "escalated": _tier_changed,
    "deescalated": _tier_changed,
    "put_on_hold": _put_on_hold,
    "resumed": _resumed,
    "resolved": _resolved,
    "reopened": _reopened,
    "closed": _closed,
    "sla_warning": _sla_warning,
    "sla_breached": _sla_breached,
}


def _fold_clocks(changes: BatchChanges, row: IssueRow, clocks: list[Clock], at: datetime) -> None:
    """Record changed clocks; a live clock missing from the new list was stopped by a tier move."""
    before = row.clocks
    unmatched: dict[str, Clock] | None = None
    for index, clock in enumerate(clocks):
        # The write side keeps clocks in order and appends new ones: usually same place, same id.
        old = before[index] if index < len(before) else None
        if old is None or old["id"] != clock["id"]:
            if unmatched is None:
                unmatched = {c["id"]: c for c in before}
            old = unmatched.get(clock["id"])
        if old == clock:
            continue
        if clock["state"] == "met" and (old is None or old["state"] != "met"):
            changes.day(row.vendor_id, at).clocks_met += 1
        key = (row.issue_id, clock["id"])
        changes.clocks[key] = ClockChange(row.issue_id, row.vendor_id, row.priority, clock, at)
    if len(clocks) < len(before) or unmatched is not None:
        kept = {c["id"] for c in clocks}
        for old in before:
            if old["id"] not in kept and old["state"] in LIVE_CLOCK_STATES:
                key = (row.issue_id, old["id"])
                changes.clocks[key] = ClockChange(
                    row.issue_id, row.vendor_id, row.priority, old, at, stopped=True
                )
    row.clocks = clocks


def clock_row(change: ClockChange) -> ClockRow:
    """The `read.sla_clocks` row of a clock as its last change left it."""
    return ClockRow(*clock_record(change))


def clock_record(change: ClockChange) -> tuple[Any, ...]:
    """The same row as a tuple in ClockRow field order (what COPY takes, without the object)."""
    clock = change.clock
    state = "stopped" if change.stopped else clock["state"]
    breached_at = parse_time(clock.get("breached_at"))
    ended_at = change.at if change.stopped else parse_time(clock.get("ended_at"))
    return (
        change.issue_id,
        clock["id"],
        change.vendor_id,
        int(clock["tier"]),
        clock["kind"],
        change.priority,
        state,
        OUTCOMES.get(state),
        datetime.fromisoformat(clock["started_at"]),
        parse_time(clock.get("due_at")),
        float(clock["target_seconds"]),
        float(clock.get("elapsed_seconds", 0.0)),
        [float(w) for w in clock.get("warned", ())],
        breached_at,
        ended_at,
        breached_at if state == "breached" else ended_at,
        change.at,
    )


def issue_clock_summary(row: IssueRow) -> ClockSummary:
    """The clock columns of an issue's `read.issues` row."""
    since = max(row.tier_entered_at, row.cycle_started_at)
    return summarize_clocks(row.clocks, tier=row.tier, since=since)


def summarize_clocks(
    clocks: list[Clock], *, tier: int | None = None, since: datetime | None = None
) -> ClockSummary:
    """States and due times of the latest clock of each kind, and whether a current one breached.

    The current clocks are those of `tier` started at or after `since`, when the issue entered
    its tier or cycle. The latest clocks are not always current: a tier or priority without an
    SLA policy starts none, and the clocks left behind keep their states (a breached one stays
    breached) while the issue moves on. Without `tier` and `since` every latest clock counts.
    """
    latest: dict[str, Clock] = {}
    for clock in clocks:
        latest[clock["kind"]] = clock
    summary = ClockSummary()
    for kind, clock in latest.items():
        due = parse_time(clock.get("due_at")) if clock["state"] == "running" else None
        if kind == "respond":
            summary.respond_state, summary.respond_due_at = clock["state"], due
        else:
            summary.resolve_state, summary.resolve_due_at = clock["state"], due
        if due is not None and (summary.next_due_at is None or due < summary.next_due_at):
            summary.next_due_at = due
        if clock["state"] == "breached" and _is_current(clock, tier, since):
            summary.sla_breached = True
    return summary


def _is_current(clock: Clock, tier: int | None, since: datetime | None) -> bool:
    # A clock of an earlier tier or cycle started strictly before the issue left it: it was
    # breached (after its start) no later than the move or reopening that left it behind.
    if tier is not None and int(clock["tier"]) != tier:
        return False
    return since is None or datetime.fromisoformat(clock["started_at"]) >= since


def _timeline_row(event: EventLike, name: str, row: IssueRow) -> TimelineRow:
    data = {k: v for k, v in event.data.items() if k != "clocks"}
    return TimelineRow(
        issue_id=row.issue_id,
        version=event.version,
        event_id=event.event_id,
        event_type=name,
        occurred_at=event.time,
        vendor_id=row.vendor_id,
        status=row.status,
        tier=row.tier,
        priority=row.priority,
        summary=summarize_event(name, event.data)[:SUMMARY_LIMIT],
        data=encode_json(data),
    )


def summarize_event(name: str, data: dict[str, Any]) -> str:
    """One line for people reading a timeline."""
    describe = SUMMARIES.get(name)
    return describe(data) if describe is not None else name.replace("_", " ").capitalize()


def _with(text: str, detail: object) -> str:
    return f"{text}: {detail}" if detail else text


SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "opened": lambda d: (
        f"Opened at tier {d.get('tier', 1)} as {d['priority']} {d['category']}: {d['title']}"
    ),
    "acknowledged": lambda d: _with("Acknowledged", d.get("note")),
    "assigned": lambda d: f"Assigned to {d['assignee']}",
    "commented": lambda d: _with("Comment", d.get("author")),
    "priority_changed": lambda d: _with(
        f"Priority {d['from_priority']} -> {d['to_priority']}", d.get("reason")
    ),
    "escalated": lambda d: (
        f"Escalated from tier {d['from_tier']} to tier {d['to_tier']} "
        f"({'automatic' if d.get('automatic') else 'manual'}): {d['reason']}"
    ),
    "deescalated": lambda d: (
        f"De-escalated from tier {d['from_tier']} to tier {d['to_tier']}: {d['reason']}"
    ),
    "put_on_hold": lambda d: _with("Put on hold", d.get("reason")),
    "resumed": lambda d: f"Resumed ({d.get('status', 'open')})",
    "resolved": lambda d: _with("Resolved", d.get("resolution")),
    "reopened": lambda d: _with("Reopened", d.get("reason")),
    "closed": lambda d: "Closed",
    "sla_warning": lambda d: (
        f"{d['kind'].capitalize()} SLA at tier {d['tier']} reached "
        f"{float(d['threshold']):.0%} of its target (due {d['due_at']})"
    ),
    "sla_breached": lambda d: (
        f"{d['kind'].capitalize()} SLA breached at tier {d['tier']} (due {d['due_at']})"
    ),
}
