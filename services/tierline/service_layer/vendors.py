"""Change a vendor: one transaction that checks the version, stores it and records the event.

The SLA engine hears of the change from the log (`vendor_changed` on the governance stream) and
recomputes that vendor's running clocks; this process refreshes its reference data at once so
its own next command already counts business time on the new calendar.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import structlog

from tierline.domain.governance import VendorChange
from tierline.service_layer.reference import ReferenceData
from tierline.store import vendors as vendor_store
from tierline.store.vendors import VendorRecord

log = structlog.get_logger(__name__)


class VendorNotFound(Exception):
    """No vendor with this id."""


class VendorPreconditionFailed(Exception):
    """`If-Match` named a version other than the vendor's current one."""

    def __init__(self, current: int) -> None:
        self.current = current
        super().__init__(f"vendor is at version {current}")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class VendorService:
    """The write path for vendor changes."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        reference: ReferenceData,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._pool = pool
        self._reference = reference
        self._clock = clock

    async def change(
        self, vendor_id: str, change: VendorChange, if_match: int | None = None
    ) -> VendorRecord:
        """Apply a change; raises VendorNotFound, VendorPreconditionFailed, InvalidVendorChange.

        A change that leaves the vendor as it is records nothing and keeps the version.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            current = await vendor_store.lock_vendor(conn, vendor_id)
            if current is None:
                raise VendorNotFound(vendor_id)
            if if_match is not None and if_match != current.version:
                raise VendorPreconditionFailed(current.version)
            vendor = current.vendor.changed(change)
            _, governance = await vendor_store.current_governance(conn)
            vendor.check(governance)
            if vendor == current.vendor:
                return current
            version = await vendor_store.change_vendor(conn, vendor, current.version, self._clock())
        await self._reference.refresh()
        log.info("vendor_changed", vendor_id=vendor_id, version=version)
        return VendorRecord(vendor, version)
