"""Webhook subscriptions in PostgreSQL: create, read, change, rotate secrets, delete.

Signing secrets are stored sealed (`tierline.secretbox`, docs/adr/0007): this module seals what
it writes; `open_secret` opens what the sender reads. Rows written before encryption hold
plaintext `whsec_` values; they are sealed when a role that holds the key starts
(`seal_plaintext_secrets`) and whenever the sender meets one, and meanwhile still open.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from tierline import secretbox
from tierline.secretbox import SecretBox
from tierline.webhooks.signing import SECRET_PREFIX

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
# Rows still holding a plaintext secret ($1: only this subscription; NULL: all of them).
PLAINTEXT_SECRETS = r"""
SELECT id, secret, previous_secret FROM webhook_subscriptions
WHERE (secret LIKE 'whsec\_%' OR previous_secret LIKE 'whsec\_%')
  AND ($1::uuid IS NULL OR id = $1)
"""
# Every row's secrets in id order after the cursor, for re-sealing under the newest key.
SECRETS_PAGE = """
SELECT id, secret, previous_secret FROM webhook_subscriptions
WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2
"""
COUNT_SUBSCRIPTIONS = "SELECT count(*) FROM webhook_subscriptions"
# Replace secrets only where they are still what was read (compare-and-set): a rotation that
# committed in between wins, and the next sweep or `secrets rotate` handles what it left.
RESEAL_SECRETS = """
UPDATE webhook_subscriptions s
SET secret = CASE WHEN s.secret = u.old_secret THEN u.new_secret ELSE s.secret END,
    previous_secret = CASE WHEN s.previous_secret IS NOT DISTINCT FROM u.old_previous
                           THEN u.new_previous ELSE s.previous_secret END
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
    AS u(id, old_secret, new_secret, old_previous, new_previous)
WHERE s.id = u.id
"""
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
# (id, secret, previous secret) as stored.
StoredSecrets = tuple[uuid.UUID, str, str | None]


def _subscription(row: asyncpg.Record) -> Subscription:
    return Subscription(*row)


def is_plaintext(stored: str) -> bool:
    """True for a secret stored before encryption at rest (it is the `whsec_` value itself)."""
    return stored.startswith(SECRET_PREFIX)


def open_secret(stored: str, box: SecretBox | None = None) -> str:
    """The `whsec_` secret of a stored value (sealed, or plaintext from before encryption)."""
    if is_plaintext(stored):
        return stored
    return (box or secretbox.current()).open(stored)


async def insert_subscription(
    conn: Conn,
    *,
    url: str,
    event_types: list[str],
    vendor_id: str | None,
    description: str | None,
    secret: str,
    box: SecretBox | None = None,
) -> Subscription:
    """Store a new, active subscription; the secret is stored sealed."""
    sealed = (box or secretbox.current()).seal(secret)
    row = await conn.fetchrow(
        INSERT_SUBSCRIPTION, uuid.uuid4(), url, event_types, vendor_id, description, sealed
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
    box: SecretBox | None = None,
) -> Subscription | None:
    """Replace the secret; the old one keeps signing for `overlap_seconds`."""
    box = box or secretbox.current()
    # The current secret becomes the previous one as stored: seal it first if it is plaintext.
    await seal_plaintext_secrets(conn, box, subscription_id=subscription_id)
    row = await conn.fetchrow(ROTATE_SECRET, subscription_id, box.seal(new_secret), overlap_seconds)
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


async def _write_resealed(
    conn: Conn, rows: list[StoredSecrets], resealed: list[tuple[str, str | None]]
) -> None:
    if rows:
        await conn.execute(
            RESEAL_SECRETS,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [n[0] for n in resealed],
            [r[2] for r in rows],
            [n[1] for n in resealed],
        )


async def seal_plaintext_secrets(
    conn: Conn, box: SecretBox | None = None, *, subscription_id: uuid.UUID | None = None
) -> int:
    """Seal every secret still stored as plaintext (or only this subscription's); how many rows."""
    box = box or secretbox.current()
    rows = _stored_secrets(await conn.fetch(PLAINTEXT_SECRETS, subscription_id))
    # Values sealed already are left as they are (even under a key this box lacks).
    resealed = [
        (_seal_plaintext(box, secret), None if previous is None else _seal_plaintext(box, previous))
        for _, secret, previous in rows
    ]
    await _write_resealed(conn, rows, resealed)
    return len(rows)


def _stored_secrets(records: list[asyncpg.Record]) -> list[StoredSecrets]:
    return [(r["id"], r["secret"], r["previous_secret"]) for r in records]


def _seal_plaintext(box: SecretBox, stored: str) -> str:
    return box.seal(stored) if is_plaintext(stored) else stored


def _sealed(box: SecretBox, stored: str) -> str:
    """A stored value sealed under the newest key, whether it was plaintext or sealed."""
    return box.seal(stored) if is_plaintext(stored) else box.reseal(stored)


async def count_subscriptions(conn: Conn) -> int:
    """How many subscriptions there are (the size of a re-seal)."""
    return int(await conn.fetchval(COUNT_SUBSCRIPTIONS))


async def reseal_secrets_page(
    conn: Conn, box: SecretBox, *, after: uuid.UUID | None, limit: int
) -> tuple[int, uuid.UUID | None, list[uuid.UUID]]:
    """Re-seal one page of subscriptions under the newest key (plaintext ones too).

    Returns how many rows the page held, the cursor for the next page (None at the end) and the
    subscriptions whose secrets no key opens (left as they are).
    """
    rows = _stored_secrets(await conn.fetch(SECRETS_PAGE, after, limit))
    done: list[StoredSecrets] = []
    resealed: list[tuple[str, str | None]] = []
    unreadable: list[uuid.UUID] = []
    for row in rows:
        sub_id, secret, previous = row
        try:
            resealed.append(
                (_sealed(box, secret), None if previous is None else _sealed(box, previous))
            )
        except secretbox.SecretUnreadable:
            unreadable.append(sub_id)
            continue
        done.append(row)
    await _write_resealed(conn, done, resealed)
    cursor = rows[-1][0] if len(rows) == limit else None
    return len(rows), cursor, unreadable
