"""In-process cache of the governance document and vendors, refreshed on a short interval."""

from __future__ import annotations

import time

import asyncpg

from tierline.domain.calendar import BusinessCalendar
from tierline.domain.governance import Governance, Vendor
from tierline.domain.issue import Rules
from tierline.store import vendors as vendor_store


class ReferenceData:
    """Governance and vendor lookups for decisions; a change elsewhere is seen within `ttl`."""

    def __init__(self, pool: asyncpg.Pool, ttl: float = 2.0) -> None:
        self._pool = pool
        self._ttl = ttl
        self._loaded_at = -1e9
        self.governance_version = 0
        self.governance: Governance | None = None
        self._vendors: dict[str, Vendor] = {}
        self._calendars: dict[str, BusinessCalendar] = {}

    async def refresh(self) -> None:
        """Reload everything now."""
        version, governance = await vendor_store.current_governance(self._pool)
        vendors = await vendor_store.list_vendors(self._pool)
        self.governance_version, self.governance = version, governance
        self._vendors = {v.id: v for v in vendors}
        self._calendars = {}
        self._loaded_at = time.monotonic()

    async def _fresh(self) -> Governance:
        if self.governance is None or time.monotonic() - self._loaded_at > self._ttl:
            await self.refresh()
        assert self.governance is not None
        return self.governance

    async def vendor(self, vendor_id: str) -> Vendor | None:
        """A vendor by id (reloading once on a miss, since it may be new)."""
        await self._fresh()
        if vendor_id not in self._vendors:
            await self.refresh()
        return self._vendors.get(vendor_id)

    async def rules_for(self, vendor_id: str) -> Rules | None:
        """Governance plus the vendor's business calendar, or None for an unknown vendor."""
        governance = await self._fresh()
        vendor = await self.vendor(vendor_id)
        if vendor is None:
            return None
        calendar = self._calendars.get(vendor_id)
        if calendar is None:
            calendar = BusinessCalendar(vendor.calendar_spec(governance))
            self._calendars[vendor_id] = calendar
        return Rules(governance=governance, calendar=calendar)
