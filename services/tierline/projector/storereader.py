"""Read a replay's bulk from the event store: committed events, a share of the streams each.

A rebuild process reads its share of the streams (by a hash of the stream id, so a stream's
events all go to one process, in order) inside one read-only snapshot, through a server-side
cursor, in position order. Within a stream, position order is version order: a stream's next
version is appended only once the previous one committed. The stored JSON is decoded once,
straight from asyncpg's binary jsonb into the dicts the fold reads, with no CloudEvent round
trip; the rows come in LogEvent's field order, so each becomes an event in one call.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson

from tierline.eventlog.cloudevents import LogEvent
from tierline.sqlfile import load_queries
from tierline.store.pool import CONNECT_TIMEOUT, Conn

QUERIES = load_queries("tierline.projector")

# jsonb's binary form is a version byte (1) and the document's text.
JSONB_VERSION = b"\x01"


def _decode_jsonb(value: bytes) -> Any:
    return orjson.loads(memoryview(value)[1:])


def _encode_jsonb(value: Any) -> bytes:
    return JSONB_VERSION + orjson.dumps(value)


def event_from_row(row: asyncpg.Record) -> LogEvent:
    """A LogEvent from a row in LogEvent's field order whose `data` is decoded or jsonb text."""
    values = list(row)
    if isinstance(values[5], str):
        values[5] = orjson.loads(values[5])
    return LogEvent(*values)


async def events_ahead_of(conn: Conn, ahead: str, behind: str) -> list[LogEvent]:
    """Events consumer `ahead` applied and consumer `behind` has not, in position order."""
    rows = await conn.fetch(QUERIES["events_ahead_of"], ahead, behind)
    return [event_from_row(row) for row in rows]


class StoreShare:
    """One rebuild process's share of the committed events: share `index` of `shares`."""

    def __init__(self, database_url: str, index: int, shares: int, batch_size: int) -> None:
        if not 0 <= index < shares:
            raise ValueError(f"share {index} of {shares}")
        self._database_url = database_url
        self._index = index
        self._shares = shares
        self._batch_size = batch_size
        self.size = 0

    @contextlib.asynccontextmanager
    async def batches(self) -> AsyncIterator[AsyncIterator[list[LogEvent]]]:
        """Open one snapshot; yields an iterator of batches in position order.

        Everything committed when the snapshot is taken is in it, and nothing committed later:
        a replay takes the log's ends before opening it (docs/adr/0014).
        """
        conn = await asyncpg.connect(
            self._database_url,
            timeout=CONNECT_TIMEOUT,
            server_settings={"timezone": "UTC", "application_name": "tierline-replay"},
        )
        try:
            await conn.set_type_codec(
                "jsonb",
                schema="pg_catalog",
                encoder=_encode_jsonb,
                decoder=_decode_jsonb,
                format="binary",
            )
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                self.size = int(
                    await conn.fetchval(QUERIES["store_share_size"], self._shares, self._index)
                )
                cursor = await conn.cursor(QUERIES["store_share_events"], self._shares, self._index)
                yield self._pages(cursor)
        finally:
            await conn.close()

    async def _pages(self, cursor: asyncpg.cursor.Cursor[Any]) -> AsyncIterator[list[LogEvent]]:
        while True:
            rows = await cursor.fetch(self._batch_size)
            if not rows:
                return
            yield [LogEvent(*row) for row in rows]
