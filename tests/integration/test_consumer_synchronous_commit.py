"""A consumer batch may commit without waiting for the WAL flush: only that batch, all or nothing.

`TIERLINE_CONSUMER_SYNCHRONOUS_COMMIT=off` (docs/adr/0002) relies on three things checked here
without timing: the batch's transaction runs with `synchronous_commit = off`, the setting ends
with the transaction (`SET LOCAL`, so the pooled connection goes back to its session default),
and the batch's effects and offsets still commit, or roll back, together. What a PostgreSQL crash
then does (lose the tail of such transactions, effects with their offsets, and re-read it) is
what the crash and refill tests in test_projector.py and test_relay.py cover.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tierline.config import Settings
from tierline.eventlog.cloudevents import LogEvent, to_kafka_record
from tierline.eventlog.consumer import LogConsumer, Record, apply_batch
from tierline.store.event_store import StoredEvent

CONSUMER = "probe"
TOPIC = "probe-topic"
SETTING = "SELECT current_setting('synchronous_commit')"
# Session default "on" whatever the test server's default is (tests run it with "off").
SESSION = {"synchronous_commit": "on"}
T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


class Effects:
    """A handler writing one row per event and noting the setting its transaction runs with."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[str] = []

    async def apply(self, conn: asyncpg.Connection, events: Sequence[LogEvent]) -> None:
        """Insert the events; optionally fail after the insert, as a crash mid-batch would."""
        self.seen.append(await conn.fetchval(SETTING))
        await conn.executemany(
            "INSERT INTO probe_effects (event_id) VALUES ($1)", [(e.event_id,) for e in events]
        )
        if self.fail:
            raise RuntimeError("handler failed after writing")


def event(stream: str, version: int) -> LogEvent:
    return LogEvent(f"{stream}-{version}", stream, version, "probe.v1", T0, {})


def records(*events: LogEvent, partition: int = 0, first_offset: int = 0) -> list[Record]:
    return [Record(partition, first_offset + i, e) for i, e in enumerate(events)]


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url, server_settings=SESSION)
    await connection.execute("CREATE TABLE probe_effects (event_id text PRIMARY KEY)")
    try:
        yield connection
    finally:
        await connection.close()


async def committed(
    conn: asyncpg.Connection,
) -> tuple[list[str], list[tuple[int, int]], dict[str, int]]:
    """Effects, stored (partition, next offset) and applied versions, as another session sees."""
    effects = [r[0] for r in await conn.fetch("SELECT event_id FROM probe_effects ORDER BY 1")]
    offsets = [
        (r[0], r[1])
        for r in await conn.fetch(
            "SELECT partition, next_offset FROM consumer_offsets"
            " WHERE consumer = $1 AND topic = $2 ORDER BY partition",
            CONSUMER,
            TOPIC,
        )
    ]
    versions = {
        r[0]: r[1]
        for r in await conn.fetch(
            "SELECT stream_id, version FROM consumer_stream_versions WHERE consumer = $1",
            CONSUMER,
        )
    }
    return effects, offsets, versions


async def test_a_batch_commits_asynchronously_and_the_session_keeps_its_default(
    conn: asyncpg.Connection, database_url: str
) -> None:
    assert await conn.fetchval(SETTING) == "on"
    handler = Effects()

    new = await apply_batch(
        conn,
        CONSUMER,
        TOPIC,
        "log",
        records(event("a", 1), event("b", 1), event("a", 2)),
        handler,
        synchronous_commit=False,
    )

    assert new == 3
    assert handler.seen == ["off"]  # inside the batch's transaction
    assert await conn.fetchval(SETTING) == "on"  # SET LOCAL: gone with the transaction
    other = await asyncpg.connect(database_url)
    try:
        assert await committed(other) == (["a-1", "a-2", "b-1"], [(0, 3)], {"a": 2, "b": 1})
    finally:
        await other.close()


async def test_a_durable_batch_waits_for_the_flush(conn: asyncpg.Connection) -> None:
    handler = Effects()

    await apply_batch(conn, CONSUMER, TOPIC, "log", records(event("a", 1)), handler)

    assert handler.seen == ["on"]
    assert await committed(conn) == (["a-1"], [(0, 1)], {"a": 1})


async def test_a_failed_batch_commits_neither_effects_nor_offsets(
    conn: asyncpg.Connection,
) -> None:
    await apply_batch(
        conn, CONSUMER, TOPIC, "log", records(event("a", 1)), Effects(), synchronous_commit=False
    )
    batch = records(event("a", 2), event("b", 1), first_offset=1)

    with pytest.raises(RuntimeError):
        await apply_batch(
            conn, CONSUMER, TOPIC, "log", batch, Effects(fail=True), synchronous_commit=False
        )

    assert await conn.fetchval(SETTING) == "on"
    assert await committed(conn) == (["a-1"], [(0, 1)], {"a": 1})
    # Read again (as after a crash), the batch applies once, with its offsets.
    handler = Effects()
    assert (
        await apply_batch(conn, CONSUMER, TOPIC, "log", batch, handler, synchronous_commit=False)
        == 2
    )
    assert handler.seen == ["off"]
    assert await committed(conn) == (["a-1", "a-2", "b-1"], [(0, 3)], {"a": 2, "b": 1})


class FakeKafka:
    """Enough of AIOKafkaConsumer for one `poll_once`: one batch, then nothing."""

    def __init__(self, events: Sequence[LogEvent]) -> None:
        messages = []
        for offset, e in enumerate(events):
            stored = StoredEvent(
                event_id=e.event_id,  # type: ignore[arg-type]
                stream_id=e.stream_id,
                version=e.version,
                type=e.type,
                time=e.time,
                data_json="{}",
                traceparent=None,
            )
            _, value, headers = to_kafka_record(stored)
            messages.append(
                SimpleNamespace(value=value, headers=headers, timestamp=0, offset=offset)
            )
        self.batch = {TopicPartition(TOPIC, 0): messages}

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[SimpleNamespace]]:
        batch, self.batch = self.batch, {}
        return batch

    def highwater(self, tp: TopicPartition) -> int:
        return 2


@pytest.mark.parametrize(("value", "expected"), [("off", "off"), ("on", "on")])
async def test_the_consumer_loop_applies_batches_as_the_setting_says(
    conn: asyncpg.Connection,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    value: str,
    expected: str,
) -> None:
    monkeypatch.setenv("TIERLINE_CONSUMER_SYNCHRONOUS_COMMIT", value)
    settings = Settings()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1, server_settings=SESSION)
    assert pool is not None
    handler = Effects()
    consumer = LogConsumer(
        name=CONSUMER,
        pool=pool,
        bootstrap="unused:9092",
        topic=TOPIC,
        handler=handler,
        # What the projector, SLA and webhooks roles pass.
        synchronous_commit=settings.consumer_synchronous_commit == "on",
    )
    try:
        fake = cast(AIOKafkaConsumer, FakeKafka([event("a", 1), event("a", 2)]))
        assert await consumer.poll_once(fake, asyncio.Event()) == 2
        assert handler.seen == [expected]
        assert await pool.fetchval(SETTING) == "on"  # the pooled connection is unchanged
    finally:
        await pool.close()
    assert await committed(conn) == (["a-1", "a-2"], [(0, 2)], {"a": 2})


def test_batches_wait_for_the_flush_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """`off` measured no faster here (bench/README.md), so the durable default stays."""
    monkeypatch.delenv("TIERLINE_CONSUMER_SYNCHRONOUS_COMMIT", raising=False)
    assert Settings().consumer_synchronous_commit == "on"
