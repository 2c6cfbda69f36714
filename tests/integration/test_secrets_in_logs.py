"""Keys and secrets never reach the logs: the api, relay and webhooks roles run as real
processes (structlog JSON on stderr, DEBUG) while a key is made, a webhook is created, rotated
and delivered (after a failed attempt); the captured logs are then searched for every secret."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.fixtures.api import add_vendor, call
from tests.fixtures.stack import TEST_SECRET_KEY
from tests.integration.test_webhooks import open_issue, receiver_running
from tierline.devstack.process import free_port
from tierline.store.api_keys import create_api_key
from tierline.store.pool import create_pool

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

ROLES = ("api", "relay", "webhooks")


@contextlib.contextmanager
def role_processes(env: dict[str, str], logs: Path) -> Iterator[None]:
    """Each role as `tierline <role>`, stderr and stdout to logs/<role>.log; SIGTERM on exit."""
    procs = []
    try:
        for role in ROLES:
            with open(logs / f"{role}.log", "wb") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "tierline.cli", role],
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def wait_healthy(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(400):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    pytest.fail("the API did not come up")


async def test_keys_and_secrets_never_appear_in_logs(
    database_url: str, tansu: str, topic: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TIERLINE_")},
        "TIERLINE_DATABASE_URL": database_url,
        "TIERLINE_KAFKA_BOOTSTRAP": tansu,
        "TIERLINE_KAFKA_TOPIC": topic,
        "TIERLINE_KAFKA_PARTITIONS": "4",
        "TIERLINE_KAFKA_IDEMPOTENCE": "false",
        "TIERLINE_API_PORT": str(port),
        "TIERLINE_METRICS_PORT": "0",
        "TIERLINE_RELAY_POLL_INTERVAL": "0.2",
        "TIERLINE_WEBHOOKS_ALLOW_PRIVATE_TARGETS": "true",
        "TIERLINE_WEBHOOKS_RETRY_SCHEDULE": "0.2,0.2",
        "TIERLINE_SECRET_KEY": TEST_SECRET_KEY,
        "TIERLINE_LOG_LEVEL": "DEBUG",
        "TIERLINE_LOG_FORMAT": "json",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        _, admin_key = await create_api_key(pool, name="logs-admin", role="admin")
    finally:
        await pool.close()
    api_url = f"http://127.0.0.1:{port}"
    async with receiver_running() as receiver:
        receiver.script("logged", 500)  # one failed attempt, logged, then success
        with role_processes(env, tmp_path):
            await wait_healthy(api_url)
            admin = {"Authorization": f"Bearer {admin_key}"}
            async with aiohttp.ClientSession(api_url, headers=admin) as http:
                vendor = await add_vendor(http)
                made = await call(
                    http, "POST", "/v1/api-keys", 201, {"name": "ci", "role": "integration"}
                )
            api_key = made["key"]
            keyed = {"Authorization": f"Bearer {api_key}"}
            async with aiohttp.ClientSession(api_url, headers=keyed) as http:
                body = {"url": receiver.url("logged"), "event_types": ["*"], "vendor_id": vendor}
                hook = await call(http, "POST", "/v1/webhooks", 201, body)
                rotated = await call(http, "POST", f"/v1/webhooks/{hook['id']}/rotate-secret", 200)
                await open_issue(http, vendor)
                receipts = await receiver.wait_for("logged", 2)
            receipts[-1].verify(rotated["secret"])
            receipts[-1].verify(hook["secret"])
    captured = {role: (tmp_path / f"{role}.log").read_text() for role in ROLES}
    events = set()
    for text in captured.values():
        for line in text.splitlines():
            if line.startswith("{"):
                events.add(json.loads(line).get("event"))
    # The logs were captured and cover what happened.
    assert {"webhook_subscription_created", "webhook_secret_rotated"} <= events
    assert "webhook_attempt_failed" in events
    secrets = {
        "admin API key": admin_key,
        "created API key": api_key,
        "webhook secret": hook["secret"],
        "rotated webhook secret": rotated["secret"],
        "TIERLINE_SECRET_KEY": TEST_SECRET_KEY,
    }
    for role, text in captured.items():
        assert "whsec_" not in text, role
        for what, value in secrets.items():
            assert value not in text, f"{what} in the {role} log"
            assert value.removeprefix("whsec_") not in text, f"{what} in the {role} log"
