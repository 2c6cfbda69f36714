"""The event envelope names the issue's vendor; log consumers never look it up (ADR 0009)."""

from __future__ import annotations

import ast
import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

from tierline.eventlog.cloudevents import (
    VENDOR_HEADER,
    LogEvent,
    from_kafka_record,
    stored_to_structured,
    to_kafka_record,
)
from tierline.store.event_store import StoredEvent
from tierline.webhooks.fanout import event_body, with_vendors

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "tierline"
# The log consumers and the modules their handlers run (eventlog/consumer.py is the loop).
CONSUMER_MODULES = [
    PACKAGE / "eventlog" / "consumer.py",
    PACKAGE / "sla" / "clock_table.py",
    PACKAGE / "sla" / "scanner.py",
    *sorted((PACKAGE / "webhooks").glob("*.py")),
    *sorted((PACKAGE / "projector").glob("*.py")),
]
READS_STREAMS = re.compile(r"\b(from|join|update|into)\s+(public\.)?streams\b", re.IGNORECASE)


def stored(vendor_id: str | None, stream_id: str = "iss-1") -> StoredEvent:
    return StoredEvent(
        event_id=uuid.uuid4(),
        stream_id=stream_id,
        version=2,
        type="io.tierline.issue.commented.v1",
        time=datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
        data_json='{"body": "hi"}',
        traceparent=None,
        vendor_id=vendor_id,
    )


def test_the_binary_form_carries_the_vendor_as_the_vendorid_extension() -> None:
    _, value, headers = to_kafka_record(stored("acme"))
    assert (VENDOR_HEADER, b"acme") in headers
    assert VENDOR_HEADER == "ce_vendorid"
    assert from_kafka_record(value, headers).vendor_id == "acme"


def test_an_event_of_no_vendor_omits_the_attribute() -> None:
    _, value, headers = to_kafka_record(stored(None, "governance"))
    assert VENDOR_HEADER not in dict(headers)
    assert from_kafka_record(value, headers).vendor_id is None
    assert "vendorid" not in stored_to_structured(stored(None, "governance"))


def test_the_structured_form_carries_it_as_a_top_level_attribute() -> None:
    document = stored_to_structured(stored("acme"))
    assert document["vendorid"] == "acme"
    assert document["data"] == {"body": "hi"}


def log_event(
    stream_id: str, version: int, envelope_vendor: str | None, **data: object
) -> LogEvent:
    kind = "opened" if version == 1 else "commented"
    return LogEvent(
        event_id=str(uuid.uuid4()),
        stream_id=stream_id,
        version=version,
        type=f"io.tierline.issue.{kind}.v1",
        time=datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
        data=dict(data),
        vendor_id=envelope_vendor,
    )


def test_webhook_bodies_carry_the_vendor() -> None:
    body = event_body(log_event("iss-1", 2, "acme", body="hi"))
    assert body.vendor_id == "acme"
    assert json.loads(body.body)["vendorid"] == "acme"


def test_records_from_before_the_attribute_take_the_vendor_their_batch_shows() -> None:
    old = [
        log_event("iss-1", 1, None, vendor_id="acme", title="t"),
        log_event("iss-1", 2, None, body="hi"),
        log_event("iss-2", 5, None, body="no opened event in this batch"),
    ]
    resolved = with_vendors(old)
    assert [e.vendor_id for e in resolved] == ["acme", "acme", None]


def sql_strings(path: Path) -> list[str]:
    """Every string literal of a module (its SQL lives in constants)."""
    tree = ast.parse(path.read_text())
    return [
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def test_no_log_consumer_reads_the_write_sides_streams_table() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}: {match.group(0)!r}"
        for path in CONSUMER_MODULES
        for text in sql_strings(path)
        for match in [READS_STREAMS.search(text)]
        if match is not None
    ]
    assert not offenders, offenders


def test_the_check_would_see_a_lookup() -> None:
    assert READS_STREAMS.search("LEFT JOIN streams st ON st.stream_id = e.stream_id")
    assert READS_STREAMS.search("SELECT vendor_id FROM streams WHERE stream_id = $1")
    assert not READS_STREAMS.search("INSERT INTO consumer_stream_versions (consumer)")


def test_inbound_provenance_rides_as_two_extension_attributes() -> None:
    event = replace_origin(stored("acme"), "5f1c0a2e-0000-4000-8000-000000000001", "jira-77")
    _, value, headers = to_kafka_record(event)
    assert ("ce_inboundsource", b"5f1c0a2e-0000-4000-8000-000000000001") in headers
    assert ("ce_inbounddelivery", b"jira-77") in headers
    decoded = from_kafka_record(value, headers)
    assert (decoded.inbound_source, decoded.inbound_delivery) == (
        "5f1c0a2e-0000-4000-8000-000000000001",
        "jira-77",
    )
    document = stored_to_structured(event)
    assert document["inboundsource"] == "5f1c0a2e-0000-4000-8000-000000000001"
    assert document["inbounddelivery"] == "jira-77"
    assert json.loads(event_body(decoded).body)["inbounddelivery"] == "jira-77"
    # Events from the API carry neither attribute.
    _, _, plain = to_kafka_record(stored("acme"))
    assert not {"ce_inboundsource", "ce_inbounddelivery"} & dict(plain).keys()
    assert "inboundsource" not in stored_to_structured(stored("acme"))


def replace_origin(event: StoredEvent, source: str, delivery: str) -> StoredEvent:
    from dataclasses import replace

    return replace(event, inbound_source=source, inbound_delivery=delivery)
