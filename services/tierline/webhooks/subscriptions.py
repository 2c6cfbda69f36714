"""Webhook subscriptions in PostgreSQL: create, read, change, rotate secrets, delete."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# The previous secret keeps signing this long after a rotation.
ROTATION_OVERLAP_SECONDS = 24 * 3600.0

COLUMNS = """
id, url, event_types, vendor_id, description, active, disabled_reason, created_at, updated_at,
CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
"""
INSERT_SUBSCRIPTION = f"""
INSERT INTO webhook_subscriptions (id, url, event_types, vendor_id, description, secret)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING {COLUMNS}
"""
GET_SUBSCRIPTION = f"SELECT {COLUMNS} FROM webhook_subscriptions WHERE id = $1"
# $1: only this vendor's subscriptions (NULL: every subscription); $2/$3: the keyset cursor.
LIST_SUBSCRIPTIONS = f"""
SELECT {COLUMNS} FROM webhook_subscriptions
WHERE ($1::text IS NULL OR vendor_id = $1)
  AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))
ORDER BY created_at, id
LIMIT $4
"""
DELETE_SUBSCRIPTION = "DELETE FROM webhook_subscriptions WHERE id = $1 RETURNING id"
ROTATE_SECRET = f"""
UPDATE webhook_subscriptions
SET previous_secret = secret,
    previous_secret_expires_at = now() + make_interval(secs => $3),
    secret = $2,
    updated_at = now()
WHERE id = $1
RETURNING {COLUMNS}
"""
# NULL parameters leave a field as it is; re-enabling clears the reason it was disabled.
UPDATE_SUBSCRIPTION = f"""
UPDATE webhook_subscriptions
SET url = coalesce($2, url),
    event_types = coalesce($3, event_types),
    description = CASE WHEN $4 THEN $5 ELSE description END,
    active = coalesce($6, active),
    disabled_reason = CASE WHEN coalesce($6, active) THEN NULL ELSE disabled_reason END,
    updated_at = now()
WHERE id = $1
RETURNING {COLUMNS}
"""


@dataclass(frozen=True)
class Subscription:
    """A subscription's settings (never its secret)."""

    id: uuid.UUID
    url: str
    event_types: list[str]
    vendor_id: str | None
    description: str | None
    active: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    previous_secret_expires_at: datetime | None


Conn = asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy


def _subscription(row: asyncpg.Record) -> Subscription:
    return Subscription(*row)


async def insert_subscription(
    conn: Conn,
    *,
    url: str,
    event_types: list[str],
    vendor_id: str | None,
    description: str | None,
    secret: str,
) -> Subscription:
    """Store a new, active subscription."""
    row = await conn.fetchrow(
        INSERT_SUBSCRIPTION, uuid.uuid4(), url, event_types, vendor_id, description, secret
    )
    assert row is not None
    return _subscription(row)


async def get_subscription(conn: Conn, subscription_id: uuid.UUID) -> Subscription | None:
    """One subscription or None."""
    row = await conn.fetchrow(GET_SUBSCRIPTION, subscription_id)
    return None if row is None else _subscription(row)


async def list_subscriptions(
    conn: Conn,
    *,
    vendor_id: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Subscription]:
    """Subscriptions in creation order after the cursor, optionally of one vendor only."""
    created, last_id = after if after is not None else (None, None)
    rows = await conn.fetch(LIST_SUBSCRIPTIONS, vendor_id, created, last_id, limit)
    return [_subscription(r) for r in rows]


async def delete_subscription(conn: Conn, subscription_id: uuid.UUID) -> bool:
    """Delete a subscription with its deliveries; False when there was none."""
    return await conn.fetchval(DELETE_SUBSCRIPTION, subscription_id) is not None


async def rotate_secret(
    conn: Conn,
    subscription_id: uuid.UUID,
    new_secret: str,
    overlap_seconds: float = ROTATION_OVERLAP_SECONDS,
) -> Subscription | None:
    """Replace the secret; the old one keeps signing for `overlap_seconds`."""
    row = await conn.fetchrow(ROTATE_SECRET, subscription_id, new_secret, overlap_seconds)
    return None if row is None else _subscription(row)


async def update_subscription(
    conn: Conn, subscription_id: uuid.UUID, changes: dict[str, Any]
) -> Subscription | None:
    """Apply the given field changes (url, event_types, description, active)."""
    row = await conn.fetchrow(
        UPDATE_SUBSCRIPTION,
        subscription_id,
        changes.get("url"),
        changes.get("event_types"),
        "description" in changes,
        changes.get("description"),
        changes.get("active"),
    )
    return None if row is None else _subscription(row)
