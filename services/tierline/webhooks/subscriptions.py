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
from typing import Any, NamedTuple

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from tierline import secretbox
from tierline.secretbox import SecretBox
from tierline.sqlfile import load_queries
from tierline.webhooks.signing import SECRET_PREFIX

# The previous secret keeps signing this long after a rotation.
ROTATION_OVERLAP_SECONDS = 24 * 3600.0

QUERIES = load_queries("tierline.webhooks")


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


class StoredSecrets(NamedTuple):
    """A subscription's secrets as stored (sealed, or plaintext from before encryption)."""

    id: uuid.UUID
    secret: str
    previous_secret: str | None


class SecretQueries(NamedTuple):
    """The SQL that pages through a table's sealed secrets and writes them back re-sealed."""

    page: str
    write: str


WEBHOOK_SECRETS = SecretQueries(QUERIES["secrets_page"], QUERIES["reseal_secrets"])


def _subscription(row: asyncpg.Record) -> Subscription:
    return Subscription(**dict(row))


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
        QUERIES["insert_subscription"],
        uuid.uuid4(),
        url,
        event_types,
        vendor_id,
        description,
        sealed,
    )
    assert row is not None
    return _subscription(row)


async def get_subscription(conn: Conn, subscription_id: uuid.UUID) -> Subscription | None:
    """One subscription or None."""
    row = await conn.fetchrow(QUERIES["get_subscription"], subscription_id)
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
    rows = await conn.fetch(QUERIES["list_subscriptions"], vendor_id, created, last_id, limit)
    return [_subscription(r) for r in rows]


async def delete_subscription(conn: Conn, subscription_id: uuid.UUID) -> bool:
    """Delete a subscription with its deliveries; False when there was none."""
    return await conn.fetchval(QUERIES["delete_subscription"], subscription_id) is not None


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
    row = await conn.fetchrow(
        QUERIES["rotate_secret"], subscription_id, box.seal(new_secret), overlap_seconds
    )
    return None if row is None else _subscription(row)


async def update_subscription(
    conn: Conn, subscription_id: uuid.UUID, changes: dict[str, Any]
) -> Subscription | None:
    """Apply the given field changes (url, event_types, description, active)."""
    row = await conn.fetchrow(
        QUERIES["update_subscription"],
        subscription_id,
        changes.get("url"),
        changes.get("event_types"),
        "description" in changes,
        changes.get("description"),
        changes.get("active"),
    )
    return None if row is None else _subscription(row)


async def _write_resealed(
    conn: Conn,
    rows: list[StoredSecrets],
    resealed: list[tuple[str, str | None]],
    queries: SecretQueries = WEBHOOK_SECRETS,
) -> None:
    if rows:
        await conn.execute(
            queries.write,
            [r.id for r in rows],
            [r.secret for r in rows],
            [n[0] for n in resealed],
            [r.previous_secret for r in rows],
            [n[1] for n in resealed],
        )


async def seal_plaintext_secrets(
    conn: Conn, box: SecretBox | None = None, *, subscription_id: uuid.UUID | None = None
) -> int:
    """Seal every secret still stored as plaintext (or only this subscription's); how many rows."""
    box = box or secretbox.current()
    rows = _stored_secrets(await conn.fetch(QUERIES["plaintext_secrets"], subscription_id))
    # Values sealed already are left as they are (even under a key this box lacks).
    resealed = [
        (_seal_plaintext(box, secret), None if previous is None else _seal_plaintext(box, previous))
        for _, secret, previous in rows
    ]
    await _write_resealed(conn, rows, resealed)
    return len(rows)


def _stored_secrets(records: list[asyncpg.Record]) -> list[StoredSecrets]:
    return [StoredSecrets(**dict(r)) for r in records]


def _seal_plaintext(box: SecretBox, stored: str) -> str:
    return box.seal(stored) if is_plaintext(stored) else stored


def _sealed(box: SecretBox, stored: str) -> str:
    """A stored value sealed under the newest key, whether it was plaintext or sealed."""
    return box.seal(stored) if is_plaintext(stored) else box.reseal(stored)


async def count_subscriptions(conn: Conn) -> int:
    """How many subscriptions there are (the size of a re-seal)."""
    return int(await conn.fetchval(QUERIES["count_subscriptions"]))


async def reseal_secrets_page(
    conn: Conn,
    box: SecretBox,
    *,
    after: uuid.UUID | None,
    limit: int,
    queries: SecretQueries = WEBHOOK_SECRETS,
) -> tuple[int, uuid.UUID | None, list[uuid.UUID]]:
    """Re-seal one page of subscriptions (or, with other `queries`, inbound sources) under the
    newest key, plaintext ones too.

    Returns how many rows the page held, the cursor for the next page (None at the end) and the
    rows whose secrets no key opens (left as they are).
    """
    rows = _stored_secrets(await conn.fetch(queries.page, after, limit))
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
    await _write_resealed(conn, done, resealed, queries)
    cursor = rows[-1].id if len(rows) == limit else None
    return len(rows), cursor, unreadable
