"""Commands an integration (or the SLA engine) sends to an issue; bodies of the command API."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from tierline.domain.events import Category
from tierline.domain.governance import Priority

Text = Field(min_length=1, max_length=10_000)
ShortText = Field(min_length=1, max_length=500)


class Command(BaseModel):
    """Base of every command; `route` is its path segment under `/v1/issues/{id}/`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    route: ClassVar[str] = ""


class OpenIssue(Command):
    vendor_id: str = Field(min_length=1, max_length=63)
    title: str = Field(min_length=1, max_length=300)
    description: str | None = Field(default=None, max_length=20_000)
    category: Category
    priority: Priority
    external_ref: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.-]{1,40}:[^\s]{1,200}$", description="system:key"
    )
    reported_by: str | None = Field(default=None, max_length=200)


class Acknowledge(Command):
    route: ClassVar[str] = "acknowledge"
    note: str | None = Field(default=None, max_length=10_000)


class Assign(Command):
    route: ClassVar[str] = "assign"
    assignee: str = ShortText


class AddComment(Command):
    route: ClassVar[str] = "comments"
    body: str = Text
    author: str | None = Field(default=None, max_length=200)


class ChangePriority(Command):
    route: ClassVar[str] = "priority"
    priority: Priority
    reason: str | None = Field(default=None, max_length=2_000)


class Escalate(Command):
    route: ClassVar[str] = "escalate"
    reason: str = ShortText
    to_tier: int | None = Field(default=None, ge=1, le=10)


class Deescalate(Command):
    route: ClassVar[str] = "deescalate"
    reason: str = ShortText
    to_tier: int | None = Field(default=None, ge=0, le=10)


class Hold(Command):
    route: ClassVar[str] = "hold"
    reason: str = ShortText


class Resume(Command):
    route: ClassVar[str] = "resume"


class Resolve(Command):
    route: ClassVar[str] = "resolve"
    resolution: str = Text


class Reopen(Command):
    route: ClassVar[str] = "reopen"
    reason: str = ShortText


class Close(Command):
    route: ClassVar[str] = "close"


class RecordSlaWarning(Command):
    """Sent by the SLA engine when a clock crosses a warning threshold."""

    clock_id: str
    threshold: float


class RecordSlaBreach(Command):
    """Sent by the SLA engine when a clock passes its due time."""

    clock_id: str


class RecomputeSla(Command):
    """Sent after a policy change: live clocks take the new targets, keeping elapsed time."""


ISSUE_COMMANDS: tuple[type[Command], ...] = (
    Acknowledge,
    Assign,
    AddComment,
    ChangePriority,
    Escalate,
    Deescalate,
    Hold,
    Resume,
    Resolve,
    Reopen,
    Close,
)
