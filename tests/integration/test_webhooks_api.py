"""The webhook API's target checks and validation, with a stub resolver (no traffic is sent)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.fixtures.stack import TEST_SECRET_KEY
from tierline import secretbox
from tierline.api.app import create_app
from tierline.config import Settings
from tierline.store.api_keys import create_api_key
from tierline.store.pool import create_pool
from tierline.webhooks.api import RESOLVER

pytestmark = pytest.mark.postgres

NAMES = {
    "hooks.example.com": ["93.184.216.34"],
    "internal.example.com": ["10.1.2.3"],
    "rebind.example.com": ["93.184.216.34", "127.0.0.1"],
}


async def stub_resolver(host: str, port: int) -> list[str]:
    if host not in NAMES:
        raise socket.gaierror(socket.EAI_NONAME, "unknown")
    return NAMES[host]


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    """The API app (private targets not allowed) with the stub resolver and an admin key."""
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        _, key = await create_api_key(pool, name="admin", role="admin")
    finally:
        await pool.close()
    settings = Settings(
        database_url=database_url,
        webhooks_allow_private_targets=False,
        secret_key=TEST_SECRET_KEY,
    )
    # run_roles installs the box for the role; this app is built without it.
    secretbox.install(secretbox.SecretBox.from_setting(settings.secret_key))
    app = create_app(settings)
    app[RESOLVER] = stub_resolver
    async with TestClient(TestServer(app)) as test_client:
        test_client.session.headers["Authorization"] = f"Bearer {key}"
        yield test_client


REFUSED = [
    "http://internal.example.com/hook",
    "https://rebind.example.com/hook",
    "http://127.0.0.1:8080/hook",
    "http://[::1]/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://10.0.0.7/",
    "https://unknown.example.com/hook",
    "ftp://hooks.example.com/hook",
]


async def test_private_and_odd_targets_are_refused_with_422(client: TestClient[Any, Any]) -> None:
    for url in REFUSED:
        resp = await client.post("/v1/webhooks", json={"url": url, "event_types": ["*"]})
        problem = await resp.json()
        assert resp.status == 422, (url, problem)
        assert resp.content_type == "application/problem+json"
        assert problem["type"].endswith("/webhook-target-not-allowed")
        assert problem["errors"][0]["pointer"] == "#/url"
    assert (await (await client.get("/v1/webhooks")).json())["items"] == []


async def test_public_target_is_accepted_and_changes_are_checked_again(
    client: TestClient[Any, Any],
) -> None:
    resp = await client.post(
        "/v1/webhooks",
        json={"url": "https://hooks.example.com/tierline", "event_types": ["*"]},
        headers={"Idempotency-Key": "create-1"},
    )
    created = await resp.json()
    assert resp.status == 201, created
    assert created["secret"].startswith("whsec_")
    assert resp.headers["Location"] == f"/v1/webhooks/{created['id']}"

    again = await client.post(
        "/v1/webhooks",
        json={"url": "https://hooks.example.com/tierline", "event_types": ["*"]},
        headers={"Idempotency-Key": "create-1"},
    )
    assert again.status == 201
    assert (await again.json())["id"] == created["id"], "a retried create returns the first"
    listed = await (await client.get("/v1/webhooks")).json()
    assert len(listed["items"]) == 1

    patch = await client.patch(
        f"/v1/webhooks/{created['id']}", json={"url": "http://internal.example.com/x"}
    )
    assert patch.status == 422
    patch = await client.patch(
        f"/v1/webhooks/{created['id']}",
        json={"event_types": ["io.tierline.issue.escalated.v1"], "description": "escalations"},
    )
    changed = await patch.json()
    assert patch.status == 200, changed
    assert changed["event_types"] == ["io.tierline.issue.escalated.v1"]
    assert changed["url"] == "https://hooks.example.com/tierline"
    assert changed["secret"] is None


INVALID = [
    {"url": "https://hooks.example.com/", "event_types": []},
    {"url": "https://hooks.example.com/", "event_types": ["io.tierline.issue.exploded.v1"]},
    {"url": "https://hooks.example.com/", "event_types": ["*"], "secret": "mine"},
    {"event_types": ["*"]},
]


async def test_invalid_subscriptions_are_422(client: TestClient[Any, Any]) -> None:
    for body in INVALID:
        resp = await client.post("/v1/webhooks", json=body)
        assert resp.status == 422, body
        assert (await resp.json())["type"].endswith("/validation-failed")


async def test_unknown_vendor_cursor_and_ids(client: TestClient[Any, Any]) -> None:
    resp = await client.post(
        "/v1/webhooks",
        json={"url": "https://hooks.example.com/", "event_types": ["*"], "vendor_id": "nobody"},
    )
    assert resp.status == 422
    assert (await resp.json())["type"].endswith("/unknown-vendor")
    assert (await client.get("/v1/webhooks?cursor=nonsense")).status == 422
    assert (await client.get("/v1/webhooks/not-a-uuid")).status == 404
    missing = "/v1/webhooks/7d7e4b0e-1a0c-4f1e-9a57-5b0e2c1f9d11"
    assert (await client.get(missing)).status == 404
    assert (await client.delete(missing)).status == 404
    assert (await client.get(f"{missing}/deliveries")).status == 404
