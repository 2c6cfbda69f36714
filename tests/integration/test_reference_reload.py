"""Reference data reloads never hold their lock while waiting for a pooled connection.

Found under load (500 commands/s with the issue list polled): every pooled connection was held
by a unit of work waiting for the reload lock, while the lock's holder, a unit without a
connection, waited for the pool. The API stopped answering with PostgreSQL idle, and could
not shut down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tierline.domain.governance import Vendor
from tierline.service_layer.reference import ReferenceData
from tierline.store.pool import create_pool
from tierline.store.vendors import insert_vendor


class WatchedPool:
    """The pool, telling when someone starts waiting for one of its connections."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.acquiring = asyncio.Event()

    def acquire(self) -> Any:
        self.acquiring.set()
        return self.pool.acquire()


@pytest.fixture
async def one_connection(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    yield pool
    await pool.close()


@pytest.mark.parametrize("call", ["rules_for", "refresh"])
async def test_a_reload_waiting_for_the_pool_does_not_block_the_holder_of_the_last_connection(
    one_connection: asyncpg.Pool, call: str
) -> None:
    watched = WatchedPool(one_connection)
    reference = ReferenceData(watched, ttl=0.0)  # type: ignore[arg-type]  # every call reloads
    await reference.refresh()
    watched.acquiring.clear()

    holding = asyncio.Event()

    async def unit_with_the_connection() -> None:
        async with one_connection.acquire() as conn:
            holding.set()
            # The other reload is now waiting for this connection.
            await watched.acquiring.wait()
            for _ in range(20):
                await asyncio.sleep(0)
            if call == "rules_for":
                await reference.rules_for("any-vendor", conn)
            else:
                await reference.refresh(conn)

    async def unit_without_a_connection() -> None:
        await holding.wait()
        if call == "rules_for":
            await reference.rules_for("any-vendor")
        else:
            await reference.refresh()

    both = asyncio.gather(unit_with_the_connection(), unit_without_a_connection())
    # Not a timing assertion: with the lock taken before the connection this never finishes.
    await asyncio.wait_for(both, timeout=30)
    assert reference.governance is not None


async def test_callers_without_a_connection_wait_out_a_reload_instead_of_borrowing(
    one_connection: asyncpg.Pool,
) -> None:
    await insert_vendor(one_connection, Vendor(id="acme", name="Acme"))
    watched = WatchedPool(one_connection)
    reference = ReferenceData(watched, ttl=3600.0)  # type: ignore[arg-type]
    await reference.refresh()
    loads = 0
    original = reference._load

    async def counted(conn: Any) -> None:
        nonlocal loads
        loads += 1
        await original(conn)

    reference._load = counted  # type: ignore[method-assign]
    reference._loaded_at = -1e9  # stale now
    answers = await asyncio.gather(*(reference.rules_for("acme") for _ in range(10)))
    assert all(rules is not None for rules in answers)
    # One reload for ten callers that found the data stale at the same moment.
    assert loads == 1
