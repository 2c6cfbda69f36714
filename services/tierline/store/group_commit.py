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
deadlock against another process's batch), nothing of it was written: its halves are written
in turn the same way, down to single commands, so each gets the answer it would have had alone
and one failing command costs the others a few statements, not one each. Anything else (a lost
connection) fails every command of the batch, as it would have failed each on its own.

A command whose caller went away before its batch was sent is not written (its request was
cancelled); one that was sent is written or not, as with a single statement.

docs/adr/0017-group-commit.md has the decision and the measurements.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from prometheus_client import Counter, Histogram

from tierline.sqlfile import load_queries
from tierline.store.pool import Conn, create_pool

log = structlog.get_logger(__name__)

QUERIES = load_queries("tierline.store")

DEFAULT_MAX_BATCH = 64
DEFAULT_WRITERS = 2

# Called once a command's write is queued (set by the API's issue queue, api/issue_queue.py):
# the next command on the issue may then be decided on the issue this one leaves.
WRITE_QUEUED: ContextVar[Callable[[], None] | None] = ContextVar("write_queued", default=None)


def write_queued() -> None:
    """Tell whoever holds this command's turn on its issue that its write is queued."""
    hook = WRITE_QUEUED.get()
    if hook is not None:
        hook()


BATCH_COMMANDS = Histogram(
    "tierline_write_batch_commands",
    "Issue commands written per statement by group commit (store/group_commit.py)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)

BATCH_SPLITS = Counter(
    "tierline_write_batch_splits_total",
    "Group commit statements undone as a whole (a key taken meanwhile, a deadlock) and split",
)

# Failures of a whole batch after which its halves are written apart (nothing was written).
RETRY_ALONE: tuple[type[Exception], ...] = (
    asyncpg.UniqueViolationError,
    asyncpg.DeadlockDetectedError,
)


@dataclass(frozen=True, eq=False)
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
    # The queued write of the command this one was decided on (its issue as that one leaves
    # it, not yet committed): this one goes out only after it or with it, and only if it moved.
    after: asyncio.Future[int] | None = None

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


def batch_arguments(groups: list[list[CommandWrite]]) -> tuple[Any, ...]:
    """`append_commands`' arrays: per number ($1-$8), per event ($10-$18), per idempotency
    answer ($19-$25). Each group is numbered from 1 in batch order: one command, or commands on
    one issue each decided on the one before (its events in order, the last head, the first
    expected version)."""
    numbered = list(enumerate(groups, start=1))
    events = [
        (n, w, i) for n, group in numbered for w in group for i in range(len(w.types))
    ]  # fmt: skip
    keyed = [(n, w) for n, group in numbered for w in group if w.principal is not None]
    return (
        [n for n, _ in numbered],
        [g[0].stream_id for g in groups],
        [g[-1].vendor_id for g in groups],
        [g[-1].version for g in groups],
        [g[-1].snapshot for g in groups],
        [g[-1].updated_at for g in groups],
        [g[0].expected for g in groups],
        [any(w.types for w in g) for g in groups],
        groups[0][0].stream_type,
        [n for n, _, _ in events],
        [w.event_ids[i] for _, w, i in events],
        [w.versions[i] for _, w, i in events],
        [w.types[i] for _, w, i in events],
        [w.times[i] for _, w, i in events],
        [w.data[i] for _, w, i in events],
        [w.traceparent for _, w, _ in events],
        [w.inbound_source for _, w, _ in events],
        [w.inbound_delivery for _, w, _ in events],
        [n for n, _ in keyed],
        [w.principal for _, w in keyed],
        [w.key for _, w in keyed],
        [w.request_hash for _, w in keyed],
        [w.status for _, w in keyed],
        [w.body for _, w in keyed],
        [w.headers for _, w in keyed],
    )


def _moved(write: asyncio.Future[int]) -> bool:
    """Whether a finished write moved its head (not when it failed or was cancelled)."""
    return not write.cancelled() and write.exception() is None and write.result() == 1


class GroupCommit:
    """Writes queued commands in batches on connections of its own, `writers` batches at once.

    Its own connections: the commands waiting here hold connections of the API's pool, so a
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
        # Issues in a batch being written: their later commands wait for a later batch.
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
        while self._running:
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
        return await self.submit(write)

    def submit(self, write: CommandWrite) -> asyncio.Future[int]:
        """Queue one command; the future gives `moved` (1 or 0) or the statement's error.

        A command on an issue may be queued before the one decided before it is written (its
        `expected` is that one's `version`): the two go out in order, or together.
        """
        if self._closed or self._pool is None:
            raise RuntimeError("group commit is not running")
        job = _Job(write)
        self._queue.append(job)
        self._wake()
        return job.done

    def _wake(self) -> None:
        # A writer that found nothing to take is done at once (no await in between), so
        # counting the unfinished ones cannot strand a queued job.
        if sum(not task.done() for task in self._running) < self._writers:
            writer = asyncio.create_task(self._drain(), name="tierline-group-commit")
            self._running.add(writer)
            writer.add_done_callback(self._running.discard)

    def _take(self) -> list[list[_Job]]:
        """The next batch, in queue order, up to the first command that must wait: up to
        `max_batch` issues, each with its commands decided one on another. A command waits
        while its issue is being written, or while the write it was decided on is not done;
        a second command on an issue in the batch, not decided on the first, waits too."""
        groups: dict[str, list[_Job]] = {}
        batch: list[list[_Job]] = []
        while self._queue:
            job = self._queue[0]
            stream = job.write.stream_id
            after = job.write.after
            group = groups.get(stream) if stream is not None else None
            if job.done.done():
                pass  # its request was cancelled before anything was sent
            elif after is not None and after.done() and not _moved(after):
                # Decided on a write that did not move the head: written now, it would rest on
                # an issue that never was. Its unit runs the command again.
                job.done.set_result(0)
            elif group is not None and after is not None and after is group[-1].done:
                group.append(job)  # decided on the one before it: both go out together
            elif (
                (stream is not None and (stream in self._in_flight or group is not None))
                or (after is not None and not after.done())
                or len(batch) == self._max_batch
            ):
                break
            else:
                batch.append([job])
                if stream is not None:
                    groups[stream] = batch[-1]
            self._queue.popleft()
        return batch

    async def _drain(self) -> None:
        assert self._pool is not None
        while self._queue:
            batch = self._take()
            if not batch:
                return  # what is queued waits for a batch being written
            streams = {g[0].write.stream_id for g in batch if g[0].write.stream_id is not None}
            self._in_flight |= streams
            try:
                async with self._pool.acquire() as conn:
                    await self._flush(conn, batch)
            except Exception as exc:  # acquiring the connection failed: fail this batch
                for job in (j for g in batch for j in g):
                    if not job.done.done():
                        job.done.set_exception(exc)
            finally:
                self._in_flight -= streams
            if self._queue:
                self._wake()  # what waited for this batch's issues may go to another writer

    async def _flush(self, conn: Conn, batch: list[list[_Job]]) -> None:
        BATCH_COMMANDS.observe(sum(len(group) for group in batch))
        await self._write(conn, batch)

    async def _write(self, conn: Conn, batch: list[list[_Job]]) -> None:
        """Write a batch in one statement. If it fails as a whole on a key or a deadlock, its
        halves are written the same way in turn, down to single commands: a command that
        fails alone costs the others a few statements, not one each (a client racing its own
        key must not make every command of its batch a statement of its own)."""
        jobs = [j for g in batch for j in g]
        if len(jobs) > 1:
            try:
                moved = await conn.fetchval(
                    QUERIES["append_commands"],
                    *batch_arguments([[j.write for j in g] for g in batch]),
                )
            except RETRY_ALONE as exc:
                log.info("group_commit_split", commands=len(jobs), error=type(exc).__name__)
                BATCH_SPLITS.inc()
                if len(batch) > 1:
                    middle = len(batch) // 2
                    await self._write(conn, batch[:middle])
                    await self._write(conn, batch[middle:])
                    return
            except Exception as exc:
                for job in jobs:
                    if not job.done.done():
                        job.done.set_exception(exc)
                return
            else:
                ids = set(moved or ())
                for n, group in enumerate(batch, start=1):
                    for job in group:
                        if not job.done.done():
                            job.done.set_result(1 if n in ids else 0)
                return
        # One command, or the commands of one issue decided one on another: alone, in order.
        for job in jobs:
            after = job.write.after
            if after is not None and after.done() and not _moved(after):
                if not job.done.done():
                    job.done.set_result(0)  # as in _take: its issue never was
                continue
            try:
                row = await conn.fetchrow(QUERIES["append_command"], *job.write.arguments())
            except Exception as exc:
                if not job.done.done():
                    job.done.set_exception(exc)
            else:
                assert row is not None
                if not job.done.done():
                    job.done.set_result(int(row["moved"]))
