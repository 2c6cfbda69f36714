"""`tierline replay`: rebuild read models from offset 0 into fresh tables, then swap them in.

1. Under a session lock (one replay at a time), schema `read_replay` gets empty copies of the
   tables being rebuilt (`LIKE ... INCLUDING ALL EXCLUDING INDEXES`); consumer
   `projector-replay` starts afresh.
2. The log's end in every partition is taken first; then the events committed in the event
   store so far are folded through the projector's own fold by worker processes that share the
   streams out (rebuild.py, storereader.py), and the applied versions per stream written once
   each worker flushes. Every event below those ends was committed before it was published, so
   the store holds at least them. The log is then read from the ends, outside any consumer
   group, skipping the versions already applied, to its end and at least as far as the live
   projector (offsets commit with every batch). The copies get the live tables' keys and indexes
   once loaded. Live projectors keep serving and updating the old tables meanwhile. Why this is
   as exact as reading the whole log: docs/adr/0014.
3. One transaction then takes the swap lock exclusively (live projectors pause between
   batches, see gate.py), lets the rebuild reach where the live projector stands, moves the old
   tables out and the new ones into `read` (keeping list order, grants and views), hands the
   replay's offsets to the live projector and records a rebuild; live projectors then
   re-position from the stored offsets. Readers see the old tables or the new, never a mix.

Rebuilding one projection (`--projection NAME`) swaps only its table, so the rebuilt table and the
live ones must stand at the same place: under the swap lock both are advanced to the same
position in every partition (the larger of the two), exactly, and then the live tables get the
events the rebuild read from the store beyond that position (the live projector skips them when
it reads them from the log).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg
import structlog
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from tierline.config import Settings
from tierline.eventlog.consumer import apply_batch, apply_new_events
from tierline.eventlog.kafka import cluster_identity
from tierline.projector.gate import SWAP_LOCK_ID
from tierline.projector.handler import Projector
from tierline.projector.logreader import LogReader, TopicMissing, log_ends, topic_partitions
from tierline.projector.rebuild import (
    MIN_REPLAY_BATCH,
    POLL_MS,
    REPLAY_CONSUMER,
    Rebuilder,
    build_in_workers,
    connection,
    store_share,
    stored_offsets,
    without_cyclic_gc,
)
from tierline.projector.role import CONSUMER_NAME
from tierline.projector.storereader import events_ahead_of
from tierline.projector.tables import (
    LIVE_SCHEMA,
    PROJECTION_TABLES,
    PROJECTIONS,
    REPLAY_SCHEMA,
    RETIRED_SCHEMA,
    ReadTables,
)
from tierline.sqlfile import load_queries
from tierline.store.pool import create_pool

log = structlog.get_logger(__name__)

RUN_LOCK_ID = 7_311_529_012
DEFAULT_MAX_WORKERS = 2

QUERIES = load_queries("tierline.projector")
CONSUMER_QUERIES = load_queries("tierline.eventlog")

# DDL naming schemas and tables: identifiers cannot travel as parameters, and these are
# formatted from the fixed names in tables.py only (never from input).
DROP_SCHEMA = "DROP SCHEMA IF EXISTS {schema} CASCADE"
CREATE_SCHEMA = "CREATE SCHEMA {schema}"
# Indexes come after the bulk load (building one is cheaper than maintaining it row by row),
# except on the small vendor days table, which rebuild workers add to with upserts.
CLONE_TABLE = (
    f"CREATE TABLE {REPLAY_SCHEMA}.{{table}} "
    f"(LIKE {LIVE_SCHEMA}.{{table}} INCLUDING ALL EXCLUDING INDEXES)"
)
CLONE_INDEXED_TABLE = (
    f"CREATE TABLE {REPLAY_SCHEMA}.{{table}} (LIKE {LIVE_SCHEMA}.{{table}} INCLUDING ALL)"
)
INDEXED_DURING_BUILD = frozenset({"vendor_daily"})
MOVE_TABLE = "ALTER TABLE {source}.{table} SET SCHEMA {target}"
DROP_TABLE = "DROP TABLE {schema}.{table}"
REPLACE_VIEW = "CREATE OR REPLACE VIEW read.{name} AS {definition}"


class ReplayBusy(Exception):
    """Another replay holds the run lock."""


class ProgressSink(Protocol):
    """Where a replay reports how far it is."""

    def phase(self, text: str) -> None:
        """A new phase started."""

    def update(self, done: int, total: int | None) -> None:
        """Events read so far, of about `total` in the log."""


class _Quiet:
    def phase(self, text: str) -> None:
        """Nothing to show."""

    def update(self, done: int, total: int | None) -> None:
        """Nothing to show."""


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did."""

    projections: tuple[str, ...]
    events: int
    seconds: float
    swapped: bool
    generation: int | None

    @property
    def events_per_second(self) -> float:
        """Events read (from the store and the log) per second of the whole replay."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


class Replay:
    """One rebuild of some or all projections."""

    def __init__(
        self,
        settings: Settings,
        projections: Sequence[str] = PROJECTIONS,
        *,
        swap: bool = True,
        progress: ProgressSink | None = None,
        workers: int | None = None,
    ) -> None:
        unknown = set(projections) - set(PROJECTIONS)
        if unknown or not projections:
            raise ValueError(f"unknown projection(s) {sorted(unknown)}; known: {PROJECTIONS}")
        self._settings = settings
        self.projections = tuple(p for p in PROJECTIONS if p in projections)
        self._full = set(self.projections) == set(PROJECTIONS)
        self._swap = swap
        self._progress = progress or _Quiet()
        self._topic = settings.kafka_topic
        self._workers = max(1, workers if workers is not None else default_workers(settings))
        self._identity = ""
        self._read = 0

    async def run(self) -> ReplayResult:
        """Rebuild, and swap in unless told not to."""
        started = time.time()
        pool = await create_pool(self._settings.database_url, min_size=2, max_size=6)
        try:
            async with connection(pool) as run_lock:
                if not await run_lock.fetchval(QUERIES["try_run_lock"], RUN_LOCK_ID):
                    raise ReplayBusy("another replay is running")
                try:
                    with without_cyclic_gc():
                        generation = await self._run(pool, started)
                finally:
                    await run_lock.execute(QUERIES["run_unlock"], RUN_LOCK_ID)
        finally:
            await pool.close()
        result = ReplayResult(
            self.projections, self._read, time.time() - started, self._swap, generation
        )
        log.info(
            "replay_finished",
            projections=list(self.projections),
            events=result.events,
            seconds=round(result.seconds, 3),
            swapped=self._swap,
            workers=self._workers,
        )
        return result

    async def _run(self, pool: asyncpg.Pool, started: float) -> int | None:
        bootstrap = self._settings.kafka_bootstrap
        partitions = await topic_partitions(bootstrap, self._topic)
        self._identity = await cluster_identity(bootstrap)
        await self._prepare(pool)
        self._progress.phase("rebuilding")
        rebuilder = await self._build(pool, partitions)
        self._progress.phase("indexing")
        await self._index(pool)
        try:
            await rebuilder.flush(pool)
            if not self._swap:
                return None
            self._progress.phase("swapping")
            return await self._swap_in(pool, rebuilder, partitions, started)
        finally:
            await rebuilder.stop()

    async def _index(self, pool: asyncpg.Pool) -> None:
        """Give the loaded copies the live tables' keys and indexes, under the same names."""
        tables = [
            PROJECTION_TABLES[p] for p in {"issues", *self.projections} - INDEXED_DURING_BUILD
        ]
        # One connection per table: the builds run side by side on the server's cores.
        await asyncio.gather(*(self._index_table(pool, table) for table in tables))

    async def _index_table(self, pool: asyncpg.Pool, table: str) -> None:
        async with connection(pool) as conn, conn.transaction():
            await conn.execute(QUERIES["catalog_search_path"])
            live_table = f"{LIVE_SCHEMA}.{table}"
            keys = await conn.fetch(QUERIES["table_keys"], live_table, REPLAY_SCHEMA)
            statements = [row["statement"] for row in keys]
            for row in await conn.fetch(QUERIES["table_indexes"], live_table):
                on_live, definition = f" ON {live_table} ", row["definition"]
                if on_live not in definition:
                    raise RuntimeError(f"unexpected index definition: {definition}")
                statements.append(definition.replace(on_live, f" ON {REPLAY_SCHEMA}.{table} "))
            for statement in statements:
                await conn.execute(statement)

    def _count(self, done: int, total: int | None) -> None:
        self._read = done
        self._progress.update(done, total)

    async def _build(self, pool: asyncpg.Pool, partitions: list[int]) -> Rebuilder:
        """The store's events, then the log from the ends taken before; returns a rebuilder
        positioned where it ended (its tail's rows are written by the next flush)."""
        ends = await self.log_ends(partitions)
        # Only now the store: its snapshots then hold every event below the ends.
        if self._workers == 1:
            rebuilder = self._rebuilder(partitions, flushed=False, base=0)
            await rebuilder.load_store(pool, store_share(self._settings, 0, 1))
        else:
            read = await build_in_workers(
                self._settings, self.projections, self._identity, self._workers, self._count
            )
            # The workers are gone; this process reads the log's tail after their flush.
            rebuilder = self._rebuilder(partitions, flushed=True, base=read)
        log.info("replay_store_read", events=self._read, log_ends=sum(ends.values()))
        # Every partition gets an offset, so the live projector that takes them over never
        # starts a partition the tail did not touch from the beginning.
        await pool.execute(
            CONSUMER_QUERIES["save_offsets"],
            REPLAY_CONSUMER,
            self._topic,
            list(ends),
            list(ends.values()),
            self._identity,
        )
        try:
            await rebuilder.start(ends)
            await rebuilder.build(pool)
            if self._workers == 1:
                # The first flush COPYs into the unindexed copies; later ones upsert after
                # `_index`.
                await rebuilder.flush(pool)
        except BaseException:
            await rebuilder.stop()
            raise
        return rebuilder

    async def log_ends(self, partitions: list[int]) -> dict[int, int]:
        """Where the log ends in every partition now (the store is read after this)."""
        return await log_ends(self._settings.kafka_bootstrap, self._topic, partitions)

    def _rebuilder(self, partitions: list[int], *, flushed: bool, base: int) -> Rebuilder:
        def progress(done: int, total: int | None) -> None:
            self._count(base + done, total)

        return Rebuilder(
            self._settings,
            self.projections,
            partitions,
            self._identity,
            flushed=flushed,
            progress=progress,
        )

    async def _prepare(self, pool: asyncpg.Pool) -> None:
        """Empty copies of the tables to rebuild; the replay consumer starts from nothing."""
        async with connection(pool) as conn, conn.transaction():
            await conn.execute(DROP_SCHEMA.format(schema=REPLAY_SCHEMA))
            await conn.execute(CREATE_SCHEMA.format(schema=REPLAY_SCHEMA))
            # The issues table always exists: the fold looks up issues it has not seen open.
            for projection in {"issues", *self.projections}:
                clone = CLONE_INDEXED_TABLE if projection in INDEXED_DURING_BUILD else CLONE_TABLE
                await conn.execute(clone.format(table=PROJECTION_TABLES[projection]))
            await conn.execute(QUERIES["forget_offsets"], REPLAY_CONSUMER)
            await conn.execute(QUERIES["forget_streams"], REPLAY_CONSUMER)
        log.info(
            "replay_started",
            projections=list(self.projections),
            topic=self._topic,
            workers=self._workers,
        )

    async def _swap_in(
        self, pool: asyncpg.Pool, rebuilder: Rebuilder, partitions: list[int], started: float
    ) -> int:
        async with connection(pool) as conn, conn.transaction():
            await conn.execute(QUERIES["take_swap_lock"], SWAP_LOCK_ID)
            live = await stored_offsets(conn, CONSUMER_NAME, self._topic, self._identity)
            if self._full:
                await rebuilder.catch_up(pool, live)
            else:
                await self._align(pool, rebuilder, partitions, live)
            await rebuilder.flush(pool)
            await self._switch(conn)
            generation = int(
                await conn.fetchval(
                    QUERIES["record_rebuild"], list(self.projections), started, self._read
                )
            )
        log.info("replay_swapped", projections=list(self.projections), generation=generation)
        return generation

    async def _align(
        self, pool: asyncpg.Pool, rebuilder: Rebuilder, partitions: list[int], live: dict[int, int]
    ) -> None:
        """Bring the rebuilt and the live tables to the same offsets, exactly."""
        positions = rebuilder.reader.positions
        target = {p: max(live.get(p, 0), positions.get(p, 0)) for p in partitions}
        await rebuilder.read_exactly_to(pool, target)
        batch_size = max(self._settings.consumer_batch_size, MIN_REPLAY_BATCH)
        catching_up = LogReader(self._settings.kafka_bootstrap, self._topic, batch_size)
        await catching_up.start(partitions, live)
        catching_up.limit_to(target)
        handler = Projector(ReadTables(LIVE_SCHEMA), live=True)
        try:
            while not catching_up.at_end():
                records = await catching_up.read(POLL_MS)
                if records:
                    async with connection(pool) as conn:
                        await apply_batch(
                            conn, CONSUMER_NAME, self._topic, self._identity, records, handler
                        )
        finally:
            await catching_up.stop()
        # The rebuild read events from the store that the log holds beyond `target` (or not yet):
        # the live tables get them too; the live projector skips them when it reads them.
        async with connection(pool) as conn, conn.transaction():
            ahead = await events_ahead_of(conn, REPLAY_CONSUMER, CONSUMER_NAME)
            if ahead:
                await apply_new_events(conn, CONSUMER_NAME, ahead, handler)

    async def _switch(self, conn: asyncpg.Connection) -> None:
        """Move the rebuilt tables into `read` in the caller's transaction."""
        tables = [PROJECTION_TABLES[p] for p in self.projections]
        await conn.execute(QUERIES["catalog_search_path"])
        views = await conn.fetch(QUERIES["view_definitions"])
        await conn.execute(QUERIES["reset_search_path"])
        if "issues" in self.projections:
            await conn.execute(QUERIES["carry_list_seq"])
            await conn.execute(QUERIES["number_new_issues"])
        await conn.execute(DROP_SCHEMA.format(schema=RETIRED_SCHEMA))
        await conn.execute(CREATE_SCHEMA.format(schema=RETIRED_SCHEMA))
        for table in tables:
            await _copy_grants(conn, table)
            await conn.execute(
                MOVE_TABLE.format(source=LIVE_SCHEMA, table=table, target=RETIRED_SCHEMA)
            )
            await conn.execute(
                MOVE_TABLE.format(source=REPLAY_SCHEMA, table=table, target=LIVE_SCHEMA)
            )
        for view in views:
            definition = REPLACE_VIEW.format(name=view["name"], definition=view["definition"])
            await conn.execute(definition)
        for table in tables:
            # No CASCADE: a view elsewhere still reading the old table stops the swap instead.
            await conn.execute(DROP_TABLE.format(schema=RETIRED_SCHEMA, table=table))
        await conn.execute(DROP_SCHEMA.format(schema=RETIRED_SCHEMA))
        await conn.execute(DROP_SCHEMA.format(schema=REPLAY_SCHEMA))
        if self._full:
            await conn.execute(QUERIES["forget_topic_offsets"], CONSUMER_NAME, self._topic)
            await conn.execute(
                QUERIES["take_over_offsets"], CONSUMER_NAME, REPLAY_CONSUMER, self._topic
            )
            await conn.execute(QUERIES["forget_streams"], CONSUMER_NAME)
            await conn.execute(QUERIES["take_over_streams"], CONSUMER_NAME, REPLAY_CONSUMER)
        await conn.execute(QUERIES["forget_offsets"], REPLAY_CONSUMER)
        await conn.execute(QUERIES["forget_streams"], REPLAY_CONSUMER)


def default_workers(settings: Settings) -> int:
    """Rebuild processes: `replay_workers` when configured, else one per CPU, at most two."""
    configured = getattr(settings, "replay_workers", None)
    if isinstance(configured, int):
        return configured
    return min(DEFAULT_MAX_WORKERS, os.cpu_count() or 1)


async def _copy_grants(conn: asyncpg.Connection, table: str) -> None:
    live_table = f"{LIVE_SCHEMA}.{table}"
    grants = await conn.fetch(QUERIES["copy_grants"], live_table, REPLAY_SCHEMA, table)
    for grant in grants:
        await conn.execute(grant["statement"])


class RichProgress:
    """A rich progress bar on stderr: events read, events/s, and how far behind the log end."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID = progress.add_task("starting", total=None, rate=0.0, lag="?")
        self._started = time.monotonic()

    def phase(self, text: str) -> None:
        """Show the phase in the description."""
        self._progress.update(self._task, description=text)

    def update(self, done: int, total: int | None) -> None:
        """Advance the bar."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        lag = "?" if total is None else f"{max(total - done, 0):,}"
        self._progress.update(
            self._task,
            completed=done,
            total=None if total is None else max(total, done),
            rate=done / elapsed,
            lag=lag,
        )


def progress_bar(console: Console) -> Progress:
    """The columns `tierline replay` shows."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>9,.0f} events/s"),
        TextColumn("lag {task.fields[lag]}"),
        TimeElapsedColumn(),
        console=console,
    )


async def replay_command(
    settings: Settings, projection: str | None, *, scratch: bool = False
) -> int:
    """`tierline replay [--projection NAME] [--scratch]`: rebuild and swap in, with a progress
    bar; with `scratch`, leave the rebuild in schema read_replay and swap nothing."""
    projections = PROJECTIONS if projection is None else (projection,)
    console = Console(stderr=True)
    if projection is not None and projection not in PROJECTIONS:
        console.print(f"tierline replay: unknown projection {projection!r}; known: {PROJECTIONS}")
        return 2
    with progress_bar(console) as bar:
        replay = Replay(settings, projections, swap=not scratch, progress=RichProgress(bar))
        try:
            result = await replay.run()
        except ReplayBusy as exc:
            console.print(f"tierline replay: {exc}")
            return 1
        except TopicMissing as exc:
            console.print(f"tierline replay: topic {exc} does not exist; nothing to replay")
            return 1
    where = (
        f"left in schema {REPLAY_SCHEMA}, the live tables untouched"
        if scratch
        else f"swapped in as rebuild {result.generation}"
    )
    console.print(
        f"rebuilt {', '.join(result.projections)} from {result.events:,} events in "
        f"{result.seconds:.1f}s ({result.events_per_second:,.0f} events/s); {where}"
    )
    return 0
