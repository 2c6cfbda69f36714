"""Random command sequences never produce an invalid issue, and folding the events rebuilds it."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures.strategies import LIFECYCLE_COMMANDS
from tests.unit.test_issue_state_machine import RULES, T0
from tierline.domain import commands as c
from tierline.domain.events import Event, event_from_json
from tierline.domain.issue import InvalidTransition, Issue, decide, evolve

command_strategy = st.one_of(
    *LIFECYCLE_COMMANDS,
    st.builds(c.RecordSlaBreach, clock_id=st.sampled_from(["respond-1", "resolve-2", "x"])),
)


def check_invariants(issue: Issue) -> None:
    top = RULES.governance.top_tier
    assert 1 <= issue.tier <= top
    running = [k for k in issue.clocks if k.state == "running"]
    assert len(running) <= 2
    assert all(k.tier == issue.tier for k in running)
    assert len({k.kind for k in running}) == len(running)
    if issue.status in ("on_hold", "resolved", "closed"):
        assert not running
    if issue.status == "on_hold":
        assert issue.status_before_hold in ("open", "acknowledged")
    assert len({k.id for k in issue.clocks}) == len(issue.clocks)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(command_strategy, st.integers(min_value=0, max_value=36_000)), max_size=30
    )
)
def test_random_sequences_keep_invariants_and_fold_back(
    steps: list[tuple[c.Command, int]],
) -> None:
    opened = c.OpenIssue(vendor_id="acme", title="t", category="quality", priority="P2")
    at = T0
    log: list[tuple[Event, int, object]] = []
    state: Issue | None = None
    for event in decide(None, opened, at, RULES):
        state = evolve(state, event, issue_id="i", version=len(log) + 1, at=at)
        log.append((event, len(log) + 1, at))
    assert state is not None
    for command, seconds in steps:
        at += timedelta(seconds=seconds)
        was_closed = state.status == "closed"
        try:
            events = decide(state, command, at, RULES)
        except InvalidTransition:
            continue
        assert not (was_closed and events), "a closed issue recorded an event"
        for event in events:
            state = evolve(state, event, issue_id="i", version=len(log) + 1, at=at)
            log.append((event, len(log) + 1, at))
        check_invariants(state)
    # Fold the serialised history, as a consumer would, and compare with the live state.
    folded: Issue | None = None
    for event, version, when in log:
        copy = event_from_json(event.event_type(), event.model_dump(mode="json"))
        folded = evolve(folded, copy, issue_id="i", version=version, at=when)  # type: ignore[arg-type]
    assert folded == state
    assert state.version == len(log)
