"""How live projectors and a replay's swap take turns: one advisory lock, shared per batch.

Each live projector batch (fetch, fold, write, commit) runs while its process holds the swap lock
in shared mode on a connection of its own; a replay takes it exclusively for the swap, in the
transaction that moves the rebuilt tables in. So a swap never happens in the middle of a batch,
and batches wait (the projector pauses) for the few moments a swap takes. The lock is tried, not
awaited, so a paused projector still stops promptly; PostgreSQL queues new shared requests behind
a waiting exclusive one, so the swap is not starved.
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog
from prometheus_client import Counter, Gauge

from tierline.sqlfile import load_queries

log = structlog.get_logger(__name__)

SWAP_LOCK_ID = 7_311_529_011
PAUSE_POLL_SECONDS = 0.1

QUERIES = load_queries("tierline.projector")

PAUSED = Gauge("tierline_projector_paused", "1 while the projector waits for a replay's swap")
PAUSES = Counter("tierline_projector_pauses_total", "Times the projector waited for a swap")


class ReplayGate:
    """The shared side of the swap lock, on a dedicated connection."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._conn: asyncpg.Connection | None = None

    async def enter(self, stop: asyncio.Event) -> int | None:
        """Hold the lock in shared mode; returns the rebuild generation, None if stopped first."""
        conn = await self._connection()
        paused = False
        try:
            while True:
                row = await conn.fetchrow(QUERIES["try_enter_gate"], SWAP_LOCK_ID)
                assert row is not None
                if row["entered"]:
                    return int(row["generation"])
                if not paused:
                    paused = True
                    PAUSES.inc()
                    PAUSED.set(1)
                    log.info("projector_paused_for_swap")
                if stop.is_set():
                    return None
                await asyncio.sleep(PAUSE_POLL_SECONDS)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await self.close()
            raise
        finally:
            if paused:
                PAUSED.set(0)
                log.info("projector_resumed")

    async def leave(self) -> None:
        """Release the shared hold taken by `enter`."""
        if self._conn is None:
            return
        try:
            await self._conn.execute(QUERIES["leave_gate"], SWAP_LOCK_ID)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection (which releases any hold)."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            await conn.close()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self._database_url, server_settings={"application_name": "tierline-projector-gate"}
            )
        return self._conn
