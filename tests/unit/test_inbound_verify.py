"""Each tool's signature scheme, checked with hand-signed requests: good ones pass, any change to
body, signature, secret or (for Zendesk) time fails, and malformed headers fail rather than raise
anything else."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from tests.fixtures import inbound as tools
from tierline.inbound.verify import (
    ZENDESK_TOLERANCE_SECONDS,
    SourceType,
    Unverified,
    delivery_id,
    new_source_secret,
    timestamp_seconds,
    verify,
)

BODY = b'{"webhookEvent": "jira:issue_created", "issue": {"key": "GOV-1"}}'
Signer = Callable[[str, bytes], dict[str, str]]
SIGNERS: dict[SourceType, Signer] = {
    "jira": lambda secret, body: tools.jira_headers(secret, body, "d-1"),
    "github": lambda secret, body: tools.github_headers(secret, body, "issues", "d-1"),
    "zendesk": lambda secret, body: tools.zendesk_headers(secret, body),
    "generic": lambda secret, body: tools.generic_headers(secret, body, "d-1"),
}
SIGNATURE_HEADER = {
    "jira": "X-Hub-Signature",
    "github": "X-Hub-Signature-256",
    "zendesk": "X-Zendesk-Webhook-Signature",
    "generic": "webhook-signature",
}


@pytest.mark.parametrize("kind", sorted(SIGNERS))
def test_a_signed_body_verifies_with_the_current_or_the_previous_secret(kind: SourceType) -> None:
    secret, previous = new_source_secret(kind), new_source_secret(kind)
    headers = SIGNERS[kind](secret, BODY)
    verify(kind, [secret], headers, BODY, time.time())
    verify(kind, [previous, secret], headers, BODY, time.time())
    with pytest.raises(Unverified):
        verify(kind, [previous], headers, BODY, time.time())
    with pytest.raises(Unverified):
        verify(kind, [], headers, BODY, time.time())


@pytest.mark.parametrize("kind", sorted(SIGNERS))
def test_any_change_fails(kind: SourceType) -> None:
    secret = new_source_secret(kind)
    headers = SIGNERS[kind](secret, BODY)
    tampered = BODY.replace(b"GOV-1", b"GOV-2")
    with pytest.raises(Unverified):
        verify(kind, [secret], headers, tampered, time.time())
    name = SIGNATURE_HEADER[kind]
    for bad in ("", "sha256=", "v1,", "sha256=zz", "v1,!!!", "é", "x" * 5000, headers[name][:-2]):
        with pytest.raises(Unverified):
            verify(kind, [secret], {**headers, name: bad}, BODY, time.time())
    without = {k: v for k, v in headers.items() if k != name}
    with pytest.raises(Unverified):
        verify(kind, [secret], without, BODY, time.time())


def test_zendesk_refuses_timestamps_outside_the_window_either_way() -> None:
    secret = new_source_secret("zendesk")
    now = time.time()
    inside = ZENDESK_TOLERANCE_SECONDS - 30
    for at in (now - inside, now + inside):
        verify("zendesk", [secret], tools.zendesk_headers(secret, BODY, at), BODY, now)
    for at in (now - ZENDESK_TOLERANCE_SECONDS - 30, now + ZENDESK_TOLERANCE_SECONDS + 30):
        with pytest.raises(Unverified):
            verify("zendesk", [secret], tools.zendesk_headers(secret, BODY, at), BODY, now)
    # The timestamp is signed: moving it into the window breaks the signature.
    old = tools.zendesk_headers(secret, BODY, now - 3600)
    fresh = tools.zendesk_headers(secret, BODY, now)
    moved = {
        **old,
        "X-Zendesk-Webhook-Signature-Timestamp": fresh["X-Zendesk-Webhook-Signature-Timestamp"],
    }
    with pytest.raises(Unverified):
        verify("zendesk", [secret], moved, BODY, now)


def test_timestamps_are_read_as_rfc3339_or_seconds() -> None:
    ten = datetime(2026, 12, 1, 10, tzinfo=UTC).timestamp()
    assert timestamp_seconds("2026-12-01T10:00:00Z") == ten
    assert timestamp_seconds("2026-12-01T11:00:00+01:00") == ten
    assert timestamp_seconds(str(int(ten))) == ten
    assert timestamp_seconds("2026-12-01T10:00:00") is None  # no zone: refused
    assert timestamp_seconds("yesterday") is None
    assert timestamp_seconds("nan") is None and timestamp_seconds("inf") is None


def test_delivery_ids_come_from_the_tools_header_or_zendesk_event_id() -> None:
    assert delivery_id("jira", {"X-Atlassian-Webhook-Identifier": "abc"}, None, BODY) == "abc"
    assert delivery_id("github", {"X-GitHub-Delivery": "g-1"}, None, BODY) == "g-1"
    assert delivery_id("generic", {"webhook-id": "msg_1"}, None, BODY) == "msg_1"
    zendesk = {"X-Zendesk-Webhook-Invocation-Id": "inv-9"}
    assert delivery_id("zendesk", zendesk, "ev-1", BODY) == "ev-1"
    assert delivery_id("zendesk", zendesk, None, BODY) == "inv-9"
    # Without an id, the body's hash: identical retries count once, different bodies do not.
    assert delivery_id("jira", {}, None, BODY) == delivery_id("jira", {}, None, BODY)
    assert delivery_id("jira", {}, None, BODY) != delivery_id("jira", {}, None, BODY + b" ")
    assert (
        len(delivery_id("jira", {"X-Atlassian-Webhook-Identifier": "x" * 999}, None, BODY)) == 200
    )


def test_generated_secrets_fit_each_tool() -> None:
    assert new_source_secret("generic").startswith("whsec_")
    assert len(new_source_secret("jira")) >= 40
    assert new_source_secret("github") != new_source_secret("github")
