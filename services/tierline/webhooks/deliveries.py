"""The delivery queue in PostgreSQL: fan-out from events, claims, attempt results, the log."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from tierline import secretbox
from tierline.secretbox import SecretBox, SecretUnreadable
from tierline.sqlfile import load_queries
from tierline.webhooks.retry import DeliveryStatus, Outcome
from tierline.webhooks.subscriptions import is_plaintext, open_secret, seal_plaintext_secrets

log = structlog.get_logger(__name__)

CHANNEL = "tierline_webhooks"

QUERIES = load_queries("tierline.webhooks")


@dataclass(frozen=True)
class EventBody:
    """An event ready for fan-out: its identity and the exact body to send."""

    event_id: uuid.UUID
    stream_id: str
    version: int
    type: str
    time: datetime
    body: str
    # The vendor; None for governance events.
    vendor_id: str | None = None


@dataclass(frozen=True)
class Claimed:
    """A delivery leased to this sender, with what it needs to make the attempt."""

    id: uuid.UUID
    lease_token: uuid.UUID
    subscription_id: uuid.UUID
    event_id: uuid.UUID
    failures: int
    url: str
    # Opened (plaintext) secrets: kept out of reprs, which end up in logs and tracebacks.
    secret: str = field(repr=False)
    previous_secret: str | None = field(repr=False)
    body: str
    event_time: datetime

    @property
    def secrets(self) -> list[str]:
        """Every secret that signs now: the current one and, during an overlap, the previous."""
        if self.previous_secret is None:
            return [self.secret]
        return [self.secret, self.previous_secret]


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt did to its delivery."""

    delivery_id: uuid.UUID
    lease_token: uuid.UUID
    subscription_id: uuid.UUID
    status: DeliveryStatus
    outcome: Outcome
    delay: float | None
    status_code: int | None
    error: str | None
    started_at: datetime
    latency: float


@dataclass(frozen=True)
class Attempt:
    """One logged attempt."""

    delivery_id: uuid.UUID
    attempt: int
    started_at: datetime
    latency_seconds: float
    status_code: int | None
    error: str | None
    outcome: Outcome


@dataclass(frozen=True)
class Delivery:
    """A delivery as the log shows it."""

    id: uuid.UUID
    subscription_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    subject: str
    sequence: int
    status: DeliveryStatus
    attempt_count: int
    response_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    in_flight: bool


Conn = asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy


async def fan_out(conn: Conn, events: Sequence[EventBody]) -> int:
    """Insert the deliveries these events owe; returns how many are new."""
    status = await conn.execute(
        QUERIES["fan_out"],
        [e.event_id for e in events],
        [e.stream_id for e in events],
        [e.version for e in events],
        [e.type for e in events],
        [e.time for e in events],
        [e.body for e in events],
        [e.vendor_id for e in events],
    )
    inserted = int(status.split()[-1])
    if inserted:
        # Delivered at commit: senders wake as soon as the deliveries are visible.
        await wake_senders(conn)
    return inserted


async def claim(
    conn: Conn,
    *,
    busy: dict[uuid.UUID, int],
    per_subscription: int,
    limit: int,
    lease_seconds: float,
    box: SecretBox | None = None,
) -> list[Claimed]:
    """Lease due deliveries, respecting each subscription's free slots; secrets come opened.

    A delivery whose secret no key opens is logged and left leased: it is due again when the
    lease runs out, so it is sent once the right key is configured. Meeting a plaintext secret
    (a row from before encryption at rest) seals every such row.
    """
    box = box or secretbox.current()
    rows = await conn.fetch(
        QUERIES["claim_deliveries"],
        list(busy),
        per_subscription,
        list(busy.values()),
        limit,
        lease_seconds,
    )
    claimed: list[Claimed] = []
    plaintext = False
    for row in rows:
        stored, stored_previous = row["secret"], row["previous_secret"]
        plaintext = plaintext or is_plaintext(stored) or is_plaintext(stored_previous or "")
        try:
            secret = open_secret(stored, box)
            previous = None if stored_previous is None else open_secret(stored_previous, box)
        except SecretUnreadable:
            log.error(
                "webhook_secret_unreadable",
                webhook_id=str(row["subscription_id"]),
                delivery_id=str(row["id"]),
                hint=f"{secretbox.SETTING} lacks the key this secret was sealed with",
            )
            continue
        claimed.append(
            Claimed(
                id=row["id"],
                lease_token=row["lease_token"],
                subscription_id=row["subscription_id"],
                event_id=row["event_id"],
                failures=row["failures"],
                url=row["url"],
                secret=secret,
                previous_secret=previous,
                body=row["body"],
                event_time=row["time"],
            )
        )
    if plaintext:
        sealed = await seal_plaintext_secrets(conn, box)
        log.info("webhook_secrets_sealed", count=sealed, reason="plaintext met by the sender")
    return claimed


async def seconds_until_next_due(conn: Conn) -> float | None:
    """How long until a scheduled delivery falls due, if any is scheduled."""
    value = await conn.fetchval(QUERIES["seconds_until_next_due"])
    return None if value is None else float(value)


async def record_attempts(
    conn: asyncpg.Connection | PoolConnectionProxy, results: Sequence[AttemptResult]
) -> int:
    """Store a batch of attempt results and disable subscriptions that answered 410.

    Returns how many results still held their lease (the others were dropped).
    """
    async with conn.transaction():
        status = await conn.execute(
            QUERIES["record_attempts"],
            [r.delivery_id for r in results],
            [r.lease_token for r in results],
            [r.status for r in results],
            [r.delay for r in results],
            [r.status_code for r in results],
            [r.error for r in results],
            [r.started_at for r in results],
            [r.latency for r in results],
            [r.outcome for r in results],
        )
        gone = sorted({r.subscription_id for r in results if r.outcome == "disabled"})
        if gone:
            reason = "the endpoint answered 410 Gone"
            await conn.execute(QUERIES["disable_subscriptions"], gone, reason)
    return int(status.split()[-1])


async def release_leases(conn: Conn, tokens: Sequence[uuid.UUID]) -> None:
    """Make unfinished leased deliveries due again at once."""
    if tokens:
        await conn.execute(QUERIES["release_leases"], list(tokens))
        await wake_senders(conn)


async def queue_stats(conn: Conn) -> tuple[int, float]:
    """Undelivered deliveries of active subscriptions and the age of the oldest, in seconds."""
    row = await conn.fetchrow(QUERIES["queue_stats"])
    assert row is not None
    return int(row["undelivered"]), float(row["oldest_seconds"] or 0.0)


async def list_deliveries(
    conn: Conn,
    subscription_id: uuid.UUID,
    *,
    status: str | None,
    event_id: uuid.UUID | None,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Delivery]:
    """A subscription's deliveries, newest first, before the cursor."""
    created, last_id = before if before is not None else (None, None)
    rows = await conn.fetch(
        QUERIES["list_deliveries"], subscription_id, status, event_id, created, last_id, limit
    )
    return [Delivery(**dict(row)) for row in rows]


async def get_delivery(
    conn: Conn, subscription_id: uuid.UUID, delivery_id: uuid.UUID
) -> Delivery | None:
    """One delivery of a subscription, or None."""
    row = await conn.fetchrow(QUERIES["get_delivery"], subscription_id, delivery_id)
    return None if row is None else Delivery(**dict(row))


async def attempts_of(
    conn: Conn, delivery_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[Attempt]]:
    """The attempt log of each delivery, in order."""
    found: dict[uuid.UUID, list[Attempt]] = {d: [] for d in delivery_ids}
    for row in await conn.fetch(QUERIES["list_attempts"], list(delivery_ids)):
        found[row["delivery_id"]].append(Attempt(**dict(row)))
    return found


async def requeue(
    conn: Conn, subscription_id: uuid.UUID, delivery_id: uuid.UUID
) -> Delivery | None:
    """Queue a failed or dead delivery again, due now; None when it is not in such a state."""
    row = await conn.fetchrow(QUERIES["requeue_delivery"], subscription_id, delivery_id)
    if row is None:
        return None
    await wake_senders(conn)
    return Delivery(**dict(row))


async def wake_senders(conn: Conn) -> None:
    """Tell every sender that deliveries may have become due."""
    await conn.execute(QUERIES["wake_senders"], CHANNEL)
