"""The API's pool bounds the wait for a free connection (store/pool.py `BoundedPool`).

asyncpg waits forever by default. These pin what the bound does against a real PostgreSQL, and
the private asyncpg hooks it rests on (`Pool._acquire`, `Pool._queue`): an asyncpg upgrade that
moves them fails here, not in production.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asyncpg import compat as asyncpg_compat
from prometheus_client import REGISTRY

from tierline.store.pool import PoolBusy, create_pool

pytestmark = [pytest.mark.postgres]


def _timeouts() -> float:
    return REGISTRY.get_sample_value("tierline_db_acquire_timeouts_total") or 0.0


async def test_a_wait_longer_than_the_bound_gives_up_with_pool_busy(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1, wait_bound=0.2)
    try:
        before = _timeouts()
        async with pool.acquire():
            with pytest.raises(PoolBusy, match=r"within 0\.2 s"):
                await pool.acquire()
            with pytest.raises(PoolBusy):  # the `async with` form and the pool's shortcuts too
                async with pool.acquire():
                    pass
            with pytest.raises(PoolBusy):
                await pool.fetchval("SELECT 1")
        assert _timeouts() == before + 3
        # Giving up left the pool whole: its one connection is handed out again.
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_a_connection_freed_within_the_bound_is_handed_to_the_waiter(
    database_url: str,
) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1, wait_bound=30)
    try:
        held = await pool.acquire()
        waiter = asyncio.create_task(pool.fetchval("SELECT 2"))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        await pool.release(held)
        assert await asyncio.wait_for(waiter, 30) == 2
    finally:
        await pool.close()


async def test_a_free_connection_is_handed_out_without_a_timer(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a wait that queues pays for the bound's timer (asyncpg applies a timeout through
    `compat.wait_for`, a task and a timer per acquire): a free connection is handed out as
    asyncpg hands it out without one."""
    timers: list[float] = []
    real = asyncpg_compat.wait_for

    async def counted(fut: Any, timeout: float) -> Any:
        timers.append(timeout)
        return await real(fut, timeout)

    monkeypatch.setattr(asyncpg_compat, "wait_for", counted)
    pool = await create_pool(database_url, min_size=1, max_size=1, wait_bound=5)
    try:
        for _ in range(20):
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1
        assert timers == []
        held = await pool.acquire()
        waiter = asyncio.create_task(pool.fetchval("SELECT 1"))
        await asyncio.sleep(0.1)
        await pool.release(held)
        assert await waiter == 1
        assert timers == [5]  # the one wait that queued
    finally:
        await pool.close()


async def test_without_a_bound_and_with_an_explicit_timeout_asyncpg_rules(
    database_url: str,
) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire():
            waiter = asyncio.create_task(pool.fetchval("SELECT 1"))
            await asyncio.sleep(0.3)
            assert not waiter.done()  # no bound: it waits
            with pytest.raises(TimeoutError) as caught:  # the caller's own timeout
                await pool.acquire(timeout=0.1)
            assert not isinstance(caught.value, PoolBusy)
        assert await asyncio.wait_for(waiter, 30) == 1
    finally:
        await pool.close()
