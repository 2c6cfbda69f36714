"""The projector's batch handler: load the touched issues, fold the batch, write it set-based."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

import asyncpg
import structlog
from prometheus_client import Counter, Histogram

from tierline.eventlog.cloudevents import LogEvent
from tierline.projector.fold import (
    DAILY_FIELDS,
    BatchChanges,
    ClockChange,
    DailyCounts,
    IssueRow,
    fold,
    short_name,
)
from tierline.projector.tables import (
    PROJECTIONS,
    ReadTables,
    copy_clocks,
    copy_issues,
    load_issues,
    write_clocks,
    write_daily,
    write_escalations,
    write_issues,
    write_timeline,
)
from tierline.sqlfile import load_queries

log = structlog.get_logger(__name__)

QUERIES = load_queries("tierline.projector")

ROWS_WRITTEN = Counter(
    "tierline_projector_rows_written_total", "Read-model rows written", ["schema", "table"]
)
UNPROJECTABLE = Counter(
    "tierline_projector_events_unprojectable_total",
    "Issue events that arrived before their issue's opened event",
    ["schema"],
)
APPLY_SECONDS = Histogram(
    "tierline_projector_apply_seconds",
    "Time to fold and write one batch (inside its transaction)",
    ["schema"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


@dataclass
class PendingRows:
    """A replay's latest issue and clock rows and its day totals, not written yet."""

    issues: dict[str, IssueRow] = field(default_factory=dict)
    created: set[str] = field(default_factory=set)
    clocks: dict[tuple[str, str], ClockChange] = field(default_factory=dict)
    daily: dict[tuple[str, date], DailyCounts] = field(default_factory=dict)
    flushed_once: bool = False

    def absorb(self, changes: BatchChanges) -> None:
        """Keep the last state of each row and add up the day counts."""
        self.issues.update(changes.issues)
        self.created.update(changes.new_issues)
        self.clocks.update(changes.clocks)
        for key, counts in changes.daily.items():
            total = self.daily.get(key)
            if total is None:
                self.daily[key] = counts
                continue
            for name in DAILY_FIELDS:
                setattr(total, name, getattr(total, name) + getattr(counts, name))


class Projector:
    """A `BatchHandler` writing the read models of one schema.

    Issue rows are cached between batches and trusted only when the cached version is the one
    just before the batch's first event for that issue, so a rolled-back batch, a rebalance or
    another projector's work simply means reading the row again. A `live` projector serves
    readers: new issues are numbered in commit order, its cache is bounded and it reports event
    times for the freshness metric. A replay's (not live) cache holds every issue, so it never
    reads back what it wrote; nobody reads its tables before the swap, so it appends timeline and
    escalation rows batch by batch but writes issue, clock and day rows once, when flushed.
    """

    def __init__(
        self,
        tables: ReadTables,
        projections: Sequence[str] = PROJECTIONS,
        *,
        live: bool = True,
        flushed: bool = False,
        cache_limit: int = 50_000,
    ) -> None:
        self.tables = tables
        self.projections = frozenset(projections)
        self.live = live
        self._cache_limit: int | None = cache_limit if live else None
        self._cache: dict[str, IssueRow] = {}
        # `flushed`: the rebuild tables already hold rows (written by another process).
        self._pending = None if live else PendingRows(flushed_once=flushed)
        self.applied_times: list[datetime] = []

    async def apply(self, conn: asyncpg.Connection, events: Sequence[LogEvent]) -> None:
        """Fold the new events and write every selected projection in the caller's transaction."""
        started = time.perf_counter()
        issue_events = [e for e in events if short_name(e.type) is not None]
        if not issue_events:
            return
        states = await self._states(conn, issue_events)
        changes = fold(states, issue_events)
        self._report(changes)
        if self._pending is None:
            await self._write(conn, changes)
        else:
            # A replay that dies starts over from nothing, so its batches need not wait for
            # their commit to reach the disk; the swap itself commits durably.
            await conn.execute(QUERIES["async_commit"])
            await self._append(conn, changes)
            self._pending.absorb(changes)
        self._remember(changes)
        if self.live:
            self.applied_times.extend(e.time for e in issue_events)
        APPLY_SECONDS.labels(self.tables.schema).observe(time.perf_counter() - started)

    async def flush(self, conn: asyncpg.Connection) -> None:
        """Write a replay's pending rows: COPY into the empty tables, upserts once they are not.

        Issue rows are written even when issues are not being rebuilt: they are the state the
        process finishing a rebuild after its workers reads back. Vendor days are always added
        with upserts, as rebuild workers share them.
        """
        pending = self._pending
        if pending is None:
            return
        selected, tables = self.projections, self.tables
        async with conn.transaction():
            if not pending.flushed_once:
                await copy_issues(conn, tables, list(pending.issues.values()))
                if "sla_clocks" in selected:
                    await copy_clocks(conn, tables, pending.clocks.values())
                await self._write(conn, BatchChanges(daily=pending.daily), only=("vendor_daily",))
            else:
                fresh = [i for i in pending.issues if i in pending.created]
                changes = BatchChanges(
                    issues=pending.issues, new_issues=fresh, clocks=pending.clocks,
                    daily=pending.daily,
                )  # fmt: skip
                await write_issues(conn, tables, changes, ordered=False)
                await self._write(conn, changes, only=("sla_clocks", "vendor_daily"))
        self._pending = PendingRows(flushed_once=True)

    def forget(self) -> None:
        """Drop cached rows (the tables were swapped under us)."""
        self._cache.clear()

    def take_applied_times(self) -> list[datetime]:
        """Event times applied since the last call (for the freshness metric)."""
        times, self.applied_times = self.applied_times, []
        return times

    async def _states(
        self, conn: asyncpg.Connection, events: Sequence[LogEvent]
    ) -> dict[str, IssueRow]:
        first: dict[str, int] = {}
        for event in events:
            first.setdefault(event.stream_id, event.version)
        states: dict[str, IssueRow] = {}
        missing: list[str] = []
        for stream_id, version in first.items():
            cached = self._cache.get(stream_id)
            if cached is not None and cached.version == version - 1:
                states[stream_id] = cached
            elif version > 1:
                missing.append(stream_id)
        if missing:
            states.update(await load_issues(conn, self.tables, missing))
        return states

    async def _write(
        self,
        conn: asyncpg.Connection,
        changes: BatchChanges,
        only: tuple[str, ...] = PROJECTIONS,
    ) -> None:
        selected = self.projections.intersection(only)
        counts: dict[str, int] = {}
        if "issues" in selected:
            counts["issues"] = await write_issues(conn, self.tables, changes, self.live)
        if "timeline" in selected:
            counts["issue_timeline"] = await write_timeline(conn, self.tables, changes)
        if "escalations" in selected:
            counts["escalations"] = await write_escalations(conn, self.tables, changes)
        if "sla_clocks" in selected:
            counts["sla_clocks"] = await write_clocks(conn, self.tables, changes)
        if "vendor_daily" in selected:
            counts["vendor_daily"] = await write_daily(conn, self.tables, changes)
        for table, count in counts.items():
            ROWS_WRITTEN.labels(self.tables.schema, table).inc(count)

    async def _append(self, conn: asyncpg.Connection, changes: BatchChanges) -> None:
        """A replay's batch: only the append-only tables are written now."""
        await self._write(conn, changes, only=("timeline", "escalations"))

    def _report(self, changes: BatchChanges) -> None:
        schema = self.tables.schema
        for stream_id, version in changes.unprojectable:
            UNPROJECTABLE.labels(schema).inc()
            log.warning("projector_event_before_open", stream_id=stream_id, version=version)
        for stream_id, expected, got in changes.gaps:
            log.warning("projector_version_gap", stream_id=stream_id, expected=expected, got=got)

    def _remember(self, changes: BatchChanges) -> None:
        for issue_id, row in changes.issues.items():
            self._cache.pop(issue_id, None)
            self._cache[issue_id] = row
        limit = self._cache_limit
        if limit is not None and len(self._cache) > limit:
            # Forget the least recently touched half; they are read again when needed.
            for issue_id in list(itertools.islice(self._cache, len(self._cache) // 2)):
                del self._cache[issue_id]
