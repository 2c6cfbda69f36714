"""Read-model queries behind `GET /v1/issues` and the vendor scorecard."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg

from tierline.sqlfile import load_queries

OPEN_STATUSES = ("open", "acknowledged", "on_hold")

QUERIES = load_queries("tierline.projector")


class BadCursor(ValueError):
    """The cursor is not one this API issued for these filters."""


@dataclass(frozen=True)
class IssueFilter:
    """The filters of `GET /v1/issues`; None means "any"."""

    vendor_ids: tuple[str, ...] | None = None
    statuses: tuple[str, ...] | None = None
    tiers: tuple[int, ...] | None = None
    priorities: tuple[str, ...] | None = None
    categories: tuple[str, ...] | None = None
    breached: bool | None = None

    def fingerprint(self) -> str:
        """A short hash tying a cursor to the filters it was issued for."""
        canonical = json.dumps(
            [sorted(v) if isinstance(v, tuple) else v for v in self.__dict__.values()],
            default=str,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def params(self) -> list[Any]:
        """The filter values as `list_issues` parameters $2..$7."""
        return [
            _listed(self.vendor_ids),
            _listed(self.statuses),
            _listed(self.tiers),
            _listed(self.priorities),
            _listed(self.categories),
            self.breached,
        ]


def _listed(values: Sequence[Any] | None) -> list[Any] | None:
    return None if values is None else list(values)


def encode_cursor(list_seq: int, filters: IssueFilter) -> str:
    """An opaque cursor: the position after which the next page starts."""
    raw = json.dumps({"s": list_seq, "f": filters.fingerprint()}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, filters: IssueFilter) -> int:
    """The position in a cursor; BadCursor when it was not made for these filters."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        position = payload["s"]
        fingerprint = payload["f"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise BadCursor("cursor is malformed") from None
    if not isinstance(position, int) or position < 0:
        raise BadCursor("cursor is malformed")
    if fingerprint != filters.fingerprint():
        raise BadCursor("cursor was issued for other filters")
    return position


async def list_issues(
    pool: asyncpg.Pool, filters: IssueFilter, after: int, limit: int
) -> tuple[list[asyncpg.Record], int | None]:
    """One page of issues after a position, and the position to continue from (None: done)."""
    rows = await pool.fetch(QUERIES["list_issues"], after, *filters.params(), limit + 1)
    if len(rows) > limit:
        page = rows[:limit]
        return page, page[-1]["list_seq"]
    return list(rows), None


def day_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    """The UTC instants covering the days `start` to `end` inclusive."""
    return (
        datetime.combine(start, time(), tzinfo=UTC),
        datetime.combine(end + timedelta(days=1), time(), tzinfo=UTC),
    )


@dataclass(frozen=True)
class ScorecardRows:
    """Everything the scorecard needs, read in one transaction."""

    totals: asyncpg.Record
    days: list[asyncpg.Record]
    breaches: list[asyncpg.Record]
    escalations: list[asyncpg.Record]
    open_now: int


async def scorecard_rows(
    pool: asyncpg.Pool, vendor_id: str, start: date, end: date
) -> ScorecardRows:
    """A vendor's figures for the days `start` to `end` (UTC, inclusive), from one snapshot."""
    since, until = day_bounds(start, end)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        totals = await conn.fetchrow(QUERIES["scorecard_totals"], vendor_id, start, end)
        assert totals is not None
        return ScorecardRows(
            totals=totals,
            days=list(await conn.fetch(QUERIES["scorecard_days"], vendor_id, start, end)),
            breaches=list(await conn.fetch(QUERIES["breaches_by_tier"], vendor_id, since, until)),
            escalations=list(
                await conn.fetch(QUERIES["escalations_by_tier"], vendor_id, since, until)
            ),
            open_now=int(
                await conn.fetchval(QUERIES["open_issues_now"], vendor_id, list(OPEN_STATUSES))
            ),
        )
