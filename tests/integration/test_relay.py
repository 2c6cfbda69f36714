"""The relay: every committed event reaches the log, in order per issue, across kills, lost logs."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections import defaultdict
from collections.abc import Sequence

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from tierline.devstack.tansu import TansuBroker
from tierline.domain import commands as c
from tierline.domain.governance import Vendor
from tierline.eventlog.cloudevents import LogEvent, from_kafka_record
from tierline.eventlog.consumer import LogConsumer
from tierline.relay.relay import RELAY_LAG, Relay
from tierline.service_layer.issues import SYSTEM
from tierline.store.pool import create_pool
from tierline.store.unit_of_work import issue_service
from tierline.store.vendors import insert_vendor

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]
REFUSED_LOCK_REQUESTS = """
SELECT count(*) FROM pg_stat_activity AS a
WHERE a.query LIKE 'SELECT pg_try_advisory_lock%' AND a.state = 'idle'
  AND NOT EXISTS (SELECT 1 FROM pg_locks AS l WHERE l.pid = a.pid AND l.locktype = 'advisory')
"""


async def write_history(database_url: str, issues: int, comments: int) -> int:
    """Open issues and add comments through the real write path; returns the event count."""
    pool = await create_pool(database_url, min_size=1, max_size=4)
    try:
        await insert_vendor(pool, Vendor(id="acme", name="Acme"))
        service = issue_service(pool)
        ids = []
        for n in range(issues):
            command = c.OpenIssue(
                vendor_id="acme", title=f"i{n}", category="quality", priority="P3"
            )
            ids.append((await service.open(SYSTEM, command)).issue.id)
        for round_ in range(comments):
            await asyncio.gather(
                *(service.execute(SYSTEM, i, c.AddComment(body=f"c{round_}")) for i in ids)
            )
        return int(await pool.fetchval("SELECT count(*) FROM events"))
    finally:
        await pool.close()


def relay_for(
    database_url: str,
    bootstrap: str,
    topic: str,
    kind: str,
    batch_size: int = 25,
    max_in_flight: int = 2,
) -> Relay:
    return Relay(
        database_url=database_url,
        bootstrap=bootstrap,
        topic=topic,
        partitions=4,
        idempotent=kind == "apache",
        batch_size=batch_size,
        max_in_flight=max_in_flight,
        poll_interval=0.1,
    )


async def refused_lock_requests(database_url: str) -> int:
    """Connections whose last statement asked for the relay lock and that do not hold it."""
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(REFUSED_LOCK_REQUESTS))
    finally:
        await conn.close()


async def published(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM events WHERE published_at IS NOT NULL")
        )
    finally:
        await conn.close()


async def wait_published(database_url: str, count: int, seconds: float = 20.0) -> None:
    """Until `count` events are marked published (or `seconds` passed; the caller asserts)."""
    for _ in range(int(seconds / 0.05)):
        if await published(database_url) == count:
            return
        await asyncio.sleep(0.05)


async def read_topic(bootstrap: str, topic: str, expected: int) -> list[LogEvent]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    events: list[LogEvent] = []
    try:
        for _ in range(150):
            batches = await consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                events += [from_kafka_record(m.value, list(m.headers)) for m in messages]
            if len(events) >= expected and not batches:
                break
    finally:
        await consumer.stop()
    return events


def check_log(events: Sequence[LogEvent], total: int) -> None:
    """Every event present; per issue in version order; duplicates only as the same ce_id."""
    by_id: dict[str, LogEvent] = {}
    per_stream: dict[str, list[int]] = defaultdict(list)
    for event in events:
        if event.event_id in by_id:
            assert by_id[event.event_id].version == event.version
            continue
        by_id[event.event_id] = event
        per_stream[event.stream_id].append(event.version)
    assert len(by_id) == total
    for versions in per_stream.values():
        assert versions == list(range(1, len(versions) + 1))
    seen: set[tuple[str, int]] = set()
    for event in events:
        key = (event.stream_id, event.version)
        if key in seen:
            continue
        assert event.version == 1 or (event.stream_id, event.version - 1) in seen
        seen.add(key)


async def test_relay_cancelled_mid_batch_loses_nothing(
    database_url: str, broker: tuple[str, str], topic: str
) -> None:
    kind, bootstrap = broker
    total = await write_history(database_url, issues=20, comments=9)
    stop = asyncio.Event()
    # Small batches: the pipelined relay publishes 25-event batches of this history so fast
    # that the kill could land after the last mark.
    killed = relay_for(database_url, bootstrap, topic, kind, batch_size=4)
    task = asyncio.create_task(killed.run(stop))
    for _ in range(500):
        if 0 < await published(database_url) < total:
            break
        await asyncio.sleep(0.005)
    task.cancel()  # a kill in the middle of publishing
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await published(database_url) < total
    restarted = asyncio.create_task(relay_for(database_url, bootstrap, topic, kind).run(stop))
    await wait_published(database_url, total)
    stop.set()
    await restarted
    check_log(await read_topic(bootstrap, topic, total), total)


async def test_pipelined_relay_sends_each_event_once_while_commits_arrive(
    database_url: str, broker: tuple[str, str], topic: str
) -> None:
    kind, bootstrap = broker
    stop = asyncio.Event()
    relay = relay_for(database_url, bootstrap, topic, kind, batch_size=3, max_in_flight=3)
    task = asyncio.create_task(relay.run(stop))
    # Commits land while earlier batches are in flight: the next read must skip those.
    total = await write_history(database_url, issues=12, comments=4)
    await wait_published(database_url, total)
    stop.set()
    await task
    assert await published(database_url) == total
    events = await read_topic(bootstrap, topic, total)
    assert len(events) == total, "an event in flight was read and sent again"
    check_log(events, total)


async def test_nothing_is_marked_published_while_the_broker_does_not_ack(
    database_url: str, topic: str
) -> None:
    total = await write_history(database_url, issues=4, comments=1)
    frozen = TansuBroker(cluster_id=f"frozen-{uuid.uuid4().hex[:6]}", forward_logs=False)
    await asyncio.to_thread(frozen.start)
    assert frozen.pid is not None
    stop = asyncio.Event()
    task = asyncio.create_task(relay_for(database_url, frozen.bootstrap, topic, "tansu").run(stop))
    try:
        while await published(database_url) < total:
            await asyncio.sleep(0.05)
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            more = sum([await write_history_more(database_url) for _ in range(8)])
            await asyncio.sleep(1.5)
            assert await published(database_url) == total, "marked before the broker acked"
            assert RELAY_LAG._value.get() >= 1.0, "the lag must grow while acks do not come"
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        await wait_published(database_url, total + more)
        stop.set()
        await task
        events = await read_topic(frozen.bootstrap, topic, total + more)
        assert len(events) == total + more
        check_log(events, total + more)
    finally:
        stop.set()
        await asyncio.to_thread(frozen.stop)


async def test_standby_relay_takes_over(database_url: str, tansu: str, topic: str) -> None:
    total = await write_history(database_url, issues=3, comments=2)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    a = relay_for(database_url, tansu, topic, "tansu")
    b = relay_for(database_url, tansu, topic, "tansu")
    task_a = asyncio.create_task(a.run(stop_a))
    for _ in range(100):
        if a.is_leader:
            break
        await asyncio.sleep(0.05)
    task_b = asyncio.create_task(b.run(stop_b))
    # The standby has asked for the lock and was refused: then only one relay may be active.
    for _ in range(100):
        if await refused_lock_requests(database_url):
            break
        await asyncio.sleep(0.05)
    assert await refused_lock_requests(database_url), "the standby never asked for the lock"
    assert a.is_leader and not b.is_leader, "only one relay may be active"
    stop_a.set()
    await task_a
    more = await write_history_more(database_url)
    for _ in range(100):
        if b.is_leader and await published(database_url) == total + more:
            break
        await asyncio.sleep(0.05)
    assert b.is_leader
    stop_b.set()
    await task_b
    check_log(await read_topic(tansu, topic, total + more), total + more)


async def write_history_more(database_url: str) -> int:
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        service = issue_service(pool)
        command = c.OpenIssue(vendor_id="acme", title="late", category="other", priority="P4")
        await service.open(SYSTEM, command)
        return 1
    finally:
        await pool.close()


class CountingHandler:
    """A consumer effect that counts applications per event in PostgreSQL."""

    async def apply(self, conn: asyncpg.Connection, events: Sequence[LogEvent]) -> None:
        await conn.executemany(
            "INSERT INTO applied_effects (event_id) VALUES ($1)",
            [(uuid.UUID(e.event_id),) for e in events],
        )


async def run_consumer_until(pool: asyncpg.Pool, bootstrap: str, topic: str, expected: int) -> None:
    stop = asyncio.Event()
    consumer = LogConsumer(
        name="counter", pool=pool, bootstrap=bootstrap, topic=topic, handler=CountingHandler()
    )
    task = asyncio.create_task(consumer.run(stop))
    for _ in range(300):
        done = await pool.fetchval(
            "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE consumer = 'counter'"
        )
        if done >= expected:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task


async def test_lost_broker_log_is_refilled_and_consumers_apply_once(
    database_url: str, topic: str
) -> None:
    total = await write_history(database_url, issues=5, comments=3)
    pool = await create_pool(database_url, min_size=1, max_size=4)
    await pool.execute("CREATE TABLE applied_effects (event_id uuid PRIMARY KEY)")
    first = TansuBroker(cluster_id=f"lost-{uuid.uuid4().hex[:6]}", forward_logs=False)
    await asyncio.to_thread(first.start)
    try:
        stop = asyncio.Event()
        task = asyncio.create_task(
            relay_for(database_url, first.bootstrap, topic, "tansu").run(stop)
        )
        while await published(database_url) < total:
            await asyncio.sleep(0.05)
        stop.set()
        await task
        await run_consumer_until(pool, first.bootstrap, topic, total)
        assert await pool.fetchval("SELECT count(*) FROM applied_effects") == total
    finally:
        await asyncio.to_thread(first.stop)
    # The in-memory log is gone; a new broker (new cluster id) starts empty.
    second = TansuBroker(cluster_id=f"lost-{uuid.uuid4().hex[:6]}", forward_logs=False)
    await asyncio.to_thread(second.start)
    try:
        extra = await write_history_more(database_url)
        stop = asyncio.Event()
        task = asyncio.create_task(
            relay_for(database_url, second.bootstrap, topic, "tansu").run(stop)
        )
        while await published(database_url) < total + extra:
            await asyncio.sleep(0.05)
        stop.set()
        await task
        check_log(await read_topic(second.bootstrap, topic, total + extra), total + extra)
        # The consumer re-reads the refilled log from the start and applies only the new event.
        await run_consumer_until(pool, second.bootstrap, topic, total + extra)
        assert await pool.fetchval("SELECT count(*) FROM applied_effects") == total + extra
    finally:
        await asyncio.to_thread(second.stop)
        await pool.close()
