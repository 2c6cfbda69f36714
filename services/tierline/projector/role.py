"""`tierline projector`: a consumer-group member building the read models in schema `read`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client import Histogram

from tierline.config import ISSUE_EVENTS_TOPIC, Settings
from tierline.eventlog.consumer import LogConsumer
from tierline.projector.gate import ReplayGate
from tierline.projector.handler import Projector
from tierline.projector.tables import LIVE_SCHEMA, ReadTables
from tierline.store.pool import create_pool

log = structlog.get_logger(__name__)

CONSUMER_NAME = "projector"
TOPIC_WAIT_SECONDS = 0.5

EVENT_AGE = Histogram(
    "tierline_projector_event_age_seconds",
    "Time from an event's ce_time to its read-model rows being committed",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


def group_for(topic: str) -> str:
    """The consumer group: one per topic, so projectors of other topics on a broker never meet."""
    if topic == ISSUE_EVENTS_TOPIC:
        return f"tierline.{CONSUMER_NAME}"
    return f"tierline.{CONSUMER_NAME}.{topic}"


class ProjectorConsumer(LogConsumer):
    """A LogConsumer whose batches pass through the replay gate.

    After a replay swapped tables in (the rebuild generation moved), the stored offsets are the
    replay's: the partitions are positioned from them again and cached rows are dropped.
    """

    def __init__(self, *, projector: Projector, gate: ReplayGate, **kwargs: Any) -> None:
        kwargs.setdefault("group_id", group_for(kwargs["topic"]))
        super().__init__(handler=projector, **kwargs)
        self.projector = projector
        self._gate = gate
        self._generation: int | None = None
        self._stop = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop`, pausing while a replay swaps tables."""
        self._stop = stop
        await super().run(stop)

    async def poll_once(self, consumer: AIOKafkaConsumer, stop: asyncio.Event | None = None) -> int:
        """One gated batch; then the freshness of what it committed."""
        generation = await self._gate.enter(stop or self._stop)
        if generation is None:
            return 0
        try:
            if generation != self._generation:
                if self._generation is not None:
                    log.info("projector_tables_swapped", generation=generation)
                    self.projector.forget()
                    await self.seek_assigned(list(consumer.assignment()))
                self._generation = generation
            count = await super().poll_once(consumer, stop)
        finally:
            await self._gate.leave()
        now = time.time()
        for applied in self.projector.take_applied_times():
            EVENT_AGE.observe(max(0.0, now - applied.timestamp()))
        return count


async def wait_for_topic(bootstrap: str, topic: str, stop: asyncio.Event) -> bool:
    """Wait until the relay has created the topic; subscribing first would auto-create it."""
    while not stop.is_set():
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            await admin.start()
            if topic in await admin.list_topics():
                return True
        except (KafkaError, OSError) as exc:
            log.info("projector_waiting_for_broker", error=repr(exc))
        finally:
            with contextlib.suppress(KafkaError, OSError):
                await admin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), TOPIC_WAIT_SECONDS)
    return False


async def run_projector(settings: Settings, stop: asyncio.Event) -> None:
    """Build the read models from the log until stopped."""
    if not await wait_for_topic(settings.kafka_bootstrap, settings.kafka_topic, stop):
        return
    pool = await create_pool(settings.database_url, min_size=1, max_size=4)
    gate = ReplayGate(settings.database_url)
    consumer = ProjectorConsumer(
        name=CONSUMER_NAME,
        pool=pool,
        bootstrap=settings.kafka_bootstrap,
        topic=settings.kafka_topic,
        projector=Projector(ReadTables(LIVE_SCHEMA)),
        gate=gate,
        batch_size=settings.consumer_batch_size,
        fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
        synchronous_commit=settings.consumer_synchronous_commit == "on",
    )
    log.info("projector_started", topic=settings.kafka_topic)
    try:
        await consumer.run(stop)
    finally:
        await gate.close()
        await pool.close()
