"""`tierline relay`: publish committed events to the log (one active relay at a time)."""

from __future__ import annotations

import asyncio

from tierline.config import Settings
from tierline.eventlog.kafka import resolve_idempotence
from tierline.relay.relay import Relay


async def run_relay(settings: Settings, stop: asyncio.Event) -> None:
    """Publish committed events to the log."""
    idempotent = await resolve_idempotence(settings.kafka_idempotence, settings.kafka_bootstrap)
    relay = Relay(
        database_url=settings.database_url,
        bootstrap=settings.kafka_bootstrap,
        topic=settings.kafka_topic,
        partitions=settings.kafka_partitions,
        replication=settings.kafka_replication_factor,
        min_insync_replicas=settings.kafka_min_insync_replicas,
        idempotent=idempotent,
        batch_size=settings.relay_batch_size,
        max_in_flight=settings.relay_max_in_flight,
        poll_interval=settings.relay_poll_interval,
    )
    await relay.run(stop)
