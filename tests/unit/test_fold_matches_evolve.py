"""The projector's fold and the domain's evolve agree on every issue history `decide` can produce.

`projector/fold.py` restates the issue's status and clock rules over plain JSON so the projector
keeps up; this test is what keeps the two statements one rule. Random command sequences (under
random governance tables, including tiers and priorities without an SLA policy) are decided and
evolved by the domain, serialised as the log carries them, and folded by the projector, one
event per batch and all in one batch; after every event the read model must say what the
domain says.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fixtures.strategies import LIFECYCLE_COMMANDS
from tests.unit.test_issue_state_machine import RULES, T0
from tierline.domain import commands as c
from tierline.domain import events as e
from tierline.domain.clocks import Clock, next_fire_at
from tierline.domain.governance import PRIORITIES, Governance, Priority, SlaPolicy, Tier
from tierline.domain.issue import InvalidTransition, Issue, Rules, decide, evolve
from tierline.projector.fold import IssueRow, clock_row, fold, issue_clock_summary

ISSUE_ID = "iss-1"


@dataclass(frozen=True)
class LoggedEvent:
    """An event as the projector reads it from the log (what `fold.EventLike` asks for)."""

    event_id: str
    stream_id: str
    version: int
    type: str
    time: datetime
    data: dict[str, Any]


@st.composite
def governance_tables(draw: st.DrawFn) -> Governance:
    """Ladders of 1-4 tiers with policies for some (tier, priority) pairs, maybe none."""
    top = draw(st.integers(1, 4))
    pairs = [(tier, priority) for tier in range(1, top + 1) for priority in PRIORITIES]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs)))
    policies = []
    for tier, priority in chosen:
        respond = draw(st.integers(1, 8))
        policies.append(
            SlaPolicy(
                tier=tier,
                priority=priority,
                respond_within=timedelta(hours=respond),
                resolve_within=timedelta(hours=respond * draw(st.integers(1, 4))),
                warn_at=draw(st.lists(st.sampled_from([0.5, 0.75, 0.9]), unique=True)),
                auto_escalate=draw(st.booleans()),
            )
        )
    return Governance(tiers=[Tier(level=n, name=f"t{n}") for n in range(1, top + 1)], sla=policies)


rules_strategy = st.one_of(
    st.just(RULES),
    governance_tables().map(lambda g: Rules(governance=g, calendar=RULES.calendar)),
)
# Commands about a clock name it by position in the issue's clock list at the time.
ClockCommand = tuple[str, int, float]
command_strategy = st.one_of(
    *LIFECYCLE_COMMANDS,
    st.builds(c.RecomputeSla),
    *[st.tuples(st.just("breach"), st.integers(0, 12), st.just(0.0))] * 3,
    *[st.tuples(st.just("warn"), st.integers(0, 12), st.sampled_from([0.5, 0.75, 0.9]))] * 2,
)

# Seconds between commands: often a round span, so deadlines and warning points are passed.
step_seconds = st.one_of(
    st.integers(min_value=0, max_value=36_000),
    st.sampled_from([0, 1, 1800, 2700, 3600, 4 * 3600, 8 * 3600, 30 * 3600]),
)


def resolve_command(
    step: c.Command | ClockCommand, state: Issue, at: datetime, rules: Rules
) -> tuple[c.Command | None, datetime]:
    """The command of a step and when it is sent.

    A clock step picks a clock by position (mostly a running one) and, like the SLA scanner,
    waits for the moment it is due: the breach at the deadline, a warning at its threshold.
    """
    if not isinstance(step, tuple):
        return step, at
    what, index, threshold = step
    running = [k for k in state.clocks if k.state == "running"]
    candidates = running if running and index % 4 else state.clocks
    if not candidates:
        return None, at
    clock = candidates[index % len(candidates)]
    if what == "breach":
        return c.RecordSlaBreach(clock_id=clock.id), max(at, clock.due_at or at)
    fire = next_fire_at(clock, rules.calendar)
    if fire is not None and fire[1] is not None:
        return c.RecordSlaWarning(clock_id=clock.id, threshold=fire[1]), max(at, fire[0])
    return c.RecordSlaWarning(clock_id=clock.id, threshold=threshold), at


def logged(event: e.Event, version: int, at: datetime) -> LoggedEvent:
    """The event with its data as JSON, exactly as the event store writes it."""
    return LoggedEvent(
        event_id=str(uuid.uuid4()),
        stream_id=ISSUE_ID,
        version=version,
        type=event.event_type(),
        time=at,
        data=json.loads(event.model_dump_json()),
    )


def current_clock_ids(previous: Issue | None, event: e.Event, current: set[str]) -> set[str]:
    """The clocks of the issue's current tier and cycle: those the last tier move or
    (re)opening started (none when the policy table had nothing for it)."""
    if isinstance(event, e.Opened | e.Escalated | e.Deescalated | e.Reopened):
        before = {k.id for k in previous.clocks} if previous is not None else set()
        return {k.id for k in event.clocks or [] if k.id not in before}
    return current


def assert_row_matches(row: IssueRow, issue: Issue, current: set[str]) -> None:
    """The read model's row says what the domain's state says."""
    assert (row.status, row.tier, row.priority) == (issue.status, issue.tier, issue.priority)
    assert (row.assignee, row.version, row.vendor_id) == (issue.assignee, issue.version, "acme")
    assert row.breach_count == sum(k.state == "breached" for k in issue.clocks)
    summary = issue_clock_summary(row)
    latest = {k.kind: k for k in issue.clocks}
    respond, resolve = latest.get("respond"), latest.get("resolve")
    assert summary.respond_state == (respond.state if respond else None)
    assert summary.resolve_state == (resolve.state if resolve else None)
    assert summary.respond_due_at == running_due(respond)
    assert summary.resolve_due_at == running_due(resolve)
    running = [k.due_at for k in issue.clocks if k.state == "running" and k.due_at is not None]
    assert summary.next_due_at == (min(running) if running else None)
    assert summary.sla_breached == any(
        k.state == "breached" for k in issue.clocks if k.id in current
    )


def running_due(clock: Clock | None) -> datetime | None:
    return clock.due_at if clock is not None and clock.state == "running" else None


def assert_clock_rows_match(rows: dict[str, Any], issue: Issue) -> None:
    """`read.sla_clocks` holds every clock the issue ever had, in the state the domain has."""
    assert set(rows) == {k.id for k in issue.clocks}
    for clock in issue.clocks:
        row = rows[clock.id]
        assert (row.state, row.tier, row.kind) == (clock.state, clock.tier, clock.kind)
        assert row.due_at == clock.due_at
        assert row.started_at == clock.started_at
        assert row.target_seconds == clock.target_seconds
        assert row.elapsed_seconds == clock.elapsed_seconds
        assert row.warned == clock.warned
        assert row.breached_at == clock.breached_at
        assert row.ended_at == clock.ended_at
        assert row.outcome == (
            clock.state if clock.state in ("met", "breached", "stopped") else None
        )


def sparse_rules(*policies: tuple[int, Priority, bool]) -> Rules:
    """Two tiers and only the given (tier, priority, auto_escalate) policies, one hour each."""
    sla = [
        SlaPolicy(
            tier=tier,
            priority=priority,
            respond_within=timedelta(hours=1),
            resolve_within=timedelta(hours=1),
            warn_at=[],
            auto_escalate=auto,
        )
        for tier, priority, auto in policies
    ]
    tiers = [Tier(level=1, name="t1"), Tier(level=2, name="t2")]
    return Rules(governance=Governance(tiers=tiers, sla=sla), calendar=RULES.calendar)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Found by this test: a breach escalated automatically into a tier without a policy, and a
# breached cycle reopened at a priority without one, left `sla_breached` set on the row.
@example(
    rules=sparse_rules((1, "P2", True)),
    priority="P2",
    steps=[(c.Acknowledge(), 0), (("breach", 1, 0.0), 0)],
)
@example(
    rules=sparse_rules((1, "P1", False)),
    priority="P1",
    steps=[
        (("breach", 1, 0.0), 0),
        (c.Resolve(resolution="r"), 60),
        (c.ChangePriority(priority="P3"), 0),
        (c.Reopen(reason="r"), 0),
    ],
)
@given(
    rules=rules_strategy,
    priority=st.sampled_from(PRIORITIES),
    steps=st.lists(
        st.tuples(command_strategy, step_seconds),
        min_size=3,
        max_size=40,
    ),
)
def test_fold_says_what_evolve_says(
    rules: Rules, priority: Priority, steps: list[tuple[c.Command | ClockCommand, int]]
) -> None:
    opened = c.OpenIssue(vendor_id="acme", title="t", category="quality", priority=priority)
    at = T0
    state: Issue | None = None
    current: set[str] = set()
    states: dict[str, IssueRow] = {}
    log: list[LoggedEvent] = []
    clock_rows: dict[str, Any] = {}
    for step, seconds in [(opened, 0), *steps]:
        at += timedelta(seconds=seconds)
        command: c.Command | None = opened
        if state is not None:
            command, at = resolve_command(step, state, at, rules)
        if command is None:
            continue
        try:
            events = decide(state, command, at, rules)
        except InvalidTransition:
            continue
        for event in events:
            previous = state
            state = evolve(state, event, issue_id=ISSUE_ID, version=len(log) + 1, at=at)
            current = current_clock_ids(previous, event, current)
            log.append(logged(event, len(log) + 1, at))
            changes = fold(states, [log[-1]])
            assert not changes.gaps and not changes.unprojectable
            clock_rows |= {cid: clock_row(ch) for (_, cid), ch in changes.clocks.items()}
            assert_row_matches(states[ISSUE_ID], state, current)
            assert_clock_rows_match(clock_rows, state)
    assert state is not None
    # A replay folds the whole history in one batch and must end where the live fold did.
    replayed: dict[str, IssueRow] = {}
    changes = fold(replayed, log)
    assert replayed[ISSUE_ID] == states[ISSUE_ID]
    assert_row_matches(replayed[ISSUE_ID], state, current)
    assert_clock_rows_match({cid: clock_row(ch) for (_, cid), ch in changes.clocks.items()}, state)
