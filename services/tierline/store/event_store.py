"""Append-only event streams with a locked head row per stream (optimistic + pessimistic)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import NamedTuple

import asyncpg

# Re-exported: the write side appends the port's events and raises the port's conflict.
from tierline.service_layer.unit_of_work import NewEvent as NewEvent
from tierline.service_layer.unit_of_work import Origin, StreamAppend, check_distinct_streams
from tierline.service_layer.unit_of_work import StreamVersionConflict as StreamVersionConflict
from tierline.sqlfile import load_queries
from tierline.store.pool import Conn

QUERIES = load_queries("tierline.store")


class StreamHead(NamedTuple):
    """A stream's head row: its version and the snapshot stored with it."""

    version: int
    snapshot_json: str


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
    # The issue's vendor (every event of an issue carries it); None on the governance stream.
    vendor_id: str | None = None
    # The inbound source and the tool's delivery id, for events an inbound webhook caused.
    inbound_source: str | None = None
    inbound_delivery: str | None = None


def stored_event(row: asyncpg.Record) -> StoredEvent:
    """A StoredEvent from a row that has (at least) its columns, by column name."""
    values = {field.name: row[field.name] for field in fields(StoredEvent)}
    if values["inbound_source"] is not None:
        values["inbound_source"] = str(values["inbound_source"])
    return StoredEvent(**values)


async def lock_head(conn: Conn, stream_id: str) -> StreamHead | None:
    """Lock a stream's head row for this transaction; None when the stream does not exist."""
    row = await conn.fetchrow(QUERIES["lock_stream_head"], stream_id)
    return None if row is None else StreamHead(**dict(row))


async def read_head(conn: Conn | asyncpg.Pool, stream_id: str) -> StreamHead | None:
    """A stream's version and snapshot, without locking."""
    row = await conn.fetchrow(QUERIES["read_stream_head"], stream_id)
    return None if row is None else StreamHead(**dict(row))


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
    origin: Origin | None = None,
) -> list[uuid.UUID]:
    """Append events after `expected_version` and store the new snapshot; returns the event ids."""
    ids = [uuid.uuid4() for _ in events]
    new_version = expected_version + len(events)
    try:
        row = await conn.fetchrow(
            QUERIES["append_events"],
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
            None if origin is None else uuid.UUID(origin.source_id),
            None if origin is None else origin.delivery_id,
        )
    except asyncpg.UniqueViolationError as exc:
        raise StreamVersionConflict(stream_id, expected_version) from exc
    if row is None:
        raise StreamVersionConflict(stream_id, expected_version)
    return ids


async def lock_heads(conn: Conn, stream_ids: Sequence[str]) -> dict[str, StreamHead]:
    """Lock the head rows of these streams, in id order; the ones that exist, by id."""
    rows = await conn.fetch(QUERIES["lock_stream_heads"], list(stream_ids))
    return {row["stream_id"]: StreamHead(row["version"], row["snapshot_json"]) for row in rows}


async def append_to_streams(
    conn: Conn, appends: Sequence[StreamAppend], stream_type: str = "issue"
) -> None:
    """Append the events of many existing streams and move their heads, in one statement.

    Raises StreamVersionConflict when any head is not at its expected version (or an event's
    version is taken); the statement's effects then stand only until the caller's transaction
    rolls back, which the raise causes.
    """
    check_distinct_streams(appends)
    if not appends:
        return
    ids: list[uuid.UUID] = []
    streams: list[str] = []
    vendors: list[str] = []
    versions: list[int] = []
    types: list[str] = []
    times: list[datetime] = []
    data: list[str] = []
    for append in appends:
        issue = append.issue
        for offset, (event, at) in enumerate(zip(append.events, append.times, strict=True), 1):
            ids.append(uuid.uuid4())
            streams.append(issue.id)
            vendors.append(issue.vendor_id)
            versions.append(append.expected_version + offset)
            types.append(event.type)
            times.append(at)
            data.append(event.data_json)
    heads = [a.issue for a in appends]
    try:
        moved = await conn.fetchval(
            QUERIES["append_to_streams"],
            stream_type,
            ids,
            streams,
            vendors,
            versions,
            types,
            times,
            data,
            [issue.id for issue in heads],
            [a.expected_version for a in appends],
            [issue.version for issue in heads],
            [issue.model_dump_json() for issue in heads],
            [issue.updated_at for issue in heads],
        )
    except asyncpg.UniqueViolationError as exc:
        raise StreamVersionConflict(appends[0].issue.id, appends[0].expected_version) from exc
    moved_ids = set(moved or ())
    stuck = [a for a in appends if a.issue.id not in moved_ids]
    if stuck:
        raise StreamVersionConflict(stuck[0].issue.id, stuck[0].expected_version)


async def stream_events(conn: Conn | asyncpg.Pool, stream_id: str) -> list[StoredEvent]:
    """Every event of one stream, in version order."""
    rows = await conn.fetch(QUERIES["stream_events"], stream_id)
    return [stored_event(row) for row in rows]
