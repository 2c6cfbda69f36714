"""The sender: leases due deliveries (SKIP LOCKED), POSTs them signed, records each attempt.

Any number of senders may run side by side. A claimed delivery is leased, not held in an open
transaction: the claim sets `next_attempt_at` to the lease's expiry and a `lease_token`, so a
sender that dies mid-attempt leaves the delivery to be taken again once the lease runs out
(at-least-once, always with the same `webhook-id`). Results are written in batches and only
while the lease is still ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as dist_version

import aiohttp
import asyncpg
import structlog
from aiohttp.abc import AbstractResolver

from tierline.secretbox import SecretBox
from tierline.store.pool import DATABASE_ERRORS
from tierline.supervise import supervise
from tierline.webhooks import metrics
from tierline.webhooks.deliveries import (
    CHANNEL,
    AttemptResult,
    Claimed,
    claim,
    queue_stats,
    record_attempts,
    release_leases,
    seconds_until_next_due,
)
from tierline.webhooks.retry import judge, parse_retry_after
from tierline.webhooks.signing import webhook_headers
from tierline.webhooks.ssrf import (
    GuardedResolver,
    TargetRefused,
    check_addresses,
    literal_address,
    parse_target,
    refusal_detail,
)

log = structlog.get_logger(__name__)

RESPONSE_EXCERPT_BYTES = 256
RESULT_BATCH = 500


@dataclass(frozen=True)
class SenderConfig:
    """How the sender behaves (from Settings, with a few internal knobs)."""

    timeout: float = 15.0
    retry_schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    per_subscription: int = 4
    allow_private: bool = False
    max_in_flight: int = 256
    poll_interval: float = 1.0
    stats_interval: float = 5.0

    @property
    def lease_seconds(self) -> float:
        """Longer than any attempt (bounded by the timeout) plus writing its result."""
        return 2 * self.timeout + 2


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Sender:
    """Delivers due webhooks until stopped."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        database_url: str,
        config: SenderConfig,
        *,
        resolver: AbstractResolver | None = None,
        clock: Callable[[], datetime] = _utcnow,
        draw: Callable[[], float] = random.random,
        box: SecretBox | None = None,
    ) -> None:
        self._pool = pool
        # None: the process's box (tierline.secretbox.current()), installed at role start.
        self._box = box
        self._database_url = database_url
        self._config = config
        self._resolver = resolver
        self._clock = clock
        self._draw = draw
        self._busy: dict[uuid.UUID, int] = {}
        self._tasks: dict[asyncio.Task[None], Claimed] = {}
        self._results: list[AttemptResult] = []
        self._wakeup = asyncio.Event()
        self._results_ready = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Send until `stop`; reconnect after database failures."""
        await supervise("webhook_sender", self._run_once, stop, retry_on=DATABASE_ERRORS)

    async def _run_once(self, stop: asyncio.Event) -> None:
        listener = await asyncpg.connect(self._database_url)
        try:
            async with self.http_client():
                helpers = [
                    asyncio.create_task(self._flush_loop(), name="webhook-results"),
                    asyncio.create_task(self._stats_loop(stop), name="webhook-stats"),
                ]
                try:
                    await listener.add_listener(CHANNEL, self._on_notify)
                    log.info(
                        "webhook_sender_started", per_subscription=self._config.per_subscription
                    )
                    await self._dispatch_loop(stop)
                finally:
                    await self._shutdown(helpers)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(listener.close())

    @contextlib.asynccontextmanager
    async def http_client(self) -> AsyncIterator[None]:
        """Open the HTTP client that `send` uses; closed on exit."""
        self._session = self._new_session()
        try:
            yield
        finally:
            await self._session.close()
            self._session = None

    def _new_session(self) -> aiohttp.ClientSession:
        """One HTTP client for every endpoint; it connects only to addresses that pass the guard.

        The guard stays on when private targets are allowed: it still refuses link-local and
        cloud metadata addresses, and DNS may answer differently now than at subscription time.
        """
        resolver = GuardedResolver(self._resolver, allow_private=self._config.allow_private)
        connector = aiohttp.TCPConnector(
            resolver=resolver, limit=self._config.max_in_flight, limit_per_host=0
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._config.timeout),
            # Cookies one receiver sets must never travel to another.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            headers={"User-Agent": f"Tierline-Webhooks/{dist_version('tierline')}"},
        )

    def _on_notify(self, *_: object) -> None:
        self._wakeup.set()

    async def _dispatch_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wakeup.clear()
            if await self.claim_and_start() > 0:
                continue
            pause = self._config.poll_interval
            next_due = await seconds_until_next_due(self._pool)
            if next_due is not None:
                pause = max(0.0, min(pause, next_due))
            await _wait_any(self._wakeup, stop, pause)

    async def claim_and_start(self) -> int:
        """Lease what is due and fits the free slots; start one attempt task per delivery."""
        room = self._config.max_in_flight - len(self._tasks)
        if room <= 0:
            return 0
        claimed = await claim(
            self._pool,
            busy=dict(self._busy),
            per_subscription=self._config.per_subscription,
            limit=room,
            lease_seconds=self._config.lease_seconds,
            box=self._box,
        )
        for delivery in claimed:
            self._busy[delivery.subscription_id] = self._busy.get(delivery.subscription_id, 0) + 1
            task = asyncio.create_task(self._attempt(delivery))
            self._tasks[task] = delivery
            task.add_done_callback(self._attempt_done)
        metrics.IN_FLIGHT.set(len(self._tasks))
        return len(claimed)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        delivery = self._tasks.pop(task)
        left = self._busy[delivery.subscription_id] - 1
        if left:
            self._busy[delivery.subscription_id] = left
        else:
            del self._busy[delivery.subscription_id]
        metrics.IN_FLIGHT.set(len(self._tasks))
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "webhook_attempt_crashed",
                delivery_id=str(delivery.id),
                error=repr(task.exception()),
            )
        # A slot is free: deliveries waiting for it may be claimed now.
        self._wakeup.set()

    async def _attempt(self, delivery: Claimed) -> None:
        result = await self.send(delivery)
        self._results.append(result)
        self._results_ready.set()
        metrics.ATTEMPTS.labels(result.outcome).inc()
        metrics.ATTEMPT_LATENCY.observe(result.latency)
        if result.status == "dead":
            metrics.DEAD_LETTERS.inc()
        if result.status == "delivered":
            age = (self._clock() - delivery.event_time).total_seconds()
            metrics.DELIVERY_AGE.observe(max(0.0, age))
            return
        log.info(
            "webhook_attempt_failed",
            delivery_id=str(delivery.id),
            webhook_id=str(delivery.subscription_id),
            event_id=str(delivery.event_id),
            status_code=result.status_code,
            error=result.error,
            outcome=result.outcome,
            retry_in=result.delay,
        )

    async def send(self, delivery: Claimed) -> AttemptResult:
        """Make one attempt and judge it (never raises for what the endpoint does)."""
        started = self._clock()
        began = time.perf_counter()
        code, error, retry_after = await self._post(delivery, started)
        latency = time.perf_counter() - began
        verdict = judge(
            code,
            delivery.failures,
            list(self._config.retry_schedule),
            parse_retry_after(retry_after, started),
            self._draw(),
        )
        return AttemptResult(
            delivery_id=delivery.id,
            lease_token=delivery.lease_token,
            subscription_id=delivery.subscription_id,
            status=verdict.status,
            outcome=verdict.outcome,
            delay=verdict.delay,
            status_code=code,
            error=error,
            started_at=started,
            latency=latency,
        )

    async def _post(
        self, delivery: Claimed, started: datetime
    ) -> tuple[int | None, str | None, str | None]:
        """POST the body; (status code, error, Retry-After) of what happened."""
        assert self._session is not None
        body = delivery.body.encode()
        headers = webhook_headers(
            delivery.secrets, str(delivery.event_id), int(started.timestamp()), body
        )
        try:
            self._check_literal_target(delivery.url)
            async with self._session.post(
                delivery.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                excerpt = await resp.content.read(RESPONSE_EXCERPT_BYTES)
                error = None
                if not 200 <= resp.status < 300:
                    text = excerpt.decode("utf-8", "replace").strip()
                    error = f"HTTP {resp.status}" + (f": {text}" if text else "")
                return resp.status, error, resp.headers.get("Retry-After")
        except TargetRefused as exc:
            return None, f"target refused: {exc.reason}", None
        except TimeoutError:
            return None, f"no response within {self._config.timeout:g} s", None
        except aiohttp.ClientError as exc:
            refused = refusal_detail(exc)
            if refused is not None:
                return None, f"target refused: {refused}", None
            return None, f"{type(exc).__name__}: {exc}"[:500], None

    def _check_literal_target(self, url: str) -> None:
        """Hosts written as IP addresses skip the resolver, so they are checked here."""
        host = parse_target(url).host
        assert host is not None
        address = literal_address(host)
        if address is not None:
            check_addresses(host, [str(address)], allow_private=self._config.allow_private)

    async def _flush_loop(self) -> None:
        """Write finished attempts in batches: whatever accumulated while the last batch wrote."""
        while True:
            await self._results_ready.wait()
            self._results_ready.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write every buffered result; on a database error keep them and try again later."""
        while self._results:
            batch = self._results[:RESULT_BATCH]
            try:
                async with self._pool.acquire() as conn:
                    applied = await record_attempts(conn, batch)
            except DATABASE_ERRORS as exc:
                log.warning("webhook_results_not_recorded", count=len(batch), error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            del self._results[: len(batch)]
            if applied < len(batch):
                metrics.LEASES_LOST.inc(len(batch) - applied)
                log.warning("webhook_leases_lost", count=len(batch) - applied)
            # Retries may be due soon and 410s change what may be claimed.
            self._wakeup.set()

    async def _stats_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                depth, oldest = await queue_stats(self._pool)
                metrics.QUEUE_DEPTH.set(depth)
                metrics.OLDEST_PENDING.set(oldest)
            except DATABASE_ERRORS as exc:
                log.warning("webhook_queue_stats_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._config.stats_interval)

    async def _shutdown(self, helpers: list[asyncio.Task[None]]) -> None:
        """Abandon attempts in flight, record what finished and hand the rest back."""
        unfinished = [d.lease_token for d in self._tasks.values()]
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        # Best effort: whatever is not written here is retried once its lease expires.
        with contextlib.suppress(TimeoutError, *DATABASE_ERRORS):
            await asyncio.wait_for(self.flush(), 5.0)
            await asyncio.wait_for(release_leases(self._pool, unfinished), 5.0)


async def _wait_any(first: asyncio.Event, second: asyncio.Event, seconds: float) -> None:
    """Return when either event is set or `seconds` have passed."""
    waiters = {asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())}
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
