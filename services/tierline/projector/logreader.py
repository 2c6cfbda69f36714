"""Read a topic's partitions from chosen offsets, outside any consumer group (for replays)."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tierline.eventlog.cloudevents import from_kafka_record
from tierline.eventlog.consumer import Record

log = structlog.get_logger(__name__)


class TopicMissing(Exception):
    """The topic to read does not exist (and must not be auto-created by asking about it)."""


async def topic_partitions(bootstrap: str, topic: str) -> list[int]:
    """The topic's partition numbers; TopicMissing when there is no such topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            raise TopicMissing(topic)
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for p in described[0]["partitions"])


END_FETCH_WAIT_MS = 20
END_POLL_MS = 50
END_ATTEMPTS = 200


async def log_ends(bootstrap: str, topic: str, partitions: list[int]) -> dict[int, int]:
    """The log's end per partition: the high-water mark a fetch of each partition reports.

    Not `end_offsets`: Tansu answers it with the last batch's base offset + 1, short of the end
    (docs/adr/0014). A fetch response carries the high-water mark on every broker, so each
    partition is fetched once from that answer (a lower bound of the end on Tansu, the end
    itself on Apache Kafka); what the fetch returns is dropped.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=END_FETCH_WAIT_MS,
        max_partition_fetch_bytes=1024,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        for tp, offset in (await consumer.end_offsets(tps)).items():
            consumer.seek(tp, offset)
        for _ in range(END_ATTEMPTS):
            ends = {tp.partition: consumer.highwater(tp) for tp in tps}
            if all(end is not None for end in ends.values()):
                return {p: int(end) for p, end in ends.items() if end is not None}
            await consumer.getmany(timeout_ms=END_POLL_MS)
        raise TimeoutError(f"no high-water mark for every partition of {topic}")
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(consumer.stop())


class LogReader:
    """A manually assigned consumer that tracks its next offset per partition."""

    def __init__(self, bootstrap: str, topic: str, batch_size: int) -> None:
        self.topic = topic
        self._batch_size = batch_size
        self._bootstrap = bootstrap
        self._consumer_instance: AIOKafkaConsumer | None = None
        self.positions: dict[int, int] = {}
        self._limits: dict[int, int] | None = None

    @property
    def _consumer(self) -> AIOKafkaConsumer:
        # Made on start: a reader that is never started (a rebuild worker's) holds no client.
        if self._consumer_instance is None:
            raise RuntimeError("the log reader is not started")
        return self._consumer_instance

    async def start(self, partitions: list[int], offsets: dict[int, int] | None = None) -> None:
        """Assign every partition at `offsets` (the beginning of the log where absent)."""
        self._consumer_instance = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._batch_size,
            fetch_max_bytes=32 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await self._consumer.start()
        tps = [TopicPartition(self.topic, p) for p in partitions]
        self._consumer.assign(tps)
        beginning = await self._consumer.beginning_offsets(tps)
        for tp in tps:
            offset = max((offsets or {}).get(tp.partition, 0), beginning[tp])
            self._consumer.seek(tp, offset)
            self.positions[tp.partition] = offset

    async def stop(self) -> None:
        """Close the consumer."""
        if self._consumer_instance is not None:
            with contextlib.suppress(Exception):
                await self._consumer_instance.stop()

    def limit_to(self, limits: dict[int, int]) -> None:
        """From now on, never return a record at or beyond `limits[partition]`."""
        self._limits = dict(limits)
        for partition, position in self.positions.items():
            if position >= limits.get(partition, 0):
                self._consumer.pause(TopicPartition(self.topic, partition))

    def highwater(self) -> dict[int, int]:
        """The log end per partition as the last fetch reported it (-1: not known yet)."""
        result = {}
        for partition in self.positions:
            end = self._consumer.highwater(TopicPartition(self.topic, partition))
            result[partition] = -1 if end is None else end
        return result

    def at_end(self) -> bool:
        """Whether every partition is read up to its limit (see `limit_to`)."""
        if self._limits is None:
            return False
        return all(self.positions[p] >= self._limits.get(p, 0) for p in self.positions)

    def at_high_water(self) -> bool:
        """Whether every partition is read up to the log end its last fetch reported."""
        return all(0 <= end <= self.positions[p] for p, end in self.highwater().items())

    async def read(self, timeout_ms: int) -> list[Record]:
        """The next records in log order per partition (within the limits, if set)."""
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=self._batch_size)
        records: list[Record] = []
        for tp, messages in batches.items():
            limit = None if self._limits is None else self._limits.get(tp.partition, 0)
            for msg in messages:
                if limit is not None and msg.offset >= limit:
                    self._consumer.pause(tp)
                    break
                self.positions[tp.partition] = msg.offset + 1
                try:
                    event = from_kafka_record(msg.value, list(msg.headers))
                except ValueError as exc:
                    log.error(
                        "replay_undecodable",
                        partition=tp.partition,
                        offset=msg.offset,
                        error=str(exc),
                    )
                    continue
                records.append(Record(tp.partition, msg.offset, event))
            if limit is not None and self.positions[tp.partition] >= limit:
                self._consumer.pause(tp)
        return records
