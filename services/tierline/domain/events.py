"""Issue events (`io.tierline.issue.<name>.v1`) and governance events, one frozen model per type."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from tierline.domain.clocks import Clock, ClockKind
from tierline.domain.governance import Governance, Priority, Vendor

Category = Literal[
    "communication",
    "cultural",
    "security_compliance",
    "quality",
    "change_management",
    "vendor_management",
    "knowledge_transfer",
    "service_delivery",
    "other",
]
Status = Literal["open", "acknowledged", "on_hold", "resolved", "closed"]

EVENT_TYPE_PREFIX = "io.tierline.issue."


class Event(BaseModel):
    """Base of every event's data; `clocks`, when present, is the issue's clocks after it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ClassVar[str]
    clocks: list[Clock] | None = None

    @classmethod
    def event_type(cls) -> str:
        """The CloudEvents type of this event class."""
        return f"{EVENT_TYPE_PREFIX}{cls.name}.v1"


class Opened(Event):
    name: ClassVar[str] = "opened"
    vendor_id: str
    title: str
    description: str | None = None
    category: Category
    priority: Priority
    tier: int = 1
    external_ref: str | None = None
    reported_by: str | None = None


class Acknowledged(Event):
    name: ClassVar[str] = "acknowledged"
    note: str | None = None


class Assigned(Event):
    name: ClassVar[str] = "assigned"
    assignee: str


class Commented(Event):
    name: ClassVar[str] = "commented"
    body: str
    author: str | None = None


class PriorityChanged(Event):
    name: ClassVar[str] = "priority_changed"
    from_priority: Priority
    to_priority: Priority
    reason: str | None = None


class Escalated(Event):
    name: ClassVar[str] = "escalated"
    from_tier: int
    to_tier: int
    reason: str
    automatic: bool = False


class Deescalated(Event):
    name: ClassVar[str] = "deescalated"
    from_tier: int
    to_tier: int
    reason: str


class PutOnHold(Event):
    name: ClassVar[str] = "put_on_hold"
    reason: str


class Resumed(Event):
    name: ClassVar[str] = "resumed"
    status: Status = "open"


class Resolved(Event):
    name: ClassVar[str] = "resolved"
    resolution: str


class Reopened(Event):
    name: ClassVar[str] = "reopened"
    reason: str


class Closed(Event):
    name: ClassVar[str] = "closed"


class SlaWarning(Event):
    name: ClassVar[str] = "sla_warning"
    clock_id: str
    tier: int
    kind: ClockKind
    threshold: float
    due_at: datetime


class SlaBreached(Event):
    name: ClassVar[str] = "sla_breached"
    clock_id: str
    tier: int
    kind: ClockKind
    threshold: float = 1.0
    due_at: datetime
    breached_at: datetime


class PolicyChanged(Event):
    """Recorded on the governance stream when the ladder or SLA table is replaced."""

    name: ClassVar[str] = "policy_changed"
    governance: Governance
    policy_version: int = Field(ge=1)

    @classmethod
    def event_type(cls) -> str:
        """Governance events live under their own type prefix."""
        return "io.tierline.governance.policy_changed.v1"


class VendorChanged(Event):
    """Recorded on the governance stream when a vendor's name, zone or calendar changes.

    `vendor` is the whole vendor after the change and `vendor_version` its new version (the
    ETag of `GET /v1/vendors/{id}`); the SLA engine recomputes that vendor's running clocks.
    """

    name: ClassVar[str] = "vendor_changed"
    vendor_id: str
    vendor_version: int = Field(ge=2)
    vendor: Vendor

    @classmethod
    def event_type(cls) -> str:
        """Governance events live under their own type prefix."""
        return "io.tierline.governance.vendor_changed.v1"


ISSUE_EVENT_CLASSES: tuple[type[Event], ...] = (
    Opened,
    Acknowledged,
    Assigned,
    Commented,
    PriorityChanged,
    Escalated,
    Deescalated,
    PutOnHold,
    Resumed,
    Resolved,
    Reopened,
    Closed,
    SlaWarning,
    SlaBreached,
)
_ALL_EVENT_CLASSES: tuple[type[Event], ...] = (*ISSUE_EVENT_CLASSES, PolicyChanged, VendorChanged)
EVENT_CLASSES: dict[str, type[Event]] = {cls.event_type(): cls for cls in _ALL_EVENT_CLASSES}


def event_from_json(event_type: str, data: dict[str, Any]) -> Event:
    """Rebuild an event's data from its type name and JSON object."""
    try:
        cls = EVENT_CLASSES[event_type]
    except KeyError:
        raise ValueError(f"unknown event type {event_type!r}") from None
    return cls.model_validate(data)
