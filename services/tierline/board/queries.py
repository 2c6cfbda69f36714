"""The board's reads: the overview, a vendor's weekly series and its monthly report.

Everything here reads the read models (eventually consistent, like `GET /v1/issues`); the
issue page reads the write side through the service layer instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

from tierline.projector.queries import OPEN_STATUSES
from tierline.sqlfile import load_queries

QUERIES = load_queries("tierline.board")
AT_RISK_LIMIT = 25
RECENT_LIMIT = 50


@dataclass(frozen=True)
class OverviewFilter:
    """The overview's filters; None means any. A vendor key's scope is applied by the caller."""

    vendor_ids: tuple[str, ...] | None = None
    categories: tuple[str, ...] | None = None
    priorities: tuple[str, ...] | None = None

    def params(self) -> list[list[str] | None]:
        """The filters as the $2..$4 parameters of the overview queries."""
        return [
            None if values is None else list(values)
            for values in (self.vendor_ids, self.categories, self.priorities)
        ]


@dataclass(frozen=True)
class OverviewRows:
    """Everything the overview shows, read from one snapshot."""

    by_tier_status: list[asyncpg.Record]
    at_risk: list[asyncpg.Record]
    breaches: list[asyncpg.Record]
    escalations: list[asyncpg.Record]


async def overview_rows(
    pool: asyncpg.Pool, filters: OverviewFilter, since: datetime
) -> OverviewRows:
    """The overview's figures within the filters; breaches and escalations since `since`."""
    scoped = filters.params()
    statuses = list(OPEN_STATUSES)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        return OverviewRows(
            by_tier_status=list(
                await conn.fetch(QUERIES["open_by_tier_status"], statuses, *scoped)
            ),
            at_risk=list(
                await conn.fetch(QUERIES["clocks_at_risk"], statuses, *scoped, AT_RISK_LIMIT)
            ),
            breaches=list(
                await conn.fetch(QUERIES["breaches_since"], since, *scoped, RECENT_LIMIT)
            ),
            escalations=list(
                await conn.fetch(QUERIES["escalations_since"], since, *scoped, RECENT_LIMIT)
            ),
        )


@dataclass(frozen=True)
class VendorSeries:
    """What a vendor's charts draw: weekly figures and breaches by category."""

    weeks: list[asyncpg.Record]
    breaches_by_category: list[asyncpg.Record]


async def vendor_series(
    pool: asyncpg.Pool, vendor_id: str, start: date, end: date, since: datetime, until: datetime
) -> VendorSeries:
    """A vendor's weekly figures for the days `start`..`end` and breaches in [since, until)."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        return VendorSeries(
            weeks=list(await conn.fetch(QUERIES["weekly_figures"], vendor_id, start, end)),
            breaches_by_category=list(
                await conn.fetch(QUERIES["breaches_by_category"], vendor_id, since, until)
            ),
        )


async def escalations_to_tier(
    pool: asyncpg.Pool, vendor_id: str, tier: int, since: datetime, until: datetime
) -> list[asyncpg.Record]:
    """Escalations of a vendor's issues that reached `tier` or above in [since, until)."""
    return list(await pool.fetch(QUERIES["escalations_to_tier"], vendor_id, tier, since, until))


async def open_breaches(pool: asyncpg.Pool, vendor_id: str) -> list[asyncpg.Record]:
    """A vendor's open issues whose current clocks are breached."""
    return list(await pool.fetch(QUERIES["open_breaches"], vendor_id, list(OPEN_STATUSES)))
