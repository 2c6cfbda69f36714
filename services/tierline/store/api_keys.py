"""API keys: random secrets shown once, stored as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from tierline.store.pool import Conn

Role = Literal["admin", "integration", "vendor", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "integration", "vendor", "viewer")
KEY_PREFIX = "tl_"

INSERT_KEY = """
INSERT INTO api_keys (id, name, role, vendor_id, key_hash, prefix) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (key_hash) DO NOTHING
"""
FIND_KEY = """
SELECT id, name, role, vendor_id, prefix, created_at, revoked_at FROM api_keys
WHERE key_hash = $1 AND revoked_at IS NULL
"""
KEY_REVOKED = "SELECT revoked_at IS NOT NULL FROM api_keys WHERE key_hash = $1"
LIST_KEYS = """
SELECT id, name, role, vendor_id, prefix, created_at, revoked_at FROM api_keys
ORDER BY created_at, id
"""
REVOKE_KEY = """
UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id
"""
# Revocations queue on one lock, so two at once cannot each leave the other as the last admin.
LOCK_REVOCATIONS = "SELECT pg_advisory_xact_lock(hashtext('tierline.api_keys.revoke'))"
LIVE_ROLE = "SELECT role FROM api_keys WHERE id = $1 AND revoked_at IS NULL"
LIVE_ADMINS = "SELECT count(*) FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL"


class LastAdminKey(Exception):
    """Revoking this key would leave no live admin key: nobody could manage keys any more."""


@dataclass(frozen=True)
class ApiKey:
    """A key's metadata (never the key itself)."""

    id: uuid.UUID
    name: str
    role: Role
    vendor_id: str | None
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def hash_key(key: str) -> bytes:
    """Keys carry 256 bits of randomness, so a plain SHA-256 is a safe one-way store."""
    return hashlib.sha256(key.encode()).digest()


def new_key() -> str:
    """A fresh random key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_api_key(
    conn: Conn | asyncpg.Pool,
    *,
    name: str,
    role: Role,
    vendor_id: str | None = None,
    key: str | None = None,
) -> tuple[ApiKey, str]:
    """Store a key (random unless given) and return its metadata and the key itself."""
    key = key or new_key()
    key_id = uuid.uuid4()
    await conn.execute(INSERT_KEY, key_id, name, role, vendor_id, hash_key(key), key[:10])
    found = await find_api_key(conn, key)
    if found is None:
        raise RuntimeError("api key was not stored")
    return found, key


async def find_api_key(conn: Conn | asyncpg.Pool, key: str) -> ApiKey | None:
    """The live key with this secret, or None."""
    row = await conn.fetchrow(FIND_KEY, hash_key(key))
    return None if row is None else ApiKey(*row)


async def key_was_revoked(conn: Conn | asyncpg.Pool, key: str) -> bool:
    """Whether this key was stored once and has been revoked since."""
    return bool(await conn.fetchval(KEY_REVOKED, hash_key(key)))


async def list_api_keys(conn: asyncpg.Connection | asyncpg.Pool) -> list[ApiKey]:
    """Every key's metadata, revoked ones included."""
    return [ApiKey(*row) for row in await conn.fetch(LIST_KEYS)]


async def revoke_api_key(pool: asyncpg.Pool, key_id: uuid.UUID) -> bool:
    """Revoke at once; False when no live key has this id, LastAdminKey for the last admin."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(LOCK_REVOCATIONS)
        role = await conn.fetchval(LIVE_ROLE, key_id)
        if role is None:
            return False
        if role == "admin" and await conn.fetchval(LIVE_ADMINS) <= 1:
            raise LastAdminKey(str(key_id))
        return await conn.fetchval(REVOKE_KEY, key_id) is not None
