"""From payloads to commands, without I/O: per-tool defaults, overrides, and the status logic
that treats a tool status as a target (acknowledge, hold, resume, resolve, reopen)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from tests.fixtures import inbound as tools
from tierline.domain import commands as c
from tierline.domain.issue import Issue
from tierline.inbound.mapping import (
    Change,
    Mapping,
    read_event,
    rules_for,
    text,
)
from tierline.inbound.mapping import command_for as command_for_
from tierline.inbound.mapping import open_command as open_command_

NOW = datetime(2026, 12, 1, 10, tzinfo=UTC)


def issue(status: str, priority: str = "P3") -> Issue:
    return Issue(
        id="i-1",
        vendor_id="acme-it",
        title="t",
        category="quality",
        priority=priority,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        tier=1,
        version=3,
        created_at=NOW,
        updated_at=NOW,
    )


def command_for(kind: str, change: Change, status: str) -> c.Command | str:
    return command_for_(rules_for(kind, None), change, issue(status))  # type: ignore[arg-type]


STATUS_TARGETS: list[tuple[str, str, str, type[c.Command] | None]] = [
    # (tool status, issue status, ...) -> command (None: ignored)
    ("In Progress", "open", "jira", c.Acknowledge),
    ("In Progress", "acknowledged", "jira", None),
    ("In Progress", "on_hold", "jira", c.Resume),
    ("In Progress", "resolved", "jira", c.Reopen),
    ("To Do", "resolved", "jira", c.Reopen),
    ("To Do", "on_hold", "jira", c.Resume),
    ("To Do", "open", "jira", None),
    ("On Hold", "acknowledged", "jira", c.Hold),
    ("On Hold", "on_hold", "jira", None),
    ("On Hold", "resolved", "jira", c.Hold),  # the domain refuses it: recorded as ignored
    ("Done", "on_hold", "jira", c.Resolve),
    ("done", "resolved", "jira", None),
    ("SOLVED", "open", "zendesk", c.Resolve),
    ("PENDING", "open", "zendesk", c.Hold),
    ("OPEN", "on_hold", "zendesk", c.Resume),
    ("closed", "acknowledged", "github", c.Resolve),
]


@pytest.mark.parametrize(("status", "now", "kind", "expected"), STATUS_TARGETS)
def test_a_status_is_a_target(
    status: str, now: str, kind: str, expected: type[c.Command] | None
) -> None:
    found = command_for(kind, Change("status", status), now)
    if expected is None:
        assert isinstance(found, str)
    else:
        assert type(found) is expected, found


def test_priorities_map_by_name_label_or_p_number() -> None:
    assert command_for("jira", Change("priority", "Highest"), "open") == c.ChangePriority(
        priority="P1", reason="priority Highest in Jira"
    )
    assert isinstance(command_for("jira", Change("priority", "Blocker"), "open"), str)
    assert command_for("zendesk", Change("priority", "LOW"), "open").priority == "P4"  # type: ignore[union-attr]
    assert command_for("generic", Change("priority", "p2"), "open").priority == "P2"  # type: ignore[union-attr]


def test_jira_payloads_read_as_events() -> None:
    rules = rules_for("jira", None)
    created = read_event(rules, {}, tools.jira_created("GOV-1"))
    assert created.name == "jira:issue_created"
    assert created.ticket.key == "GOV-1"
    assert created.ticket.labels == ("communication", "Vendor management")
    updated = read_event(
        rules,
        {},
        tools.jira_updated("GOV-1", ("priority", "High", "Low"), ("status", "To Do", "Done")),
    )
    assert [(ch.kind, ch.value) for ch in updated.changes] == [
        ("priority", "Low"),
        ("status", "Done"),
    ]
    other = read_event(rules, {}, tools.jira_updated("GOV-1", ("assignee", "a", "b")))
    assert other.changes == () and other.unmapped


def test_rich_text_bodies_become_text() -> None:
    doc = {
        "type": "doc",
        "content": [
            {"type": "paragraph", "content": [{"type": "text", "text": "Line one"}]},
            {"type": "paragraph", "content": [{"type": "text", "text": "Line two"}]},
        ],
    }
    assert text(doc) == "Line one\nLine two"
    assert text(42) == "42" and text(True) is None and text({"no": "text"}) is None


def test_open_command_uses_maps_and_defaults() -> None:
    rules = rules_for("jira", None)
    ticket = read_event(rules, {}, tools.jira_created("GOV-1")).ticket
    command = open_command_(rules, ticket, "acme-it")
    assert isinstance(command, c.OpenIssue)
    assert (command.priority, command.category, command.external_ref) == (
        "P2",
        "communication",
        "jira:GOV-1",
    )
    assert command.reported_by == "Grace Hopper"
    plain = read_event(
        rules, {}, tools.jira_created("GOV-2", labels=[], components=[], priority=None)
    )
    command = open_command_(rules, plain.ticket, "acme-it")
    assert isinstance(command, c.OpenIssue)
    assert (command.priority, command.category) == ("P3", "other")
    long_title = read_event(rules, {}, tools.jira_created("GOV-3", summary="x" * 1000)).ticket
    assert len(open_command_(rules, long_title, "acme-it").title) == 300  # type: ignore[union-attr]
    spaced = read_event(rules, {}, tools.jira_created("GOV 4")).ticket
    assert isinstance(open_command_(rules, spaced, "acme-it"), str)


def test_overrides_merge_maps_and_replace_lists_and_paths() -> None:
    mapping = Mapping.model_validate(
        {
            "priorities": {"Critical": "P1"},
            "statuses": {"hold": ["Parked"]},
            "fields": {"labels": "issue.fields.labels"},
            "default_category": "quality",
        }
    )
    rules = rules_for("jira", mapping)
    assert rules.priority_of("critical") == "P1" and rules.priority_of("High") == "P2"
    assert rules.status_class("Parked") == "hold" and rules.status_class("On Hold") == "other"
    assert rules.status_class("Done") == "resolve"
    ticket = read_event(rules, {}, tools.jira_created("GOV-1", labels=["nothing"])).ticket
    assert ticket.labels == ("nothing",)
    assert open_command_(rules, ticket, "v").category == "quality"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "mapping",
    [
        {"fields": {"key": "a.[b"}},
        {"fields": {"key": "foo(bar)"}},
        {"priorities": {"x": "P0"}},
        {"statuses": {"close": ["x"]}},
        {"fields": {"key": 3}},
    ],
)
def test_invalid_mappings_are_refused(mapping: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Mapping.model_validate(mapping)


def test_github_and_zendesk_events() -> None:
    github = rules_for("github", None)
    labeled = tools.github_issues("labeled", 7, ["p1"], label={"name": "P1"})
    event = read_event(github, {"X-GitHub-Event": "issues"}, labeled)
    assert event.name == "issues.labeled" and event.changes == (Change("priority", "P1"),)
    assert event.ticket.key == "acme/governance#7"
    odd = read_event(
        github,
        {"X-GitHub-Event": "issues"},
        tools.github_issues("labeled", 7, [], label={"name": "docs"}),
    )
    assert odd.changes == () and "docs" in (odd.unmapped or "")
    zendesk = rules_for("zendesk", None)
    comment = tools.zendesk_event(
        "comment_added", 5, {"comment": {"body": "hi", "author": {"name": "Z"}}}
    )
    event = read_event(zendesk, {}, comment)
    assert event.changes == (Change("commented", "hi", "Z"),) and event.ticket.key == "5"
