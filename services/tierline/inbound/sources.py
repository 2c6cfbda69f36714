"""Inbound sources in PostgreSQL: create, read, change, rotate secrets, delete.

Secrets are sealed like webhook signing secrets (`tierline.secretbox`, ADR 0007): this module
seals what it writes and opens what verification reads. A rotation keeps the previous secret
verifying for `ROTATION_OVERLAP_SECONDS`, so the tool's setting can be changed meanwhile.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from tierline import secretbox
from tierline.inbound.verify import SourceType
from tierline.secretbox import SecretBox
from tierline.sqlfile import load_queries
from tierline.webhooks.subscriptions import Conn, SecretQueries

ROTATION_OVERLAP_SECONDS = 24 * 3600.0

QUERIES = load_queries("tierline.inbound")


@dataclass(frozen=True)
class Source:
    """A source's settings (never its secrets)."""

    id: uuid.UUID
    name: str
    type: SourceType
    vendor_id: str | None
    mapping: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    previous_secret_expires_at: datetime | None


@dataclass(frozen=True)
class Receiving:
    """What verifying and mapping a delivery needs: the source and its live secrets, opened."""

    id: uuid.UUID
    type: SourceType
    vendor_id: str | None
    mapping: dict[str, Any]
    secrets: tuple[str, ...]


def _source(row: asyncpg.Record) -> Source:
    values = dict(row)
    values["mapping"] = json.loads(values["mapping"])
    return Source(**values)


async def insert_source(
    conn: Conn,
    *,
    name: str,
    kind: SourceType,
    vendor_id: str | None,
    mapping: dict[str, Any],
    secret: str,
    box: SecretBox | None = None,
) -> Source:
    """Store a new source; the secret is stored sealed."""
    sealed = (box or secretbox.current()).seal(secret)
    row = await conn.fetchrow(
        QUERIES["insert_source"], uuid.uuid4(), name, kind, vendor_id, json.dumps(mapping), sealed
    )
    assert row is not None
    return _source(row)


async def get_source(conn: Conn, source_id: uuid.UUID) -> Source | None:
    """One source or None."""
    row = await conn.fetchrow(QUERIES["get_source"], source_id)
    return None if row is None else _source(row)


async def list_sources(
    conn: Conn, *, vendor_id: str | None, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[Source]:
    """Sources in creation order after the cursor, optionally of one vendor only."""
    created, last_id = after if after is not None else (None, None)
    rows = await conn.fetch(QUERIES["list_sources"], vendor_id, created, last_id, limit)
    return [_source(r) for r in rows]


async def update_source(conn: Conn, source_id: uuid.UUID, changes: dict[str, Any]) -> Source | None:
    """Apply the given changes (name, vendor_id, mapping); None when there is no such source."""
    mapping = changes.get("mapping")
    row = await conn.fetchrow(
        QUERIES["update_source"],
        source_id,
        changes.get("name"),
        changes.get("vendor_id"),
        None if mapping is None else json.dumps(mapping),
        "vendor_id" in changes,
    )
    return None if row is None else _source(row)


async def delete_source(conn: Conn, source_id: uuid.UUID) -> bool:
    """Delete a source with its deliveries; False when there was none."""
    return await conn.fetchval(QUERIES["delete_source"], source_id) is not None


async def rotate_secret(
    conn: Conn,
    source_id: uuid.UUID,
    new_secret: str,
    overlap_seconds: float = ROTATION_OVERLAP_SECONDS,
    box: SecretBox | None = None,
) -> Source | None:
    """Replace the secret; the old one keeps verifying for `overlap_seconds`."""
    sealed = (box or secretbox.current()).seal(new_secret)
    row = await conn.fetchrow(QUERIES["rotate_source_secret"], source_id, sealed, overlap_seconds)
    return None if row is None else _source(row)


async def for_receiving(
    conn: Conn, source_id: uuid.UUID, box: SecretBox | None = None
) -> Receiving | None:
    """The source with its live secrets opened; None when there is no such source.

    A secret no key opens (a dropped key) is left out, so verification fails closed.
    """
    row = await conn.fetchrow(QUERIES["source_for_receiving"], source_id)
    if row is None:
        return None
    box = box or secretbox.current()
    opened = []
    for sealed in (row["secret"], row["previous_secret"]):
        if sealed is None:
            continue
        try:
            opened.append(box.open(sealed))
        except secretbox.SecretUnreadable:
            continue
    return Receiving(
        row["id"], row["type"], row["vendor_id"], json.loads(row["mapping"]), tuple(opened)
    )


async def count_sources(conn: Conn) -> int:
    """How many sources there are (the size of a re-seal)."""
    return int(await conn.fetchval(QUERIES["count_sources"]))


INBOUND_SECRETS = SecretQueries(QUERIES["source_secrets_page"], QUERIES["reseal_source_secrets"])
"""For `webhooks.subscriptions.reseal_secrets_page(..., queries=INBOUND_SECRETS)`."""
