"""The Kafka client behaviour Tierline relies on, against each real broker ([tansu], [apache])."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tierline.eventlog.kafka import ensure_topic, producer_options, resolve_idempotence
from tierline.projector.logreader import log_ends

pytestmark = pytest.mark.kafka


async def produce(bootstrap: str, kind: str, topic: str, n: int, start: int = 0) -> None:
    idempotent = await resolve_idempotence("auto", bootstrap)
    assert idempotent is (kind == "apache"), "auto must pick idempotence exactly where it works"
    producer = AIOKafkaProducer(**producer_options(bootstrap, idempotent))
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                key=f"issue-{i % 7}".encode(),
                value=f"event-{i}".encode(),
                headers=[("ce_id", f"id-{i}".encode()), ("ce_sequence", str(i).encode())],
            )
            for i in range(start, start + n)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def consume(
    consumer: AIOKafkaConsumer, n: int
) -> list[tuple[int, int, bytes, dict[str, bytes]]]:
    got: list[tuple[int, int, bytes, dict[str, bytes]]] = []
    for _ in range(200):
        batches = await consumer.getmany(timeout_ms=200)
        for tp, messages in batches.items():
            got += [(tp.partition, m.offset, m.value, dict(m.headers)) for m in messages]
        if len(got) >= n:
            break
    return got


def group_consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )


async def test_headers_group_commit_and_resume(broker: tuple[str, str], topic: str) -> None:
    kind, bootstrap = broker
    assert await ensure_topic(bootstrap, topic, 3) is True
    assert await ensure_topic(bootstrap, topic, 3) is False
    await produce(bootstrap, kind, topic, 30)

    first = group_consumer(bootstrap, topic, f"g-{topic}")
    await first.start()
    try:
        got = await consume(first, 30)
        assert sorted(v for _, _, v, _ in got) == sorted(f"event-{i}".encode() for i in range(30))
        assert all(h["ce_id"] == b"id-" + v.split(b"-")[1] for _, _, v, h in got)
        await first.commit()
    finally:
        await first.stop()

    await produce(bootstrap, kind, topic, 10, start=30)
    again = group_consumer(bootstrap, topic, f"g-{topic}")
    await again.start()
    try:
        resumed = await consume(again, 10)
        assert sorted(v for _, _, v, _ in resumed) == sorted(
            f"event-{i}".encode() for i in range(30, 40)
        ), "a restarted member must resume from the committed offsets"
    finally:
        await again.stop()


async def test_two_members_split_partitions(broker: tuple[str, str], topic: str) -> None:
    _, bootstrap = broker
    await ensure_topic(bootstrap, topic, 6)
    group = f"g-{topic}"
    a = group_consumer(bootstrap, topic, group)
    b = group_consumer(bootstrap, topic, group)
    await a.start()
    await b.start()
    try:
        for _ in range(150):
            # Polling keeps both members in the group while it rebalances.
            await asyncio.gather(a.getmany(timeout_ms=100), b.getmany(timeout_ms=100))
            pa, pb = a.assignment(), b.assignment()
            if pa and pb and len(pa) + len(pb) == 6:
                break
        pa, pb = a.assignment(), b.assignment()
        assert pa and pb, "both members must own partitions"
        assert pa.isdisjoint(pb)
        assert pa | pb == {TopicPartition(topic, p) for p in range(6)}
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def test_log_ends_are_where_the_log_ends_in_every_partition(
    broker: tuple[str, str], topic: str
) -> None:
    """A replay folds what the store holds, then reads the log from these ends (docs/adr/0014):
    an end beyond the real one would skip records published later, one short of it re-reads
    records only to skip them. Several produce rounds give each partition several batches
    (Tansu answers `end_offsets` with the last batch's base + 1); 7 keys on 9 partitions leave
    at least two partitions empty."""
    kind, bootstrap = broker
    await ensure_topic(bootstrap, topic, 9)
    for round_ in range(4):
        await produce(bootstrap, kind, topic, 25, start=25 * round_)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await reader.start()
    try:
        reader.assign([TopicPartition(topic, p) for p in range(9)])
        records = await consume(reader, 100)
    finally:
        await reader.stop()
    assert len(records) == 100
    counted = {p: sum(1 for r in records if r[0] == p) for p in range(9)}
    assert list(counted.values()).count(0) >= 2, "no empty partition: that case went untested"
    assert await log_ends(bootstrap, topic, list(range(9))) == counted
