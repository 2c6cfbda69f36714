"""Signatures verify with the Standard Webhooks reference library, not with our own code."""

from __future__ import annotations

import base64
import json
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tierline.webhooks.signing import new_secret, secret_key, webhook_headers

BODY = json.dumps({"specversion": "1.0", "id": "evt-1", "data": {"ü": "x"}}).encode()


def test_secret_is_whsec_and_random() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_")
    assert 24 <= len(base64.b64decode(first.removeprefix("whsec_"))) <= 64
    assert first != second
    assert secret_key(first) == base64.b64decode(first.removeprefix("whsec_"))


def test_reference_library_verifies_our_signature() -> None:
    secret = new_secret()
    headers = webhook_headers([secret], "evt-1", int(time.time()), BODY)
    assert headers["webhook-id"] == "evt-1"
    assert headers["Content-Type"] == "application/cloudevents+json"
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_tampering_and_wrong_secret_fail_verification() -> None:
    secret = new_secret()
    headers = webhook_headers([secret], "evt-1", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"x", b"y"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "evt-2"})


def test_rotation_overlap_signs_with_both_secrets() -> None:
    old, new = new_secret(), new_secret()
    headers = webhook_headers([new, old], "evt-1", int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(BODY, headers)
    Webhook(new).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)
