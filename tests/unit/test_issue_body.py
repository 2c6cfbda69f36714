"""The command path's rendering of an issue equals the IssueOut model's, key order included."""

from __future__ import annotations

from tierline.api.schemas import IssueOut, issue_body
from tierline.projector.workload import Workload


def test_issue_body_equals_the_issue_out_model_for_every_workload_state() -> None:
    """Seeded issue lifecycles: clocks running, paused, met, breached; tiers, reopenings."""
    checked = 0
    clocks = 0
    for command in Workload(seed=7).commands(3000):
        issue = command.issue
        expected = IssueOut.of(issue).model_dump(mode="json")
        body = issue_body(issue)
        assert body == expected
        assert list(body) == list(expected)
        assert [list(c) for c in body["sla"]] == [list(c) for c in expected["sla"]]
        checked += 1
        clocks += len(issue.clocks)
    assert checked == 3000 and clocks > 3000  # states with clocks were really compared
