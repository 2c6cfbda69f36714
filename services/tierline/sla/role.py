"""`tierline sla`: the clock-table consumer and the due-clock scanner, side by side."""

from __future__ import annotations

import asyncio

import structlog

from tierline.config import Settings
from tierline.eventlog.consumer import LogConsumer
from tierline.eventlog.topic import ensure_log_topic
from tierline.service_layer.issues import IssueService
from tierline.service_layer.reference import ReferenceData
from tierline.sla.clock_table import ClockTable
from tierline.sla.scanner import SlaScanner
from tierline.store.pool import create_pool
from tierline.store.unit_of_work import PostgresUnitOfWorkFactory

log = structlog.get_logger(__name__)

CONSUMER_NAME = "sla"
# Connections kept free of the scanner's commands: the consumer's batch and the scan itself.
RESERVED_CONNECTIONS = 2


async def run_sla(settings: Settings, stop: asyncio.Event) -> None:
    """Keep clock rows from the log and record warnings, breaches and escalations when due."""
    # Subscribing first would let some brokers auto-create the topic with their defaults.
    await ensure_log_topic(settings)
    pool = await create_pool(
        settings.database_url,
        min_size=min(settings.db_pool_min, settings.db_pool_max),
        max_size=settings.db_pool_max,
    )
    try:
        reference = ReferenceData(pool, ttl=settings.reference_ttl_seconds)
        clock_table = ClockTable(reference)
        consumer = LogConsumer(
            name=CONSUMER_NAME,
            pool=pool,
            bootstrap=settings.kafka_bootstrap,
            topic=settings.kafka_topic,
            handler=clock_table,
            batch_size=settings.consumer_batch_size,
            fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
            synchronous_commit=settings.consumer_synchronous_commit == "on",
        )
        scanner = SlaScanner(
            pool=pool,
            service=IssueService(PostgresUnitOfWorkFactory(pool, reference)),
            reference=reference,
            clock_table=clock_table,
            batch_size=settings.sla_max_batch,
            concurrency=max(1, settings.db_pool_max - RESERVED_CONNECTIONS),
            groups=settings.sla_groups,
            listen_url=settings.database_url,
        )
        log.info("sla_started", topic=settings.kafka_topic)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(consumer.run(stop), name="sla-consumer")
            tasks.create_task(scanner.run(stop), name="sla-scanner")
    finally:
        await pool.close()
