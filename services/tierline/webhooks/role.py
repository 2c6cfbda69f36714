"""The `webhooks` role: the log consumer that queues deliveries and the sender that makes them."""

from __future__ import annotations

import asyncio

import structlog
from aiokafka.errors import KafkaError

from tierline.config import Settings
from tierline.eventlog.consumer import LogConsumer
from tierline.eventlog.topic import ensure_log_topic
from tierline.store.pool import create_pool
from tierline.webhooks.fanout import CONSUMER_NAME, DeliveryFanout
from tierline.webhooks.sender import Sender, SenderConfig

log = structlog.get_logger(__name__)


def sender_config(settings: Settings) -> SenderConfig:
    """The sender's behaviour from the settings."""
    return SenderConfig(
        timeout=settings.webhooks_timeout,
        retry_schedule=tuple(settings.webhooks_retry_schedule),
        per_subscription=settings.webhooks_per_subscription_concurrency,
        allow_private=settings.webhooks_allow_private_targets,
    )


async def run_webhooks(settings: Settings, stop: asyncio.Event) -> None:
    """Queue deliveries from the log and send them until stopped."""
    try:
        await ensure_log_topic(settings)
    except (KafkaError, OSError) as exc:
        # The consumer keeps trying to reach the broker; nothing else needs the topic now.
        log.warning("webhooks_topic_check_failed", error=repr(exc))
    pool = await create_pool(
        settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max
    )
    try:
        consumer = LogConsumer(
            name=CONSUMER_NAME,
            pool=pool,
            bootstrap=settings.kafka_bootstrap,
            topic=settings.kafka_topic,
            handler=DeliveryFanout(),
            batch_size=settings.consumer_batch_size,
            group_id=f"tierline.webhooks.{settings.kafka_topic}",
            fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
            synchronous_commit=settings.consumer_synchronous_commit == "on",
        )
        sender = Sender(pool, settings.database_url, sender_config(settings))
        log.info("webhooks_role_started", topic=settings.kafka_topic)
        async with asyncio.TaskGroup() as group:
            group.create_task(consumer.run(stop), name="webhooks-consumer")
            group.create_task(sender.run(stop), name="webhooks-sender")
    finally:
        await pool.close()
