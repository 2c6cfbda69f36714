"""The projector's fold, without PostgreSQL or Kafka: what each event does to the read models."""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tierline.projector.fold import (
    DAILY_FIELDS,
    BatchChanges,
    ClockRow,
    DailyCounts,
    IssueRow,
    clock_row,
    fold,
    summarize_clocks,
)
from tierline.projector.tables import CLOCK_COLUMNS
from tierline.projector.workload import Workload

PROPERTY = settings(max_examples=40, deadline=None, database=None)
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
ISSUE = "11111111-1111-4111-8111-111111111111"


@dataclass(frozen=True)
class Ev:
    """A log event as the fold reads it."""

    stream_id: str
    version: int
    type: str
    time: datetime
    data: dict[str, Any] = field(default_factory=dict)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))


def ev(version: int, name: str, minutes: float, **data: Any) -> Ev:
    return Ev(ISSUE, version, f"io.tierline.issue.{name}.v1", T0 + timedelta(minutes=minutes), data)


def clock(cid: str, kind: str, tier: int, state: str, **extra: Any) -> dict[str, Any]:
    base = {
        "id": cid,
        "kind": kind,
        "tier": tier,
        "state": state,
        "started_at": T0.isoformat(),
        "target_seconds": 3600.0,
        "elapsed_seconds": 0.0,
        "running_since": None,
        "due_at": None,
        "warn_at": [0.75],
        "warned": [],
        "auto_escalate": False,
        "breached_at": None,
        "ended_at": None,
    }
    return {**base, **extra}


OPENED = ev(
    1, "opened", 0, vendor_id="acme", title="Reports late", category="communication",
    priority="P2", tier=1,
    clocks=[clock("respond-1", "respond", 1, "running", due_at="2026-11-02T10:00:00Z"),
            clock("resolve-1", "resolve", 1, "running", due_at="2026-11-02T17:00:00Z")],
)  # fmt: skip


def test_a_lifecycle_fills_every_projection() -> None:
    states: dict[str, IssueRow] = {}
    acked = [
        clock("respond-1", "respond", 1, "met", ended_at="2026-11-02T09:30:00Z"),
        clock("resolve-1", "resolve", 1, "running", due_at="2026-11-02T17:00:00Z"),
    ]
    events = [
        OPENED,
        ev(2, "acknowledged", 30, clocks=acked),
        # An old-style escalation: the new list no longer has tier 1's clocks.
        ev(3, "escalated", 90, from_tier=1, to_tier=2, reason="slow", automatic=False,
           clocks=[clock("respond-2", "respond", 2, "running", due_at="2026-11-02T12:30:00Z")]),
        ev(4, "resolved", 150, resolution="fixed",
           clocks=[clock("respond-2", "respond", 2, "met", ended_at="2026-11-02T11:30:00Z")]),
        ev(5, "reopened", 60 * 24 + 10, reason="back"),
    ]  # fmt: skip
    changes = fold(states, events)

    row = states[ISSUE]
    assert (row.status, row.tier, row.version, row.escalation_count, row.reopen_count) == (
        "open", 2, 5, 1, 1,
    )  # fmt: skip
    assert row.tier_entered_at == T0 + timedelta(minutes=90)
    assert row.cycle_started_at == T0 + timedelta(minutes=60 * 24 + 10)
    assert row.acknowledged_at is None and row.resolved_at is None
    assert [t[3] for t in changes.timeline] == [
        "opened", "acknowledged", "escalated", "resolved", "reopened",
    ]  # fmt: skip
    assert changes.timeline[2].summary == "Escalated from tier 1 to tier 2 (manual): slow"
    assert "clocks" not in json.loads(changes.timeline[0][10])

    (escalation,) = changes.escalations
    assert escalation[3:8] == ("up", 1, 2, False, "slow")
    assert escalation[11] == 90 * 60.0

    stopped = clock_row(changes.clocks[(ISSUE, "resolve-1")])
    assert (stopped.state, stopped.outcome) == ("stopped", "stopped")
    assert stopped.ended_at == T0 + timedelta(minutes=90)
    assert clock_row(changes.clocks[(ISSUE, "respond-1")]).outcome == "met"

    day1 = changes.daily[("acme", date(2026, 11, 2))]
    assert (day1.opened, day1.acknowledged, day1.resolved, day1.escalations) == (1, 1, 1, 1)
    assert day1.clocks_met == 2
    assert day1.ack_seconds_total == Decimal("1800.000000")
    assert day1.resolve_seconds_total == Decimal(150 * 60)
    assert day1.open_delta == 0
    day2 = changes.daily[("acme", date(2026, 11, 3))]
    assert (day2.reopened, day2.open_delta) == (1, 1)


def test_breaches_warnings_and_the_current_clocks() -> None:
    states: dict[str, IssueRow] = {}
    breached = clock("respond-1", "respond", 1, "breached", breached_at="2026-11-02T10:00:00Z")
    running = clock("resolve-1", "resolve", 1, "running", due_at="2026-11-02T17:00:00Z")
    changes = fold(
        states,
        [
            OPENED,
            ev(2, "sla_warning", 45, clock_id="respond-1", tier=1, kind="respond",
               threshold=0.75, due_at="2026-11-02T10:00:00Z"),
            ev(3, "sla_breached", 60, clock_id="respond-1", tier=1, kind="respond",
               due_at="2026-11-02T10:00:00Z", breached_at="2026-11-02T10:00:00Z",
               clocks=[breached, running]),
        ],
    )  # fmt: skip
    day = changes.daily[("acme", date(2026, 11, 2))]
    assert (day.warnings, day.breaches, day.respond_breaches, day.resolve_breaches) == (1, 1, 1, 0)
    assert states[ISSUE].breach_count == 1
    row: ClockRow = clock_row(changes.clocks[(ISSUE, "respond-1")])
    assert (row.outcome, row.outcome_at) == ("breached", datetime(2026, 11, 2, 10, tzinfo=UTC))
    summary = summarize_clocks(states[ISSUE].clocks)
    assert summary.sla_breached and summary.respond_state == "breached"
    assert summary.next_due_at == summary.resolve_due_at == datetime(2026, 11, 2, 17, tzinfo=UTC)


def test_events_before_their_issue_is_opened_are_set_aside() -> None:
    changes = fold({}, [ev(2, "acknowledged", 5)])
    assert changes.unprojectable == [(ISSUE, 2)]
    assert not changes.issues and not changes.timeline


def test_a_version_gap_is_reported_and_the_event_still_applied() -> None:
    states: dict[str, IssueRow] = {}
    fold(states, [OPENED])
    changes = fold(states, [ev(3, "assigned", 5, assignee="ana")])
    assert changes.gaps == [(ISSUE, 2, 3)]
    assert states[ISSUE].assignee == "ana" and states[ISSUE].version == 3


def test_governance_events_are_ignored() -> None:
    policy = Ev("governance", 1, "io.tierline.governance.policy_changed.v1", T0, {})
    assert fold({}, [policy]) == BatchChanges()


def _merge(total: BatchChanges, part: BatchChanges) -> None:
    """What writing `part` after `total` leaves in the tables."""
    total.issues.update(part.issues)
    total.timeline += part.timeline
    total.escalations += part.escalations
    total.clocks.update(part.clocks)
    for key, counts in part.daily.items():
        into = total.daily.setdefault(key, DailyCounts())
        for name in DAILY_FIELDS:
            setattr(into, name, getattr(into, name) + getattr(counts, name))


WORKLOAD_EVENTS = [
    Ev(e.stream_id, e.version, e.type, e.time, json.loads(e.data_json), str(e.event_id))
    for e in Workload(seed=11).events(1500)
]


@PROPERTY
@given(st.lists(st.integers(min_value=1, max_value=len(WORKLOAD_EVENTS) - 1), max_size=30))
def test_how_the_log_is_cut_into_batches_changes_nothing(cuts: list[int]) -> None:
    whole = fold({}, WORKLOAD_EVENTS)
    states: dict[str, IssueRow] = {}
    merged = BatchChanges()
    bounds = [0, *sorted(set(cuts)), len(WORKLOAD_EVENTS)]
    for start, end in itertools.pairwise(bounds):
        _merge(merged, fold(states, WORKLOAD_EVENTS[start:end]))
    assert merged.issues == whole.issues
    assert merged.timeline == whole.timeline
    assert merged.escalations == whole.escalations
    assert merged.clocks == whole.clocks
    assert merged.daily == whole.daily


def test_the_workload_exercises_every_kind_of_event() -> None:
    changes = fold({}, WORKLOAD_EVENTS)
    kinds = {t[3] for t in changes.timeline}
    assert kinds >= {
        "opened", "acknowledged", "assigned", "commented", "priority_changed", "escalated",
        "deescalated", "put_on_hold", "resumed", "resolved", "reopened", "closed",
        "sla_warning", "sla_breached",
    }  # fmt: skip
    assert any(e[6] for e in changes.escalations), "no automatic escalation"
    outcomes = {clock_row(c).outcome for c in changes.clocks.values()}
    assert outcomes >= {"met", "breached", "stopped", None}


def test_clock_rows_are_in_table_column_order() -> None:
    # COPY sends clock_record tuples positionally into CLOCK_COLUMNS.
    assert tuple(ClockRow.__dataclass_fields__) == tuple(name for name, _ in CLOCK_COLUMNS)
