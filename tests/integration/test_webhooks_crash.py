"""The webhooks role is SIGKILLed with attempts in flight: no event is lost, and what arrives
twice arrives as the same `webhook-id` with the same body."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from tests.fixtures.api import add_vendor
from tests.fixtures.stack import TEST_SECRET_KEY, running_stack, stack_settings
from tests.integration.test_webhooks import (
    eventually,
    open_issue,
    receiver_running,
    subscribe,
)
from tierline.devstack.process import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

DELIVERED_BEFORE_KILL = 6
EVENTS_BEFORE_KILL = 24
EVENTS_WHILE_DOWN = 8
EXPECTED_EVENTS = """
SELECT event_id::text FROM events WHERE stream_type = 'issue'
"""
LIVE_LEASES = """
SELECT count(*) FROM webhook_deliveries WHERE lease_token IS NOT NULL AND next_attempt_at > now()
"""
DELIVERY_STATE = """
SELECT count(*), count(DISTINCT event_id), count(*) FILTER (WHERE status = 'delivered')
FROM webhook_deliveries
"""


class WebhooksProcess:
    """`tierline webhooks` as a real child process."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._env = env
        self._log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self._log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tierline.cli", "webhooks"],
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL: no cleanup, no LeaveGroup, leases left behind."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def role_env(database_url: str, tansu: str, topic: str) -> Iterator[dict[str, str]]:
    """Environment for a webhooks process on this test's database and topic."""
    yield {
        **os.environ,
        "TIERLINE_DATABASE_URL": database_url,
        "TIERLINE_KAFKA_BOOTSTRAP": tansu,
        "TIERLINE_KAFKA_TOPIC": topic,
        "TIERLINE_KAFKA_PARTITIONS": "4",
        "TIERLINE_KAFKA_IDEMPOTENCE": "false",
        "TIERLINE_WEBHOOKS_ALLOW_PRIVATE_TARGETS": "true",
        "TIERLINE_WEBHOOKS_TIMEOUT": "1",
        "TIERLINE_WEBHOOKS_RETRY_SCHEDULE": "0.2,0.2,0.2,0.2",
        "TIERLINE_CONSUMER_BATCH_SIZE": "5",
        "TIERLINE_LOG_LEVEL": "INFO",
        "TIERLINE_SECRET_KEY": TEST_SECRET_KEY,
        "TIERLINE_METRICS_PORT": str(free_port()),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }


async def test_killed_dispatcher_loses_nothing(
    database_url: str, tansu: str, topic: str, role_env: dict[str, str], tmp_path: Path
) -> None:
    settings = stack_settings(database_url, tansu, topic, webhooks_allow_private_targets=True)
    first = WebhooksProcess(role_env, tmp_path / "first.log")
    second = WebhooksProcess(role_env, tmp_path / "second.log")
    async with receiver_running() as receiver, running_stack(settings, ["api", "relay"]) as stack:
        frozen = asyncio.Event()

        async def answer(request: web.Request) -> web.StreamResponse:
            # After a few deliveries every request hangs: the kill lands mid-attempt.
            if receiver.count("crash") > DELIVERED_BEFORE_KILL:
                frozen.set()
                await receiver.released.wait()
            return web.Response(status=204)

        receiver.script("crash", *[answer] * 1000)
        try:
            async with stack.client() as http:
                vendor = await add_vendor(http)
                hook = await subscribe(http, receiver.url("crash"), vendor_id=vendor)
                first.start()
                await asyncio.gather(*(open_issue(http, vendor) for _ in range(EVENTS_BEFORE_KILL)))
                await asyncio.wait_for(frozen.wait(), 60)
                await eventually(lambda: receiver.in_flight["crash"] >= 2, "attempts in flight")
                first.kill()
                # No other sender ran, so a live lease now is one the killed process held when it
                # died (a SIGKILL hands nothing back; leases outlive an attempt by seconds).
                assert await _live_leases(database_url) >= 1, "killed holding no lease"
                receiver.scripts["crash"] = []
                await asyncio.gather(*(open_issue(http, vendor) for _ in range(EVENTS_WHILE_DOWN)))
                second.start()

                expected = await _expected_event_ids(database_url)
                assert len(expected) == EVENTS_BEFORE_KILL + EVENTS_WHILE_DOWN
                await eventually(
                    lambda: set(receiver.ids("crash")) >= expected, "every event delivered"
                )
                await eventually_all_delivered(database_url, len(expected))
                metrics = await scrape(role_env["TIERLINE_METRICS_PORT"])
        finally:
            first.stop()
            second.stop()
            receiver.released.set()

    receipts = receiver.received["crash"]
    assert set(receiver.ids("crash")) == expected
    bodies: dict[str, bytes] = {}
    for receipt in receipts:
        event = receipt.verify(hook["secret"])
        assert event["id"] == receipt.webhook_id
        assert bodies.setdefault(receipt.webhook_id, receipt.body) == receipt.body
    repeated = {i: n for i, n in Counter(receiver.ids("crash")).items() if n > 1}
    assert repeated, "the attempts cut off by the kill are sent again"
    assert metrics['tierline_webhook_attempts_total{outcome="delivered"}'] >= len(repeated)
    assert "tierline_webhook_queue_depth" in metrics


async def scrape(port: str) -> dict[str, float]:
    """The role's Prometheus samples by name and labels."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def _live_leases(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(LIVE_LEASES))
    finally:
        await conn.close()


async def _expected_event_ids(database_url: str) -> set[str]:
    conn = await asyncpg.connect(database_url)
    try:
        return {row[0] for row in await conn.fetch(EXPECTED_EVENTS)}
    finally:
        await conn.close()


async def eventually_all_delivered(database_url: str, count: int) -> None:
    """One delivery row per event, each recorded as delivered."""
    conn = await asyncpg.connect(database_url)
    try:
        state: list[int] = []

        async def check() -> bool:
            row = await conn.fetchrow(DELIVERY_STATE)
            assert row is not None
            state[:] = list(row)
            return state == [count, count, count]

        for _ in range(600):
            if await check():
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"deliveries (rows, distinct events, delivered) = {state}, want {count}")
    finally:
        await conn.close()
