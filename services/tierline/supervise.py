"""One supervised loop: run a unit of work until `stop`, restarting it after failures.

Every long-running part of a role (the log consumer, the relay, the SLA scanner, the webhook
sender) is a *unit*: `work(stop)` connects, does its job until `stop` is set and returns, or
raises when a connection breaks. `supervise` runs it again after an expected failure, waiting
with capped exponential backoff and jitter, so a broker or database outage costs a few log
lines and reconnect attempts instead of a reconnect storm, and many processes that lost the
same server do not all come back in the same millisecond.

A failure that is not expected (not in `retry_on`) ends the supervisor and so the role: a bug
should stop the process, not loop. `CancelledError` always propagates. Once `stop` is set the
unit gets `stop_grace` seconds to finish on its own (closing leases, flushing results) before
it is cancelled, so a unit stuck connecting to an unreachable server cannot hold up shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Counter

log = structlog.get_logger(__name__)

RESTARTS = Counter(
    "tierline_supervised_restarts_total",
    "Times a supervised unit of work failed and was started again",
    ["unit"],
)

Work = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
Sleep = Callable[[asyncio.Event, float], Awaitable[bool]]


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep unless stopped first; True when stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


@dataclass(frozen=True)
class Backoff:
    """Delays between restarts: doubling from `initial` up to `cap`, with equal jitter.

    The n-th consecutive failure waits between half and all of min(cap, initial * 2**(n-1)),
    so a delay is never zero: a unit that fails at once cannot spin. A run that lasted
    `reset_after` seconds counts as healthy, and the next failure starts from `initial` again.
    """

    initial: float = 1.0
    cap: float = 30.0
    reset_after: float = 60.0

    def delay(self, failures: int, draw: float) -> float:
        """Seconds to wait after the `failures`-th failure in a row; `draw` is in [0, 1)."""
        ceiling = min(self.cap, self.initial * 2.0 ** min(failures - 1, 64))
        return ceiling * (1 + draw) / 2


async def supervise(
    unit: str,
    work: Work,
    stop: asyncio.Event,
    *,
    retry_on: tuple[type[Exception], ...] = (Exception,),
    backoff: Backoff = Backoff(),
    stop_grace: float = 15.0,
    sleep: Sleep = sleep_or_stop,
    draw: Callable[[], float] = random.random,
    clock: Callable[[], float] = time.monotonic,
    **fields: object,
) -> None:
    """Run `work(stop)` until `stop` is set; restart it after a failure in `retry_on`.

    `unit` names the work in logs and metrics; `fields` are added to every log line.
    """
    failures = 0
    while not stop.is_set():
        started = clock()
        try:
            await _run_until_stopped(unit, work, stop, stop_grace, fields)
        except retry_on as exc:
            if stop.is_set():
                # Failing while shutting down (a connection closed under it) is not a failure.
                log.info("supervised_unit_stopped", unit=unit, error=repr(exc), **fields)
                return
            failures = 1 if clock() - started >= backoff.reset_after else failures + 1
            delay = backoff.delay(failures, draw())
            RESTARTS.labels(unit).inc()
            log.warning(
                "supervised_unit_failed",
                unit=unit,
                error=repr(exc),
                failures=failures,
                retry_in=round(delay, 3),
                **fields,
            )
            await sleep(stop, delay)
        else:
            failures = 0
            if not stop.is_set():
                # A unit returns when stopped; one that returns early is paced like a failure.
                log.warning("supervised_unit_returned", unit=unit, **fields)
                await sleep(stop, backoff.delay(1, draw()))


async def _run_until_stopped(
    unit: str, work: Work, stop: asyncio.Event, grace: float, fields: dict[str, object]
) -> None:
    """One run of `work`: returns or raises as it does; cancelled `grace` s after `stop`."""
    task = asyncio.create_task(work(stop), name=unit)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait({task}, timeout=grace)
        if not task.done():
            log.warning("supervised_unit_stop_overdue", unit=unit, grace=grace, **fields)
            task.cancel()
            await asyncio.wait({task})
            return
    finally:
        stopped.cancel()
        if not task.done():
            # We were cancelled: the unit goes with us, and its clean-up runs before we return.
            task.cancel()
            await asyncio.wait({task})
    task.result()
