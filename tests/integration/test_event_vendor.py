"""Events carry their vendor (`vendorid`), so consumers run on the log alone (ADR 0009)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from tierline.domain import commands as c
from tierline.domain.governance import Vendor
from tierline.eventlog.cloudevents import (
    VENDOR_HEADER,
    LogEvent,
    from_kafka_record,
    stored_to_structured,
    to_kafka_record,
)
from tierline.eventlog.consumer import BatchHandler, LogConsumer
from tierline.relay.relay import Relay
from tierline.service_layer.issues import SYSTEM
from tierline.service_layer.reference import ReferenceData
from tierline.sla.clock_table import ClockTable
from tierline.store.event_store import StoredEvent, stream_events
from tierline.store.pool import create_pool
from tierline.store.unit_of_work import issue_service
from tierline.store.vendors import change_vendor, insert_vendor
from tierline.webhooks.fanout import DeliveryFanout

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

GOVERNANCE_TYPE_PREFIX = "io.tierline.governance."
SUBSCRIBE = """
INSERT INTO webhook_subscriptions (id, url, event_types, vendor_id, secret, created_at)
VALUES ($1, $2, '{*}', $3, 'unused', now() - interval '1 hour')
"""


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=6)
    try:
        yield pool
    finally:
        await pool.close()


async def write_two_vendors(pool: asyncpg.Pool) -> dict[str, str]:
    """Issues of vendors acme and globex, with history, and a vendor change; issue -> vendor."""
    for vendor in ("acme", "globex"):
        await insert_vendor(pool, Vendor(id=vendor, name=vendor.title()))
    service = issue_service(pool)
    owners = {}
    for vendor in ("acme", "globex", "acme"):
        command = c.OpenIssue(vendor_id=vendor, title="late", category="quality", priority="P2")
        issue_id = (await service.open(SYSTEM, command)).issue.id
        await service.execute(SYSTEM, issue_id, c.AddComment(body="still late"))
        await service.execute(SYSTEM, issue_id, c.Escalate(reason="no answer"))
        owners[issue_id] = vendor
    async with pool.acquire() as conn, conn.transaction():
        changed = Vendor(id="globex", name="Globex Corp")
        await change_vendor(conn, changed, 1, datetime.now(UTC))
    return owners


async def publish_all(database_url: str, bootstrap: str, topic: str, total: int) -> None:
    """Run the relay until every event is published."""
    relay = Relay(
        database_url=database_url,
        bootstrap=bootstrap,
        topic=topic,
        partitions=3,
        idempotent=False,
        batch_size=5,
        poll_interval=0.1,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    conn = await asyncpg.connect(database_url)
    try:
        await until(lambda: _published_is(conn, total), f"the relay to publish {total} events")
    finally:
        stop.set()
        await task
        await conn.close()


async def _published_is(conn: asyncpg.Connection, total: int) -> bool:
    done = await conn.fetchval("SELECT count(*) FROM events WHERE published_at IS NOT NULL")
    return int(done) == total


async def until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 30) -> None:
    for _ in range(int(seconds / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


async def read_headers(bootstrap: str, topic: str, expected: int) -> list[dict[str, str]]:
    """The headers of the first `expected` records of the topic."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: list[dict[str, str]] = []
    try:
        for _ in range(150):
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                found += [{k: v.decode() for k, v in m.headers} for m in messages]
            if len(found) >= expected:
                break
    finally:
        await consumer.stop()
    return found


async def test_every_issue_event_names_its_vendor_on_the_log_and_in_structured_form(
    pool: asyncpg.Pool, database_url: str, broker: tuple[str, str], topic: str
) -> None:
    _, bootstrap = broker
    owners = await write_two_vendors(pool)
    total = int(await pool.fetchval("SELECT count(*) FROM events"))
    await publish_all(database_url, bootstrap, topic, total)

    records = await read_headers(bootstrap, topic, total)
    assert len(records) == total
    issue_records = [h for h in records if h["ce_subject"] in owners]
    assert len(issue_records) == total - 1, "one governance event (the vendor change)"
    for headers in issue_records:
        assert headers[VENDOR_HEADER] == owners[headers["ce_subject"]], headers
    (governance,) = [h for h in records if h["ce_subject"] not in owners]
    assert governance["ce_type"].startswith(GOVERNANCE_TYPE_PREFIX)
    assert VENDOR_HEADER not in governance, "governance events belong to no vendor"

    for issue_id, vendor in owners.items():
        documents = [stored_to_structured(e) for e in await stream_events(pool, issue_id)]
        assert [d["sequence"] for d in documents] == ["1", "2", "3"]
        assert {d["vendorid"] for d in documents} == {vendor}
    (vendor_change,) = [stored_to_structured(e) for e in await stream_events(pool, "governance")]
    assert "vendorid" not in vendor_change


async def run_consumer(
    pool: asyncpg.Pool,
    name: str,
    handler: BatchHandler,
    bootstrap: str,
    topic: str,
    total: int,
) -> None:
    """Consume the whole topic with one handler, then stop."""
    consumer = LogConsumer(
        name=name, pool=pool, bootstrap=bootstrap, topic=topic, handler=handler, batch_size=4
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))

    async def consumed() -> bool:
        if task.done():
            task.result()
        done = await pool.fetchval(
            "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE consumer = $1", name
        )
        return int(done) >= total

    try:
        await until(consumed, f"consumer {name} to read {total} records")
    finally:
        stop.set()
        await task


async def test_sla_and_webhook_consumers_need_no_streams_table(
    pool: asyncpg.Pool, database_url: str, tansu: str, topic: str
) -> None:
    owners = await write_two_vendors(pool)
    subscriptions = {name: uuid.uuid4() for name in ("acme", "globex", "everything")}
    for name, sub_id in subscriptions.items():
        vendor = None if name == "everything" else name
        await pool.execute(SUBSCRIBE, sub_id, f"https://example.com/{name}", vendor)
    total = int(await pool.fetchval("SELECT count(*) FROM events"))
    await publish_all(database_url, tansu, topic, total)
    # From here on the write side's heads do not exist: the consumers have only the log.
    await pool.execute("ALTER TABLE streams RENAME TO streams_out_of_reach")

    await run_consumer(pool, "sla", ClockTable(ReferenceData(pool)), tansu, topic, total)
    await run_consumer(pool, "webhooks", DeliveryFanout(), tansu, topic, total)

    stored = {r["issue_id"]: r["vendor_id"] for r in await pool.fetch("SELECT * FROM sla_issues")}
    assert stored == owners
    clock_vendors = await pool.fetch("SELECT DISTINCT issue_id, vendor_id FROM sla_clocks")
    assert {r["issue_id"]: r["vendor_id"] for r in clock_vendors} == owners

    rows = await pool.fetch(
        """
        SELECT d.subscription_id, e.stream_id, e.body FROM webhook_deliveries d
        JOIN webhook_events e ON e.event_id = d.event_id
        """
    )
    received: dict[str, list[tuple[str, dict[str, object]]]] = {n: [] for n in subscriptions}
    names = {sub_id: name for name, sub_id in subscriptions.items()}
    for row in rows:
        received[names[row["subscription_id"]]].append((row["stream_id"], json.loads(row["body"])))
    assert len(received["everything"]) == total
    for vendor in ("acme", "globex"):
        mine = {i for i, owner in owners.items() if owner == vendor}
        assert {stream for stream, _ in received[vendor]} == mine, vendor
        assert len(received[vendor]) == 3 * len(mine), "all of its own events, nothing else"
        assert {body["vendorid"] for _, body in received[vendor]} == {vendor}


def as_logged(event: StoredEvent) -> LogEvent:
    """A stored event as the log carries it."""
    _, value, headers = to_kafka_record(event)
    return from_kafka_record(value, headers)


async def test_issue_events_read_after_their_vendors_change_are_recomputed(
    pool: asyncpg.Pool,
) -> None:
    """Without `streams`, an issue whose events wait on another partition is queued on arrival."""
    owners = await write_two_vendors(pool)  # ends with a change of globex
    (change,) = [as_logged(e) for e in await stream_events(pool, "governance")]
    table = ClockTable(ReferenceData(pool))
    async with pool.acquire() as conn, conn.transaction():
        await table.apply(conn, [change])
    assert await pool.fetchval("SELECT count(*) FROM sla_recompute") == 0, "no clocks seen yet"

    globex_issue = next(i for i, v in owners.items() if v == "globex")
    acme_issue = next(i for i, v in owners.items() if v == "acme")
    late = [as_logged(e) for e in await stream_events(pool, globex_issue)]
    later = [
        replace(e, time=change.time + timedelta(minutes=1))
        for e in map(as_logged, await stream_events(pool, acme_issue))
    ]
    async with pool.acquire() as conn, conn.transaction():
        await table.apply(conn, late + later)
    queued = await pool.fetch("SELECT issue_id, vendor_version FROM sla_recompute")
    assert [tuple(r) for r in queued] == [(globex_issue, 2)]
