"""Group commit: the one-statement writes of concurrent commands, several per round trip.

Every issue command on the one-statement path ends in one atomic statement (`append_command`,
store/one_statement.py). Under load, many of them wait for PostgreSQL at once, each on its own
connection, each its own transaction with its own WAL flush, each a wake-up of a backend. Here
they queue instead: one writer takes whatever is waiting (up to `max_batch`, on distinct
issues) and writes it with `append_commands`, one statement and one transaction for the lot.
A command alone is written at once with `append_command`, so nothing waits at low load.

Each command keeps its own outcome. Its head moves only from the version it was decided on,
its events go in only if its head moved, its idempotency answer only with them (or alone), as
in `append_command`. Where a batch fails as a whole (a key another process stored meanwhile, a
deadlock against another process's batch), nothing of it was written, and every command in it
is written again alone, so each gets the answer it would have had alone. Anything else (a lost
connection) fails every command of the batch, as it would have failed each on its own.

A command whose caller went away before its batch was sent is not written (its request was
cancelled); one that was sent is written or not, as with a single statement.

docs/adr/0017-group-commit.md has the decision and the measurements.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from prometheus_client import Histogram

from tierline.sqlfile import load_queries
from tierline.store.pool import Conn, create_pool

log = structlog.get_logger(__name__)

QUERIES = load_queries("tierline.store")

DEFAULT_MAX_BATCH = 64
DEFAULT_WRITERS = 2

BATCH_COMMANDS = Histogram(
    "tierline_write_batch_commands",
    "Issue commands written per statement by group commit (store/group_commit.py)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)

# Failures of a whole batch after which each command is written alone (nothing was written).
RETRY_ALONE: tuple[type[Exception], ...] = (
    asyncpg.UniqueViolationError,
    asyncpg.DeadlockDetectedError,
)


@dataclass(frozen=True)
class CommandWrite:
    """The arguments of `append_command` for one command, in its parameter order."""

    stream_id: str | None
    stream_type: str
    traceparent: str | None
    event_ids: list[Any]
    versions: list[int]
    types: list[str]
    times: list[Any]
    data: list[str]
    vendor_id: str | None
    version: int | None
    snapshot: str | None
    updated_at: Any
    expected: int | None
    inbound_source: Any
    inbound_delivery: str | None
    principal: str | None
    key: str | None
    request_hash: str | None
    status: int | None
    body: str | None
    headers: str | None

    def arguments(self) -> tuple[Any, ...]:
        """`append_command`'s $1 ... $21."""
        return (
            self.stream_id,
            self.stream_type,
            self.traceparent,
            self.event_ids,
            self.versions,
            self.types,
            self.times,
            self.data,
            self.vendor_id,
            self.version,
            self.snapshot,
            self.updated_at,
            self.expected,
            self.inbound_source,
            self.inbound_delivery,
            self.principal,
            self.key,
            self.request_hash,
            self.status,
            self.body,
            self.headers,
        )


@dataclass
class _Job:
    write: CommandWrite
    done: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def batch_arguments(writes: list[CommandWrite]) -> tuple[Any, ...]:
    """`append_commands`' arrays: one element per command ($1-$12), per event ($13-$18), per
    idempotency answer ($19-$25); commands are numbered from 1 in batch order."""
    commands = range(1, len(writes) + 1)
    events = [(n, w, i) for n, w in zip(commands, writes, strict=True) for i in range(len(w.types))]
    keyed = [(n, w) for n, w in zip(commands, writes, strict=True) if w.principal is not None]
    return (
        list(commands),
        [w.stream_id for w in writes],
        [w.traceparent for w in writes],
        [w.vendor_id for w in writes],
        [w.version for w in writes],
        [w.snapshot for w in writes],
        [w.updated_at for w in writes],
        [w.expected for w in writes],
        [w.inbound_source for w in writes],
        [w.inbound_delivery for w in writes],
        [bool(w.types) for w in writes],
        writes[0].stream_type,
        [n for n, _, _ in events],
        [w.event_ids[i] for _, w, i in events],
        [w.versions[i] for _, w, i in events],
        [w.types[i] for _, w, i in events],
        [w.times[i] for _, w, i in events],
        [w.data[i] for _, w, i in events],
        [n for n, _ in keyed],
        [w.principal for _, w in keyed],
        [w.key for _, w in keyed],
        [w.request_hash for _, w in keyed],
        [w.status for _, w in keyed],
        [w.body for _, w in keyed],
        [w.headers for _, w in keyed],
    )


class GroupCommit:
    """Writes queued commands in batches, one batch at a time, on a connection of its own.

    Its own connection: the commands waiting here hold connections of the API's pool, so a
    writer borrowing from that pool could wait for them forever.
    """

    def __init__(
        self, database_url: str, max_batch: int = DEFAULT_MAX_BATCH, writers: int = DEFAULT_WRITERS
    ) -> None:
        if max_batch < 1 or writers < 1:
            raise ValueError("max_batch and writers must be at least 1")
        self._database_url = database_url
        self._max_batch = max_batch
        self._writers = writers
        self._queue: deque[_Job] = deque()
        self._pool: asyncpg.Pool | None = None
        self._running: set[asyncio.Task[None]] = set()
        # Issues in a batch being written: a later command on one waits for the next batch.
        self._in_flight: set[str] = set()
        self._closed = False

    async def start(self) -> None:
        """Open the writers' connections."""
        self._pool = await create_pool(
            self._database_url, min_size=self._writers, max_size=self._writers
        )

    async def close(self) -> None:
        """Let the writers finish what is queued, then close their connections."""
        self._closed = True
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        for job in self._queue:
            if not job.done.done():
                job.done.set_exception(RuntimeError("group commit closed"))
        self._queue.clear()
        if self._pool is not None:
            await self._pool.close()

    async def write(self, write: CommandWrite) -> int:
        """Write one command with whatever else is waiting; returns `moved` (1 or 0), as
        `append_command` does. Raises what the command's own statement would raise."""
        if self._closed or self._pool is None:
            raise RuntimeError("group commit is not running")
        job = _Job(write)
        self._queue.append(job)
        # A writer that found the queue empty is done at once (no await in between), so counting
        # the unfinished ones cannot strand this job.
        if sum(not task.done() for task in self._running) < self._writers:
            writer = asyncio.create_task(self._drain(), name="tierline-group-commit")
            self._running.add(writer)
            writer.add_done_callback(self._running.discard)
        return await job.done

    def _take(self) -> list[_Job]:
        """The next batch: queued jobs still wanted, in order, on distinct issues."""
        batch: list[_Job] = []
        streams: set[str] = set()
        while self._queue and len(batch) < self._max_batch:
            job = self._queue[0]
            stream = job.write.stream_id
            if stream is not None and (stream in streams or stream in self._in_flight):
                break  # a later batch: its command was decided after the one being written
            self._queue.popleft()
            if job.done.done():
                continue  # its request was cancelled before anything was sent
            batch.append(job)
            if stream is not None:
                streams.add(stream)
        return batch

    async def _drain(self) -> None:
        assert self._pool is not None
        while self._queue:
            batch = self._take()
            if not batch:
                return  # the head of the queue waits for a batch in flight
            streams = {j.write.stream_id for j in batch if j.write.stream_id is not None}
            self._in_flight |= streams
            try:
                async with self._pool.acquire() as conn:
                    await self._flush(conn, batch)
            except Exception as exc:  # acquiring the connection failed: fail this batch
                for job in batch:
                    if not job.done.done():
                        job.done.set_exception(exc)
            finally:
                self._in_flight -= streams

    async def _flush(self, conn: Conn, batch: list[_Job]) -> None:
        BATCH_COMMANDS.observe(len(batch))
        if len(batch) > 1:
            try:
                moved = await conn.fetchval(
                    QUERIES["append_commands"], *batch_arguments([j.write for j in batch])
                )
            except RETRY_ALONE as exc:
                log.info("group_commit_retry_alone", commands=len(batch), error=type(exc).__name__)
            except Exception as exc:
                for job in batch:
                    if not job.done.done():
                        job.done.set_exception(exc)
                return
            else:
                ids = set(moved or ())
                for n, job in enumerate(batch, start=1):
                    if not job.done.done():
                        job.done.set_result(1 if n in ids else 0)
                return
        for job in batch:
            try:
                row = await conn.fetchrow(QUERIES["append_command"], *job.write.arguments())
            except Exception as exc:
                if not job.done.done():
                    job.done.set_exception(exc)
            else:
                assert row is not None
                if not job.done.done():
                    job.done.set_result(int(row["moved"]))
