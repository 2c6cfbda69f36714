"""The projector's batch handler: load the touched issues, fold the batch, write it set-based."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from datetime import datetime

import asyncpg
import structlog
from prometheus_client import Counter, Histogram

from tierline.eventlog.cloudevents import LogEvent
from tierline.projector.fold import BatchChanges, IssueRow, fold, short_name
from tierline.projector.tables import (
    PROJECTIONS,
    ReadTables,
    load_issues,
    write_clocks,
    write_daily,
    write_escalations,
    write_issues,
    write_timeline,
)

log = structlog.get_logger(__name__)

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


class Projector:
    """A `BatchHandler` writing the read models of one schema.

    Issue rows are cached between batches and trusted only when the cached version is the one
    just before the batch's first event for that issue, so a rolled-back batch, a rebalance or
    another projector's work simply means reading the row again. A `live` projector serves
    readers: new issues are numbered in commit order, its cache is bounded and it reports event
    times for the freshness metric. A replay's (not live) cache holds every issue, so it never
    reads back what it wrote and may skip writing projections it is not rebuilding.
    """

    def __init__(
        self,
        tables: ReadTables,
        projections: Sequence[str] = PROJECTIONS,
        *,
        live: bool = True,
        cache_limit: int = 50_000,
    ) -> None:
        self.tables = tables
        self.projections = frozenset(projections)
        self.live = live
        self._cache_limit: int | None = cache_limit if live else None
        self._cache: dict[str, IssueRow] = {}
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
        await self._write(conn, changes)
        self._remember(changes)
        if self.live:
            self.applied_times.extend(e.time for e in issue_events)
        APPLY_SECONDS.labels(self.tables.schema).observe(time.perf_counter() - started)

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

    async def _write(self, conn: asyncpg.Connection, changes: BatchChanges) -> None:
        selected = self.projections
        schema = self.tables.schema
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
            ROWS_WRITTEN.labels(schema, table).inc(count)

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
