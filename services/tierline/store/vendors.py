"""Vendors (versioned) and the versioned governance document."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from tierline.domain.events import PolicyChanged, VendorChanged
from tierline.domain.governance import DEFAULT_GOVERNANCE, Governance, Vendor
from tierline.sqlfile import load_queries
from tierline.store.event_store import NewEvent, append_events, lock_head
from tierline.store.pool import Conn

GOVERNANCE_STREAM = "governance"

QUERIES = load_queries("tierline.store")


class DuplicateVendor(Exception):
    """A vendor with this id exists already."""


class VendorVersionConflict(Exception):
    """The vendor is not at the version the writer read."""


@dataclass(frozen=True)
class VendorRecord:
    """A stored vendor and its version (1 when registered, +1 per change)."""

    vendor: Vendor
    version: int


def _record(row: asyncpg.Record) -> VendorRecord:
    calendar = json.loads(row["calendar"]) if row["calendar"] is not None else None
    vendor = Vendor(id=row["id"], name=row["name"], timezone=row["timezone"], calendar=calendar)
    return VendorRecord(vendor, row["version"])


def _calendar_json(vendor: Vendor) -> str | None:
    calendar: Any = vendor.model_dump(mode="json")["calendar"]
    return None if calendar is None else json.dumps(calendar)


async def insert_vendor(conn: Conn | asyncpg.Pool, vendor: Vendor) -> None:
    """Register a vendor at version 1; DuplicateVendor when the id is taken."""
    row = await conn.fetchrow(
        QUERIES["insert_vendor"], vendor.id, vendor.name, vendor.timezone, _calendar_json(vendor)
    )
    if row is None:
        raise DuplicateVendor(vendor.id)


async def vendor_records(conn: Conn | asyncpg.Pool) -> list[VendorRecord]:
    """Every vendor with its version, by id."""
    return [_record(r) for r in await conn.fetch(QUERIES["list_vendors"])]


async def vendor_record(conn: Conn | asyncpg.Pool, vendor_id: str) -> VendorRecord | None:
    """One vendor with its version, or None."""
    row = await conn.fetchrow(QUERIES["get_vendor"], vendor_id)
    return None if row is None else _record(row)


async def lock_vendor(conn: Conn, vendor_id: str) -> VendorRecord | None:
    """One vendor, its row locked for this transaction; None when there is no such vendor."""
    row = await conn.fetchrow(QUERIES["lock_vendor"], vendor_id)
    return None if row is None else _record(row)


async def list_vendors(conn: Conn | asyncpg.Pool) -> list[Vendor]:
    """Every vendor, by id."""
    return [record.vendor for record in await vendor_records(conn)]


async def get_vendor(conn: Conn | asyncpg.Pool, vendor_id: str) -> Vendor | None:
    """One vendor or None."""
    record = await vendor_record(conn, vendor_id)
    return None if record is None else record.vendor


async def change_vendor(conn: Conn, vendor: Vendor, expected_version: int, now: datetime) -> int:
    """Store a changed vendor and record it on the governance stream; returns the new version.

    Call inside a transaction. Raises VendorVersionConflict when the stored vendor is not at
    `expected_version` any more.
    """
    # Appends to the governance stream queue here, as in replace_governance; the vendor row
    # (locked before, if at all) is never taken after this lock, so there is no lock cycle.
    head = await lock_head(conn, GOVERNANCE_STREAM)
    version = await conn.fetchval(
        QUERIES["update_vendor"],
        vendor.id,
        vendor.name,
        vendor.timezone,
        _calendar_json(vendor),
        expected_version,
    )
    if version is None:
        raise VendorVersionConflict(vendor.id)
    event = VendorChanged(vendor_id=vendor.id, vendor_version=version, vendor=vendor)
    await append_events(
        conn,
        stream_id=GOVERNANCE_STREAM,
        stream_type="governance",
        vendor_id=None,
        expected_version=0 if head is None else head.version,
        events=[NewEvent(event.event_type(), event.model_dump_json())],
        # The stream's snapshot is the policy version; a vendor change leaves it as it is.
        snapshot_json=json.dumps({"policy_version": 0}) if head is None else head.snapshot_json,
        time=now,
    )
    return int(version)


async def current_governance(conn: Conn | asyncpg.Pool) -> tuple[int, Governance]:
    """The governance document in force and its version (0 = the built-in default)."""
    row = await conn.fetchrow(QUERIES["current_governance"])
    if row is None:
        return 0, DEFAULT_GOVERNANCE
    return row["version"], Governance.model_validate_json(row["document"])


class GovernanceMoved(Exception):
    """The governance document is no longer at the version the change was based on."""

    def __init__(self, current: int) -> None:
        self.current = current
        super().__init__(f"governance is at version {current}")


async def replace_governance(
    conn: Conn, governance: Governance, now: datetime, expected_version: int | None = None
) -> int:
    """Store a new governance version and record it as an event on the governance stream.

    With `expected_version`, only if the document is still at that version (GovernanceMoved
    otherwise): the stream head's lock makes the check and the write one step.
    """
    async with conn.transaction():
        head = await lock_head(conn, GOVERNANCE_STREAM)
        stream_version = 0 if head is None else head.version
        version, _ = await current_governance(conn)
        if expected_version is not None and expected_version != version:
            raise GovernanceMoved(version)
        version += 1
        document = governance.model_dump_json()
        await conn.execute(QUERIES["insert_governance"], version, document)
        event = PolicyChanged(governance=governance, policy_version=version)
        await append_events(
            conn,
            stream_id=GOVERNANCE_STREAM,
            stream_type="governance",
            vendor_id=None,
            expected_version=stream_version,
            events=[NewEvent(event.event_type(), event.model_dump_json())],
            snapshot_json=json.dumps({"policy_version": version}),
            time=now,
        )
    return version
