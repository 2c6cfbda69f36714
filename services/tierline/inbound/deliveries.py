"""The inbound delivery log in PostgreSQL: one row per verified delivery id, and refusals.

A verified delivery's row is claimed in the unit of work that runs its command, so the claim,
the events and the record commit together: a redelivery of the same id finds the row and changes
nothing. A delivery that failed (its payload could not be mapped) may be run again, so fixing a
mapping and redelivering from the tool works. Refused signatures claim no id (an attacker must
not be able to block a real delivery id) and only the newest 50 per source are kept.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from tierline.sqlfile import load_queries
from tierline.webhooks.subscriptions import Conn

Outcome = Literal["applied", "ignored", "failed", "rejected"]
QUERIES = load_queries("tierline.inbound")


@dataclass(frozen=True)
class Delivery:
    """What arrived, and what became of it."""

    id: uuid.UUID
    delivery_id: str
    verified: bool
    event: str | None
    ticket_key: str | None
    vendor_id: str | None
    issue_id: str | None
    outcome: Outcome
    commands: list[dict[str, Any]]
    error: str | None
    received_at: datetime


def _delivery(row: asyncpg.Record) -> Delivery:
    values = dict(row)
    values["commands"] = json.loads(values["commands"])
    return Delivery(**values)


async def record_rejected(
    conn: Conn, source_id: uuid.UUID, claimed_id: str, vendor_id: str | None, reason: str
) -> None:
    """Record a refused signature (the id it claimed proves nothing and claims nothing)."""
    await conn.execute(
        QUERIES["record_rejected"], uuid.uuid4(), source_id, claimed_id, vendor_id, reason
    )


async def claim(conn: Conn, source_id: uuid.UUID, delivery_id: str) -> uuid.UUID | None:
    """Claim a verified delivery id in the caller's transaction; None when it was recorded."""
    found: uuid.UUID | None = await conn.fetchval(
        QUERIES["claim_delivery"], uuid.uuid4(), source_id, delivery_id
    )
    return found


@dataclass(frozen=True)
class Result:
    """What a claimed delivery turned out to be."""

    outcome: Outcome
    event: str | None = None
    ticket_key: str | None = None
    vendor_id: str | None = None
    issue_id: str | None = None
    commands: tuple[dict[str, Any], ...] = ()
    error: str | None = None


async def complete(conn: Conn, row_id: uuid.UUID, result: Result) -> None:
    """Store the result with the effects."""
    await conn.execute(
        QUERIES["complete_delivery"],
        row_id,
        result.event,
        result.ticket_key,
        result.vendor_id,
        result.issue_id,
        result.outcome,
        json.dumps(list(result.commands)),
        result.error,
    )


async def by_delivery_id(conn: Conn, source_id: uuid.UUID, delivery_id: str) -> Delivery | None:
    """The record of a verified delivery id."""
    row = await conn.fetchrow(QUERIES["delivery_by_key"], source_id, delivery_id)
    return None if row is None else _delivery(row)


async def list_deliveries(
    conn: Conn,
    source_id: uuid.UUID,
    *,
    vendor_id: str | None,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Delivery]:
    """Newest first, before the cursor; only one vendor's when `vendor_id` is given."""
    received, last_id = before if before is not None else (None, None)
    rows = await conn.fetch(
        QUERIES["list_deliveries"], source_id, vendor_id, received, last_id, limit
    )
    return [_delivery(r) for r in rows]
