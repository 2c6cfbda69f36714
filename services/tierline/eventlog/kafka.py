"""Producer and consumer construction, topic admin, and the log's identity."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

log = structlog.get_logger(__name__)

# How long a consumer's fetch may wait on the broker for new records. Apache Kafka answers a
# waiting fetch as soon as a record is appended, so this only bounds idle round trips there.
# Tansu (the dev broker) does not: it holds the fetch for about half of this, however soon a
# record arrives, so aiokafka's default of 500 ms put ~125-250 ms into every event's way to a
# consumer in `tierline dev` (bench/README.md, Projector freshness).
DEFAULT_FETCH_MAX_WAIT_MS = 500
# What `tierline dev` uses with Tansu: at most ~10 ms of hold per fetch. The price is idle
# round trips: measured per idle consumer (client and Tansu together) +4% of a core at 25 ms,
# +12% at 10 ms, against 500 ms.
TANSU_FETCH_MAX_WAIT_MS = 20
# The partitions of `tierline dev`'s topic. Each of its roles is a single consumer, so
# partitions give it no parallelism, and Tansu's cost grows with them: every produce request
# writes one record batch per partition it touches, and every consumer fetches each batch.
# At 1,000 events/s with three consumers, Tansu used about a whole core with 12 partitions
# (produce round trip p99 20-22 ms) and 74-78% of one with a single partition (12-15 ms); in
# the SLA bench one partition halved Tansu's CPU and cut its ack p99 to ~1/3 (ADR 0016).
# Production keeps `kafka_partitions` (12): there the partitions spread the consumer groups.
TANSU_PARTITIONS = 1


async def probe_idempotence(bootstrap: str, timeout: float = 10.0) -> bool:
    """Whether the broker grants producer ids (Apache Kafka does; Tansu answers an error)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    try:
        await asyncio.wait_for(producer.start(), timeout)
        # aiokafka asks for the producer id lazily, before the first batch.
        await asyncio.wait_for(producer._sender._maybe_wait_for_pid(), timeout)
        return True
    except (KafkaError, TimeoutError) as exc:
        log.info("kafka_idempotence_unavailable", error=repr(exc))
        return False
    finally:
        with contextlib.suppress(KafkaError, TimeoutError):
            await asyncio.wait_for(producer.stop(), timeout)


async def resolve_idempotence(setting: str, bootstrap: str) -> bool:
    """The idempotence setting: forced on/off, or probed when `auto`."""
    if setting == "true":
        return True
    if setting == "false":
        return False
    return await probe_idempotence(bootstrap)


def producer_options(bootstrap: str, idempotent: bool) -> dict[str, Any]:
    """Settings for a producer that never loses an acknowledged write."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": idempotent,
        "linger_ms": 2,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 30_000,
    }
    return options


async def ensure_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    *,
    replication: int = 1,
    min_insync_replicas: int | None = None,
) -> bool:
    """Create the topic with infinite retention if missing; True when it was created now.

    `replication` copies of each partition; `min_insync_replicas` of them must hold an
    acks=all write before it is acknowledged (unset: the broker's default). Production runs
    3 and 2, so one broker can be lost without refusing or losing a write (docs/operations.md).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic in await admin.list_topics():
            return False
        configs = {"retention.ms": "-1"}
        if min_insync_replicas is not None:
            configs["min.insync.replicas"] = str(min_insync_replicas)
        new = NewTopic(
            name=topic,
            num_partitions=partitions,
            replication_factor=replication,
            topic_configs=configs,
        )
        response = await admin.create_topics([new])
        for _, code, *rest in response.topic_errors:
            if code == TopicAlreadyExistsError.errno:
                return False
            if code != 0:
                # Some brokers refuse retention configs; the topic still matters more.
                log.warning("topic_create_with_config_failed", topic=topic, code=code, detail=rest)
                plain = NewTopic(
                    name=topic, num_partitions=partitions, replication_factor=replication
                )
                retry = await admin.create_topics([plain])
                code = int(retry.topic_errors[0][1])
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise RuntimeError(f"cannot create topic {topic}: error code {code}")
                return bool(code == 0)
        log.info(
            "topic_created",
            topic=topic,
            partitions=partitions,
            replication=replication,
            min_insync_replicas=min_insync_replicas,
        )
        return True
    finally:
        await admin.close()


async def cluster_identity(bootstrap: str) -> str:
    """The broker cluster's id: a lost or fresh log comes back under another id."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        info: dict[str, object] = await admin.describe_cluster()
        return str(info.get("cluster_id") or "unknown")
    finally:
        await admin.close()


async def kafka_ready(bootstrap: str, timeout: float = 5.0) -> bool:
    """A real metadata round trip to the broker."""
    try:
        await asyncio.wait_for(cluster_identity(bootstrap), timeout)
    except (KafkaError, TimeoutError, OSError):
        return False
    return True
