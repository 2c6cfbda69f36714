"""The issue-events topic as the settings describe it: partitions, replication, min ISR."""

from __future__ import annotations

from tierline.config import Settings
from tierline.eventlog.kafka import ensure_topic


async def ensure_log_topic(settings: Settings) -> bool:
    """Create the configured topic if missing (True when created now); see `ensure_topic`."""
    return await ensure_topic(
        settings.kafka_bootstrap,
        settings.kafka_topic,
        settings.kafka_partitions,
        replication=settings.kafka_replication_factor,
        min_insync_replicas=settings.kafka_min_insync_replicas,
    )
