"""API keys: random secrets shown once, stored as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from tierline.sqlfile import load_queries
from tierline.store.pool import Conn

Role = Literal["admin", "integration", "vendor", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "integration", "vendor", "viewer")
KEY_PREFIX = "tl_"

QUERIES = load_queries("tierline.store")


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
    await conn.execute(
        QUERIES["insert_api_key"], key_id, name, role, vendor_id, hash_key(key), key[:10]
    )
    found = await find_api_key(conn, key)
    if found is None:
        raise RuntimeError("api key was not stored")
    return found, key


async def find_api_key(conn: Conn | asyncpg.Pool, key: str) -> ApiKey | None:
    """The live key with this secret, or None."""
    return await find_api_key_by_hash(conn, hash_key(key))


async def find_api_key_by_hash(conn: Conn | asyncpg.Pool, digest: bytes) -> ApiKey | None:
    """The live key with this hash, or None."""
    row = await conn.fetchrow(QUERIES["find_api_key"], digest)
    return None if row is None else ApiKey(**dict(row))


async def key_was_revoked(conn: Conn | asyncpg.Pool, key: str) -> bool:
    """Whether this key was stored once and has been revoked since."""
    return bool(await conn.fetchval(QUERIES["api_key_revoked"], hash_key(key)))


async def list_api_keys(conn: asyncpg.Connection | asyncpg.Pool) -> list[ApiKey]:
    """Every key's metadata, revoked ones included."""
    return [ApiKey(**dict(row)) for row in await conn.fetch(QUERIES["list_api_keys"])]


async def revoke_api_key(pool: asyncpg.Pool, key_id: uuid.UUID) -> bool:
    """Revoke at once; False when no live key has this id, LastAdminKey for the last admin."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(QUERIES["lock_revocations"])
        role = await conn.fetchval(QUERIES["live_key_role"], key_id)
        if role is None:
            return False
        if role == "admin" and await conn.fetchval(QUERIES["live_admin_keys"]) <= 1:
            raise LastAdminKey(str(key_id))
        return await conn.fetchval(QUERIES["revoke_api_key"], key_id) is not None
