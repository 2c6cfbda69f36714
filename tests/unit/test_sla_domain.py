"""SLA clocks in the issue aggregate: warnings, breaches, escalation, pauses and retargets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierline.domain import commands as c
from tierline.domain import events as e
from tierline.domain.calendar import BusinessCalendar, CalendarSpec
from tierline.domain.clocks import Clock, next_fire_at
from tierline.domain.governance import Governance, Priority, SlaPolicy, Tier
from tierline.domain.issue import InvalidTransition, Issue, Rules, decide, evolve

PROPERTY = settings(max_examples=120, deadline=None, database=None)
T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)  # a Monday
HOUR = timedelta(hours=1)
WORKWEEK = {day: ["09:00", "17:00"] for day in ("mon", "tue", "wed", "thu", "fri")}


def policy(
    tier: int, priority: Priority, respond_h: float, resolve_h: float, **kw: object
) -> SlaPolicy:
    """An SLA policy with targets in hours."""
    return SlaPolicy(
        tier=tier,
        priority=priority,
        respond_within=timedelta(hours=respond_h),
        resolve_within=timedelta(hours=resolve_h),
        **kw,  # type: ignore[arg-type]
    )


def ladder(*policies: SlaPolicy, tiers: int = 3) -> Governance:
    """A governance document with `tiers` rungs and the given policies."""
    return Governance(
        tiers=[Tier(level=n, name=f"Tier {n}") for n in range(1, tiers + 1)], sla=list(policies)
    )


GOVERNANCE = ladder(
    *(policy(t, "P1", 1, 8, auto_escalate=True) for t in (1, 2, 3)),
    *(policy(t, "P2", 4, 24) for t in (1, 2, 3)),
)
RULES = Rules(governance=GOVERNANCE, calendar=BusinessCalendar(CalendarSpec()))


class Timeline:
    """An issue driven through decide/evolve, recording every event."""

    def __init__(self, rules: Rules = RULES, priority: Priority = "P1", at: datetime = T0) -> None:
        self.rules = rules
        self.events: list[e.Event] = []
        self.state: Issue | None = None
        opened = c.OpenIssue(vendor_id="acme", title="t", category="quality", priority=priority)
        self.run(opened, at)

    @property
    def issue(self) -> Issue:
        """The current state."""
        assert self.state is not None
        return self.state

    def run(self, command: c.Command, at: datetime) -> list[e.Event]:
        """Decide and apply one command at `at`."""
        recorded = decide(self.state, command, at, self.rules)
        for event in recorded:
            version = 1 if self.state is None else self.state.version + 1
            self.state = evolve(self.state, event, issue_id="i-1", version=version, at=at)
        self.events.extend(recorded)
        return recorded

    def clock(self, clock_id: str) -> Clock:
        """One clock of the issue by id."""
        return next(k for k in self.issue.clocks if k.id == clock_id)


def kinds(recorded: Sequence[e.Event]) -> list[str]:
    """The event names, in order."""
    return [type(ev).name for ev in recorded]


# --- starting clocks --------------------------------------------------------------------------


def test_opening_starts_a_respond_and_a_resolve_clock_at_tier_1() -> None:
    tl = Timeline()
    respond, resolve = tl.clock("respond-1"), tl.clock("resolve-1")
    assert (respond.kind, respond.tier, respond.state) == ("respond", 1, "running")
    assert respond.due_at == T0 + HOUR
    assert resolve.due_at == T0 + 8 * HOUR
    assert respond.warn_at == [0.75, 0.9] and respond.auto_escalate


def test_a_priority_without_a_policy_has_no_clocks() -> None:
    assert Timeline(priority="P4").issue.clocks == []


def test_next_fire_at_walks_the_thresholds_then_the_deadline() -> None:
    tl = Timeline()
    cal = RULES.calendar
    assert next_fire_at(tl.clock("respond-1"), cal) == (T0 + 45 * timedelta(minutes=1), 0.75)
    tl.run(c.RecordSlaWarning(clock_id="respond-1", threshold=0.75), T0 + timedelta(minutes=46))
    assert next_fire_at(tl.clock("respond-1"), cal) == (T0 + timedelta(minutes=54), 0.9)
    tl.run(c.RecordSlaWarning(clock_id="respond-1", threshold=0.9), T0 + timedelta(minutes=55))
    assert next_fire_at(tl.clock("respond-1"), cal) == (T0 + HOUR, None)
    tl.run(c.Hold(reason="waiting for the vendor"), T0 + timedelta(minutes=56))
    assert next_fire_at(tl.clock("respond-1"), cal) is None


# --- warnings, breaches, automatic escalation -------------------------------------------------


def test_warning_is_recorded_once_and_not_early() -> None:
    tl = Timeline()
    warn = c.RecordSlaWarning(clock_id="respond-1", threshold=0.75)
    assert tl.run(warn, T0 + timedelta(minutes=44)) == []
    recorded = tl.run(warn, T0 + timedelta(minutes=45))
    assert kinds(recorded) == ["sla_warning"]
    assert isinstance(recorded[0], e.SlaWarning)
    assert (recorded[0].tier, recorded[0].kind, recorded[0].threshold) == (1, "respond", 0.75)
    assert recorded[0].due_at == T0 + HOUR
    assert tl.run(warn, T0 + timedelta(minutes=50)) == []
    unknown = c.RecordSlaWarning(clock_id="respond-1", threshold=0.5)
    assert tl.run(unknown, T0 + timedelta(minutes=50)) == []


def test_breach_then_automatic_escalation_with_new_clocks() -> None:
    tl = Timeline()
    breach = c.RecordSlaBreach(clock_id="respond-1")
    assert tl.run(breach, T0 + HOUR - timedelta(microseconds=1)) == []
    at = T0 + HOUR + timedelta(milliseconds=300)
    recorded = tl.run(breach, at)
    assert kinds(recorded) == ["sla_breached", "escalated"]
    escalated = recorded[1]
    assert isinstance(escalated, e.Escalated)
    assert (escalated.from_tier, escalated.to_tier, escalated.automatic) == (1, 2, True)
    assert tl.issue.tier == 2 and tl.issue.status == "open"
    old_respond, old_resolve = tl.clock("respond-1"), tl.clock("resolve-1")
    assert (old_respond.state, old_respond.breached_at) == ("breached", at)
    assert old_resolve.state == "stopped" and old_resolve.ended_at == at
    new_respond = tl.clock("respond-2")
    assert (new_respond.tier, new_respond.state, new_respond.started_at) == (2, "running", at)
    assert new_respond.due_at == at + HOUR
    # The same breach again, from a second worker or a retry, records nothing.
    assert tl.run(breach, at + timedelta(seconds=1)) == []


def test_breaches_cascade_to_the_top_tier_where_nothing_moves() -> None:
    tl = Timeline()
    at = T0
    for tier in (1, 2, 3):
        at += HOUR
        recorded = tl.run(c.RecordSlaBreach(clock_id=f"respond-{tier}"), at)
        assert kinds(recorded) == (["sla_breached", "escalated"] if tier < 3 else ["sla_breached"])
    assert tl.issue.tier == 3
    assert [k.id for k in tl.issue.clocks if k.is_live] == ["resolve-3"]
    assert Counter(kinds(tl.events)) == Counter(opened=1, sla_breached=3, escalated=2)


def test_breach_without_auto_escalate_stays_at_its_tier() -> None:
    tl = Timeline(priority="P2")
    recorded = tl.run(c.RecordSlaBreach(clock_id="respond-1"), T0 + 4 * HOUR)
    assert kinds(recorded) == ["sla_breached"]
    assert tl.issue.tier == 1 and tl.clock("resolve-1").state == "running"


def test_a_stale_command_for_a_replaced_clock_records_nothing() -> None:
    tl = Timeline()
    tl.run(c.Escalate(reason="by hand"), T0 + timedelta(minutes=10))
    assert tl.run(c.RecordSlaBreach(clock_id="respond-1"), T0 + 2 * HOUR) == []
    warn = c.RecordSlaWarning(clock_id="resolve-1", threshold=0.75)
    assert tl.run(warn, T0 + 7 * HOUR) == []


# --- state machine and clocks -----------------------------------------------------------------


def test_acknowledge_stops_the_respond_clock_as_met() -> None:
    tl = Timeline()
    tl.run(c.Acknowledge(), T0 + timedelta(minutes=20))
    respond = tl.clock("respond-1")
    assert respond.state == "met" and respond.elapsed_seconds == 1200
    assert tl.clock("resolve-1").state == "running"
    assert tl.run(c.RecordSlaBreach(clock_id="respond-1"), T0 + 2 * HOUR) == []


def test_hold_pauses_and_resume_keeps_the_elapsed_time() -> None:
    tl = Timeline()
    tl.run(c.Hold(reason="vendor asked"), T0 + timedelta(minutes=20))
    paused = tl.clock("respond-1")
    assert (paused.state, paused.elapsed_seconds, paused.due_at) == ("paused", 1200, None)
    # Long past the original deadline: nothing breaches while on hold.
    assert tl.run(c.RecordSlaBreach(clock_id="respond-1"), T0 + 3 * HOUR) == []
    resumed_at = T0 + 5 * HOUR
    tl.run(c.Resume(), resumed_at)
    respond = tl.clock("respond-1")
    assert respond.state == "running" and respond.elapsed_seconds == 1200
    assert respond.due_at == resumed_at + timedelta(minutes=40)
    assert tl.issue.status == "open"


def test_resume_returns_to_acknowledged() -> None:
    tl = Timeline()
    tl.run(c.Acknowledge(), T0 + timedelta(minutes=1))
    tl.run(c.Hold(reason="r"), T0 + timedelta(minutes=2))
    tl.run(c.Resume(), T0 + timedelta(minutes=3))
    assert tl.issue.status == "acknowledged"
    assert tl.clock("respond-1").state == "met"


def test_priority_change_keeps_elapsed_time() -> None:
    tl = Timeline(priority="P2")
    at = T0 + HOUR
    recorded = tl.run(c.ChangePriority(priority="P1", reason="customer impact"), at)
    assert kinds(recorded) == ["priority_changed"]
    respond, resolve = tl.clock("respond-1"), tl.clock("resolve-1")
    assert respond.elapsed_seconds == 3600 and respond.target_seconds == 3600
    assert respond.due_at == at  # an hour used of a one-hour target: due now
    assert resolve.due_at == T0 + 8 * HOUR
    assert respond.auto_escalate


def test_priority_change_on_hold_retargets_paused_clocks() -> None:
    tl = Timeline(priority="P2")
    tl.run(c.Hold(reason="r"), T0 + HOUR)
    tl.run(c.ChangePriority(priority="P1"), T0 + 2 * HOUR)
    paused = tl.clock("resolve-1")
    assert (paused.state, paused.target_seconds, paused.elapsed_seconds) == (
        "paused",
        8 * 3600,
        3600,
    )
    tl.run(c.Resume(), T0 + 10 * HOUR)
    assert tl.clock("resolve-1").due_at == T0 + 17 * HOUR


def test_escalate_and_deescalate_stop_the_old_tier_and_start_the_new() -> None:
    tl = Timeline()
    tl.run(c.Escalate(reason="r", to_tier=3), T0 + timedelta(minutes=5))
    tl.run(c.Deescalate(reason="r"), T0 + timedelta(minutes=10))
    assert tl.issue.tier == 2
    states = {k.id: (k.tier, k.state) for k in tl.issue.clocks}
    assert states == {
        "respond-1": (1, "stopped"),
        "resolve-1": (1, "stopped"),
        "respond-2": (3, "stopped"),
        "resolve-2": (3, "stopped"),
        "respond-3": (2, "running"),
        "resolve-3": (2, "running"),
    }


def test_resolve_stops_clocks_as_met_and_a_breach_stays() -> None:
    tl = Timeline(priority="P2")
    tl.run(c.RecordSlaBreach(clock_id="respond-1"), T0 + 4 * HOUR)
    tl.run(c.Resolve(resolution="fixed"), T0 + 5 * HOUR)
    assert tl.clock("respond-1").state == "breached"
    assert tl.clock("resolve-1").state == "met"


def test_reopen_starts_new_clocks_and_keeps_the_outcomes() -> None:
    tl = Timeline(priority="P2")
    tl.run(c.Resolve(resolution="fixed"), T0 + HOUR)
    tl.run(c.Reopen(reason="not fixed"), T0 + 2 * HOUR)
    assert [(k.id, k.state) for k in tl.issue.clocks] == [
        ("respond-1", "met"),
        ("resolve-1", "met"),
        ("respond-2", "running"),
        ("resolve-2", "running"),
    ]
    assert tl.clock("respond-2").due_at == T0 + 6 * HOUR


def test_invalid_transitions_record_nothing() -> None:
    tl = Timeline()
    tl.run(c.Escalate(reason="r", to_tier=3), T0)
    with pytest.raises(InvalidTransition, match="top tier"):
        tl.run(c.Escalate(reason="r"), T0 + HOUR)
    tl.run(c.Hold(reason="r"), T0 + HOUR)
    with pytest.raises(InvalidTransition):
        tl.run(c.Escalate(reason="r"), T0 + HOUR)


# --- policy changes ---------------------------------------------------------------------------


def test_recompute_takes_a_new_policy_keeping_elapsed_time() -> None:
    tl = Timeline(priority="P2")
    unchanged = tl.run(c.RecomputeSla(), T0 + HOUR)
    assert unchanged == [], "a policy change elsewhere must not touch this issue"
    tighter = ladder(policy(1, "P2", 2, 24, warn_at=[0.5], auto_escalate=True))
    tl.rules = Rules(governance=tighter, calendar=RULES.calendar)
    recorded = tl.run(c.RecomputeSla(), T0 + HOUR)
    assert kinds(recorded) == ["priority_changed"]
    respond = tl.clock("respond-1")
    assert respond.due_at == T0 + 2 * HOUR and respond.elapsed_seconds == 3600
    assert respond.warn_at == [0.5] and respond.auto_escalate
    assert tl.issue.priority == "P2"


# --- business time ----------------------------------------------------------------------------


def test_clocks_count_business_time_across_a_dst_weekend() -> None:
    berlin = BusinessCalendar(CalendarSpec(timezone="Europe/Berlin", hours=WORKWEEK))
    rules = Rules(governance=GOVERNANCE, calendar=berlin)
    friday = datetime(2026, 3, 27, 15, 30, tzinfo=UTC)  # 16:30 CET; Sunday the clocks go forward
    tl = Timeline(rules, at=friday)
    # Half an hour on Friday, the rest from Monday 09:00 CEST (07:00Z).
    assert tl.clock("respond-1").due_at == datetime(2026, 3, 30, 7, 30, tzinfo=UTC)
    assert tl.clock("resolve-1").due_at == datetime(2026, 3, 30, 14, 30, tzinfo=UTC)
    first_warning = next_fire_at(tl.clock("respond-1"), berlin)
    assert first_warning == (datetime(2026, 3, 30, 7, 15, tzinfo=UTC), 0.75)


def test_hold_over_a_weekend_keeps_business_elapsed_time() -> None:
    berlin = BusinessCalendar(CalendarSpec(timezone="Europe/Berlin", hours=WORKWEEK))
    rules = Rules(governance=GOVERNANCE, calendar=berlin)
    tl = Timeline(rules, priority="P2", at=datetime(2026, 3, 27, 14, 0, tzinfo=UTC))
    tl.run(c.Hold(reason="r"), datetime(2026, 3, 28, 10, 0, tzinfo=UTC))  # Saturday
    assert tl.clock("respond-1").elapsed_seconds == 2 * 3600  # 15:00-17:00 CET Friday
    tl.run(c.Resume(), datetime(2026, 3, 31, 7, 0, tzinfo=UTC))  # Tuesday 09:00 CEST
    assert tl.clock("respond-1").due_at == datetime(2026, 3, 31, 9, 0, tzinfo=UTC)


# --- properties -------------------------------------------------------------------------------

CALENDARS = [
    CalendarSpec(),
    CalendarSpec(timezone="Europe/Berlin", hours=WORKWEEK, holidays=["2026-03-30"]),
    CalendarSpec(
        timezone="America/New_York",
        hours={"mon": [["08:00", "12:00"], ["13:00", "17:00"]], "sun": ["01:00", "03:00"]},
    ),
    CalendarSpec(timezone="Australia/Sydney", hours={d: ["00:00", "24:00"] for d in WORKWEEK}),
]
gaps = st.lists(st.integers(0, 4 * 86_400), min_size=1, max_size=8)


@PROPERTY
@given(st.sampled_from(CALENDARS), st.integers(0, 60 * 86_400), gaps)
def test_pauses_keep_exactly_the_business_time_that_ran(
    spec: CalendarSpec, offset: int, spans: list[int]
) -> None:
    cal = BusinessCalendar(spec)
    rules = Rules(governance=GOVERNANCE, calendar=cal)
    start = datetime(2026, 2, 1, tzinfo=UTC) + timedelta(seconds=offset)
    tl = Timeline(rules, priority="P2", at=start)
    at, ran, running = start, 0.0, True
    for span in spans:
        after = at + timedelta(seconds=span)
        if running:
            ran += cal.between(at, after)
        tl.run(c.Hold(reason="r") if running else c.Resume(), after)
        at, running = after, not running
    resolve = tl.clock("resolve-1")
    assert resolve.elapsed_at(at, cal) == pytest.approx(ran, abs=1e-6)
    if running:
        assert resolve.due_at == cal.add(at, max(0.0, 24 * 3600 - resolve.elapsed_seconds))
    else:
        assert resolve.due_at is None


sla_steps = st.lists(
    st.tuples(
        st.integers(0, 3 * 3600),
        st.sampled_from(["warn", "breach", "hold", "resume", "ack", "p1", "p2", "escalate"]),
        st.sampled_from(["respond", "resolve"]),
        st.integers(1, 4),
        st.sampled_from([0.75, 0.9]),
    ),
    max_size=40,
)


@PROPERTY
@given(sla_steps)
def test_each_threshold_warns_once_and_each_clock_breaches_once(
    steps: list[tuple[int, str, str, int, float]],
) -> None:
    tl = Timeline()
    at = T0
    commands: dict[str, c.Command] = {
        "hold": c.Hold(reason="r"),
        "resume": c.Resume(),
        "ack": c.Acknowledge(),
        "p1": c.ChangePriority(priority="P1"),
        "p2": c.ChangePriority(priority="P2"),
        "escalate": c.Escalate(reason="r"),
    }
    for gap, action, kind, seq, threshold in steps:
        at += timedelta(seconds=gap)
        clock_id = f"{kind}-{seq}"
        if action == "warn":
            command: c.Command = c.RecordSlaWarning(clock_id=clock_id, threshold=threshold)
        elif action == "breach":
            command = c.RecordSlaBreach(clock_id=clock_id)
        else:
            command = commands[action]
        before = tl.issue
        try:
            recorded = tl.run(command, at)
        except InvalidTransition:
            continue
        for event in recorded:
            if isinstance(event, e.SlaBreached):
                clock = next(k for k in before.clocks if k.id == event.clock_id)
                assert clock.due_at is not None and at >= clock.due_at
    breaches = Counter(ev.clock_id for ev in tl.events if isinstance(ev, e.SlaBreached))
    warnings = Counter(
        (ev.clock_id, ev.threshold) for ev in tl.events if isinstance(ev, e.SlaWarning)
    )
    assert all(n == 1 for n in breaches.values())
    assert all(n == 1 for n in warnings.values())
    assert tl.issue.tier <= GOVERNANCE.top_tier
