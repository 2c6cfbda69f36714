"""The asyncpg connection pool every role shares."""

from __future__ import annotations

import asyncpg


async def create_pool(database_url: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    """A pool whose connections use UTC so timestamps round-trip unchanged."""
    pool = await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        server_settings={"timezone": "UTC", "application_name": "tierline"},
    )
    assert pool is not None
    return pool
