"""The log consumer's handler: one delivery row per matching (event, subscription)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

import asyncpg
import structlog

from tierline.eventlog.cloudevents import LogEvent, structured
from tierline.webhooks import metrics
from tierline.webhooks.deliveries import EventBody, fan_out

log = structlog.get_logger(__name__)

CONSUMER_NAME = "webhooks"


def event_body(event: LogEvent) -> EventBody:
    """The structured CloudEvent a subscriber receives for a log event."""
    document = structured(
        event.event_id, event.stream_id, event.version, event.type, event.time, event.data
    )
    if event.traceparent:
        # CloudEvents distributed-tracing extension: the receiver can join the trace.
        document["traceparent"] = event.traceparent
    body = json.dumps(document, separators=(",", ":"))
    return EventBody(
        uuid.UUID(event.event_id), event.stream_id, event.version, event.type, event.time, body
    )


class DeliveryFanout:
    """A `BatchHandler`: queues deliveries in the same transaction as the consumer's offsets."""

    async def apply(self, conn: asyncpg.Connection, events: Sequence[LogEvent]) -> None:
        """Insert the deliveries the batch owes; replays insert nothing twice."""
        created = await fan_out(conn, [event_body(e) for e in events])
        if created:
            metrics.DELIVERIES_CREATED.inc(created)
            log.debug("webhook_deliveries_queued", events=len(events), deliveries=created)
