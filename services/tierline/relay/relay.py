"""Publish committed, unpublished events to the log and mark them published after the ack."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from prometheus_client import Counter, Gauge

from tierline.eventlog.cloudevents import to_kafka_record
from tierline.eventlog.freshness import RELAY_PUBLISH, RELAY_READ_DELAY
from tierline.eventlog.kafka import cluster_identity, ensure_topic, producer_options
from tierline.sqlfile import load_queries
from tierline.store.event_store import stored_event
from tierline.supervise import sleep_or_stop, supervise

log = structlog.get_logger(__name__)

RELAY_LOCK_ID = 7_311_529_002
CHANNEL = "tierline_events"

QUERIES = load_queries("tierline.relay")

EVENTS_PUBLISHED = Counter("tierline_relay_events_published_total", "Events acked by the log")
RELAY_LAG = Gauge("tierline_relay_lag_seconds", "Age of the oldest unpublished event")
RELAY_LEADER = Gauge("tierline_relay_leader", "1 while this process is the active relay")
LOG_REFILLS = Counter("tierline_relay_log_refills_total", "Times the whole store was republished")


class Relay:
    """One active relay at a time (advisory lock); the others stand by."""

    def __init__(
        self,
        *,
        database_url: str,
        bootstrap: str,
        topic: str,
        partitions: int,
        idempotent: bool,
        replication: int = 1,
        min_insync_replicas: int | None = None,
        batch_size: int = 500,
        max_in_flight: int = 1,
        poll_interval: float = 1.0,
    ) -> None:
        self._database_url = database_url
        self._bootstrap = bootstrap
        self._topic = topic
        self._partitions = partitions
        self._replication = replication
        self._min_insync_replicas = min_insync_replicas
        self._idempotent = idempotent
        self._batch_size = batch_size
        self._max_in_flight = max_in_flight
        self._poll_interval = poll_interval
        self._wakeup = asyncio.Event()
        self.is_leader = False

    async def run(self, stop: asyncio.Event) -> None:
        """Wait for leadership, then publish until `stop` is set; restart after any failure."""
        await supervise("relay", self._run_once, stop, retry_on=(Exception,), topic=self._topic)

    async def _run_once(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(self._database_url)
        try:
            while not await conn.fetchval(QUERIES["try_relay_lock"], RELAY_LOCK_ID):
                if await sleep_or_stop(stop, self._poll_interval):
                    return
            self.is_leader = True
            RELAY_LEADER.set(1)
            log.info("relay_leader_acquired", topic=self._topic)
            await self._check_log_identity(conn)
            await conn.add_listener(CHANNEL, self._on_notify)
            producer = AIOKafkaProducer(**producer_options(self._bootstrap, self._idempotent))
            await producer.start()
            try:
                await self._publish_loop(conn, producer, stop)
            finally:
                await producer.stop()
        finally:
            self.is_leader = False
            RELAY_LEADER.set(0)
            with contextlib.suppress(Exception):
                await asyncio.shield(conn.close())

    def _on_notify(self, *_: object) -> None:
        self._wakeup.set()

    async def _check_log_identity(self, conn: asyncpg.Connection) -> None:
        """Refill the log from the store when the broker's log is not the one we published to."""
        created = await ensure_topic(
            self._bootstrap,
            self._topic,
            self._partitions,
            replication=self._replication,
            min_insync_replicas=self._min_insync_replicas,
        )
        identity = await cluster_identity(self._bootstrap)
        recorded = await conn.fetchval(QUERIES["recorded_log_identity"], self._topic)
        if created or recorded != identity:
            async with conn.transaction():
                status = await conn.execute(QUERIES["forget_published"])
                await conn.execute(QUERIES["record_log_identity"], self._topic, identity)
            LOG_REFILLS.inc()
            log.info(
                "relay_log_refill",
                topic=self._topic,
                identity=identity,
                previous=recorded,
                topic_created=created,
                events=int(status.split()[-1]),
            )

    async def _publish_loop(
        self, conn: asyncpg.Connection, producer: AIOKafkaProducer, stop: asyncio.Event
    ) -> None:
        """Send batch after batch, marking each published once acked; wait when idle.

        With `max_in_flight` above 1 it is pipelined: the next batch is read and sent while
        the previous one's acks come back, so events that commit during a produce round trip
        wait neither for its acks nor for its mark before they are sent.
        """
        pipeline = Pipeline(self._max_in_flight)
        while not stop.is_set():
            self._wakeup.clear()
            await self._mark_acked(conn, pipeline)
            sent = 0 if pipeline.full else await self._send_batch(conn, producer, pipeline)
            RELAY_LAG.set(await self._lag(conn, pipeline))
            if not sent:
                await self._wait(pipeline, stop)
        # Stopping between batches: what was sent is acked and marked, not sent again later.
        while (acked := pipeline.head_acked()) is not None:
            await asyncio.wait({acked})
            await self._mark_acked(conn, pipeline)

    async def _lag(self, conn: asyncpg.Connection, pipeline: Pipeline) -> float:
        """Age of the oldest unpublished event: the oldest in flight; asked only when idle."""
        oldest = pipeline.oldest_time()
        if oldest is None:
            oldest = await conn.fetchval(QUERIES["oldest_unpublished"])
        return 0.0 if oldest is None else (datetime.now(UTC) - oldest).total_seconds()

    async def _wait(self, pipeline: Pipeline, stop: asyncio.Event) -> None:
        """Until a NOTIFY (unless no batch may be sent), the oldest batch's acks, or `stop`."""
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(stop.wait())}
        if not pipeline.full:
            waiters.add(asyncio.ensure_future(self._wakeup.wait()))
        acked = pipeline.head_acked()
        watched = waiters if acked is None else {*waiters, acked}
        await asyncio.wait(watched, timeout=self._poll_interval, return_when="FIRST_COMPLETED")
        for waiter in waiters:
            waiter.cancel()

    async def _send_batch(
        self, conn: asyncpg.Connection, producer: AIOKafkaProducer, pipeline: Pipeline
    ) -> int:
        """Hand the next unpublished events not already in flight to the producer."""
        rows = await conn.fetch(
            QUERIES["unpublished_events"], self._batch_size, pipeline.positions()
        )
        if not rows:
            return 0
        read_at = time.time()
        for row in rows:
            RELAY_READ_DELAY.observe(max(0.0, read_at - row["time"].timestamp()))
        futures = []
        for row in rows:
            key, value, headers = to_kafka_record(stored_event(row))
            futures.append(await producer.send(self._topic, value=value, key=key, headers=headers))
        pipeline.add(InFlight(rows, futures, read_at))
        return len(rows)

    async def _mark_acked(self, conn: asyncpg.Connection, pipeline: Pipeline) -> None:
        """Mark published, in send order, the leading batches whose every event was acked."""
        positions = pipeline.pop_acked()
        if positions:
            await conn.execute(QUERIES["mark_published"], positions, datetime.now(UTC))
            EVENTS_PUBLISHED.inc(len(positions))

    async def publish_batch(self, conn: asyncpg.Connection, producer: AIOKafkaProducer) -> int:
        """Send the next batch in position order, wait for every ack, then mark it published."""
        pipeline = Pipeline(1)
        sent = await self._send_batch(conn, producer, pipeline)
        acked = pipeline.head_acked()
        if acked is not None:
            await acked
            await self._mark_acked(conn, pipeline)
        return sent


class InFlight:
    """A batch handed to the producer: its rows and one future for the last of their acks."""

    def __init__(
        self, rows: list[asyncpg.Record], futures: list[asyncio.Future[Any]], read_at: float
    ) -> None:
        self.rows = rows
        self.read_at = read_at
        self.acked: asyncio.Future[list[Any]] = asyncio.gather(*futures)
        self.acked.add_done_callback(self._observe)

    def _observe(self, acked: asyncio.Future[list[Any]]) -> None:
        if not acked.cancelled() and acked.exception() is None:
            seconds = time.time() - self.read_at
            for _ in self.rows:
                RELAY_PUBLISH.observe(seconds)


class Pipeline:
    """Batches sent and not yet marked published, oldest first.

    A batch is marked only after every batch sent before it was, so a failed ack (the
    producer gave up on a record) leaves that batch and every later one unmarked: the
    restarted relay sends them again, and consumers skip what they already applied.
    """

    def __init__(self, max_in_flight: int) -> None:
        self._max = max_in_flight
        self._batches: deque[InFlight] = deque()

    @property
    def full(self) -> bool:
        """No batch may be sent until the oldest is acked."""
        return len(self._batches) >= self._max

    def add(self, batch: InFlight) -> None:
        """A batch whose every record was handed to the producer."""
        self._batches.append(batch)

    def positions(self) -> list[int]:
        """The positions in flight: the next read must not return them again."""
        return [row["position"] for batch in self._batches for row in batch.rows]

    def oldest_time(self) -> datetime | None:
        """The time of the oldest event in flight (None when none is)."""
        return min((row["time"] for batch in self._batches for row in batch.rows), default=None)

    def head_acked(self) -> asyncio.Future[list[Any]] | None:
        """The oldest batch's last ack, if a batch is in flight."""
        return self._batches[0].acked if self._batches else None

    def pop_acked(self) -> list[int]:
        """The positions of the leading batches whose every record was acked; raises a failure."""
        positions: list[int] = []
        while self._batches and self._batches[0].acked.done():
            self._batches[0].acked.result()
            positions += [row["position"] for row in self._batches.popleft().rows]
        return positions
