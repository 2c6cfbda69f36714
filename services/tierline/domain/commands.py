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
    """Open an issue against a vendor."""

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
    """Acknowledge the issue (stops the current tier's respond clock)."""

    route: ClassVar[str] = "acknowledge"
    note: str | None = Field(default=None, max_length=10_000)


class Assign(Command):
    """Assign the issue to someone."""

    route: ClassVar[str] = "assign"
    assignee: str = ShortText


class AddComment(Command):
    """Add a comment."""

    route: ClassVar[str] = "comments"
    body: str = Text
    author: str | None = Field(default=None, max_length=200)


class ChangePriority(Command):
    """Change the priority (running SLA targets are recomputed, elapsed time kept)."""

    route: ClassVar[str] = "priority"
    priority: Priority
    reason: str | None = Field(default=None, max_length=2_000)


class Escalate(Command):
    """Escalate to a higher governance tier (default: the next one)."""

    route: ClassVar[str] = "escalate"
    reason: str = ShortText
    to_tier: int | None = Field(default=None, ge=1, le=10)


class Deescalate(Command):
    """De-escalate to a lower governance tier (default: the previous one)."""

    route: ClassVar[str] = "deescalate"
    reason: str = ShortText
    to_tier: int | None = Field(default=None, ge=0, le=10)


class Hold(Command):
    """Put the issue on hold (running clocks pause)."""

    route: ClassVar[str] = "hold"
    reason: str = ShortText


class Resume(Command):
    """Resume an issue on hold (clocks resume with their elapsed time)."""

    route: ClassVar[str] = "resume"


class Resolve(Command):
    """Resolve the issue (clocks stop as met, or stay breached)."""

    route: ClassVar[str] = "resolve"
    resolution: str = Text


class Reopen(Command):
    """Reopen a resolved issue at the same tier (new clocks start)."""

    route: ClassVar[str] = "reopen"
    reason: str = ShortText


class Close(Command):
    """Close a resolved issue (final)."""

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
