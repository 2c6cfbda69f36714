"""The log consumer's handler: one delivery row per matching (event, subscription)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import replace

import asyncpg
import structlog

from tierline.domain.events import Opened
from tierline.eventlog.cloudevents import LogEvent, origin_of, structured
from tierline.webhooks import metrics
from tierline.webhooks.deliveries import EventBody, fan_out

log = structlog.get_logger(__name__)

CONSUMER_NAME = "webhooks"
OPENED_TYPE = Opened.event_type()


def event_body(event: LogEvent) -> EventBody:
    """The structured CloudEvent a subscriber receives for a log event."""
    document = structured(
        event.event_id,
        event.stream_id,
        event.version,
        event.type,
        event.time,
        event.data,
        event.vendor_id,
        origin_of(event.inbound_source, event.inbound_delivery),
    )
    if event.traceparent:
        # CloudEvents distributed-tracing extension: the receiver can join the trace.
        document["traceparent"] = event.traceparent
    body = json.dumps(document, separators=(",", ":"))
    return EventBody(
        uuid.UUID(event.event_id),
        event.stream_id,
        event.version,
        event.type,
        event.time,
        body,
        event.vendor_id,
    )


def with_vendors(events: Sequence[LogEvent]) -> list[LogEvent]:
    """The events, those without `vendorid` given their issue's vendor when the batch shows it.

    Only records published before the attribute existed lack it (the relay sets it on every
    issue event, refills included); an `opened` event names its vendor in its data. What stays
    unknown matches only subscriptions bound to no vendor: never another vendor's.
    """
    known = {e.stream_id: e.vendor_id for e in events if e.vendor_id is not None}
    for e in events:
        if e.type == OPENED_TYPE and isinstance(e.data.get("vendor_id"), str):
            known.setdefault(e.stream_id, e.data["vendor_id"])
    return [
        e
        if e.vendor_id is not None or e.stream_id not in known
        else replace(e, vendor_id=known[e.stream_id])
        for e in events
    ]


class DeliveryFanout:
    """A `BatchHandler`: queues deliveries in the same transaction as the consumer's offsets."""

    async def apply(self, conn: asyncpg.Connection, events: Sequence[LogEvent]) -> None:
        """Insert the deliveries the batch owes; replays insert nothing twice."""
        created = await fan_out(conn, [event_body(e) for e in with_vendors(events)])
        if created:
            metrics.DELIVERIES_CREATED.inc(created)
            log.debug("webhook_deliveries_queued", events=len(events), deliveries=created)
