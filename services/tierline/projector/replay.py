"""`tierline replay`: rebuild read models from offset 0 into fresh tables, then swap them in.

1. Under a session lock (one replay at a time), schema `read_replay` gets empty copies of the
   tables being rebuilt (`LIKE ... INCLUDING ALL`); consumer `projector-replay` starts afresh.
2. The log is read from the beginning of every partition, outside any consumer group, through
   the projector's own fold and writes (`apply_batch`, so offsets and applied versions commit
   with every batch). Live projectors keep serving and updating the old tables meanwhile.
3. Once caught up, one transaction takes the swap lock exclusively (live projectors pause between
   batches, see gate.py), lets the rebuild reach where the live projector stands, moves the old
   tables out and the new ones into `read` (keeping list order, index names, grants and views),
   hands the replay's offsets to the live projector and records a rebuild; live projectors
   then re-position from the stored offsets. Readers see the old tables or the new, never a mix.

Rebuilding one projection (`--projection NAME`) swaps only its table, so the rebuilt table and the
live ones must stand at the same offsets: under the swap lock both are advanced to the same
position in every partition (the larger of the two), exactly.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

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
from tierline.eventlog.consumer import Record, apply_batch
from tierline.eventlog.kafka import cluster_identity
from tierline.projector.gate import SWAP_LOCK_ID
from tierline.projector.handler import Projector
from tierline.projector.logreader import LogReader, TopicMissing, topic_partitions
from tierline.projector.role import CONSUMER_NAME
from tierline.projector.tables import (
    LIVE_SCHEMA,
    PROJECTION_TABLES,
    PROJECTIONS,
    REPLAY_SCHEMA,
    RETIRED_SCHEMA,
    ReadTables,
)
from tierline.store.pool import create_pool

log = structlog.get_logger(__name__)

REPLAY_CONSUMER = "projector-replay"
RUN_LOCK_ID = 7_311_529_012
POLL_MS = 300
MIN_REPLAY_BATCH = 5000

TRY_RUN_LOCK = "SELECT pg_try_advisory_lock($1)"
RUN_UNLOCK = "SELECT pg_advisory_unlock($1)"
TAKE_SWAP_LOCK = "SELECT pg_advisory_xact_lock($1)"
DROP_SCHEMA = "DROP SCHEMA IF EXISTS {schema} CASCADE"
CREATE_SCHEMA = "CREATE SCHEMA {schema}"
CLONE_TABLE = f"CREATE TABLE {REPLAY_SCHEMA}.{{table}} (LIKE {LIVE_SCHEMA}.{{table}} INCLUDING ALL)"
MOVE_TABLE = "ALTER TABLE {source}.{table} SET SCHEMA {target}"
DROP_TABLE = "DROP TABLE {schema}.{table}"
FORGET_OFFSETS = "DELETE FROM public.consumer_offsets WHERE consumer = $1"
FORGET_STREAMS = "DELETE FROM public.consumer_stream_versions WHERE consumer = $1"
LOAD_OFFSETS = """
SELECT partition, next_offset FROM public.consumer_offsets
WHERE consumer = $1 AND topic = $2 AND log_identity = $3
"""
TAKE_OVER_OFFSETS = """
UPDATE public.consumer_offsets SET consumer = $1 WHERE consumer = $2 AND topic = $3
"""
TAKE_OVER_STREAMS = "UPDATE public.consumer_stream_versions SET consumer = $1 WHERE consumer = $2"
FORGET_TOPIC_OFFSETS = "DELETE FROM public.consumer_offsets WHERE consumer = $1 AND topic = $2"
# Grants of a live table, as statements re-granting them on its rebuilt copy.
COPY_GRANTS = """
SELECT format('GRANT %s ON %I.%I TO %s', a.privilege_type, $2::text, $3::text,
              CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END)
FROM pg_class AS c
CROSS JOIN LATERAL aclexplode(c.relacl) AS a
LEFT JOIN pg_roles AS r ON r.oid = a.grantee
WHERE c.oid = to_regclass($1) AND a.grantee <> c.relowner
"""
# Qualified definitions of the views in `read` (read with search_path = pg_catalog).
VIEW_DEFINITIONS = """
SELECT quote_ident(c.relname) AS name, pg_get_viewdef(c.oid, true) AS definition
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = 'read' AND c.relkind = 'v'
ORDER BY c.oid
"""
REPLACE_VIEW = "CREATE OR REPLACE VIEW read.{name} AS {definition}"
# Pairs (retired index name, rebuilt index name) of indexes over the same key and predicate.
INDEX_NAMES = """
SELECT quote_ident(o.relname) AS old_name, quote_ident(n.relname) AS new_name
FROM pg_index AS oi
JOIN pg_class AS o ON o.oid = oi.indexrelid
JOIN pg_index AS ni ON ni.indrelid = to_regclass($2)
    AND ni.indkey::text = oi.indkey::text
    AND ni.indisunique = oi.indisunique
    AND coalesce(pg_get_expr(ni.indpred, ni.indrelid), '')
        = coalesce(pg_get_expr(oi.indpred, oi.indrelid), '')
JOIN pg_class AS n ON n.oid = ni.indexrelid
WHERE oi.indrelid = to_regclass($1) AND o.relname <> n.relname
"""
RENAME_INDEX = "ALTER INDEX read.{new_name} RENAME TO {old_name}"
# Issues keep the list position they had, so clients' cursors stay valid across a replay.
CARRY_LIST_SEQ = f"""
UPDATE {REPLAY_SCHEMA}.issues AS r SET list_seq = l.list_seq
FROM {LIVE_SCHEMA}.issues AS l WHERE l.issue_id = r.issue_id
"""
# Issues only the rebuild knows of go after every position handed out so far, in rebuild order.
NUMBER_NEW_ISSUES = f"""
WITH fresh AS (
    SELECT r.issue_id, row_number() OVER (ORDER BY r.list_seq) AS n
    FROM {REPLAY_SCHEMA}.issues AS r
    WHERE NOT EXISTS (SELECT 1 FROM {LIVE_SCHEMA}.issues AS l WHERE l.issue_id = r.issue_id)
), base AS MATERIALIZED (
    SELECT nextval('read.issue_list_seq') AS b, (SELECT count(*) FROM fresh) AS n
), reserved AS MATERIALIZED (
    SELECT b, setval('read.issue_list_seq', b + n) AS upto FROM base
)
UPDATE {REPLAY_SCHEMA}.issues AS r SET list_seq = reserved.b + fresh.n
FROM fresh, reserved WHERE r.issue_id = fresh.issue_id
"""
RECORD_REBUILD = """
INSERT INTO read.rebuilds (projections, started_at, finished_at, events)
VALUES ($1::text[], to_timestamp($2), now(), $3) RETURNING id
"""


@contextlib.asynccontextmanager
async def _connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection, typed as the connection it proxies."""
    async with pool.acquire() as proxy:
        yield cast(asyncpg.Connection, proxy)


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
        """Log records read per second of the whole replay."""
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
        self._batch_size = max(settings.consumer_batch_size, MIN_REPLAY_BATCH)
        self._handler = Projector(ReadTables(REPLAY_SCHEMA), self.projections, live=False)
        self._identity = ""
        self._read = 0

    async def run(self) -> ReplayResult:
        """Rebuild, and swap in unless told not to."""
        started = time.time()
        pool = await create_pool(self._settings.database_url, min_size=2, max_size=4)
        try:
            async with _connection(pool) as run_lock:
                if not await run_lock.fetchval(TRY_RUN_LOCK, RUN_LOCK_ID):
                    raise ReplayBusy("another replay is running")
                try:
                    generation = await self._run(pool, started)
                finally:
                    await run_lock.execute(RUN_UNLOCK, RUN_LOCK_ID)
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
        )
        return result

    async def _run(self, pool: asyncpg.Pool, started: float) -> int | None:
        bootstrap = self._settings.kafka_bootstrap
        partitions = await topic_partitions(bootstrap, self._topic)
        self._identity = await cluster_identity(bootstrap)
        await self._prepare(pool)
        reader = LogReader(bootstrap, self._topic, self._batch_size)
        await reader.start(partitions)
        try:
            self._progress.phase("rebuilding")
            await self._build(pool, reader)
            if not self._swap:
                return None
            self._progress.phase("swapping")
            return await self._swap_in(pool, reader, partitions, started)
        finally:
            await reader.stop()

    async def _prepare(self, pool: asyncpg.Pool) -> None:
        """Empty copies of the tables to rebuild; the replay consumer starts from nothing."""
        async with _connection(pool) as conn, conn.transaction():
            await conn.execute(DROP_SCHEMA.format(schema=REPLAY_SCHEMA))
            await conn.execute(CREATE_SCHEMA.format(schema=REPLAY_SCHEMA))
            # The issues table always exists: the fold looks up issues it has not seen open.
            for projection in {"issues", *self.projections}:
                await conn.execute(CLONE_TABLE.format(table=PROJECTION_TABLES[projection]))
            await conn.execute(FORGET_OFFSETS, REPLAY_CONSUMER)
            await conn.execute(FORGET_STREAMS, REPLAY_CONSUMER)
        log.info("replay_started", projections=list(self.projections), topic=self._topic)

    async def _apply(
        self, pool: asyncpg.Pool, records: list[Record], consumer: str, handler: Projector
    ) -> None:
        async with _connection(pool) as conn:
            await apply_batch(conn, consumer, self._topic, self._identity, records, handler)

    async def _step(self, pool: asyncpg.Pool, reader: LogReader) -> int:
        """Read and apply one batch of the rebuild; returns how many records it had."""
        records = await reader.read(POLL_MS)
        if records:
            await self._apply(pool, records, REPLAY_CONSUMER, self._handler)
            self._read += len(records)
        ends = [end for end in reader.highwater().values() if end >= 0]
        self._progress.update(self._read, sum(ends) if ends else None)
        return len(records)

    async def _build(self, pool: asyncpg.Pool, reader: LogReader) -> None:
        """Read until the log end, and at least as far as the live projector has come."""
        while True:
            got = await self._step(pool, reader)
            if got and not reader.at_end():
                continue
            live = await _offsets(pool, CONSUMER_NAME, self._topic, self._identity)
            if all(reader.positions.get(p, 0) >= o for p, o in live.items()):
                return

    async def _swap_in(
        self, pool: asyncpg.Pool, reader: LogReader, partitions: list[int], started: float
    ) -> int:
        async with _connection(pool) as conn, conn.transaction():
            await conn.execute(TAKE_SWAP_LOCK, SWAP_LOCK_ID)
            live = await _offsets(conn, CONSUMER_NAME, self._topic, self._identity)
            if self._full:
                while any(reader.positions.get(p, 0) < o for p, o in live.items()):
                    await self._step(pool, reader)
            else:
                await self._align(pool, reader, partitions, live)
            await self._switch(conn)
            generation = int(
                await conn.fetchval(RECORD_REBUILD, list(self.projections), started, self._read)
            )
        log.info("replay_swapped", projections=list(self.projections), generation=generation)
        return generation

    async def _align(
        self, pool: asyncpg.Pool, reader: LogReader, partitions: list[int], live: dict[int, int]
    ) -> None:
        """Bring the rebuilt and the live tables to the same offsets, exactly."""
        target = {p: max(live.get(p, 0), reader.positions.get(p, 0)) for p in partitions}
        reader.limit_to(target)
        while not reader.at_end():
            await self._step(pool, reader)
        catching_up = LogReader(self._settings.kafka_bootstrap, self._topic, self._batch_size)
        await catching_up.start(partitions, live)
        catching_up.limit_to(target)
        handler = Projector(ReadTables(LIVE_SCHEMA), live=True)
        try:
            while not catching_up.at_end():
                records = await catching_up.read(POLL_MS)
                if records:
                    await self._apply(pool, records, CONSUMER_NAME, handler)
        finally:
            await catching_up.stop()

    async def _switch(self, conn: asyncpg.Connection) -> None:
        """Move the rebuilt tables into `read` in the caller's transaction."""
        tables = [PROJECTION_TABLES[p] for p in self.projections]
        await conn.execute("SET LOCAL search_path = pg_catalog")
        views = await conn.fetch(VIEW_DEFINITIONS)
        await conn.execute("RESET search_path")
        if "issues" in self.projections:
            await conn.execute(CARRY_LIST_SEQ)
            await conn.execute(NUMBER_NEW_ISSUES)
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
            await _keep_index_names(conn, table)
        for view in views:
            await conn.execute(
                REPLACE_VIEW.format(name=view["name"], definition=view["definition"])
            )
        for table in tables:
            # No CASCADE: a view elsewhere still reading the old table stops the swap instead.
            await conn.execute(DROP_TABLE.format(schema=RETIRED_SCHEMA, table=table))
        await conn.execute(DROP_SCHEMA.format(schema=RETIRED_SCHEMA))
        await conn.execute(DROP_SCHEMA.format(schema=REPLAY_SCHEMA))
        if self._full:
            await conn.execute(FORGET_TOPIC_OFFSETS, CONSUMER_NAME, self._topic)
            await conn.execute(TAKE_OVER_OFFSETS, CONSUMER_NAME, REPLAY_CONSUMER, self._topic)
            await conn.execute(FORGET_STREAMS, CONSUMER_NAME)
            await conn.execute(TAKE_OVER_STREAMS, CONSUMER_NAME, REPLAY_CONSUMER)
        await conn.execute(FORGET_OFFSETS, REPLAY_CONSUMER)
        await conn.execute(FORGET_STREAMS, REPLAY_CONSUMER)


async def _offsets(
    conn: asyncpg.Connection | asyncpg.Pool, consumer: str, topic: str, identity: str
) -> dict[int, int]:
    """A consumer's stored offsets in this log (offsets in a lost log do not count)."""
    rows = await conn.fetch(LOAD_OFFSETS, consumer, topic, identity)
    return {row["partition"]: row["next_offset"] for row in rows}


async def _copy_grants(conn: asyncpg.Connection, table: str) -> None:
    grants = await conn.fetch(COPY_GRANTS, f"{LIVE_SCHEMA}.{table}", REPLAY_SCHEMA, table)
    for grant in grants:
        await conn.execute(grant[0])


async def _keep_index_names(conn: asyncpg.Connection, table: str) -> None:
    pairs = await conn.fetch(INDEX_NAMES, f"{RETIRED_SCHEMA}.{table}", f"{LIVE_SCHEMA}.{table}")
    for pair in pairs:
        await conn.execute(RENAME_INDEX.format(**dict(pair)))


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


async def replay_command(settings: Settings, projection: str | None) -> int:
    """`tierline replay [--projection NAME]`: rebuild and swap in, with a progress bar."""
    projections = PROJECTIONS if projection is None else (projection,)
    console = Console(stderr=True)
    if projection is not None and projection not in PROJECTIONS:
        console.print(f"tierline replay: unknown projection {projection!r}; known: {PROJECTIONS}")
        return 2
    with progress_bar(console) as bar:
        replay = Replay(settings, projections, progress=RichProgress(bar))
        try:
            result = await replay.run()
        except ReplayBusy as exc:
            console.print(f"tierline replay: {exc}")
            return 1
        except TopicMissing as exc:
            console.print(f"tierline replay: topic {exc} does not exist; nothing to replay")
            return 1
    console.print(
        f"rebuilt {', '.join(result.projections)} from {result.events:,} events in "
        f"{result.seconds:.1f}s ({result.events_per_second:,.0f} events/s); swapped in as "
        f"rebuild {result.generation}"
    )
    return 0
