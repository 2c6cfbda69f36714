"""A consumer group member whose effects and offsets commit in one PostgreSQL transaction.

Exactly-once in effect: each batch from `getmany` is applied by a `BatchHandler` inside one
transaction together with the next offset per partition (stored in `consumer_offsets`, not in
Kafka). Events whose `(stream_id, version)` the consumer applied already are skipped, so a
redelivered batch, a rebalance or a refilled log changes nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge, Histogram

from tierline.config import ISSUE_EVENTS_TOPIC
from tierline.eventlog.cloudevents import LogEvent, from_kafka_record
from tierline.eventlog.freshness import (
    CONSUMER_APPLY_DELAY,
    CONSUMER_END_TO_END,
    CONSUMER_TRANSIT,
)
from tierline.eventlog.kafka import DEFAULT_FETCH_MAX_WAIT_MS, cluster_identity
from tierline.sqlfile import load_queries
from tierline.store.pool import DATABASE_ERRORS
from tierline.supervise import supervise

log = structlog.get_logger(__name__)

EVENTS_APPLIED = Counter("tierline_consumer_events_applied_total", "Events applied", ["consumer"])
EVENTS_SKIPPED = Counter(
    "tierline_consumer_events_skipped_total", "Events skipped as already applied", ["consumer"]
)
VERSION_GAPS = Counter(
    "tierline_consumer_version_gaps_total",
    "Events that arrived after a missing version",
    ["consumer"],
)
BATCH_SIZE = Histogram(
    "tierline_consumer_batch_size",
    "Events per applied batch",
    ["consumer"],
    buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000),
)
LAG = Gauge("tierline_consumer_lag", "Messages behind the log end", ["consumer", "partition"])
FRESHNESS = Histogram(
    "tierline_consumer_event_age_seconds",
    "Time from event time to applied",
    ["consumer"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

QUERIES = load_queries("tierline.eventlog")


class BatchHandler(Protocol):
    """What a consumer does with new events, inside the batch's transaction."""

    async def apply(self, conn: asyncpg.Connection, events: Sequence[LogEvent]) -> None:
        """Apply events (in log order, duplicates removed) using `conn`."""


@dataclass(frozen=True)
class Record:
    """A decoded message with its place in the log."""

    partition: int
    offset: int
    event: LogEvent
    # The Kafka record timestamp in seconds (the relay's send), None when the broker gave none.
    sent_at: float | None = None


async def apply_batch(
    conn: asyncpg.Connection,
    consumer: str,
    topic: str,
    identity: str,
    records: Sequence[Record],
    handler: BatchHandler,
    *,
    synchronous_commit: bool = True,
) -> int:
    """Apply one batch and its offsets in one transaction; returns how many events were new.

    `synchronous_commit=False` commits without waiting for the WAL flush (`SET LOCAL`, this
    transaction only). Safe because effects and offsets commit together: a PostgreSQL crash
    loses both, and the records are read from the log again (docs/adr/0002).
    """
    async with conn.transaction():
        if not synchronous_commit:
            await conn.execute("SET LOCAL synchronous_commit = off")
        fresh, streams, versions = await _apply_new(
            conn, consumer, [r.event for r in records], handler
        )
        next_offsets: dict[int, int] = {}
        for record in records:
            next_offsets[record.partition] = max(
                next_offsets.get(record.partition, 0), record.offset + 1
            )
        await conn.execute(
            QUERIES["save_streams_and_offsets"],
            consumer,
            topic,
            list(next_offsets),
            list(next_offsets.values()),
            identity,
            streams,
            versions,
        )
    EVENTS_APPLIED.labels(consumer).inc(fresh)
    EVENTS_SKIPPED.labels(consumer).inc(len(records) - fresh)
    return fresh


async def apply_new_events(
    conn: asyncpg.Connection, consumer: str, events: Sequence[LogEvent], handler: BatchHandler
) -> int:
    """Apply the events `consumer` has not applied yet, in the caller's transaction.

    Returns how many were new. The applied version per stream is claimed, locked and saved with
    the effects; events at or below it are skipped.
    """
    fresh, streams, versions = await _apply_new(conn, consumer, events, handler)
    if streams:
        await conn.execute(QUERIES["save_streams"], consumer, streams, versions)
    return fresh


async def _apply_new(
    conn: asyncpg.Connection, consumer: str, events: Sequence[LogEvent], handler: BatchHandler
) -> tuple[int, list[str], list[int]]:
    """apply_new_events without the save: how many were new, and the versions to save."""
    streams = sorted({event.stream_id for event in events})
    locked = await conn.fetch(QUERIES["claim_streams"], consumer, streams)
    applied: dict[str, int] = {row["stream_id"]: row["version"] for row in locked}
    fresh: list[LogEvent] = []
    for event in events:
        done = applied[event.stream_id]
        if event.version <= done:
            continue
        if event.version != done + 1:
            VERSION_GAPS.labels(consumer).inc()
            log.warning(
                "consumer_version_gap",
                consumer=consumer,
                stream_id=event.stream_id,
                expected=done + 1,
                got=event.version,
            )
        applied[event.stream_id] = event.version
        fresh.append(event)
    if not fresh:
        return 0, [], []
    await handler.apply(conn, fresh)
    touched = sorted({e.stream_id for e in fresh})
    return len(fresh), touched, [applied[s] for s in touched]


class _SeekFromStore(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment, position each partition at the offset stored in PostgreSQL."""

    def __init__(self, owner: LogConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Nothing to flush: offsets are written with each batch."""

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        """Seek to stored offsets; from the start when the log is new or unknown to us."""
        await self._owner.seek_assigned(assigned)


class LogConsumer:
    """Runs a `BatchHandler` over the issue-events topic as member of a consumer group."""

    def __init__(
        self,
        *,
        name: str,
        pool: asyncpg.Pool,
        bootstrap: str,
        topic: str,
        handler: BatchHandler,
        batch_size: int = 2000,
        group_id: str | None = None,
        poll_timeout_ms: int = 200,
        fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS,
        synchronous_commit: bool = True,
    ) -> None:
        self.name = name
        self._pool = pool
        self._bootstrap = bootstrap
        self._topic = topic
        self._handler = handler
        self._batch_size = batch_size
        # Another topic (tests, staging) gets its own group, so members of an old topic's
        # group never hold up a join.
        default_group = (
            f"tierline.{name}" if topic == ISSUE_EVENTS_TOPIC else f"tierline.{name}.{topic}"
        )
        self._group_id = group_id or default_group
        self._poll_timeout_ms = poll_timeout_ms
        self._fetch_max_wait_ms = fetch_max_wait_ms
        # False: batches commit without waiting for the WAL flush (see apply_batch).
        self._synchronous_commit = synchronous_commit
        self._identity = ""
        self._consumer: AIOKafkaConsumer | None = None
        self.assigned: set[int] = set()

    async def seek_assigned(self, assigned: list[TopicPartition]) -> None:
        """Position newly assigned partitions from the offsets stored with our effects."""
        consumer = self._consumer
        assert consumer is not None
        mine = [tp for tp in assigned if tp.topic == self._topic]
        self.assigned = {tp.partition for tp in mine}
        rows = await self._pool.fetch(
            QUERIES["load_offsets"], self.name, self._topic, [tp.partition for tp in mine]
        )
        stored = {r["partition"]: (r["next_offset"], r["log_identity"]) for r in rows}
        for tp in mine:
            offset, identity = stored.get(tp.partition, (0, self._identity))
            if identity != self._identity:
                # The log was lost and refilled: read it again; applied events are skipped.
                log.info("consumer_log_changed", consumer=self.name, partition=tp.partition)
                offset = 0
            consumer.seek(tp, offset)
        log.info("consumer_assigned", consumer=self.name, partitions=sorted(self.assigned))

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop`; reconnect after broker or database failures."""
        await supervise(
            f"consumer.{self.name}",
            self._run_once,
            stop,
            retry_on=(KafkaError, *DATABASE_ERRORS),
            consumer=self.name,
        )

    async def _run_once(self, stop: asyncio.Event) -> None:
        self._identity = await cluster_identity(self._bootstrap)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._batch_size,
            fetch_max_bytes=16 * 1024 * 1024,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_wait_ms=self._fetch_max_wait_ms,
        )
        self._consumer = consumer
        consumer.subscribe([self._topic], listener=_SeekFromStore(self))
        try:
            # start() waits for the first group join, which can take seconds; stay stoppable.
            starting = asyncio.ensure_future(consumer.start())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
                return
            starting.result()
            while not stop.is_set():
                await self.poll_once(consumer, stop)
        finally:
            self.assigned = set()
            with contextlib.suppress(Exception):
                await asyncio.shield(consumer.stop())

    async def poll_once(self, consumer: AIOKafkaConsumer, stop: asyncio.Event | None = None) -> int:
        """Fetch one batch and apply it; returns the number of messages read."""
        fetch = asyncio.ensure_future(
            consumer.getmany(timeout_ms=self._poll_timeout_ms, max_records=self._batch_size)
        )
        if stop is not None:
            # getmany waits for an assignment while the group rebalances; do not wait for it
            # to stop. Nothing is lost by cancelling a fetch: offsets live with our effects.
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({fetch, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not fetch.done():
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fetch
                return 0
        batches = await fetch
        received = time.time()
        records: list[Record] = []
        for tp, messages in batches.items():
            for msg in messages:
                try:
                    event = from_kafka_record(msg.value, list(msg.headers))
                except ValueError as exc:
                    log.error(
                        "consumer_undecodable",
                        partition=tp.partition,
                        offset=msg.offset,
                        error=str(exc),
                    )
                    continue
                sent_at = msg.timestamp / 1000 if msg.timestamp and msg.timestamp > 0 else None
                records.append(Record(tp.partition, msg.offset, event, sent_at))
            if messages:
                end = consumer.highwater(tp)
                if end is not None:
                    LAG.labels(self.name, str(tp.partition)).set(end - messages[-1].offset - 1)
        if not records:
            return 0
        started = time.time()
        async with self._pool.acquire() as conn:
            await apply_batch(
                cast(asyncpg.Connection, conn),
                self.name,
                self._topic,
                self._identity,
                records,
                self._handler,
                synchronous_commit=self._synchronous_commit,
            )
        BATCH_SIZE.labels(self.name).observe(len(records))
        for record in records[-1:]:
            FRESHNESS.labels(self.name).observe(max(0.0, started - record.event.time.timestamp()))
        observe_stages(self.name, records, received, time.time())
        return len(records)


def observe_stages(consumer: str, records: Sequence[Record], received: float, done: float) -> None:
    """Per event: relay send → receive, receive → committed, and commit → committed."""
    transit = CONSUMER_TRANSIT.labels(consumer)
    apply_delay = CONSUMER_APPLY_DELAY.labels(consumer)
    end_to_end = CONSUMER_END_TO_END.labels(consumer)
    for record in records:
        if record.sent_at is not None:
            transit.observe(max(0.0, received - record.sent_at))
        apply_delay.observe(done - received)
        end_to_end.observe(max(0.0, done - record.event.time.timestamp()))
