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

OPEN_STATUSES = ("open", "acknowledged", "on_hold")

# Each filter is NULL when absent; keyset pagination on list_seq (the projector's commit order).
LIST_ISSUES = """
SELECT issue_id, list_seq, vendor_id, title, category, priority, status, tier, assignee,
       external_ref, version, created_at, updated_at, breach_count, escalation_count,
       sla_breached, next_due_at, clocks::text
FROM read.issues
WHERE list_seq > $1
  AND ($2::text[] IS NULL OR vendor_id = ANY($2::text[]))
  AND ($3::text[] IS NULL OR status = ANY($3::text[]))
  AND ($4::int[] IS NULL OR tier = ANY($4::int[]))
  AND ($5::text[] IS NULL OR priority = ANY($5::text[]))
  AND ($6::text[] IS NULL OR category = ANY($6::text[]))
  AND ($7::bool IS NULL OR (breach_count > 0) = $7::bool)
ORDER BY list_seq
LIMIT $8
"""

SCORECARD_TOTALS = """
SELECT coalesce(sum(opened), 0)::int AS opened,
       coalesce(sum(acknowledged), 0)::int AS acknowledged,
       coalesce(sum(resolved), 0)::int AS resolved,
       coalesce(sum(reopened), 0)::int AS reopened,
       coalesce(sum(closed), 0)::int AS closed,
       coalesce(sum(escalations), 0)::int AS escalations,
       coalesce(sum(automatic_escalations), 0)::int AS automatic_escalations,
       coalesce(sum(warnings), 0)::int AS warnings,
       coalesce(sum(breaches), 0)::int AS breaches,
       coalesce(sum(clocks_met), 0)::int AS clocks_met,
       coalesce(sum(ack_seconds_total), 0)::float8 AS ack_seconds_total,
       coalesce(sum(resolve_seconds_total), 0)::float8 AS resolve_seconds_total
FROM read.vendor_daily
WHERE vendor_id = $1 AND day BETWEEN $2 AND $3
"""
SCORECARD_DAYS = """
SELECT day, opened, acknowledged, resolved, reopened, escalations, breaches, clocks_met,
       open_at_end_of_day, mtta_seconds, mttr_seconds, sla_compliance
FROM read.vendor_scorecard_daily
WHERE vendor_id = $1 AND day BETWEEN $2 AND $3
ORDER BY day
"""
BREACHES_BY_TIER = """
SELECT tier, kind, count(*)::int AS count
FROM read.sla_clocks
WHERE vendor_id = $1 AND outcome = 'breached' AND outcome_at >= $2 AND outcome_at < $3
GROUP BY tier, kind
ORDER BY tier, kind
"""
ESCALATIONS_BY_TIER = """
SELECT to_tier, count(*)::int AS count
FROM read.escalations
WHERE vendor_id = $1 AND direction = 'up' AND escalated_at >= $2 AND escalated_at < $3
GROUP BY to_tier
ORDER BY to_tier
"""
OPEN_NOW = """
SELECT count(*)::int FROM read.issues WHERE vendor_id = $1 AND status = ANY($2::text[])
"""


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
        """The filter values as LIST_ISSUES parameters $2..$7."""
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
    rows = await pool.fetch(LIST_ISSUES, after, *filters.params(), limit + 1)
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
        totals = await conn.fetchrow(SCORECARD_TOTALS, vendor_id, start, end)
        assert totals is not None
        return ScorecardRows(
            totals=totals,
            days=list(await conn.fetch(SCORECARD_DAYS, vendor_id, start, end)),
            breaches=list(await conn.fetch(BREACHES_BY_TIER, vendor_id, since, until)),
            escalations=list(await conn.fetch(ESCALATIONS_BY_TIER, vendor_id, since, until)),
            open_now=int(await conn.fetchval(OPEN_NOW, vendor_id, list(OPEN_STATUSES))),
        )
