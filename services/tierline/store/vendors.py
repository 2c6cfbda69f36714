"""Vendors and the versioned governance document."""

from __future__ import annotations

import json
from datetime import datetime

import asyncpg

from tierline.domain.events import PolicyChanged
from tierline.domain.governance import DEFAULT_GOVERNANCE, Governance, Vendor
from tierline.store.event_store import NewEvent, append_events, lock_head
from tierline.store.pool import Conn

GOVERNANCE_STREAM = "governance"

INSERT_VENDOR = """
INSERT INTO vendors (id, name, timezone, calendar) VALUES ($1, $2, $3, $4::jsonb)
ON CONFLICT (id) DO NOTHING RETURNING id
"""
SELECT_VENDORS = "SELECT id, name, timezone, calendar::text FROM vendors"
CURRENT_GOVERNANCE = (
    "SELECT version, document::text FROM governance_versions ORDER BY version DESC LIMIT 1"
)
INSERT_GOVERNANCE = "INSERT INTO governance_versions (version, document) VALUES ($1, $2::jsonb)"


class DuplicateVendor(Exception):
    """A vendor with this id exists already."""


def _vendor(row: asyncpg.Record) -> Vendor:
    calendar = json.loads(row[3]) if row[3] is not None else None
    return Vendor(id=row[0], name=row[1], timezone=row[2], calendar=calendar)


async def insert_vendor(conn: Conn | asyncpg.Pool, vendor: Vendor) -> None:
    """Register a vendor; DuplicateVendor when the id is taken."""
    calendar = vendor.model_dump(mode="json")["calendar"]
    row = await conn.fetchrow(
        INSERT_VENDOR,
        vendor.id,
        vendor.name,
        vendor.timezone,
        None if calendar is None else json.dumps(calendar),
    )
    if row is None:
        raise DuplicateVendor(vendor.id)


async def list_vendors(conn: Conn | asyncpg.Pool) -> list[Vendor]:
    """Every vendor, by id."""
    return [_vendor(r) for r in await conn.fetch(SELECT_VENDORS + " ORDER BY id")]


async def get_vendor(conn: Conn | asyncpg.Pool, vendor_id: str) -> Vendor | None:
    """One vendor or None."""
    row = await conn.fetchrow(SELECT_VENDORS + " WHERE id = $1", vendor_id)
    return None if row is None else _vendor(row)


async def current_governance(conn: Conn | asyncpg.Pool) -> tuple[int, Governance]:
    """The governance document in force and its version (0 = the built-in default)."""
    row = await conn.fetchrow(CURRENT_GOVERNANCE)
    if row is None:
        return 0, DEFAULT_GOVERNANCE
    return row[0], Governance.model_validate_json(row[1])


async def replace_governance(conn: Conn, governance: Governance, now: datetime) -> int:
    """Store a new governance version and record it as an event on the governance stream."""
    async with conn.transaction():
        head = await lock_head(conn, GOVERNANCE_STREAM)
        stream_version = 0 if head is None else head[0]
        version, _ = await current_governance(conn)
        version += 1
        document = governance.model_dump_json()
        await conn.execute(INSERT_GOVERNANCE, version, document)
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
