"""One attempt against a real loopback receiver: the send-time guard, redirects, Retry-After."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from standardwebhooks.webhooks import Webhook

from tests.integration.test_webhooks import Receiver, receiver_running
from tierline.webhooks.deliveries import Claimed
from tierline.webhooks.sender import Sender, SenderConfig
from tierline.webhooks.signing import new_secret

SECRET = new_secret()


class LoopbackResolver(AbstractResolver):
    """Every name resolves to 127.0.0.1, as a DNS rebinding attack would arrange."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0, flags=0
            )
        ]

    async def close(self) -> None:
        return None


def delivery(url: str, failures: int = 0) -> Claimed:
    event_id = uuid.uuid4()
    body = f'{{"specversion":"1.0","id":"{event_id}","data":{{}}}}'
    return Claimed(
        id=uuid.uuid4(),
        lease_token=uuid.uuid4(),
        subscription_id=uuid.uuid4(),
        event_id=event_id,
        failures=failures,
        url=url,
        secret=SECRET,
        previous_secret=None,
        body=body,
        event_time=datetime.now(UTC),
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiver_running() as running:
        yield running


def sender(**config: Any) -> Sender:
    """A sender used only for single attempts (no database)."""
    return Sender(
        cast(asyncpg.Pool, None),
        "",
        SenderConfig(retry_schedule=(5.0, 60.0), **config),
        resolver=LoopbackResolver(),
        draw=lambda: 0.5,
    )


async def test_a_name_resolving_to_loopback_is_refused_at_send_time(receiver: Receiver) -> None:
    guarded = sender(allow_private=False)
    async with guarded.http_client():
        named = await guarded.send(delivery(f"http://rebound.example.com:{receiver.port}/x"))
        literal = await guarded.send(delivery(receiver.url("x")))
    for result in (named, literal):
        assert result.status_code is None
        assert result.error is not None and result.error.startswith("target refused")
        assert (result.status, result.outcome) == ("failed", "retry")
    assert receiver.count("x") == 0


async def test_success_is_signed_and_redirects_are_not_followed(receiver: Receiver) -> None:
    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(receiver.url("elsewhere"))

    receiver.script("moved", redirect)
    trusting = sender(allow_private=True)
    async with trusting.http_client():
        ok = await trusting.send(delivery(receiver.url("ok")))
        moved = await trusting.send(delivery(receiver.url("moved")))
    assert (ok.status, ok.status_code, ok.error) == ("delivered", 200, None)
    (receipt,) = receiver.received["ok"]
    assert Webhook(SECRET).verify(receipt.body, receipt.headers)["id"] == receipt.webhook_id
    assert receipt.headers["User-Agent"].startswith("Tierline-Webhooks/")
    assert (moved.status, moved.status_code) == ("failed", 302)
    assert receiver.count("elsewhere") == 0


async def test_retry_after_and_schedule_shape_the_next_attempt(receiver: Receiver) -> None:
    async def busy(request: web.Request) -> web.StreamResponse:
        return web.Response(status=429, headers={"Retry-After": "120"})

    receiver.script("busy", busy)
    receiver.script("down", web_status(500))
    trusting = sender(allow_private=True)
    async with trusting.http_client():
        limited = await trusting.send(delivery(receiver.url("busy")))
        last = await trusting.send(delivery(receiver.url("down"), failures=2))
    assert (limited.outcome, limited.delay) == ("retry", 120.0)
    assert (last.status, last.outcome, last.delay, last.status_code) == ("dead", "dead", None, 500)


def web_status(code: int) -> Any:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code)

    return answer
