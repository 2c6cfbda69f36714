"""The body a subscriber receives for a log event."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from tierline.eventlog.cloudevents import LogEvent
from tierline.webhooks.fanout import event_body

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def log_event(traceparent: str | None = None) -> LogEvent:
    return LogEvent(
        event_id=str(uuid.uuid4()),
        stream_id="issue-1",
        version=3,
        type="io.tierline.issue.escalated.v1",
        time=datetime(2026, 11, 28, 12, 0, 1, 250000, tzinfo=UTC),
        data={"from_tier": 1, "to_tier": 2, "reason": "late", "automatic": True},
        traceparent=traceparent,
    )


def test_body_is_the_structured_cloudevent() -> None:
    event = log_event()
    body = event_body(event)
    document = json.loads(body.body)
    assert document == {
        "specversion": "1.0",
        "id": event.event_id,
        "source": "/tierline",
        "type": "io.tierline.issue.escalated.v1",
        "subject": "issue-1",
        "time": "2026-11-28T12:00:01.250000Z",
        "sequence": "3",
        "datacontenttype": "application/json",
        "data": event.data,
    }
    assert (body.event_id, body.stream_id, body.version) == (
        uuid.UUID(event.event_id),
        "issue-1",
        3,
    )
    assert body.body.isascii(), "the signed bytes do not depend on an encoding choice"


def test_trace_context_travels_as_the_distributed_tracing_extension() -> None:
    document = json.loads(event_body(log_event(TRACEPARENT)).body)
    assert document["traceparent"] == TRACEPARENT
