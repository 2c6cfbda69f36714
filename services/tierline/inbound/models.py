"""Request and response bodies of the inbound endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tierline.inbound.deliveries import Delivery, Outcome
from tierline.inbound.mapping import Mapping
from tierline.inbound.sources import Source
from tierline.inbound.verify import SourceType

Secret = Field(
    default=None,
    min_length=16,
    max_length=200,
    pattern=r"^[\x21-\x7e]+$",
    description=(
        "bring your own secret (for tools that generate theirs, such as Zendesk); "
        "generated when absent"
    ),
)


class CreateSource(BaseModel):
    """Body of `POST /v1/inbound-sources`."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    type: SourceType
    vendor_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        description="the vendor of the issues it opens; binds the source to that vendor",
    )
    mapping: Mapping | None = None
    secret: str | None = Secret


class UpdateSource(BaseModel):
    """Body of `PATCH /v1/inbound-sources/{id}`: any subset; `mapping` replaces the overrides."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    vendor_id: str | None = Field(default=None, min_length=1, max_length=63)
    mapping: Mapping | None = None


class RotateSecret(BaseModel):
    """Body of `POST /v1/inbound-sources/{id}/rotate-secret` (optional)."""

    model_config = ConfigDict(extra="forbid")
    secret: str | None = Secret


class SourceOut(BaseModel):
    """A source; `secret` appears only when it is created or rotated."""

    id: str
    name: str
    type: SourceType
    vendor_id: str | None
    mapping: dict[str, Any] = Field(description="the overrides as stored (defaults not shown)")
    url: str = Field(description="where the tool sends its webhooks")
    created_at: datetime
    updated_at: datetime
    previous_secret_expires_at: datetime | None = Field(
        default=None, description="until then the secret before the last rotation verifies too"
    )
    secret: str | None = Field(default=None, description="shown once")

    @classmethod
    def of(cls, source: Source, base_url: str, secret: str | None = None) -> SourceOut:
        """The API view of a stored source."""
        return cls(
            id=str(source.id),
            name=source.name,
            type=source.type,
            vendor_id=source.vendor_id,
            mapping=source.mapping,
            url=f"{base_url}/v1/inbound/{source.id}",
            created_at=source.created_at,
            updated_at=source.updated_at,
            previous_secret_expires_at=source.previous_secret_expires_at,
            secret=secret,
        )


class SourcePage(BaseModel):
    """A page of sources."""

    items: list[SourceOut]
    next_cursor: str | None = None


class CommandOut(BaseModel):
    """One command a delivery mapped to, and what became of it."""

    model_config = ConfigDict(extra="allow")
    change: str = Field(description="created, commented, priority, status or reopened")
    command: str | None = Field(default=None, description="open, comments, priority, ...")
    outcome: str = Field(description="applied or ignored")
    reason: str | None = None
    version: int | None = Field(default=None, description="the issue's version after it")


def reason_and_error(outcome: Outcome, text: str | None) -> dict[str, str | None]:
    """An ignored delivery's text is why it was ignored; a failed or rejected one's, its error."""
    if outcome == "ignored":
        return {"reason": text, "error": None}
    return {"reason": None, "error": text}


class DeliveryOut(BaseModel):
    """One delivery as it arrived: verification, the tool's event, commands and outcome."""

    id: str
    delivery_id: str = Field(description="the tool's delivery id")
    verified: bool
    event: str | None
    ticket_key: str | None
    issue_id: str | None
    outcome: Outcome
    commands: list[CommandOut]
    reason: str | None = Field(default=None, description="why it was ignored")
    error: str | None = Field(default=None, description="why it failed or was rejected")
    received_at: datetime

    @classmethod
    def of(cls, delivery: Delivery) -> DeliveryOut:
        """The API view of a stored delivery."""
        return cls(
            id=str(delivery.id),
            delivery_id=delivery.delivery_id,
            verified=delivery.verified,
            event=delivery.event,
            ticket_key=delivery.ticket_key,
            issue_id=delivery.issue_id,
            outcome=delivery.outcome,
            commands=[CommandOut.model_validate(c) for c in delivery.commands],
            received_at=delivery.received_at,
            **reason_and_error(delivery.outcome, delivery.error),
        )


class DeliveryPage(BaseModel):
    """A page of deliveries, newest first."""

    items: list[DeliveryOut]
    next_cursor: str | None = None


class ToolPayload(BaseModel):
    """The tool's own webhook body (Jira, Zendesk, GitHub or generic; see the README)."""

    model_config = ConfigDict(extra="allow")


class Received(BaseModel):
    """What became of a delivery: also the answer to its redeliveries."""

    delivery_id: str
    outcome: Outcome
    duplicate: bool = Field(description="true when the delivery id was recorded before")
    issue_id: str | None = None
    commands: list[CommandOut] = []
    reason: str | None = None
    error: str | None = None
