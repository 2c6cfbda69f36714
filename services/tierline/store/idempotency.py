"""Idempotency records: a retried request with the same key and body gets the stored response."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tierline.sqlfile import load_queries
from tierline.store.pool import Conn

QUERIES = load_queries("tierline.store")


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
    if (
        await conn.fetchval(QUERIES["claim_idempotency_key"], principal, key, request_hash)
        is not None
    ):
        return None
    row = await conn.fetchrow(QUERIES["stored_response"], principal, key)
    if row is None:  # the other request rolled back; claim again
        return await claim(conn, principal, key, request_hash)
    if row["request_hash"] != request_hash:
        raise IdempotencyKeyReused(key)
    body = json.loads(row["body"]) if row["body"] else None
    return StoredResponse(status=row["status"], body=body, headers=json.loads(row["headers"]))


async def complete(
    conn: Conn,
    principal: str,
    key: str,
    status: int,
    body: Any,
    headers: dict[str, str],
) -> None:
    """Store the response for later retries, in the same transaction as the effects."""
    await conn.execute(
        QUERIES["complete_idempotency_key"],
        principal,
        key,
        status,
        json.dumps(body),
        json.dumps(headers),
    )
