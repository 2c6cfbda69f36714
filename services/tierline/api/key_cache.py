"""API key lookups cached per process, dropped at once when any key changes (LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
import structlog

from tierline.store.api_keys import ApiKey, find_api_key_by_hash, hash_key

log = structlog.get_logger(__name__)

CHANNEL = "tierline_api_keys"


class ApiKeyCache:
    """Caches only while the change listener is connected, so a revocation is never missed."""

    def __init__(self, pool: asyncpg.Pool, database_url: str, ttl: float = 30.0) -> None:
        self._pool = pool
        self._database_url = database_url
        self._ttl = ttl
        self._entries: dict[bytes, tuple[ApiKey, float]] = {}
        self._listening = False
        self._task: asyncio.Task[None] | None = None

    async def find(self, key: str) -> ApiKey | None:
        """The live key for this secret; from the cache when it is fresh and trustworthy."""
        return await self.find_hash(hash_key(key))

    async def find_hash(self, digest: bytes) -> ApiKey | None:
        """The live key with this hash (what a board session holds instead of the key)."""
        hit = self._entries.get(digest)
        if hit is not None and self._listening and hit[1] > time.monotonic():
            return hit[0]
        found = await find_api_key_by_hash(self._pool, digest)
        if found is not None and self._listening:
            self._entries[digest] = (found, time.monotonic() + self._ttl)
        return found

    def start(self) -> None:
        """Begin listening for key changes in the background."""
        self._task = asyncio.create_task(self._listen(), name="api-key-listener")

    async def stop(self) -> None:
        """Stop listening and forget everything."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._listening = False
        self._entries.clear()

    def invalidate(self, *_: object) -> None:
        """Forget every cached key (a key changed here or in another process)."""
        self._entries.clear()

    async def _listen(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._database_url)
                await conn.add_listener(CHANNEL, self.invalidate)
                self._entries.clear()
                self._listening = True
                while not conn.is_closed():
                    await asyncio.sleep(1.0)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("api_key_listener_lost", error=repr(exc))
            finally:
                self._listening = False
                self._entries.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close())
            await asyncio.sleep(1.0)
