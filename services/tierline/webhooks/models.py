"""Request and response bodies of the webhook endpoints."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tierline.domain.events import EVENT_CLASSES
from tierline.webhooks.deliveries import Attempt, Delivery
from tierline.webhooks.retry import DeliveryStatus, Outcome
from tierline.webhooks.subscriptions import Subscription

ALL_TYPES = "*"


def _event_types(value: list[str]) -> list[str]:
    """Known event types or `*`, without repeats; `*` anywhere means every type."""
    unknown = [t for t in value if t != ALL_TYPES and t not in EVENT_CLASSES]
    if unknown:
        raise ValueError(f"unknown event types: {', '.join(sorted(unknown))}")
    if ALL_TYPES in value:
        return [ALL_TYPES]
    return sorted(set(value))


class CreateWebhook(BaseModel):
    """Body of `POST /v1/webhooks`."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2048)
    event_types: list[str] = Field(min_length=1, max_length=64)
    vendor_id: str | None = None
    description: str | None = Field(default=None, max_length=500)

    @field_validator("event_types")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        """Only types the log carries (or `*`)."""
        return _event_types(value)


class UpdateWebhook(BaseModel):
    """Body of `PATCH /v1/webhooks/{id}`: any subset of the fields; `active` re-enables."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    event_types: list[str] | None = Field(default=None, min_length=1, max_length=64)
    description: str | None = Field(default=None, max_length=500)
    active: bool | None = None

    @field_validator("event_types")
    @classmethod
    def _known_types(cls, value: list[str] | None) -> list[str] | None:
        """Only types the log carries (or `*`)."""
        return None if value is None else _event_types(value)


class WebhookOut(BaseModel):
    """A subscription; `secret` appears only when it is created or rotated."""

    id: str
    url: str
    event_types: list[str]
    vendor_id: str | None
    description: str | None
    active: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    previous_secret_expires_at: datetime | None = Field(
        description="while set, deliveries are also signed with the secret before the rotation"
    )
    secret: str | None = None

    @classmethod
    def of(cls, sub: Subscription, secret: str | None = None) -> WebhookOut:
        """The view of a stored subscription."""
        return cls(
            id=str(sub.id),
            url=sub.url,
            event_types=sub.event_types,
            vendor_id=sub.vendor_id,
            description=sub.description,
            active=sub.active,
            disabled_reason=sub.disabled_reason,
            created_at=sub.created_at,
            updated_at=sub.updated_at,
            previous_secret_expires_at=sub.previous_secret_expires_at,
            secret=secret,
        )


class WebhookPage(BaseModel):
    """Subscriptions visible to the caller."""

    items: list[WebhookOut]
    next_cursor: str | None = None


class AttemptOut(BaseModel):
    """One delivery attempt."""

    attempt: int
    started_at: datetime
    latency_ms: float
    response_code: int | None
    error: str | None
    outcome: Outcome

    @classmethod
    def of(cls, attempt: Attempt) -> AttemptOut:
        """The view of a logged attempt."""
        return cls(
            attempt=attempt.attempt,
            started_at=attempt.started_at,
            latency_ms=round(attempt.latency_seconds * 1000, 3),
            response_code=attempt.status_code,
            error=attempt.error,
            outcome=attempt.outcome,
        )


class DeliveryOut(BaseModel):
    """A delivery of one event to one subscription, with its attempts."""

    id: str
    subscription_id: str
    event_id: str = Field(description="also the webhook-id header of every attempt")
    event_type: str
    subject: str
    sequence: int
    status: DeliveryStatus
    attempt_count: int
    response_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    in_flight: bool
    created_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    attempts: list[AttemptOut]

    @classmethod
    def of(cls, delivery: Delivery, attempts: list[Attempt]) -> DeliveryOut:
        """The view of a delivery and its attempt log."""
        return cls(
            id=str(delivery.id),
            subscription_id=str(delivery.subscription_id),
            event_id=str(delivery.event_id),
            event_type=delivery.event_type,
            subject=delivery.subject,
            sequence=delivery.sequence,
            status=delivery.status,
            attempt_count=delivery.attempt_count,
            response_code=delivery.response_code,
            last_error=delivery.last_error,
            next_attempt_at=delivery.next_attempt_at,
            in_flight=delivery.in_flight,
            created_at=delivery.created_at,
            last_attempt_at=delivery.last_attempt_at,
            delivered_at=delivery.delivered_at,
            attempts=[AttemptOut.of(a) for a in attempts],
        )


class DeliveryPage(BaseModel):
    """A subscription's deliveries, newest first."""

    items: list[DeliveryOut]
    next_cursor: str | None = None
