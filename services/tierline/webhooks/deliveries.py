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
from tierline.webhooks.retry import DeliveryStatus, Outcome
from tierline.webhooks.subscriptions import is_plaintext, open_secret, seal_plaintext_secrets

log = structlog.get_logger(__name__)

CHANNEL = "tierline_webhooks"

# One statement per consumer batch: match events to active subscriptions (type, vendor, and
# only events recorded after the subscription was made), store each matched body once, and
# insert one delivery per (subscription, event); a replayed event inserts nothing. The vendor
# is the event's own (`vendorid` on the log); an event without one (governance) matches only
# subscriptions bound to no vendor.
FAN_OUT = """
WITH e AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::timestamptz[],
                         $6::text[], $7::text[])
        AS e(event_id, stream_id, version, type, time, body, vendor_id)
), matched AS (
    SELECT s.id AS subscription_id, e.event_id
    FROM e
    JOIN webhook_subscriptions s
      ON s.active
     AND s.created_at <= e.time
     AND ('*' = ANY (s.event_types) OR e.type = ANY (s.event_types))
     AND (s.vendor_id IS NULL OR s.vendor_id = e.vendor_id)
), bodies AS (
    INSERT INTO webhook_events (event_id, stream_id, version, type, time, body)
    SELECT e.event_id, e.stream_id, e.version, e.type, e.time, e.body FROM e
    WHERE e.event_id IN (SELECT event_id FROM matched)
    ON CONFLICT (event_id) DO NOTHING
)
INSERT INTO webhook_deliveries (subscription_id, event_id)
SELECT subscription_id, event_id FROM matched
ON CONFLICT ON CONSTRAINT webhook_deliveries_once DO NOTHING
"""
NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"

# Due deliveries, at most `free` per active subscription ($1/$3: subscriptions with attempts in
# flight here and how many), oldest first, $4 in all; each is leased for $5 seconds.
CLAIM = """
WITH slots AS (
    SELECT s.id, greatest($2 - coalesce(b.busy, 0), 0) AS free
    FROM webhook_subscriptions s
    LEFT JOIN unnest($1::uuid[], $3::int[]) AS b(sub, busy) ON b.sub = s.id
    WHERE s.active
), picked AS (
    SELECT due.id FROM slots
    CROSS JOIN LATERAL (
        SELECT d.id, d.next_attempt_at FROM webhook_deliveries d
        WHERE d.subscription_id = slots.id
          AND d.status IN ('pending', 'failed')
          AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT slots.free
        FOR UPDATE SKIP LOCKED
    ) due
    WHERE slots.free > 0
    ORDER BY due.next_attempt_at
    LIMIT $4
)
UPDATE webhook_deliveries d
SET next_attempt_at = now() + make_interval(secs => $5), lease_token = gen_random_uuid()
FROM picked, webhook_subscriptions s, webhook_events e
WHERE d.id = picked.id AND s.id = d.subscription_id AND e.event_id = d.event_id
RETURNING d.id, d.lease_token, d.subscription_id, d.event_id, d.failures, s.url, s.secret,
          CASE WHEN s.previous_secret_expires_at > now() THEN s.previous_secret END
              AS previous_secret,
          e.body, e.time
"""
# Seconds until the next delivery falls due (those due already are claimed or waiting for a
# free slot, which wakes the sender by itself).
NEXT_DUE = """
SELECT extract(epoch FROM min(next_attempt_at) - now()) FROM webhook_deliveries
WHERE status IN ('pending', 'failed') AND next_attempt_at > now()
"""
# Results of a batch of attempts; a result whose lease was lost (it expired and another sender
# took the delivery) changes nothing.
RECORD_ATTEMPTS = """
WITH r AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::float8[], $5::int[], $6::text[],
                         $7::timestamptz[], $8::float8[], $9::text[])
        AS r(id, token, status, delay, code, error, started_at, latency, outcome)
), d AS (
    UPDATE webhook_deliveries w
    SET status = r.status,
        attempts = w.attempts + 1,
        failures = CASE WHEN r.status = 'delivered' THEN w.failures ELSE w.failures + 1 END,
        next_attempt_at = CASE WHEN r.delay IS NULL THEN NULL
                               ELSE now() + make_interval(secs => r.delay) END,
        lease_token = NULL,
        last_status_code = r.code,
        last_error = r.error,
        last_attempt_at = r.started_at,
        delivered_at = CASE WHEN r.status = 'delivered' THEN now() ELSE w.delivered_at END
    FROM r
    WHERE w.id = r.id AND w.lease_token = r.token
    RETURNING w.id, w.attempts
)
INSERT INTO webhook_attempts
    (delivery_id, attempt, started_at, latency_seconds, status_code, error, outcome)
SELECT d.id, d.attempts, r.started_at, r.latency, r.code, r.error, r.outcome
FROM d JOIN r ON r.id = d.id
"""
# A sender stopping gracefully hands back what it leased but did not finish.
RELEASE_LEASES = """
UPDATE webhook_deliveries SET next_attempt_at = now(), lease_token = NULL
WHERE lease_token = ANY($1::uuid[])
"""
DISABLE_SUBSCRIPTIONS = """
UPDATE webhook_subscriptions SET active = false, disabled_reason = $2, updated_at = now()
WHERE id = ANY($1::uuid[]) AND active
"""
QUEUE_STATS = """
SELECT count(*), extract(epoch FROM now() - min(d.created_at))
FROM webhook_deliveries d JOIN webhook_subscriptions s ON s.id = d.subscription_id
WHERE s.active AND d.status IN ('pending', 'failed')
"""

DELIVERY_COLUMNS = """
d.id, d.subscription_id, d.event_id, e.type, e.stream_id, e.version, d.status, d.attempts,
d.last_status_code, d.last_error,
CASE WHEN d.status IN ('pending', 'failed') THEN d.next_attempt_at END,
d.created_at, d.last_attempt_at, d.delivered_at,
(d.lease_token IS NOT NULL AND d.next_attempt_at > now())
"""
LIST_DELIVERIES = f"""
SELECT {DELIVERY_COLUMNS}
FROM webhook_deliveries d JOIN webhook_events e ON e.event_id = d.event_id
WHERE d.subscription_id = $1
  AND ($2::text IS NULL OR d.status = $2)
  AND ($3::uuid IS NULL OR d.event_id = $3)
  AND ($4::timestamptz IS NULL OR (d.created_at, d.id) < ($4, $5::uuid))
ORDER BY d.created_at DESC, d.id DESC
LIMIT $6
"""
GET_DELIVERY = f"""
SELECT {DELIVERY_COLUMNS}
FROM webhook_deliveries d JOIN webhook_events e ON e.event_id = d.event_id
WHERE d.subscription_id = $1 AND d.id = $2
"""
LIST_ATTEMPTS = """
SELECT delivery_id, attempt, started_at, latency_seconds, status_code, error, outcome
FROM webhook_attempts WHERE delivery_id = ANY($1::uuid[]) ORDER BY delivery_id, attempt
"""
# Back to the queue with a fresh retry schedule, unless an attempt holds a live lease.
REQUEUE = f"""
WITH d AS (
    UPDATE webhook_deliveries
    SET status = 'pending', failures = 0, next_attempt_at = now(), lease_token = NULL
    WHERE subscription_id = $1 AND id = $2 AND status IN ('failed', 'dead')
      AND (lease_token IS NULL OR next_attempt_at <= now())
    RETURNING *
)
SELECT {DELIVERY_COLUMNS} FROM d JOIN webhook_events e ON e.event_id = d.event_id
"""


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
        FAN_OUT,
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
        await conn.execute(NOTIFY)
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
        CLAIM,
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
    value = await conn.fetchval(NEXT_DUE)
    return None if value is None else float(value)


async def record_attempts(
    conn: asyncpg.Connection | PoolConnectionProxy, results: Sequence[AttemptResult]
) -> int:
    """Store a batch of attempt results and disable subscriptions that answered 410.

    Returns how many results still held their lease (the others were dropped).
    """
    async with conn.transaction():
        status = await conn.execute(
            RECORD_ATTEMPTS,
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
            await conn.execute(DISABLE_SUBSCRIPTIONS, gone, "the endpoint answered 410 Gone")
    return int(status.split()[-1])


async def release_leases(conn: Conn, tokens: Sequence[uuid.UUID]) -> None:
    """Make unfinished leased deliveries due again at once."""
    if tokens:
        await conn.execute(RELEASE_LEASES, list(tokens))
        await wake_senders(conn)


async def queue_stats(conn: Conn) -> tuple[int, float]:
    """Undelivered deliveries of active subscriptions and the age of the oldest, in seconds."""
    row = await conn.fetchrow(QUEUE_STATS)
    assert row is not None
    return int(row[0]), float(row[1] or 0.0)


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
        LIST_DELIVERIES, subscription_id, status, event_id, created, last_id, limit
    )
    return [Delivery(*row) for row in rows]


async def get_delivery(
    conn: Conn, subscription_id: uuid.UUID, delivery_id: uuid.UUID
) -> Delivery | None:
    """One delivery of a subscription, or None."""
    row = await conn.fetchrow(GET_DELIVERY, subscription_id, delivery_id)
    return None if row is None else Delivery(*row)


async def attempts_of(
    conn: Conn, delivery_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[Attempt]]:
    """The attempt log of each delivery, in order."""
    found: dict[uuid.UUID, list[Attempt]] = {d: [] for d in delivery_ids}
    for row in await conn.fetch(LIST_ATTEMPTS, list(delivery_ids)):
        found[row[0]].append(Attempt(*row))
    return found


async def requeue(
    conn: Conn, subscription_id: uuid.UUID, delivery_id: uuid.UUID
) -> Delivery | None:
    """Queue a failed or dead delivery again, due now; None when it is not in such a state."""
    row = await conn.fetchrow(REQUEUE, subscription_id, delivery_id)
    if row is None:
        return None
    await wake_senders(conn)
    return Delivery(*row)


async def wake_senders(conn: Conn) -> None:
    """Tell every sender that deliveries may have become due."""
    await conn.execute(NOTIFY)
