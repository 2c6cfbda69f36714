"""Append-only event streams with a locked head row per stream (optimistic + pessimistic)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

# Re-exported: the write side appends the port's events and raises the port's conflict.
from tierline.service_layer.unit_of_work import NewEvent as NewEvent
from tierline.service_layer.unit_of_work import StreamVersionConflict as StreamVersionConflict
from tierline.store.pool import Conn

LOCK_HEAD = "SELECT version, snapshot::text FROM streams WHERE stream_id = $1 FOR UPDATE"
READ_HEAD = "SELECT version, snapshot::text FROM streams WHERE stream_id = $1"

# One round trip: the events go in with their versions and the head moves with them.
APPEND = """
WITH appended AS (
    INSERT INTO events
        (event_id, stream_id, stream_type, vendor_id, version, type, time, data, traceparent)
    SELECT e.event_id, $1, $2, $9, e.version, e.type, e.time, e.data::jsonb, $3
    FROM unnest($4::uuid[], $5::int[], $6::text[], $7::timestamptz[], $8::text[])
        AS e(event_id, version, type, time, data)
    RETURNING 1
)
-- The data-modifying CTE above always runs; the head update below is guarded by the version.
INSERT INTO streams (stream_id, stream_type, vendor_id, version, snapshot, updated_at)
VALUES ($1, $2, $9, $10, $11::jsonb, $12)
ON CONFLICT (stream_id) DO UPDATE
    SET version = EXCLUDED.version, snapshot = EXCLUDED.snapshot, updated_at = EXCLUDED.updated_at
    WHERE streams.version = $13
RETURNING version
"""

STREAM_EVENTS = """
SELECT event_id, stream_id, version, type, time, data::text, traceparent, vendor_id
FROM events WHERE stream_id = $1 ORDER BY version
"""


@dataclass(frozen=True)
class StoredEvent:
    """An event as the store holds it."""

    event_id: uuid.UUID
    stream_id: str
    version: int
    type: str
    time: datetime
    data_json: str
    traceparent: str | None
    # The vendor (every event of an issue carries it); None on the governance stream.
    vendor_id: str | None = None


async def lock_head(conn: Conn, stream_id: str) -> tuple[int, str] | None:
    """Lock a stream's head row for this transaction; None when the stream does not exist."""
    row = await conn.fetchrow(LOCK_HEAD, stream_id)
    return None if row is None else (row[0], row[1])


async def read_head(conn: Conn | asyncpg.Pool, stream_id: str) -> tuple[int, str] | None:
    """A stream's version and snapshot, without locking."""
    row = await conn.fetchrow(READ_HEAD, stream_id)
    return None if row is None else (row[0], row[1])


async def append_events(
    conn: Conn,
    *,
    stream_id: str,
    stream_type: str,
    vendor_id: str | None,
    expected_version: int,
    events: list[NewEvent],
    snapshot_json: str,
    time: datetime,
    traceparent: str | None = None,
) -> list[uuid.UUID]:
    """Append events after `expected_version` and store the new snapshot; returns the event ids."""
    ids = [uuid.uuid4() for _ in events]
    new_version = expected_version + len(events)
    try:
        row = await conn.fetchrow(
            APPEND,
            stream_id,
            stream_type,
            traceparent,
            ids,
            list(range(expected_version + 1, new_version + 1)),
            [ev.type for ev in events],
            [time] * len(events),
            [ev.data_json for ev in events],
            vendor_id,
            new_version,
            snapshot_json,
            time,
            expected_version,
        )
    except asyncpg.UniqueViolationError as exc:
        raise StreamVersionConflict(stream_id, expected_version) from exc
    if row is None:
        raise StreamVersionConflict(stream_id, expected_version)
    return ids


async def stream_events(conn: Conn | asyncpg.Pool, stream_id: str) -> list[StoredEvent]:
    """Every event of one stream, in version order."""
    rows = await conn.fetch(STREAM_EVENTS, stream_id)
    return [StoredEvent(*row) for row in rows]
