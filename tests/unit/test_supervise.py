"""The supervised loop: capped backoff restarts, prompt stops, cancellation never swallowed."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from prometheus_client import REGISTRY

from tierline.supervise import Backoff, sleep_or_stop, supervise


def restarts(unit: str) -> float:
    return REGISTRY.get_sample_value("tierline_supervised_restarts_total", {"unit": unit}) or 0.0


class FakeSleep:
    """Records the delays asked for and returns at once (optionally setting `stop` at some)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.delays: list[float] = []
        self.stop_after = stop_after

    async def __call__(self, stop: asyncio.Event, seconds: float) -> bool:
        self.delays.append(seconds)
        if self.stop_after is not None and len(self.delays) >= self.stop_after:
            stop.set()
        await asyncio.sleep(0)
        return stop.is_set()


def unit_name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def test_failures_are_retried_with_doubling_capped_jittered_delays() -> None:
    stop = asyncio.Event()
    runs = 0

    async def work(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        if runs <= 6:
            raise OSError("connection refused")
        stop.set()

    sleep = FakeSleep()
    name = unit_name()
    backoff = Backoff(initial=1.0, cap=8.0)
    await supervise(
        name, work, stop, retry_on=(OSError,), backoff=backoff, sleep=sleep, draw=lambda: 0.5
    )
    assert runs == 7
    # Equal jitter with draw 0.5: three quarters of 1, 2, 4, 8, 8, 8.
    assert sleep.delays == [0.75, 1.5, 3.0, 6.0, 6.0, 6.0]
    assert restarts(name) == 6


@pytest.mark.parametrize("draw", [0.0, 0.999999])
def test_a_delay_is_never_zero_and_never_above_the_cap(draw: float) -> None:
    backoff = Backoff(initial=0.5, cap=30.0)
    delays = [backoff.delay(n, draw) for n in range(1, 200)]
    assert min(delays) >= 0.25
    assert max(delays) <= 30.0
    assert delays[-1] >= 15.0


async def test_a_long_healthy_run_starts_the_backoff_again() -> None:
    stop = asyncio.Event()
    now = 0.0
    durations = iter([0.0, 0.0, 0.0, 120.0, 0.0])

    async def work(stop: asyncio.Event) -> None:
        nonlocal now
        try:
            now += next(durations)
        except StopIteration:
            stop.set()
            return
        raise OSError("reset by peer")

    sleep = FakeSleep()
    await supervise(
        unit_name(),
        work,
        stop,
        retry_on=(OSError,),
        backoff=Backoff(initial=1.0, cap=30.0, reset_after=60.0),
        sleep=sleep,
        draw=lambda: 0.999999,
        clock=lambda: now,
    )
    assert [round(d) for d in sleep.delays] == [1, 2, 4, 1, 2]


async def test_stop_during_backoff_ends_the_wait_at_once() -> None:
    stop = asyncio.Event()
    runs = 0

    async def work(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        raise OSError("database is down")

    supervisor = asyncio.create_task(
        supervise(unit_name(), work, stop, retry_on=(OSError,), backoff=Backoff(initial=60.0))
    )
    await asyncio.sleep(0.05)
    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(supervisor, 1.0)
    assert time.monotonic() - started < 0.5
    assert runs == 1


async def test_cancelling_the_supervisor_cancels_the_unit_and_propagates() -> None:
    stop = asyncio.Event()
    running = asyncio.Event()
    cleaned_up = False

    async def work(stop: asyncio.Event) -> None:
        nonlocal cleaned_up
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up = True

    supervisor = asyncio.create_task(supervise(unit_name(), work, stop))
    await running.wait()
    supervisor.cancel()
    with pytest.raises(asyncio.CancelledError):
        await supervisor
    assert cleaned_up, "the unit's clean-up ran before the supervisor returned"


async def test_cancelling_during_backoff_propagates() -> None:
    stop = asyncio.Event()

    async def work(stop: asyncio.Event) -> None:
        raise OSError("refused")

    supervisor = asyncio.create_task(
        supervise(unit_name(), work, stop, retry_on=(OSError,), backoff=Backoff(initial=60.0))
    )
    await asyncio.sleep(0.05)
    supervisor.cancel()
    with pytest.raises(asyncio.CancelledError):
        await supervisor


async def test_a_unit_cancelled_from_inside_is_not_restarted() -> None:
    stop = asyncio.Event()
    runs = 0

    async def work(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await supervise(unit_name(), work, stop, sleep=FakeSleep())
    assert runs == 1


async def test_a_failure_storm_does_not_spin() -> None:
    stop = asyncio.Event()
    runs = 0

    async def work(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        raise OSError("refused at once")

    name = unit_name()
    supervisor = asyncio.create_task(
        supervise(name, work, stop, retry_on=(OSError,), backoff=Backoff(initial=0.02, cap=0.05))
    )
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(supervisor, 1.0)
    # Each wait is at least 10 ms and soon at least 25 ms: about 20 runs, never thousands.
    assert 3 <= runs <= 40
    assert restarts(name) == runs


async def test_an_unexpected_error_ends_the_supervisor() -> None:
    stop = asyncio.Event()
    runs = 0

    async def work(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        raise ValueError("a bug")

    sleep = FakeSleep()
    with pytest.raises(ValueError, match="a bug"):
        await supervise(unit_name(), work, stop, retry_on=(OSError,), sleep=sleep)
    assert runs == 1
    assert sleep.delays == []


async def test_a_failure_while_stopping_is_not_retried() -> None:
    stop = asyncio.Event()
    runs = 0

    async def work(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        stop.set()
        raise OSError("connection closed under us")

    name = unit_name()
    sleep = FakeSleep()
    await supervise(name, work, stop, retry_on=(OSError,), sleep=sleep)
    assert runs == 1
    assert sleep.delays == []
    assert restarts(name) == 0


async def test_a_unit_that_ignores_stop_is_cancelled_after_the_grace() -> None:
    stop = asyncio.Event()
    cancelled = False

    async def work(stop: asyncio.Event) -> None:
        nonlocal cancelled
        try:
            await asyncio.Event().wait()  # stuck, e.g. connecting to a server that is gone
        except asyncio.CancelledError:
            cancelled = True
            raise

    supervisor = asyncio.create_task(supervise(unit_name(), work, stop, stop_grace=0.05))
    await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(supervisor, 1.0)
    assert cancelled


async def test_a_unit_that_stops_by_itself_is_not_cancelled() -> None:
    stop = asyncio.Event()
    finished = False

    async def work(stop: asyncio.Event) -> None:
        nonlocal finished
        await stop.wait()
        await asyncio.sleep(0.05)  # flushing results, releasing leases
        finished = True

    supervisor = asyncio.create_task(supervise(unit_name(), work, stop, stop_grace=5.0))
    await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(supervisor, 1.0)
    assert finished


async def test_a_unit_that_returns_early_is_paced_not_spun() -> None:
    stop = asyncio.Event()
    runs = 0

    async def work(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1

    sleep = FakeSleep(stop_after=3)
    await supervise(unit_name(), work, stop, sleep=sleep, draw=lambda: 0.0)
    assert runs == 3
    assert sleep.delays == [0.5, 0.5, 0.5]


async def test_sleep_or_stop_reports_whether_it_was_stopped() -> None:
    stop = asyncio.Event()
    assert await sleep_or_stop(stop, 0.01) is False
    stop.set()
    started = time.monotonic()
    assert await sleep_or_stop(stop, 10.0) is True
    assert time.monotonic() - started < 0.5
