"""The build phase of a replay: the store's events, then the log's tail, into the rebuild tables.

Streams can be rebuilt independently: each worker process folds a share of the streams from
the event store (storereader.py), with its own issue states and stream versions (rows no other
worker touches). What they share is additive (vendor days, upserted) or keyed by issue
(everything else), so workers never contend. Once they flushed, the replay reads the log from
the ends it took before they started (docs/adr/0014).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any, cast

import asyncpg
import structlog

from tierline.config import Settings
from tierline.eventlog.cloudevents import LogEvent
from tierline.eventlog.consumer import Record, apply_batch
from tierline.logs import configure_logging
from tierline.projector.handler import Projector
from tierline.projector.logreader import LogReader
from tierline.projector.role import CONSUMER_NAME
from tierline.projector.storereader import StoreShare
from tierline.projector.tables import REPLAY_SCHEMA, ReadTables
from tierline.sqlfile import load_queries
from tierline.store.pool import create_pool

log = structlog.get_logger(__name__)

REPLAY_CONSUMER = "projector-replay"
POLL_MS = 300
MIN_REPLAY_BATCH = 5000
WATCH_SECONDS = 0.2
IDLE_POLLS_AT_END = 20

QUERIES = load_queries("tierline.projector")
CONSUMER_QUERIES = load_queries("tierline.eventlog")

Progress = Callable[[int, int | None], None]


@contextlib.asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection, typed as the connection it proxies."""
    async with pool.acquire() as proxy:
        yield cast(asyncpg.Connection, proxy)


async def stored_offsets(
    conn: asyncpg.Connection | asyncpg.Pool, consumer: str, topic: str, identity: str
) -> dict[int, int]:
    """A consumer's stored offsets in this log (offsets in a lost log do not count)."""
    rows = await conn.fetch(QUERIES["stored_offsets"], consumer, topic, identity)
    return {row["partition"]: row["next_offset"] for row in rows}


@contextlib.contextmanager
def without_cyclic_gc(*, collect: bool = True) -> Iterator[None]:
    """Pause the cyclic garbage collector for a rebuild.

    A rebuild holds every issue's state (millions of small objects); each full collection would
    walk them all although none of them is cyclic garbage. Reference counting still frees what
    the fold replaces; one collection runs at the end unless `collect` is false (a worker
    process about to exit: its memory goes with it).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        if collect:
            gc.collect()


class Rebuilder:
    """Folds a share of the event store, then partitions of the log, into the rebuild tables
    (`read_replay`) in this process."""

    def __init__(
        self,
        settings: Settings,
        projections: Sequence[str],
        partitions: Sequence[int],
        identity: str,
        *,
        flushed: bool = False,
        progress: Progress | None = None,
    ) -> None:
        self._topic = settings.kafka_topic
        self._identity = identity
        self.partitions = list(partitions)
        self.handler = Projector(
            ReadTables(REPLAY_SCHEMA), projections, live=False, flushed=flushed
        )
        batch_size = max(settings.consumer_batch_size, MIN_REPLAY_BATCH)
        self.reader = LogReader(settings.kafka_bootstrap, self._topic, batch_size)
        self.read = 0
        self._progress = progress
        # The last version applied per stream until the flush writes them (see `_apply_owned`);
        # None once the database holds them (another process flushed, or this one did).
        self._versions: dict[str, int] | None = None if flushed else {}

    async def start(self, offsets: dict[int, int] | None = None) -> None:
        """Position every partition at `offsets` (the beginning where absent)."""
        await self.reader.start(self.partitions, offsets)

    async def stop(self) -> None:
        """Close the reader."""
        await self.reader.stop()

    async def apply(self, pool: asyncpg.Pool, records: list[Record]) -> None:
        """Apply one batch under the replay's consumer name, and report progress."""
        if records:
            async with connection(pool) as conn:
                if self._versions is None:
                    await apply_batch(
                        conn, REPLAY_CONSUMER, self._topic, self._identity, records, self.handler
                    )
                else:
                    # Records come in log order per partition: the last one gives the next offset.
                    next_offsets = {record.partition: record.offset + 1 for record in records}
                    events = [record.event for record in records]
                    await self._apply_owned(conn, events, self._versions, next_offsets)
            self.read += len(records)
        if self._progress is not None:
            ends = [end for end in self.reader.highwater().values() if end >= 0]
            self._progress(self.read, sum(ends) if ends else None)

    async def load_store(self, pool: asyncpg.Pool, share: StoreShare) -> None:
        """Fold this process's share of the events committed in the store (docs/adr/0014).

        Runs before any flush, so the applied versions are this process's own, in memory. The
        next page is fetched on the reader's connection while this one is written.
        """
        versions = self._versions
        if versions is None:
            raise RuntimeError("the store is read into fresh rebuild tables only")
        async with share.batches() as pages:
            ahead = asyncio.ensure_future(_next_page(pages))
            try:
                while (events := await ahead) is not None:
                    ahead = asyncio.ensure_future(_next_page(pages))
                    async with connection(pool) as conn:
                        await self._apply_owned(conn, events, versions, {})
                    self.read += len(events)
                    if self._progress is not None:
                        self._progress(self.read, share.size)
            finally:
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ahead

    async def _apply_owned(
        self,
        conn: asyncpg.Connection,
        events: list[LogEvent],
        versions: dict[str, int],
        next_offsets: dict[int, int],
    ) -> None:
        """One batch before the flush, skipping what was applied, with versions kept in memory.

        Until it flushes, a rebuild process alone applies its streams, from none applied (the
        replay forgot them): the versions `apply_batch` would claim, lock and save row by row in
        every batch are known here. The flush writes them once, with the issue rows; a replay
        that dies before that starts over from nothing anyway. Events read twice (a relay
        re-publishing after a crash; the log's tail repeating what the store gave) are skipped
        all the same.
        """
        fresh = []
        for event in events:
            if event.version > versions.get(event.stream_id, 0):
                versions[event.stream_id] = event.version
                fresh.append(event)
        async with conn.transaction():
            if fresh:
                await self.handler.apply(conn, fresh)
            if next_offsets:
                await conn.execute(
                    CONSUMER_QUERIES["save_offsets"],
                    REPLAY_CONSUMER,
                    self._topic,
                    list(next_offsets),
                    list(next_offsets.values()),
                    self._identity,
                )

    async def step(self, pool: asyncpg.Pool) -> int:
        """Read and apply one batch; returns how many records it had."""
        records = await self.reader.read(POLL_MS)
        await self.apply(pool, records)
        return len(records)

    async def build(self, pool: asyncpg.Pool) -> None:
        """Read to the log end, and at least as far as the live projector has come.

        The end is the high-water mark each fetch reports, not an empty poll: a busy broker can
        let a poll time out with records still to come. The next batch is fetched and decoded
        while the current one is written, in the time the loop would wait for PostgreSQL.
        """
        reader = self.reader
        ahead: asyncio.Future[list[Record]] | None = None
        empty_polls = 0
        try:
            while True:
                records = await (ahead if ahead is not None else reader.read(POLL_MS))
                more = bool(records) and not reader.at_high_water()
                ahead = asyncio.ensure_future(reader.read(POLL_MS)) if more else None
                await self.apply(pool, records)
                empty_polls = 0 if records else empty_polls + 1
                if ahead is not None:
                    continue
                # A broker that never reports a high-water mark ends the read after idle polls.
                ended = reader.at_high_water() or empty_polls >= IDLE_POLLS_AT_END
                if ended and await self._past_live(pool):
                    return
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ahead

    async def catch_up(self, pool: asyncpg.Pool, offsets: dict[int, int]) -> None:
        """Read until every partition is at least at `offsets`."""
        while any(self.reader.positions.get(p, 0) < o for p, o in offsets.items()):
            await self.step(pool)

    async def read_exactly_to(self, pool: asyncpg.Pool, target: dict[int, int]) -> None:
        """Read every partition up to `target`, not one record further."""
        self.reader.limit_to(target)
        while not self.reader.at_end():
            await self.step(pool)

    async def flush(self, pool: asyncpg.Pool) -> None:
        """Write what the handler holds back, and the versions applied per stream."""
        async with connection(pool) as conn, conn.transaction():
            await self.handler.flush(conn)
            if self._versions:
                await conn.execute(
                    QUERIES["record_replay_streams"],
                    REPLAY_CONSUMER,
                    list(self._versions),
                    list(self._versions.values()),
                )
        self._versions = None

    async def _past_live(self, pool: asyncpg.Pool) -> bool:
        live = await stored_offsets(pool, CONSUMER_NAME, self._topic, self._identity)
        return all(
            self.reader.positions.get(p, 0) >= o for p, o in live.items() if p in self.partitions
        )


async def _next_page(pages: AsyncIterator[list[LogEvent]]) -> list[LogEvent] | None:
    return await anext(pages, None)


async def build_in_workers(
    settings: Settings,
    projections: Sequence[str],
    identity: str,
    workers: int,
    progress: Progress,
) -> int:
    """Fold the store with `workers` processes, a share of the streams each; returns events read."""
    context = (
        multiprocessing.get_context("fork") if can_fork() else multiprocessing.get_context("spawn")
    )
    counters = context.Array("q", [0] * (2 * workers))
    processes = [
        context.Process(
            target=worker_main,
            args=(settings.model_dump(mode="json"), list(projections), identity, counters, n),
            name=f"tierline-replay-{n}",
            daemon=True,
        )
        for n in range(workers)
    ]
    with warnings.catch_warnings():
        # Python 3.12+ warns on forking a process with threads (a lock held by another thread
        # stays held in the child). A worker touches none: it builds its own event loop,
        # connections and consumer, and the parent's threads (progress bar, resolver) never
        # hold the locks of what it uses.
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        for process in processes:
            process.start()
    try:
        while any(p.is_alive() for p in processes):
            _report(counters, workers, progress)
            await asyncio.sleep(WATCH_SECONDS)
            failed = [p for p in processes if p.exitcode not in (None, 0)]
            if failed:
                raise RuntimeError(
                    f"replay worker {failed[0].name} exited with {failed[0].exitcode}"
                )
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
    _report(counters, workers, progress)
    return sum(counters[2 * n] for n in range(workers))


def can_fork() -> bool:
    """Whether rebuild workers are forked (where the platform can) rather than spawned.

    A forked worker starts with the modules this process has loaded; a spawned one imports them
    again, about 0.7 s of CPU per worker, which profiling showed as a fifth of a 100k-event replay.
    """
    return "fork" in multiprocessing.get_all_start_methods()


def _report(counters: SynchronizedArray[int], workers: int, progress: Progress) -> None:
    done = sum(counters[2 * n] for n in range(workers))
    totals = [counters[2 * n + 1] for n in range(workers)]
    progress(done, sum(totals) if all(totals) else None)


def worker_main(
    settings: dict[str, Any],
    projections: list[str],
    identity: str,
    counters: SynchronizedArray[int],
    slot: int,
) -> None:
    """Entry point of a worker process: fold its share of the store, flush, exit."""
    config = Settings(**settings)
    configure_logging(config.log_level, config.log_format)
    shares = len(counters) // 2

    def progress(done: int, total: int | None) -> None:
        counters[2 * slot] = done
        counters[2 * slot + 1] = total or 0

    share = store_share(config, slot, shares)
    started = time.monotonic()
    with without_cyclic_gc(collect=False):
        asyncio.run(_work(config, projections, identity, share, progress))
    log.info(
        "replay_worker_done",
        share=slot,
        shares=shares,
        seconds=round(time.monotonic() - started, 3),
    )


def store_share(settings: Settings, index: int, shares: int) -> StoreShare:
    """Share `index` of `shares` of the store's streams, read in replay-sized batches."""
    batch_size = max(settings.consumer_batch_size, MIN_REPLAY_BATCH)
    return StoreShare(settings.database_url, index, shares, batch_size)


async def _work(
    settings: Settings,
    projections: list[str],
    identity: str,
    share: StoreShare,
    progress: Progress,
) -> None:
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    rebuilder = Rebuilder(settings, projections, [], identity, progress=progress)
    try:
        await rebuilder.load_store(pool, share)
        await rebuilder.flush(pool)
    finally:
        await pool.close()
