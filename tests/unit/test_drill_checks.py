"""The drill's own checks fail when what they guard is broken (the drill is only as good as them).

The database-bound invariants run against real PostgreSQL in the short drill
(tests/e2e/test_drill_short.py); here the parts that judge what the load and the webhook
receiver saw are fed violations directly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import Counter
from typing import Any

import pytest
from bench.drill_checks import check_no_5xx_but_503, check_webhooks
from bench.drill_load import Accepted, Load, LoadStats, WebhookReceiver
from multidict import CIMultiDict

SECRET = b"drill-secret-0123456789abcdef"
EVENT = "0b7c0c2e-5a0e-4f6e-9a52-9f3f6d1d2a11"


def signed(webhook_id: str, body: bytes, secret: bytes = SECRET) -> CIMultiDict[str]:
    stamp = "1700000000"
    mac = hmac.new(secret, f"{webhook_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return CIMultiDict(
        {
            "webhook-id": webhook_id,
            "webhook-timestamp": stamp,
            "webhook-signature": f"v1,{base64.b64encode(mac).decode()}",
        }
    )


def test_the_receiver_accepts_only_the_subscription_secret() -> None:
    receiver = WebhookReceiver()
    receiver.secrets["all"] = SECRET
    body = b'{"id": "x"}'
    assert receiver._verify("all", signed("msg_1", body), body)
    assert not receiver._verify("all", signed("msg_1", body, b"another-secret"), body)
    assert not receiver._verify("all", signed("msg_1", body), body + b" ")
    assert not receiver._verify("other", signed("msg_1", body), body)


def test_a_5xx_other_than_503_fails_the_run() -> None:
    load = Load(["http://127.0.0.1:9"], "key")
    load.stats.attempts = Counter({"200": 10, "503": 4})
    assert check_no_5xx_but_503(load).passed
    load.stats.attempts["500"] = 1
    assert not check_no_5xx_but_503(load).passed


def test_the_longest_write_gap_counts_the_edges() -> None:
    stats = LoadStats(accepted=[Accepted("i", 1, 12.0), Accepted("i", 2, 13.0)])
    assert stats.longest_gap(10.0, 20.0) == pytest.approx(7.0)
    assert LoadStats().longest_gap(10.0, 20.0) == pytest.approx(10.0)


class OwedRows:
    """Stands in for the pool: what the event store says each subscription is owed."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    async def fetch(self, *_: object) -> list[dict[str, Any]]:
        return self.rows


@pytest.mark.parametrize(
    ("received", "passes"),
    [
        ({("all", EVENT): [EVENT, EVENT]}, True),  # at least once, one id: fine
        ({}, False),  # never delivered
        ({("all", EVENT): [EVENT, "another-id"]}, False),  # redelivered under another id
    ],
)
async def test_each_owed_event_must_arrive_under_one_webhook_id(
    received: dict[tuple[str, str], list[str]], passes: bool
) -> None:
    receiver = WebhookReceiver()
    receiver.received.update(received)
    load = Load(["http://127.0.0.1:9"], "key")
    load.subscription_ids = {"all": "sub-all", "acme-escalations": "sub-acme"}
    owed = OwedRows(
        [
            {"subscription": "sub-all", "event_id": EVENT},
            {"subscription": "sub-acme", "event_id": EVENT},
        ]
    )
    receiver.received[("acme-escalations", EVENT)] = [EVENT]
    check = await check_webhooks(owed, receiver, load)  # type: ignore[arg-type]
    assert check.passed is passes, check.detail
