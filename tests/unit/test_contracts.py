"""The checked-in contracts match the code: OpenAPI, event JSON Schemas, AsyncAPI channel."""

from __future__ import annotations

import json
from pathlib import Path

from tierline.domain.events import EVENT_CLASSES, ISSUE_EVENT_CLASSES
from tierline.schemagen import generated_files

ROOT = Path(__file__).resolve().parents[2] / "schemas"


def test_generated_files_are_checked_in_and_current() -> None:
    files = generated_files()
    stale = [
        rel
        for rel, text in files.items()
        if not (ROOT / rel).exists() or (ROOT / rel).read_text() != text
    ]
    assert not stale, f"run `make schemas`: {stale} drifted from the code"
    extra = {p.name for p in (ROOT / "events").glob("*.json")} - {
        rel.split("/", 1)[1] for rel in files if rel.startswith("events/")
    }
    assert not extra, f"schemas for event types that no longer exist: {extra}"


def test_event_type_names_follow_the_contract() -> None:
    names = {cls.name for cls in ISSUE_EVENT_CLASSES}
    assert names == {
        "opened",
        "acknowledged",
        "assigned",
        "commented",
        "priority_changed",
        "escalated",
        "deescalated",
        "put_on_hold",
        "resumed",
        "resolved",
        "reopened",
        "closed",
        "sla_warning",
        "sla_breached",
    }
    for event_type in EVENT_CLASSES:
        assert event_type.startswith("io.tierline.") and event_type.endswith(".v1")
    escalated = json.loads((ROOT / "events" / "io.tierline.issue.escalated.v1.json").read_text())
    assert {"from_tier", "to_tier", "reason", "automatic"} <= escalated["properties"].keys()


def test_openapi_covers_the_command_api() -> None:
    doc = json.loads((ROOT / "openapi.json").read_text())
    assert doc["openapi"] == "3.1.0"
    for command in (
        "acknowledge",
        "assign",
        "comments",
        "priority",
        "escalate",
        "deescalate",
        "hold",
        "resume",
        "resolve",
        "reopen",
        "close",
    ):
        op = doc["paths"][f"/v1/issues/{{issue_id}}/{command}"]["post"]
        assert {"200", "409", "412", "422"} <= op["responses"].keys()
    assert "/v1/api-keys/{key_id}" in doc["paths"]
