"""Publish committed, unpublished events to the log and mark them published after the ack."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

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
        while not stop.is_set():
            self._wakeup.clear()
            published = await self.publish_batch(conn, producer)
            if published >= self._batch_size:
                continue
            oldest = await conn.fetchval(QUERIES["oldest_unpublished"])
            RELAY_LAG.set(0 if oldest is None else (datetime.now(UTC) - oldest).total_seconds())
            waiter = asyncio.ensure_future(self._wakeup.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait(
                {waiter, stopper}, timeout=self._poll_interval, return_when="FIRST_COMPLETED"
            )
            waiter.cancel()
            stopper.cancel()

    async def publish_batch(self, conn: asyncpg.Connection, producer: AIOKafkaProducer) -> int:
        """Send the next batch in position order, wait for every ack, then mark it published."""
        rows = await conn.fetch(QUERIES["unpublished_events"], self._batch_size)
        if not rows:
            return 0
        read_at = time.time()
        for row in rows:
            RELAY_READ_DELAY.observe(max(0.0, read_at - row["time"].timestamp()))
        futures = []
        for row in rows:
            key, value, headers = to_kafka_record(stored_event(row))
            futures.append(await producer.send(self._topic, value=value, key=key, headers=headers))
        await asyncio.gather(*futures)
        acked = time.time() - read_at
        for _ in rows:
            RELAY_PUBLISH.observe(acked)
        positions = [row["position"] for row in rows]
        await conn.execute(QUERIES["mark_published"], positions, datetime.now(UTC))
        EVENTS_PUBLISHED.inc(len(rows))
        return len(rows)
