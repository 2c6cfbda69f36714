"""From a verified payload to issue commands: pure, no I/O, one set of defaults per tool.

Two steps. `read_event` finds what happened to the ticket (created, commented, priority or
status changed, reopened) and its fields, with JMESPath expressions for the field paths (each
overridable per source in `mapping.fields`). `command_for` turns one change into one command
given the issue as it is now (a status is a target, so "In Progress" acknowledges an open
issue, resumes one on hold and reopens a resolved one), or into the reason it is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import jmespath
from jmespath.exceptions import JMESPathError, UnknownFunctionError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tierline.domain import commands as c
from tierline.domain.events import Category
from tierline.domain.governance import Priority
from tierline.domain.issue import Issue
from tierline.inbound.verify import SourceType

ChangeKind = Literal["created", "commented", "priority", "status", "reopened"]
StatusClass = Literal["acknowledge", "hold", "resolve", "other"]
TOOL_NAMES: dict[SourceType, str] = {
    "jira": "Jira",
    "zendesk": "Zendesk",
    "github": "GitHub",
    "generic": "the source",
}
CATEGORIES: tuple[str, ...] = get_args(Category)
PRIORITIES: tuple[str, ...] = get_args(Priority)
PATH_NAMES = (
    "key",
    "title",
    "description",
    "priority",
    "status",
    "labels",
    "reporter",
    "vendor",
    "comment_body",
    "comment_author",
    "event",
)


class FieldPaths(BaseModel):
    """JMESPath expressions that find a ticket's fields in the tool's payload."""

    model_config = ConfigDict(extra="forbid")
    key: str | None = Field(default=None, max_length=500, description="the ticket key")
    title: str | None = Field(default=None, max_length=500)
    description: str | None = Field(default=None, max_length=500)
    priority: str | None = Field(default=None, max_length=500)
    status: str | None = Field(default=None, max_length=500)
    labels: str | None = Field(
        default=None, max_length=500, description="labels, components or tags (a list)"
    )
    reporter: str | None = Field(default=None, max_length=500)
    vendor: str | None = Field(
        default=None, max_length=500, description="the vendor id (or a key of `vendors`)"
    )
    comment_body: str | None = Field(default=None, max_length=500)
    comment_author: str | None = Field(default=None, max_length=500)
    event: str | None = Field(
        default=None, max_length=500, description="generic sources: the event name"
    )

    @field_validator(*PATH_NAMES)
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            expression = jmespath.compile(value)
        except (JMESPathError, ValueError, TypeError, RecursionError) as exc:
            raise ValueError(f"not a JMESPath expression: {exc}") from None
        try:  # functions are looked up only when evaluated
            expression.search({})
        except UnknownFunctionError as exc:
            raise ValueError(str(exc)) from None
        except (JMESPathError, ValueError, TypeError, RecursionError):
            pass  # a type error on an empty document says nothing about real payloads
        return value


Names = list[str]


class StatusNames(BaseModel):
    """Which of the tool's statuses (or GitHub labels) mean acknowledge, hold or resolve."""

    model_config = ConfigDict(extra="forbid")
    acknowledge: Names | None = Field(default=None, max_length=100)
    hold: Names | None = Field(default=None, max_length=100)
    resolve: Names | None = Field(default=None, max_length=100)


class Mapping(BaseModel):
    """Per-source overrides of the type's defaults; what is not given keeps the default.

    `priorities`, `categories` and `vendors` are merged over the defaults (keys compared
    without case); each list in `statuses` and each path in `fields` replaces its default.
    """

    model_config = ConfigDict(extra="forbid")
    priorities: dict[str, Priority] | None = Field(
        default=None, max_length=200, description="tool priority (or label) -> P1..P4"
    )
    default_priority: Priority | None = None
    categories: dict[str, Category] | None = Field(
        default=None, max_length=500, description="label, component or tag -> category"
    )
    default_category: Category | None = None
    statuses: StatusNames | None = None
    vendors: dict[str, str] | None = Field(
        default=None, max_length=500, description="value of fields.vendor -> vendor id"
    )
    fields: FieldPaths | None = None


def _self_named() -> dict[str, str]:
    return {name: name for name in CATEGORIES} | {
        name.replace("_", "-"): name for name in CATEGORIES
    }


DEFAULT_CATEGORIES = {
    **_self_named(),
    "security": "security_compliance",
    "compliance": "security_compliance",
}
DEFAULTS: dict[SourceType, dict[str, Any]] = {
    "jira": {
        "priorities": {"highest": "P1", "high": "P2", "medium": "P3", "low": "P4", "lowest": "P4"},
        "statuses": {
            "acknowledge": ["In Progress"],
            "hold": ["On Hold", "Blocked", "Waiting for customer"],
            "resolve": ["Done", "Resolved", "Closed"],
        },
        "fields": {
            "key": "issue.key",
            "title": "issue.fields.summary",
            "description": "issue.fields.description",
            "priority": "issue.fields.priority.name",
            "status": "issue.fields.status.name",
            "labels": "[issue.fields.labels, issue.fields.components[].name][][]",
            "reporter": "issue.fields.reporter.displayName",
            "comment_body": "comment.body",
            "comment_author": "comment.author.displayName",
        },
    },
    "zendesk": {
        "priorities": {"urgent": "P1", "high": "P2", "normal": "P3", "low": "P4"},
        "statuses": {
            "acknowledge": ["open"],
            "hold": ["pending", "hold", "on-hold"],
            "resolve": ["solved", "closed"],
        },
        "fields": {
            "key": "detail.id",
            "title": "detail.subject",
            "description": "detail.description",
            "priority": "detail.priority",
            "status": "detail.status",
            "labels": "detail.tags",
            "reporter": "detail.requester_id",
            "comment_body": "event.comment.body",
            "comment_author": "event.comment.author.name",
        },
    },
    "github": {
        "priorities": {"p1": "P1", "p2": "P2", "p3": "P3", "p4": "P4"},
        "statuses": {
            "acknowledge": ["in progress"],
            "hold": ["on hold", "blocked"],
            "resolve": ["closed"],
        },
        "fields": {
            "key": "join('#', [repository.full_name, to_string(issue.number)])",
            "title": "issue.title",
            "description": "issue.body",
            "labels": "issue.labels[].name",
            "reporter": "issue.user.login",
            "comment_body": "comment.body",
            "comment_author": "comment.user.login",
        },
    },
    "generic": {
        "priorities": {"p1": "P1", "p2": "P2", "p3": "P3", "p4": "P4"},
        "statuses": {
            "acknowledge": ["in_progress", "acknowledged"],
            "hold": ["on_hold"],
            "resolve": ["resolved", "closed", "done"],
        },
        "fields": {
            "event": "event",
            "key": "ticket.key",
            "title": "ticket.title",
            "description": "ticket.description",
            "priority": "ticket.priority",
            "status": "ticket.status",
            "labels": "ticket.labels",
            "reporter": "ticket.reporter",
            "vendor": "ticket.vendor",
            "comment_body": "comment.body",
            "comment_author": "comment.author",
        },
    },
}


@dataclass(frozen=True)
class Rules:
    """A source's effective mapping: its type's defaults with its overrides applied."""

    kind: SourceType
    priorities: dict[str, Priority]
    default_priority: Priority
    categories: dict[str, Category]
    default_category: Category
    statuses: dict[str, tuple[str, ...]]
    vendors: dict[str, str]
    paths: dict[str, Any] = field(default_factory=dict)  # name -> compiled expression

    @property
    def tool(self) -> str:
        """The tool's name as reasons and comments show it."""
        return TOOL_NAMES[self.kind]

    @property
    def routes_vendors(self) -> bool:
        """Whether the vendor comes from the payload rather than only from the source."""
        return "vendor" in self.paths

    def status_class(self, status: str) -> StatusClass:
        """What a status of the tool means here."""
        wanted = status.strip().lower()
        for name in ("hold", "resolve", "acknowledge"):
            if wanted in self.statuses[name]:
                return name
        return "other"

    def priority_of(self, value: str | None) -> Priority | None:
        """The priority a tool value (or a P1..P4 itself) maps to."""
        if value is None:
            return None
        wanted = value.strip().lower()
        if wanted.upper() in PRIORITIES:
            return wanted.upper()  # type: ignore[return-value]
        return self.priorities.get(wanted)


def _lowered(items: MappingABC[str, Any]) -> dict[str, Any]:
    return {k.strip().lower(): v for k, v in items.items()}


def rules_for(kind: SourceType, mapping: Mapping | None) -> Rules:
    """The effective rules of a source of this type with these overrides."""
    base = DEFAULTS[kind]
    given = mapping or Mapping()
    statuses = {
        **base["statuses"],
        **(given.statuses.model_dump(exclude_none=True) if given.statuses else {}),
    }
    paths = {
        **base["fields"],
        **(given.fields.model_dump(exclude_none=True) if given.fields else {}),
    }
    return Rules(
        kind=kind,
        priorities=_lowered({**base["priorities"], **_lowered(given.priorities or {})}),
        default_priority=given.default_priority or "P3",
        categories=_lowered({**DEFAULT_CATEGORIES, **_lowered(given.categories or {})}),
        default_category=given.default_category or "other",
        statuses={k: tuple(s.strip().lower() for s in v) for k, v in statuses.items()},
        vendors=_lowered(given.vendors or {}),
        paths={name: jmespath.compile(path) for name, path in paths.items()},
    )


@dataclass(frozen=True)
class Change:
    """One thing that happened to the ticket."""

    kind: ChangeKind
    value: str | None = None  # the new priority or status, or the comment's text
    author: str | None = None


@dataclass(frozen=True)
class Ticket:
    """The ticket's fields as the payload shows them."""

    key: str | None
    title: str | None = None
    description: str | None = None
    priority: str | None = None
    status: str | None = None
    labels: tuple[str, ...] = ()
    reporter: str | None = None
    vendor: str | None = None


@dataclass(frozen=True)
class TicketEvent:
    """What a delivery says: the tool's event name, the ticket, and what changed."""

    name: str
    ticket: Ticket
    changes: tuple[Change, ...] = ()
    unmapped: str | None = None  # why nothing maps, when `changes` is empty


def text(value: Any) -> str | None:
    """A field as text: strings as they are, numbers printed, rich text (Atlassian's document
    format) as the text of its nodes; None for anything else or nothing."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int | float):
        return str(value)
    parts: list[str] = []
    stack: list[Any] = [value]
    while stack:  # depth-first, in document order
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                parts.append(node["text"])
            content = node.get("content")
            if isinstance(content, list):
                stack.extend(reversed(content))
                if node.get("type") == "paragraph" and parts:
                    parts.append("\n")
        elif isinstance(node, list):
            stack.extend(reversed(node))
    joined = "".join(parts).strip()
    return joined or None


def _search(rules: Rules, name: str, payload: Any) -> Any:
    expression = rules.paths.get(name)
    if expression is None:
        return None
    try:
        return expression.search(payload)
    except (JMESPathError, ValueError, TypeError):
        return None


def _labels(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    return tuple(str(v) for v in items if isinstance(v, str | int) and not isinstance(v, bool))


def read_ticket(rules: Rules, payload: Any) -> Ticket:
    """The ticket's fields, each found by its path."""

    def field_text(name: str) -> str | None:
        return text(_search(rules, name, payload))

    return Ticket(
        key=field_text("key"),
        title=field_text("title"),
        description=field_text("description"),
        priority=field_text("priority"),
        status=field_text("status"),
        labels=_labels(_search(rules, "labels", payload)),
        reporter=field_text("reporter"),
        vendor=field_text("vendor"),
    )


def _comment(rules: Rules, payload: Any) -> Change:
    body = text(_search(rules, "comment_body", payload))
    return Change("commented", body, text(_search(rules, "comment_author", payload)))


def _get(payload: Any, *path: str) -> Any:
    for part in path:
        payload = payload.get(part) if isinstance(payload, dict) else None
    return payload


def _jira(rules: Rules, payload: Any, name: str) -> tuple[tuple[Change, ...], str | None]:
    if name == "jira:issue_created":
        return (Change("created"),), None
    if name == "comment_created":
        return (_comment(rules, payload),), None
    if name != "jira:issue_updated":
        return (), f"Jira event {name!r} is not mapped"
    items = _get(payload, "changelog", "items")
    changes = []
    for item in items if isinstance(items, list) else []:
        what = str(_get(item, "field") or "").lower()
        if what in ("priority", "status"):
            changes.append(Change(what, text(_get(item, "toString"))))  # type: ignore[arg-type]
    if not changes:
        return (), "the changelog changes neither priority nor status"
    return tuple(changes), None


def _github(
    rules: Rules, payload: Any, name: str, action: str
) -> tuple[tuple[Change, ...], str | None]:
    if name == "issue_comment" and action == "created":
        return (_comment(rules, payload),), None
    if name == "issues":
        if action == "opened":
            return (Change("created"),), None
        if action == "reopened":
            return (Change("reopened"),), None
        if action == "closed":
            return (Change("status", "closed"),), None
        label = text(_get(payload, "label", "name"))
        if action == "labeled" and label is not None:
            if rules.priority_of(label) is not None:
                return (Change("priority", label),), None
            if rules.status_class(label) != "other":
                return (Change("status", label),), None
            return (), f"label {label!r} is neither a priority nor a status"
    return (), f"GitHub event {name}.{action} is not mapped"


ZENDESK_PREFIX = "zen:event-type:"


def _zendesk(rules: Rules, payload: Any, name: str) -> tuple[tuple[Change, ...], str | None]:
    short = name.removeprefix(ZENDESK_PREFIX)
    current = text(_get(payload, "event", "current"))
    if short == "ticket.created":
        return (Change("created"),), None
    if short == "ticket.comment_added":
        return (_comment(rules, payload),), None
    if short == "ticket.priority_changed":
        return (Change("priority", current),), None
    if short == "ticket.status_changed":
        return (Change("status", current),), None
    return (), f"Zendesk event {name!r} is not mapped"


GENERIC_EVENTS: dict[str, ChangeKind] = {
    "ticket.created": "created",
    "ticket.commented": "commented",
    "ticket.priority_changed": "priority",
    "ticket.status_changed": "status",
    "ticket.reopened": "reopened",
}


def _generic(
    rules: Rules, payload: Any, name: str, ticket: Ticket
) -> tuple[tuple[Change, ...], str | None]:
    kind = GENERIC_EVENTS.get(name)
    if kind is None:
        return (), f"event {name!r} is not one of {', '.join(GENERIC_EVENTS)}"
    if kind == "commented":
        return (_comment(rules, payload),), None
    value = {"priority": ticket.priority, "status": ticket.status}.get(kind)
    return (Change(kind, value),), None


def event_name(kind: SourceType, headers: MappingABC[str, str], payload: Any, rules: Rules) -> str:
    """The tool's own name for what happened (for the delivery record and the mapping)."""
    if kind == "jira":
        return text(_get(payload, "webhookEvent")) or "?"
    if kind == "github":
        return headers.get("X-GitHub-Event", "?")[:100]
    if kind == "zendesk":
        return text(_get(payload, "type")) or "?"
    return text(_search(rules, "event", payload)) or "?"


def read_event(rules: Rules, headers: MappingABC[str, str], payload: Any) -> TicketEvent:
    """What a verified payload says happened to which ticket."""
    name = event_name(rules.kind, headers, payload, rules)
    ticket = read_ticket(rules, payload)
    if rules.kind == "jira":
        changes, unmapped = _jira(rules, payload, name)
    elif rules.kind == "github":
        action = text(_get(payload, "action")) or "?"
        changes, unmapped = _github(rules, payload, name, action)
        name = f"{name}.{action}"
    elif rules.kind == "zendesk":
        changes, unmapped = _zendesk(rules, payload, name)
    else:
        changes, unmapped = _generic(rules, payload, name, ticket)
    return TicketEvent(name[:200], ticket, changes, unmapped)


def external_ref(kind: SourceType, key: str) -> str:
    """`<type>:<ticket key>`, the issue's external ref."""
    return f"{kind}:{key}"


def _clip(value: str | None, limit: int) -> str | None:
    return None if value is None else value[:limit]


def open_command(rules: Rules, ticket: Ticket, vendor_id: str) -> c.OpenIssue | str:
    """The command that opens the ticket's issue, or why it cannot be built."""
    labels = [label.strip().lower() for label in ticket.labels]
    category = next((rules.categories[x] for x in labels if x in rules.categories), None)
    priority = rules.priority_of(ticket.priority) or next(
        (p for p in map(rules.priority_of, labels) if p is not None), None
    )
    try:
        return c.OpenIssue(
            vendor_id=vendor_id,
            title=_clip(ticket.title, 300) or f"{rules.tool} ticket {ticket.key}"[:300],
            description=_clip(ticket.description, 20_000),
            category=category or rules.default_category,
            priority=priority or rules.default_priority,
            external_ref=external_ref(rules.kind, ticket.key or ""),
            reported_by=_clip(ticket.reporter, 200),
        )
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
        return f"the ticket does not make a valid issue ({fields})"


def command_for(rules: Rules, change: Change, issue: Issue) -> c.Command | str:
    """The command one change of the ticket means for the issue as it is, or why none."""
    tool = rules.tool
    if change.kind == "commented":
        if not change.value:
            return "the comment has no text"
        return c.AddComment(body=change.value[:10_000], author=_clip(change.author, 200))
    if change.kind == "priority":
        priority = rules.priority_of(change.value)
        if priority is None:
            return f"priority {change.value!r} is not in the priority map"
        return c.ChangePriority(
            priority=priority, reason=f"priority {change.value} in {tool}"[:2000]
        )
    if change.kind == "reopened":
        return c.Reopen(reason=f"reopened in {tool}")
    if change.kind == "status":
        return _status_command(rules, change.value or "", issue)
    return f"the ticket is known already (issue {issue.id})"


def _status_command(rules: Rules, status: str, issue: Issue) -> c.Command | str:
    said = f"status {status[:200]} in {rules.tool}"
    target = rules.status_class(status)
    if target == "resolve":
        if issue.status in ("resolved", "closed"):
            return f"the issue is {issue.status} already"
        return c.Resolve(resolution=said)
    if target == "hold":
        if issue.status == "on_hold":
            return "the issue is on hold already"
        return c.Hold(reason=said[:500])
    if issue.status == "on_hold":
        return c.Resume()
    if issue.status == "resolved":
        return c.Reopen(reason=said[:500])
    if target == "acknowledge":
        if issue.status == "acknowledged":
            return "the issue is acknowledged already"
        return c.Acknowledge(note=said)
    return f"status {status[:200]!r} maps to no command"
