"""In-process cache of the governance document and vendors, refreshed on a short interval.

Writers in this process refresh it at once after a change; other processes see a change within
`ttl`, or at once where it matters: the SLA engine asks for the vendor version named by a
`vendor_changed` event before it recomputes clocks (`ensure_vendor_version`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg

from tierline.domain.calendar import BusinessCalendar
from tierline.domain.governance import Governance, Vendor
from tierline.domain.issue import Rules
from tierline.store import vendors as vendor_store
from tierline.store.pool import Conn


class ReferenceData:
    """Governance and vendor lookups for decisions; a change elsewhere is seen within `ttl`."""

    def __init__(self, pool: asyncpg.Pool, ttl: float = 2.0) -> None:
        self._pool = pool
        self._ttl = ttl
        self._loaded_at = -1e9
        self.governance_version = 0
        self.governance: Governance | None = None
        self._vendors: dict[str, Vendor] = {}
        self._vendor_versions: dict[str, int] = {}
        self._calendars: dict[str, BusinessCalendar] = {}
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _connection(self, conn: Conn | None) -> AsyncIterator[Conn]:
        """`conn`, or one borrowed from the pool for the block."""
        if conn is not None:
            yield conn
        else:
            async with self._pool.acquire() as own:
                yield own

    async def refresh(self, conn: Conn | None = None) -> None:
        """Reload everything now (through `conn` when the caller already holds one)."""
        # The connection first, then the lock: the holder of the lock never waits for the pool.
        # Taken the other way round, a reload waiting for a connection while holding the lock
        # waits forever once every pooled connection is held by a caller waiting for the lock
        # (a unit of work reloading through its own connection): the API stopped answering
        # under load that way, with PostgreSQL idle.
        async with self._connection(conn) as own, self._lock:
            await self._load(own)

    async def _load(self, conn: Conn) -> None:
        version, governance = await vendor_store.current_governance(conn)
        records = await vendor_store.vendor_records(conn)
        self.governance_version, self.governance = version, governance
        self._vendors = {r.vendor.id: r.vendor for r in records}
        self._vendor_versions = {r.vendor.id: r.version for r in records}
        # Calendars are built from the vendors and the governance document just replaced.
        self._calendars = {}
        self._loaded_at = time.monotonic()

    async def _fresh(self, conn: Conn | None) -> Governance:
        if self.governance is None or time.monotonic() - self._loaded_at > self._ttl:
            loaded_at = self._loaded_at
            if conn is None:
                # A reload in progress may leave the data fresh: wait it out holding nothing
                # (its holder has its connection), and borrow one only if still needed.
                async with self._lock:
                    pass
            if self._loaded_at == loaded_at:
                # As in `refresh`: a connection before the lock, never the other way round.
                async with self._connection(conn) as own, self._lock:
                    if self._loaded_at == loaded_at:  # nobody refreshed while we waited
                        await self._load(own)
        assert self.governance is not None
        return self.governance

    async def vendor(self, vendor_id: str, conn: Conn | None = None) -> Vendor | None:
        """A vendor by id (reloading once on a miss, since it may be new)."""
        await self._fresh(conn)
        if vendor_id not in self._vendors:
            await self.refresh(conn)
        return self._vendors.get(vendor_id)

    async def ensure_vendor_version(
        self, vendor_id: str, version: int, conn: Conn | None = None
    ) -> None:
        """Reload now unless the cached vendor is at `version` or newer already."""
        if self._vendor_versions.get(vendor_id, 0) < version:
            await self.refresh(conn)

    async def rules_for(self, vendor_id: str, conn: Conn | None = None) -> Rules | None:
        """Governance plus the vendor's business calendar, or None for an unknown vendor.

        Callers inside a transaction pass their connection: borrowing a second one from the
        pool while holding the first deadlocks once every connection is held that way.
        """
        governance = await self._fresh(conn)
        vendor = await self.vendor(vendor_id, conn)
        if vendor is None:
            return None
        calendar = self._calendars.get(vendor_id)
        if calendar is None:
            calendar = BusinessCalendar(vendor.calendar_spec(governance))
            self._calendars[vendor_id] = calendar
        return Rules(governance=governance, calendar=calendar)
