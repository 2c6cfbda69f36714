"""Webhook delivery end to end: API -> write path -> relay -> log -> webhooks role -> a real
HTTP receiver on loopback. Signatures are checked with the `standardwebhooks` package."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.fixtures import infra
from tests.fixtures.api import add_vendor, call
from tests.fixtures.loopback import serving_posts
from tests.fixtures.stack import Stack, running_stack, stack_settings

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

ROLES = ["api", "relay", "webhooks"]
WAIT = 30.0
Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Receipt:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def verify(self, secret: str) -> dict[str, Any]:
        """The body, once the reference library accepts the signature."""
        payload: dict[str, Any] = Webhook(secret).verify(self.body, self.headers)
        return payload


@dataclass
class Receiver:
    """A real HTTP endpoint on 127.0.0.1: each path records what it gets and answers per script."""

    received: dict[str, list[Receipt]] = field(default_factory=dict)
    scripts: dict[str, list[Behaviour]] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def script(self, name: str, *answers: int | Behaviour) -> None:
        """Answer the next requests on `name` in this order, then 200 for ever."""
        self.scripts[name] = [a if callable(a) else _status(a) for a in answers]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = await request.read()
        self.received.setdefault(name, []).append(Receipt(dict(request.headers), body))
        self.in_flight[name] = self.in_flight.get(name, 0) + 1
        self.peak[name] = max(self.peak.get(name, 0), self.in_flight[name])
        try:
            script = self.scripts.get(name, [])
            answer = script.pop(0) if script else _status(200)
            return await answer(request)
        finally:
            self.in_flight[name] -= 1

    async def hang(self, request: web.Request) -> web.StreamResponse:
        """Never answer (until the test ends)."""
        await self.released.wait()
        return web.Response(status=503)

    def count(self, name: str) -> int:
        return len(self.received.get(name, []))

    def ids(self, name: str) -> list[str]:
        return [r.webhook_id for r in self.received.get(name, [])]

    async def wait_for(self, name: str, count: int) -> list[Receipt]:
        """Poll until `name` has received `count` requests."""
        await eventually(lambda: self.count(name) >= count, f"{name} to receive {count}")
        return self.received[name]


def _status(code: int) -> Behaviour:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, text="" if code < 300 else f"scripted {code}")

    return answer


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition; fail with `what` when it does not hold in time."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def receiver_running() -> AsyncIterator[Receiver]:
    """A receiver listening on a free loopback port."""
    receiver = Receiver()
    async with serving_posts(receiver._handle) as receiver.port:
        try:
            yield receiver
        finally:
            receiver.released.set()


@contextlib.asynccontextmanager
async def webhook_stack(
    pg_admin_dsn: str, tansu: str, **overrides: Any
) -> AsyncIterator[tuple[Stack, Receiver]]:
    """api + relay + webhooks on a fresh database and topic, with a receiver on loopback."""
    database = await infra.clone_database(pg_admin_dsn)
    settings = stack_settings(
        infra.with_database(pg_admin_dsn, database),
        tansu,
        f"test.{uuid.uuid4().hex[:12]}",
        webhooks_allow_private_targets=True,
        webhooks_retry_schedule=[0.2, 0.2],
        **overrides,
    )
    try:
        async with receiver_running() as receiver, running_stack(settings, roles=ROLES) as stack:
            yield stack, receiver
    finally:
        await infra.drop_database(pg_admin_dsn, database)


# Starting the roles (mostly the consumer group join) dominates, so tests share two stacks and
# keep out of each other's way with a vendor of their own and subscriptions bound to it.
@pytest.fixture(scope="module")
async def patient(pg_admin_dsn: str, tansu: str) -> AsyncIterator[tuple[Stack, Receiver]]:
    """A stack whose sender waits up to a minute for an answer."""
    async with webhook_stack(pg_admin_dsn, tansu, webhooks_timeout=60.0) as pair:
        yield pair


@pytest.fixture(scope="module")
async def impatient(pg_admin_dsn: str, tansu: str) -> AsyncIterator[tuple[Stack, Receiver]]:
    """A stack whose sender gives up on an attempt after 0.3 s."""
    async with webhook_stack(pg_admin_dsn, tansu, webhooks_timeout=0.3) as pair:
        yield pair


async def open_issue(
    http: aiohttp.ClientSession, vendor_id: str, title: str = "Missed handover"
) -> str:
    issue = await call(
        http,
        "POST",
        "/v1/issues",
        201,
        {"vendor_id": vendor_id, "title": title, "category": "communication", "priority": "P2"},
    )
    return str(issue["id"])


async def subscribe(
    http: aiohttp.ClientSession, url: str, types: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    body = {"url": url, "event_types": types or ["*"], **extra}
    created: dict[str, Any] = await call(http, "POST", "/v1/webhooks", 201, body)
    return created


async def deliveries(http: aiohttp.ClientSession, webhook_id: str, **query: str) -> list[Any]:
    async with http.get(f"/v1/webhooks/{webhook_id}/deliveries", params=query) as resp:
        assert resp.status == 200, await resp.text()
        items: list[Any] = (await resp.json())["items"]
        return items


async def delivery_when(
    http: aiohttp.ClientSession, webhook_id: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll the delivery log until its newest delivery satisfies `check`."""
    found: list[dict[str, Any]] = []

    async def probe() -> bool:
        found[:] = await deliveries(http, webhook_id)
        return bool(found) and check(found[0])

    deadline = time.monotonic() + WAIT
    while not await probe():
        if time.monotonic() > deadline:
            pytest.fail(f"delivery never matched; log: {found}")
        await asyncio.sleep(0.05)
    return found[0]


Pair = tuple[Stack, Receiver]


async def test_delivery_is_a_signed_cloudevent_and_rotation_signs_with_both(patient: Pair) -> None:
    stack, receiver = patient
    async with stack.client() as http:
        vendor = await add_vendor(http)
        hook = await subscribe(http, receiver.url("signed"), vendor_id=vendor, description="ops")
        secret = hook["secret"]
        assert secret.startswith("whsec_")
        assert (await call(http, "GET", f"/v1/webhooks/{hook['id']}", 200))["secret"] is None

        issue_id = await open_issue(http, vendor)
        (first,) = await receiver.wait_for("signed", 1)
        assert first.headers["Content-Type"] == "application/cloudevents+json"
        event = first.verify(secret)
        assert event["id"] == first.webhook_id
        assert event["type"] == "io.tierline.issue.opened.v1"
        assert event["subject"] == issue_id
        assert event["specversion"] == "1.0"
        assert event["sequence"] == "1"
        assert event["data"]["vendor_id"] == vendor
        assert abs(int(first.headers["webhook-timestamp"]) - time.time()) < 300
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "A" * 44).verify(first.body, first.headers)

        rotated = await call(http, "POST", f"/v1/webhooks/{hook['id']}/rotate-secret", 200)
        new_secret = rotated["secret"]
        assert new_secret.startswith("whsec_") and new_secret != secret
        assert rotated["previous_secret_expires_at"] is not None

        await call(http, "POST", f"/v1/issues/{issue_id}/acknowledge", 200, {})
        second = (await receiver.wait_for("signed", 2))[1]
        assert len(second.headers["webhook-signature"].split(" ")) == 2
        assert second.verify(secret)["type"] == "io.tierline.issue.acknowledged.v1"
        assert second.verify(new_secret)["id"] == second.webhook_id != first.webhook_id


async def test_a_hanging_endpoint_does_not_delay_another(patient: Pair) -> None:
    stack, receiver = patient
    async with stack.client() as http:
        vendor = await add_vendor(http)
        receiver.script("stuck", *[receiver.hang] * 50)
        await subscribe(http, receiver.url("stuck"), vendor_id=vendor)
        await subscribe(http, receiver.url("fast"), vendor_id=vendor)
        issues = await asyncio.gather(*(open_issue(http, vendor, f"Issue {n}") for n in range(12)))

        fast = await receiver.wait_for("fast", len(issues))
        assert len({r.webhook_id for r in fast}) == len(issues)
        bound = stack.settings.webhooks_per_subscription_concurrency
        await receiver.wait_for("stuck", bound)
        assert receiver.count("stuck") == bound, "the concurrency bound holds the rest back"
        assert receiver.peak["fast"] <= bound


async def test_type_and_vendor_filters_and_vendor_isolation(patient: Pair) -> None:
    stack, receiver = patient
    async with stack.client() as admin:
        acme, globex = await add_vendor(admin), await add_vendor(admin)
        acme_key = await stack.new_key("vendor", acme)
        globex_key = await stack.new_key("vendor", globex)
        viewer_key = await stack.new_key("viewer")
        escalations = await subscribe(
            admin,
            receiver.url("acme-escalations"),
            ["io.tierline.issue.escalated.v1"],
            vendor_id=acme,
        )
        async with stack.client(acme_key) as mine, stack.client(globex_key) as theirs:
            acme_all = await subscribe(mine, receiver.url("acme-all"))
            globex_all = await subscribe(theirs, receiver.url("globex-all"))
            assert acme_all["vendor_id"] == acme
            await call(
                mine,
                "POST",
                "/v1/webhooks",
                422,
                {"url": receiver.url("x"), "event_types": ["*"], "vendor_id": globex},
            )

            acme_issue = await open_issue(admin, acme)
            await call(admin, "POST", f"/v1/issues/{acme_issue}/escalate", 200, {"reason": "late"})
            await open_issue(admin, globex)

            await receiver.wait_for("acme-all", 2)
            await receiver.wait_for("globex-all", 1)
            (escalated,) = await receiver.wait_for("acme-escalations", 1)
            assert escalated.verify(escalations["secret"])["type"].endswith(".escalated.v1")
            for hook, count in ((escalations, 1), (acme_all, 2), (globex_all, 1)):
                assert len(await deliveries(admin, hook["id"])) == count
            subjects = {
                r.verify(acme_all["secret"])["subject"] for r in receiver.received["acme-all"]
            }
            assert subjects == {acme_issue}

            listed = await call(mine, "GET", "/v1/webhooks", 200)
            assert {h["id"] for h in listed["items"]} == {escalations["id"], acme_all["id"]}
            other = f"/v1/webhooks/{globex_all['id']}"
            await call(mine, "GET", other, 404)
            await call(mine, "GET", f"{other}/deliveries", 404)
            await call(mine, "POST", f"{other}/rotate-secret", 404)
            await call(mine, "PATCH", other, 404, {"active": False})
            await call(mine, "DELETE", other, 404)
            await call(theirs, "GET", other, 200)

        page = await call(admin, "GET", f"/v1/webhooks?vendor_id={acme}&limit=1", 200)
        rest = await call(
            admin, "GET", f"/v1/webhooks?vendor_id={acme}&limit=1&cursor={page['next_cursor']}", 200
        )
        assert {h["id"] for h in page["items"] + rest["items"]} == {
            escalations["id"],
            acme_all["id"],
        }
        assert rest["next_cursor"] is None
        async with stack.client(viewer_key) as viewer:
            await call(viewer, "GET", "/v1/webhooks", 200)
            body = {"url": receiver.url("v"), "event_types": ["*"]}
            await call(viewer, "POST", "/v1/webhooks", 403, body)
        await call(admin, "DELETE", f"/v1/webhooks/{globex_all['id']}", 204)
        await call(admin, "GET", f"/v1/webhooks/{globex_all['id']}", 404)


async def test_retries_until_success_with_the_same_webhook_id(impatient: Pair) -> None:
    stack, receiver = impatient
    async with stack.client() as http:
        vendor = await add_vendor(http)
        receiver.script("flaky", 503, 503, 200)
        hook = await subscribe(http, receiver.url("flaky"), vendor_id=vendor)
        await open_issue(http, vendor)

        receipts = await receiver.wait_for("flaky", 3)
        assert len({r.webhook_id for r in receipts}) == 1
        for receipt in receipts:
            assert receipt.verify(hook["secret"])["id"] == receipt.webhook_id

        done = await delivery_when(http, hook["id"], lambda d: d["status"] == "delivered")
        assert done["event_id"] == receipts[0].webhook_id
        assert done["attempt_count"] == 3
        assert done["response_code"] == 200
        assert [a["response_code"] for a in done["attempts"]] == [503, 503, 200]
        assert [a["outcome"] for a in done["attempts"]] == ["retry", "retry", "delivered"]
        assert done["attempts"][0]["error"] == "HTTP 503: scripted 503"
        assert len(await deliveries(http, hook["id"])) == 1
        assert receiver.count("flaky") == 3


async def test_410_disables_the_subscription(patient: Pair) -> None:
    # A patient sender: under CI load the 0.3 s one gave up on the scripted 410 before it came
    # back, and the retry got the receiver's default 200.
    stack, receiver = patient
    async with stack.client() as http:
        vendor = await add_vendor(http)
        receiver.script("gone", 410)
        gone = await subscribe(http, receiver.url("gone"), vendor_id=vendor)
        await subscribe(http, receiver.url("control"), vendor_id=vendor)
        issue_id = await open_issue(http, vendor)
        await receiver.wait_for("gone", 1)

        dead = await delivery_when(http, gone["id"], lambda d: d["status"] == "dead")
        assert dead["attempts"][0]["outcome"] == "disabled"
        hook = await call(http, "GET", f"/v1/webhooks/{gone['id']}", 200)
        assert hook["active"] is False
        assert "410" in hook["disabled_reason"]

        await call(http, "POST", f"/v1/issues/{issue_id}/acknowledge", 200, {})
        await receiver.wait_for("control", 2)
        assert receiver.count("gone") == 1
        assert len(await deliveries(http, gone["id"])) == 1

        path = f"/v1/webhooks/{gone['id']}/deliveries/{dead['id']}/retry"
        problem = await call(http, "POST", path, 409)
        assert problem["type"].endswith("/webhook-disabled")
        enabled = await call(http, "PATCH", f"/v1/webhooks/{gone['id']}", 200, {"active": True})
        assert enabled["active"] is True and enabled["disabled_reason"] is None
        await call(http, "POST", path, 202)
        (_, again) = await receiver.wait_for("gone", 2)
        assert again.webhook_id == dead["event_id"]


async def test_dead_after_the_schedule_then_manual_retry_delivers(impatient: Pair) -> None:
    stack, receiver = impatient
    async with stack.client() as http:
        vendor = await add_vendor(http)
        receiver.script("silent", receiver.hang, receiver.hang, receiver.hang)
        hook = await subscribe(http, receiver.url("silent"), vendor_id=vendor)
        await open_issue(http, vendor)

        dead = await delivery_when(http, hook["id"], lambda d: d["status"] == "dead")
        assert dead["attempt_count"] == 3
        assert dead["next_attempt_at"] is None
        assert [a["outcome"] for a in dead["attempts"]] == ["retry", "retry", "dead"]
        assert all("no response" in a["error"] for a in dead["attempts"])
        assert receiver.count("silent") == 3
        assert len(await deliveries(http, hook["id"], status="dead")) == 1
        assert await deliveries(http, hook["id"], status="delivered") == []

        path = f"/v1/webhooks/{hook['id']}/deliveries/{dead['id']}/retry"
        queued = await call(http, "POST", path, 202)
        assert queued["status"] == "pending"
        done = await delivery_when(http, hook["id"], lambda d: d["status"] == "delivered")
        assert done["attempt_count"] == 4
        receipts = await receiver.wait_for("silent", 4)
        assert {r.webhook_id for r in receipts} == {dead["event_id"]}
        receipts[-1].verify(hook["secret"])

        problem = await call(http, "POST", path, 409)
        assert problem["type"].endswith("/delivery-not-retryable")
        await call(http, "POST", f"/v1/webhooks/{hook['id']}/deliveries/{hook['id']}/retry", 404)
