"""Every row of API.md's state machine, allowed and refused, on the pure aggregate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tierline.domain import commands as c
from tierline.domain.calendar import BusinessCalendar, CalendarSpec
from tierline.domain.events import Event, Status
from tierline.domain.governance import DEFAULT_GOVERNANCE
from tierline.domain.issue import InvalidTransition, Issue, Rules, decide, evolve

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
RULES = Rules(governance=DEFAULT_GOVERNANCE, calendar=BusinessCalendar(CalendarSpec()))
ALL_STATUSES: tuple[Status, ...] = ("open", "acknowledged", "on_hold", "resolved", "closed")

COMMANDS: dict[str, c.Command] = {
    "acknowledge": c.Acknowledge(note="seen"),
    "escalate": c.Escalate(reason="stuck"),
    "deescalate": c.Deescalate(reason="calmer"),
    "hold": c.Hold(reason="waiting for customer"),
    "resume": c.Resume(),
    "resolve": c.Resolve(resolution="fixed"),
    "reopen": c.Reopen(reason="regressed"),
    "close": c.Close(),
    "assign": c.Assign(assignee="dana"),
    "priority": c.ChangePriority(priority="P1"),
    "comments": c.AddComment(body="note"),
}
ALLOWED: dict[str, set[str]] = {
    "acknowledge": {"open"},
    "escalate": {"open", "acknowledged"},
    "deescalate": {"open", "acknowledged"},
    "hold": {"open", "acknowledged"},
    "resume": {"on_hold"},
    "resolve": {"open", "acknowledged", "on_hold"},
    "reopen": {"resolved"},
    "close": {"resolved"},
    "assign": {"open", "acknowledged", "on_hold", "resolved"},
    "priority": {"open", "acknowledged", "on_hold", "resolved"},
    "comments": {"open", "acknowledged", "on_hold", "resolved"},
}


def run(state: Issue | None, command: c.Command, at: datetime) -> tuple[Issue, list[Event]]:
    events = decide(state, command, at, RULES)
    for event in events:
        version = (state.version if state else 0) + 1
        state = evolve(state, event, issue_id="i-1", version=version, at=at)
    assert state is not None
    return state, events


def issue_in(status: Status, tier: int = 2) -> Issue:
    """An issue driven through real commands into `status` (at tier 2 so deescalate is possible)."""
    opened = c.OpenIssue(vendor_id="acme", title="t", category="quality", priority="P3")
    state, _ = run(None, opened, T0)
    at = T0
    for _ in range(tier - 1):
        at += timedelta(minutes=1)
        state, _ = run(state, c.Escalate(reason="up"), at)
    path: dict[str, list[c.Command]] = {
        "open": [],
        "acknowledged": [c.Acknowledge()],
        "on_hold": [c.Hold(reason="x")],
        "resolved": [c.Resolve(resolution="x")],
        "closed": [c.Resolve(resolution="x"), c.Close()],
    }
    for command in path[status]:
        at += timedelta(minutes=1)
        state, _ = run(state, command, at)
    assert state.status == status
    return state


@pytest.mark.parametrize("status", ALL_STATUSES)
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_transition_table(name: str, status: Status) -> None:
    state = issue_in(status)
    at = T0 + timedelta(hours=1)
    if status in ALLOWED[name]:
        after, events = run(state, COMMANDS[name], at)
        assert events, f"{name} from {status} recorded nothing"
        assert after.version == state.version + len(events)
    else:
        with pytest.raises(InvalidTransition):
            decide(state, COMMANDS[name], at, RULES)


def test_outcomes_of_each_transition() -> None:
    at = T0 + timedelta(hours=1)
    acked, _ = run(issue_in("open"), c.Acknowledge(), at)
    assert acked.status == "acknowledged"
    assert {k.kind: k.state for k in acked.clocks} == {"respond": "met", "resolve": "running"}

    up, events = run(acked, c.Escalate(reason="r"), at)
    assert (up.tier, up.status) == (3, "open")
    assert events[0].model_dump()["automatic"] is False
    assert {(k.kind, k.state) for k in up.clocks if k.tier == 3} == {
        ("respond", "running"),
        ("resolve", "running"),
    }
    assert all(k.state != "running" for k in up.clocks if k.tier != 3)

    down, _ = run(issue_in("open"), c.Deescalate(reason="r"), at)
    assert down.tier == 1
    assert all(k.tier == 1 for k in down.clocks if k.state == "running")

    held, _ = run(issue_in("acknowledged"), c.Hold(reason="r"), at)
    assert held.status == "on_hold"
    assert not any(k.state == "running" for k in held.clocks)
    resumed, _ = run(held, c.Resume(), at + timedelta(hours=1))
    assert resumed.status == "acknowledged"

    resolved, _ = run(issue_in("open"), c.Resolve(resolution="r"), at)
    assert {k.state for k in resolved.clocks if k.tier == resolved.tier} == {"met"}
    reopened, _ = run(resolved, c.Reopen(reason="r"), at)
    assert reopened.status == "open" and reopened.tier == resolved.tier
    running = [k for k in reopened.clocks if k.state == "running"]
    assert len(running) == 2
    assert {k.id for k in running}.isdisjoint({k.id for k in resolved.clocks})


def test_deescalate_below_tier_one_is_refused() -> None:
    with pytest.raises(InvalidTransition, match="below tier 1"):
        decide(issue_in("open", tier=1), c.Deescalate(reason="r"), T0, RULES)


def test_escalate_above_top_tier_is_refused() -> None:
    with pytest.raises(InvalidTransition, match="top tier"):
        decide(issue_in("open", tier=3), c.Escalate(reason="r"), T0, RULES)


def test_hold_keeps_elapsed_time_and_moves_the_due_time() -> None:
    opened = issue_in("open", tier=1)
    held, _ = run(opened, c.Hold(reason="r"), T0 + timedelta(minutes=30))
    resumed, _ = run(held, c.Resume(), T0 + timedelta(hours=5, minutes=30))
    before = {k.kind: k for k in opened.clocks}
    for clock in [k for k in resumed.clocks if k.state == "running"]:
        assert clock.elapsed_seconds == pytest.approx(1800)
        assert clock.due_at == before[clock.kind].due_at + timedelta(hours=5)


def test_priority_change_keeps_elapsed_time() -> None:
    opened = issue_in("open", tier=1)  # P3 at tier 1: respond within 8h
    at = T0 + timedelta(hours=1)
    changed, _ = run(opened, c.ChangePriority(priority="P1"), at)  # P1: respond within 1h
    respond = next(k for k in changed.clocks if k.kind == "respond" and k.state == "running")
    assert respond.elapsed_seconds == pytest.approx(3600 - 60 * 0)  # one hour already spent
    assert respond.due_at == at  # 1h target, 1h spent: due now


def test_same_priority_records_nothing() -> None:
    state = issue_in("open")
    assert decide(state, c.ChangePriority(priority="P3"), T0, RULES) == []
