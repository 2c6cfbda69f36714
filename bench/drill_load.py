"""The drill's traffic: a fixed-rate command load over the API processes, and a webhook receiver.

The load opens issues (a share of them P1 under second-scale SLA targets, so clocks fall due
and breach while faults happen) and drives them through their lifecycle. Each command carries
an `Idempotency-Key`; when an API process is gone or answers 503 the same request is sent
again, to the next API process, until it is answered or its deadline passes. Only what was
answered 2xx counts as accepted, and every accepted command is checked afterwards.

The receiver verifies every webhook's Standard Webhooks signature and records, per
subscription, which event ids arrived under which `webhook-id`. It answers 503 to the first
attempt of about one delivery in twenty, so retries happen under the faults too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tierline.devstack.process import free_port

VENDORS = ("acme-it", "globex-ops", "initech-svc")
CATEGORIES = ("communication", "quality", "service_delivery", "security_compliance")
TIERS = [
    {"level": 1, "name": "Operational", "owner": "service delivery managers"},
    {"level": 2, "name": "Tactical", "owner": "vendor management office"},
    {"level": 3, "name": "Strategic", "owner": "executive steering committee"},
]
# P1 clocks fall due within seconds and escalate automatically (tier 1 -> 2 -> 3); a P1 issue
# left alone settles about 2 + 2 + 8 s after its last change. The others never fall due here.
P1_RESPOND = 2
P1_RESOLVE = 8
SETTLE_SECONDS = 2 * P1_RESPOND + P1_RESOLVE + 4
GOVERNANCE = {
    "tiers": TIERS,
    "sla": [
        *(
            {
                "tier": t,
                "priority": "P1",
                "respond_within": f"PT{P1_RESPOND}S",
                "resolve_within": f"PT{P1_RESOLVE}S",
                "warn_at": [0.5],
                "auto_escalate": True,
            }
            for t in (1, 2, 3)
        ),
        *(
            {
                "tier": t,
                "priority": p,
                "respond_within": "PT1H",
                "resolve_within": "PT8H",
                "warn_at": [0.75],
                "auto_escalate": False,
            }
            for t in (1, 2, 3)
            for p in ("P2", "P3", "P4")
        ),
    ],
}
# Subscriptions: everything to one endpoint; one vendor's escalations and breaches to another.
SUBSCRIPTIONS = {
    "all": {"event_types": ["*"]},
    "acme-escalations": {
        "event_types": ["io.tierline.issue.escalated.v1", "io.tierline.issue.sla_breached.v1"],
        "vendor_id": "acme-it",
    },
}
REQUEST_DEADLINE = 30.0


@dataclass
class Accepted:
    """A command answered 2xx: the issue and the version it answered with."""

    issue_id: str
    version: int
    at: float


@dataclass
class LoadStats:
    """What the load saw."""

    sent: int = 0
    accepted: list[Accepted] = field(default_factory=list)
    # Final answer per command (status code, or "gave-up").
    final: Counter[str] = field(default_factory=Counter)
    # Every attempt's answer, retries included (503 during a database outage shows here).
    attempts: Counter[str] = field(default_factory=Counter)
    late_ticks: int = 0

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time in [start, end] without any command answered 2xx."""
        times = sorted(a.at for a in self.accepted if start <= a.at <= end)
        points = [start, *times, end]
        return max((b - a for a, b in itertools.pairwise(points)), default=0.0)


class WebhookReceiver:
    """An HTTP endpoint per subscription that verifies signatures and records deliveries."""

    def __init__(self) -> None:
        self.port = free_port()
        self.secrets: dict[str, bytes] = {}
        # (subscription name, event id) -> webhook-id values seen.
        self.received: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.opened: dict[str, set[str]] = defaultdict(set)
        self.bad_signatures = 0
        self.failed_on_purpose = 0
        self.requests = 0
        self._runner: web.AppRunner | None = None

    def url(self, name: str) -> str:
        """The endpoint of subscription `name`."""
        return f"http://127.0.0.1:{self.port}/hooks/{name}"

    async def start(self) -> None:
        """Listen on the loopback port."""
        app = web.Application()
        app.router.add_post("/hooks/{name}", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    def _verify(self, name: str, headers: Any, body: bytes) -> bool:
        secret = self.secrets.get(name)
        if secret is None:
            return False
        msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
        signed = f"{msg_id}.{stamp}.".encode() + body
        expected = base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()
        signatures = headers.get("webhook-signature", "").split()
        offered = [s.split(",", 1)[1] for s in signatures if s.startswith("v1,")]
        return any(hmac.compare_digest(expected, s) for s in offered)

    async def _receive(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        self.requests += 1
        if not self._verify(name, request.headers, body):
            self.bad_signatures += 1
            return web.Response(status=400)
        webhook_id = request.headers["webhook-id"]
        key = (name, "")
        with contextlib.suppress(ValueError, KeyError):
            event = json.loads(body)
            key = (name, str(event["id"]))
            if event["type"] == "io.tierline.issue.opened.v1":
                self.opened[name].add(str(event["subject"]))
        first = not self.received[key]
        self.received[key].append(webhook_id)
        if first and int(hashlib.sha256(webhook_id.encode()).hexdigest(), 16) % 20 == 0:
            self.failed_on_purpose += 1
            return web.Response(status=503, headers={"Retry-After": "1"})
        return web.Response(status=204)


@dataclass
class Issue:
    """What the load knows of an issue it opened."""

    id: str
    status: str
    tier: int


class Load:
    """Commands at a fixed rate, spread over the API processes, each retried until answered."""

    def __init__(self, api_urls: list[str], admin_key: str, seed: int = 7) -> None:
        self.api_urls = api_urls
        self._headers = {"Authorization": f"Bearer {admin_key}"}
        self._rng = random.Random(seed)
        self.stats = LoadStats()
        self.issues: dict[str, Issue] = {}
        self._next_api = 0
        self._http: aiohttp.ClientSession | None = None
        self.subscription_ids: dict[str, str] = {}

    async def __aenter__(self) -> Load:
        self._http = aiohttp.ClientSession(
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=10),
            connector=aiohttp.TCPConnector(limit=64),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        """The load's HTTP session."""
        assert self._http is not None
        return self._http

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, count: bool = True
    ) -> tuple[int, dict[str, Any]]:
        """Send one command until answered (not 5xx, not refused) or the deadline passes."""
        key = str(uuid.uuid4())
        deadline = time.monotonic() + REQUEST_DEADLINE
        status: int | str = "gave-up"
        payload: dict[str, Any] = {}
        while time.monotonic() < deadline:
            url = self.api_urls[self._next_api % len(self.api_urls)] + path
            try:
                async with self.http.request(
                    method, url, json=body, headers={"Idempotency-Key": key}
                ) as resp:
                    status = resp.status
                    text = await resp.text()
                    payload = json.loads(text) if text else {}
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                status = type(exc).__name__
            if count:
                self.stats.attempts[str(status)] += 1
            if isinstance(status, int) and status < 500:
                break
            # Refused, timed out or 5xx: the same request (same key) to the next API process.
            self._next_api += 1
            await asyncio.sleep(0.2)
        else:
            status = "gave-up"
        if count:
            self.stats.final[str(status)] += 1
        issue = isinstance(payload.get("id"), str) and isinstance(payload.get("version"), int)
        if count and isinstance(status, int) and 200 <= status < 300 and issue:
            self.stats.accepted.append(
                Accepted(str(payload["id"]), int(payload["version"]), time.time())
            )
        return (status if isinstance(status, int) else 0), payload

    async def setup(self, receiver: WebhookReceiver) -> None:
        """Vendors, the second-scale governance and the webhook subscriptions."""
        for vendor in VENDORS:
            body = {"id": vendor, "name": vendor.title(), "timezone": "UTC"}
            status, answer = await self.call("POST", "/v1/vendors", body, count=False)
            if status not in (201, 409):
                raise RuntimeError(f"vendor {vendor}: {status} {answer}")
        for name, body in SUBSCRIPTIONS.items():
            status, sub = await self.call(
                "POST", "/v1/webhooks", {"url": receiver.url(name), **body}, count=False
            )
            if status != 201:
                raise RuntimeError(f"subscription {name}: {status} {sub}")
            receiver.secrets[name] = base64.b64decode(sub["secret"].removeprefix("whsec_"))
            self.subscription_ids[name] = str(sub["id"])
        status, answer = await self.call("PUT", "/v1/governance", GOVERNANCE, count=False)
        if status != 200:
            raise RuntimeError(f"governance: {status} {answer}")

    def _remember(self, status: int, payload: dict[str, Any]) -> None:
        if 200 <= status < 300 and "id" in payload and "status" in payload:
            self.issues[payload["id"]] = Issue(payload["id"], payload["status"], payload["tier"])

    async def open_issue(self, priority: str | None = None) -> tuple[int, dict[str, Any]]:
        """Open an issue against a random vendor."""
        body = {
            "vendor_id": self._rng.choice(VENDORS),
            "title": f"drill issue {self._rng.randrange(10**9)}",
            "category": self._rng.choice(CATEGORIES),
            "priority": priority or ("P1" if self._rng.random() < 0.3 else "P3"),
        }
        status, payload = await self.call("POST", "/v1/issues", body)
        self._remember(status, payload)
        return status, payload

    def _next_command(self) -> tuple[str, dict[str, Any]] | None:
        """A command that the issue's last known state allows (it may have moved since)."""
        live = [i for i in self.issues.values() if i.status != "closed"]
        if not live or self._rng.random() < 0.3:
            return None
        issue = self._rng.choice(live)
        base = f"/v1/issues/{issue.id}"
        choices: list[tuple[str, dict[str, Any]]] = [
            (f"{base}/comments", {"body": "status update", "author": "drill"}),
            (f"{base}/assign", {"assignee": self._rng.choice(["ana", "bo", "chen"])}),
        ]
        if issue.status == "open":
            choices.append((f"{base}/acknowledge", {}))
        if issue.status in ("open", "acknowledged"):
            choices.append((f"{base}/hold", {"reason": "waiting for the vendor"}))
            choices.append((f"{base}/resolve", {"resolution": "fixed"}))
            if issue.tier < 3:
                choices.append((f"{base}/escalate", {"reason": "no progress"}))
        if issue.status == "on_hold":
            choices.append((f"{base}/resume", {}))
        if issue.status == "resolved":
            choices.append((f"{base}/close", {}))
            choices.append((f"{base}/reopen", {"reason": "came back"}))
        return self._rng.choice(choices)

    async def one_command(self) -> None:
        """Open an issue, or move a known one."""
        self.stats.sent += 1
        command = self._next_command()
        if command is None:
            await self.open_issue()
            return
        path, body = command
        status, payload = await self.call("POST", path, body)
        self._remember(status, payload)

    async def run(self, rate: float, stop: asyncio.Event) -> None:
        """`rate` commands per second on a fixed schedule (open loop) until `stop` is set."""
        started = time.monotonic()
        inflight: set[asyncio.Task[None]] = set()
        n = 0
        while not stop.is_set():
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    break
            elif delay < -1.0:
                self.stats.late_ticks += 1
            task = asyncio.create_task(self.one_command())
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            n += 1
        if inflight:
            await asyncio.gather(*inflight)

    async def canary(
        self,
        receiver: WebhookReceiver,
        listed: Callable[[str], Awaitable[bool]],
        since: float,
        timeout: float,
    ) -> float:
        """Seconds from `since` until a new issue is in the read models (`listed`) and its
        `opened` event reached the webhook receiver; opens issues until one makes it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, payload = await self.open_issue(priority="P3")
            if status != 201:
                await asyncio.sleep(0.5)
                continue
            issue_id = payload["id"]
            while time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    if issue_id in receiver.opened["all"] and await listed(issue_id):
                        return time.time() - since
                await asyncio.sleep(0.1)
        raise TimeoutError(f"no canary made it through in {timeout:.0f}s")
