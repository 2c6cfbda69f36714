"""Idempotency records: a retried request with the same key and body gets the stored response."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tierline.store.pool import Conn

CLAIM = """
INSERT INTO idempotency_keys (principal, key, request_hash, status)
VALUES ($1, $2, $3, 0) ON CONFLICT DO NOTHING RETURNING 1
"""
STORED = """
SELECT request_hash, status, body::text, headers::text FROM idempotency_keys
WHERE principal = $1 AND key = $2
"""
COMPLETE = """
UPDATE idempotency_keys SET status = $3, body = $4::jsonb, headers = $5::jsonb
WHERE principal = $1 AND key = $2
"""


class IdempotencyKeyReused(Exception):
    """The key was used before with a different request."""


@dataclass(frozen=True)
class StoredResponse:
    """What the first request with this key answered."""

    status: int
    body: Any
    headers: dict[str, str]


async def claim(conn: Conn, principal: str, key: str, request_hash: str) -> StoredResponse | None:
    """Claim the key inside the caller's transaction; a stored response if it was used already.

    A concurrent request with the same key waits on the unique index until the first commits.
    """
    if await conn.fetchval(CLAIM, principal, key, request_hash) is not None:
        return None
    row = await conn.fetchrow(STORED, principal, key)
    if row is None:  # the other request rolled back; claim again
        return await claim(conn, principal, key, request_hash)
    if row[0] != request_hash:
        raise IdempotencyKeyReused(key)
    return StoredResponse(row[1], json.loads(row[2]) if row[2] else None, json.loads(row[3]))


async def complete(
    conn: Conn,
    principal: str,
    key: str,
    status: int,
    body: Any,
    headers: dict[str, str],
) -> None:
    """Store the response for later retries, in the same transaction as the effects."""
    await conn.execute(COMPLETE, principal, key, status, json.dumps(body), json.dumps(headers))
