"""CloudEvents 1.0: Kafka binary mode for the log, structured JSON for HTTP and webhooks.

Besides the core attributes, issue events carry the `vendorid` extension attribute: the vendor
the issue belongs to, on every event of the issue, so consumers route and schedule from the log
alone (ADR 0009). Governance events belong to no vendor and omit it. Events that an inbound
webhook caused also carry `inboundsource` (the inbound source's id) and `inbounddelivery` (the
tool's delivery id): their provenance (ADR 0012). Every other event omits both.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from tierline.store.event_store import StoredEvent

SPEC_VERSION = "1.0"
SOURCE = "/tierline"
CONTENT_TYPE = "application/json"
# CloudEvents extension names are lowercase alphanumeric; the Kafka binding prefixes `ce_`.
VENDOR_ATTRIBUTE = "vendorid"
VENDOR_HEADER = f"ce_{VENDOR_ATTRIBUTE}"
SOURCE_ATTRIBUTE = "inboundsource"
DELIVERY_ATTRIBUTE = "inbounddelivery"
SOURCE_HEADER = f"ce_{SOURCE_ATTRIBUTE}"
DELIVERY_HEADER = f"ce_{DELIVERY_ATTRIBUTE}"


@dataclass(frozen=True)
class LogEvent:
    """An event as a consumer reads it from the log."""

    event_id: str
    stream_id: str
    version: int
    type: str
    time: datetime
    data: dict[str, Any]
    traceparent: str | None = None
    # None on governance events, and on issue events published before the attribute existed.
    vendor_id: str | None = None
    inbound_source: str | None = None
    inbound_delivery: str | None = None


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def to_kafka_record(event: StoredEvent) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers of the binary-mode Kafka message for a stored event."""
    headers = [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", str(event.event_id).encode()),
        ("ce_source", SOURCE.encode()),
        ("ce_type", event.type.encode()),
        ("ce_subject", event.stream_id.encode()),
        ("ce_time", _iso(event.time).encode()),
        ("ce_sequence", str(event.version).encode()),
        ("content-type", CONTENT_TYPE.encode()),
    ]
    if event.vendor_id is not None:
        headers.append((VENDOR_HEADER, event.vendor_id.encode()))
    if event.inbound_source is not None and event.inbound_delivery is not None:
        headers.append((SOURCE_HEADER, event.inbound_source.encode()))
        headers.append((DELIVERY_HEADER, event.inbound_delivery.encode()))
    if event.traceparent:
        headers.append(("traceparent", event.traceparent.encode()))
    return event.stream_id.encode(), event.data_json.encode(), headers


def from_kafka_record(value: bytes, headers: list[tuple[str, bytes]]) -> LogEvent:
    """Decode a binary-mode message; ValueError when a required attribute is missing."""
    attrs = {k: v.decode() for k, v in headers}
    try:
        return LogEvent(
            event_id=attrs["ce_id"],
            stream_id=attrs["ce_subject"],
            version=int(attrs["ce_sequence"]),
            type=attrs["ce_type"],
            time=datetime.fromisoformat(attrs["ce_time"].replace("Z", "+00:00")),
            data=orjson.loads(value),
            traceparent=attrs.get("traceparent"),
            vendor_id=attrs.get(VENDOR_HEADER),
            inbound_source=attrs.get(SOURCE_HEADER),
            inbound_delivery=attrs.get(DELIVERY_HEADER),
        )
    except (KeyError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not a Tierline CloudEvent: {exc}") from exc


def structured(
    event_id: uuid.UUID | str,
    stream_id: str,
    version: int,
    event_type: str,
    time: datetime,
    data: Any,
    vendor_id: str | None = None,
    origin: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The structured-mode JSON form (`application/cloudevents+json`).

    `origin` is the inbound source id and delivery id of an event an inbound webhook caused.
    """
    document: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": str(event_id),
        "source": SOURCE,
        "type": event_type,
        "subject": stream_id,
        "time": _iso(time),
        "sequence": str(version),
        "datacontenttype": CONTENT_TYPE,
    }
    if vendor_id is not None:
        document[VENDOR_ATTRIBUTE] = vendor_id
    if origin is not None:
        document[SOURCE_ATTRIBUTE], document[DELIVERY_ATTRIBUTE] = origin
    document["data"] = data
    return document


def stored_to_structured(event: StoredEvent) -> dict[str, Any]:
    """A stored event in structured form."""
    return structured(
        event.event_id,
        event.stream_id,
        event.version,
        event.type,
        event.time,
        json.loads(event.data_json),
        event.vendor_id,
        origin_of(event.inbound_source, event.inbound_delivery),
    )


def origin_of(source: str | None, delivery: str | None) -> tuple[str, str] | None:
    """The (source, delivery) pair of an event's provenance, when it has one."""
    return None if source is None or delivery is None else (source, delivery)
