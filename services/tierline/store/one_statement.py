"""A unit of work for one issue command in two round trips: read the head, then one statement.

The locking unit of work (`store.unit_of_work`) spends five round trips on a command: BEGIN,
lock the head, append, COMMIT and the pool's reset. This one reads the head without a lock or a
transaction, lets the service decide as usual, and writes everything the unit did (the events,
the new head, the idempotency answer) with the single statement `append_command`
(store/queries.sql), which PostgreSQL runs atomically. When another writer moved the head in
between, nothing is written and `StreamVersionConflict` tells the caller to run the unit again
(optimistic concurrency); `answer_once` does, and makes its last try with the locking unit, so
a hot issue still makes progress. The API also queues commands on the same issue inside one
process (api/issue_queue.py), so conflicts come only from other processes.

The issues a process last read or wrote stay in a small cache (`SnapshotCache`): the read then
fetches the snapshot only when the head moved past the cached version, and the API skips
parsing it (a snapshot at a version never changes).

While the cache has mostly been current (it usually is: with one API process, the only other
writers are the SLA engine and replays), the unit skips the read and decides on the cached issue
(a command in one round trip). Nothing decided on a stale issue can leave the unit: a write is
guarded by the version anyway; a command that writes nothing, and a refusal (409, 412), is
checked against the head first. Where the head moved, the unit raises `StreamVersionConflict`
and the caller runs the command again on the fresh issue. How often the cache was current is
tracked per process (`CacheTrust`); below 80% (several API processes on one hot issue) the unit
reads first again.

With group commit (store/group_commit.py, docs/adr/0017) the statement goes out with other
commands' instead of on the unit's connection, and the issue is cached as the queued write
leaves it, so the next command on the issue is decided without waiting for the commit; its write
then names the one it rests on and goes out only if that one moved the head. The unit acquires
a pooled connection only when it reads, so most commands never hold one.

Only issue commands run here: opening an issue registers external refs in the same
transaction, and other routes write through `connection`, so they keep the locking unit.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from prometheus_client import Counter

from tierline.domain.issue import Issue, Rules
from tierline.service_layer import unit_of_work as port
from tierline.service_layer.reference import ReferenceData
from tierline.sqlfile import load_queries
from tierline.store.group_commit import CommandWrite, GroupCommit, write_queued
from tierline.store.pool import DATABASE_ERRORS, raise_if_lost

QUERIES = load_queries("tierline.store")

CACHED_ISSUES = Counter(
    "tierline_cached_issues_total",
    "Cached issues found current or stale by a read or a guarded write (store/one_statement.py)",
    ["result"],
)


@dataclass(frozen=True)
class _Append:
    issue: Issue
    expected_version: int
    events: list[port.NewEvent]
    time: datetime
    traceparent: str | None
    origin: port.Origin | None


@dataclass(frozen=True)
class _Claim:
    principal: str
    key: str
    request_hash: str


class SnapshotCache:
    """The last `size` issues this process read or wrote, at their versions (LRU).

    With group commit an issue may be cached as a queued write leaves it, before that write
    commits: `pending` then gives that write, so a command decided on it goes out only if the
    write moved the head (store/group_commit.py).
    """

    def __init__(self, size: int = 2_000) -> None:
        self._size = size
        self._issues: OrderedDict[str, tuple[Issue, asyncio.Future[int] | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._issues)

    def get(self, issue_id: str) -> Issue | None:
        """The cached issue (at whatever version it was cached), or None."""
        entry = self._issues.get(issue_id)
        if entry is None:
            return None
        self._issues.move_to_end(issue_id)
        return entry[0]

    def pending(self, issue: Issue) -> asyncio.Future[int] | None:
        """The queued write that leaves `issue` as cached, while it may not have committed."""
        entry = self._issues.get(issue.id)
        if entry is None or entry[0] is not issue:
            return None
        return entry[1]

    def forget(self, issue_id: str) -> None:
        """Drop `issue_id` (it was found stale)."""
        self._issues.pop(issue_id, None)

    def put(self, issue: Issue, pending: asyncio.Future[int] | None = None) -> None:
        """Remember `issue` at its version, forgetting the least recently used beyond size."""
        self._issues[issue.id] = (issue, pending)
        self._issues.move_to_end(issue.id)
        while len(self._issues) > self._size:
            self._issues.popitem(last=False)

    def committed(self, issue: Issue) -> None:
        """`issue`'s write committed: keep it, unless a later one is queued on top of it."""
        entry = self._issues.get(issue.id)
        if entry is None or entry[0].version <= issue.version:
            self.put(issue)


class CacheTrust:
    """Whether to decide on cached issues without reading the head: while they were current.

    An exponentially weighted share of stale cached issues, over reads and guarded writes alike,
    so a process whose cache goes stale (another API process writing the same issues) stops
    trusting it within a few dozen commands, and starts again once its reads find it current.
    """

    def __init__(self, weight: float = 0.05, limit: float = 0.2) -> None:
        self._weight = weight
        self._limit = limit
        self.stale_share = 0.0

    @property
    def trusted(self) -> bool:
        """True while fewer than `limit` of recent cached issues were stale."""
        return self.stale_share < self._limit

    def record(self, *, stale: bool) -> None:
        """One cached issue found current or stale."""
        self.stale_share += self._weight * ((1.0 if stale else 0.0) - self.stale_share)
        CACHED_ISSUES.labels("stale" if stale else "current").inc()


class OneStatementIssueStore:
    """Reads without locks; the append waits for the unit's end."""

    def __init__(self, unit: OneStatementUnitOfWork) -> None:
        self._unit = unit

    async def get(self, issue_id: str) -> Issue | None:
        """The issue as last committed (the cached one when the head is still at its version).

        With a trusted cache, the cached issue without a read: the unit checks it at its end.
        """
        unit = self._unit
        cached = unit.cache.get(issue_id)
        if cached is not None and unit.trust.trusted and unit.unchecked is None:
            unit.unchecked = cached
            unit.after = unit.cache.pending(cached)
            return cached
        return await unit.read_head(issue_id, cached)

    async def get_for_update(self, issue_id: str) -> Issue | None:
        """The issue as last committed, unlocked: the write checks that it did not move."""
        return await self.get(issue_id)

    async def append(
        self,
        issue: Issue,
        expected_version: int,
        events: list[port.NewEvent],
        time: datetime,
        traceparent: str | None,
        origin: port.Origin | None = None,
    ) -> None:
        """Keep the append for the statement at the unit's end."""
        if self._unit.pending is not None:
            raise RuntimeError("a one-statement unit of work appends to one stream once")
        if expected_version == 0:
            raise RuntimeError("opening an issue needs the locking unit of work")
        self._unit.pending = _Append(issue, expected_version, events, time, traceparent, origin)

    async def find_ref(self, system: str, key: str) -> port.ExternalRef | None:
        """Not here: opening issues (and their refs) needs the locking unit of work."""
        raise RuntimeError("external refs need the locking unit of work")

    async def add_ref(self, system: str, key: str, ref: port.ExternalRef) -> bool:
        """Not here: opening issues (and their refs) needs the locking unit of work."""
        raise RuntimeError("external refs need the locking unit of work")


class OneStatementIdempotency:
    """A stored answer is read at once; a new one is written with the unit's statement."""

    def __init__(self, unit: OneStatementUnitOfWork) -> None:
        self._unit = unit

    async def claim(self, principal: str, key: str, request_hash: str) -> port.StoredAnswer | None:
        """The stored answer of the key's first use, else remember the claim."""
        conn = await self._unit.connection()
        row = await conn.fetchrow(QUERIES["stored_response"], principal, key)
        if row is not None:
            if row["request_hash"] != request_hash:
                raise port.IdempotencyKeyReused(key)
            body = json.loads(row["body"]) if row["body"] else None
            return port.StoredAnswer(row["status"], body, json.loads(row["headers"]))
        self._unit.claim = _Claim(principal, key, request_hash)
        return None

    async def complete(
        self, principal: str, key: str, status: int, body: Any, headers: dict[str, str]
    ) -> None:
        """Keep the answer for the statement at the unit's end."""
        if self._unit.claim is None or (self._unit.claim.principal, self._unit.claim.key) != (
            principal,
            key,
        ):
            raise RuntimeError("complete() without claim() of the same key")
        self._unit.answer = (status, json.dumps(body), json.dumps(headers))


class OneStatementUnitOfWork:
    """No transaction: reads as they come (on a pooled connection taken at the first read), one
    atomic write at the end (alone, or with other commands' through group commit).

    `unchecked` is the cached issue handed out without a read: before anything leaves the
    unit, the write's version guard or a read of the head confirms it was current.
    """

    issues: OneStatementIssueStore
    idempotency: OneStatementIdempotency

    def __init__(
        self,
        pool: asyncpg.Pool,
        reference: ReferenceData,
        cache: SnapshotCache | None = None,
        trust: CacheTrust | None = None,
        group: GroupCommit | None = None,
    ) -> None:
        self._pool = pool
        self._reference = reference
        # Where the statement goes: with other commands' (group commit), or alone on this
        # unit's connection.
        self._group = group
        self._conn: PoolConnectionProxy[asyncpg.Record] | None = None
        self.cache = cache if cache is not None else SnapshotCache(0)
        # Without a cache there is nothing to trust; a bare unit reads like before.
        self.trust = trust if trust is not None else CacheTrust(limit=0.0)
        self.unchecked: Issue | None = None
        # The queued write that leaves `unchecked` as cached, if it may not have committed.
        self.after: asyncio.Future[int] | None = None
        self.pending: _Append | None = None
        self.claim: _Claim | None = None
        self.answer: tuple[int, str, str] | None = None

    async def rules_for(self, vendor_id: str) -> Rules | None:
        """Reference data (reloaded through this unit's connection when stale)."""
        # A reload of stale reference data borrows a connection briefly unless the unit holds
        # one already (the unit has no transaction: nothing waits on what it holds).
        return await self._reference.rules_for(vendor_id, self._conn)

    async def connection(self) -> PoolConnectionProxy[asyncpg.Record]:
        """The unit's pooled connection, acquired on first use.

        With a trusted cache and group commit most commands never use one: they decide on the
        cached issue and their write goes out on the group commit's connection. Not holding one
        while they wait lets every waiting command join the next batch.
        """
        if self._conn is None:
            self._conn = await self._pool.acquire()
        return self._conn

    async def __aenter__(self) -> OneStatementUnitOfWork:
        self.issues = OneStatementIssueStore(self)
        self.idempotency = OneStatementIdempotency(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held = self._conn
        try:
            if exc_type is None:
                await self._write()
            elif isinstance(exc, Exception) and not isinstance(
                exc, (port.StreamVersionConflict, *DATABASE_ERRORS)
            ):
                # A refusal decided on an unchecked cached issue may be a stale one. A database
                # error is no refusal, and its connection may be gone: it goes out as it is
                # (the API answers 503; the fault drill's PostgreSQL restart found a 500 here).
                await self._check_unchecked(cause=exc)
        except asyncpg.InterfaceError as raised:
            if self._conn is not None:
                raise_if_lost(self._conn, raised)
            raise
        finally:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await self._pool.release(conn)
        if exc is not None and held is not None:
            # The command's own call may have met the connection the pool had taken back.
            raise_if_lost(held, exc)

    async def read_head(self, issue_id: str, cached: Issue | None) -> Issue | None:
        """Read the head: the cached issue if still current, else the stored snapshot."""
        conn = await self.connection()
        row = await conn.fetchrow(
            QUERIES["read_head_unless_at"], issue_id, -1 if cached is None else cached.version
        )
        if row is None:
            return None
        if cached is not None:
            self.trust.record(stale=row["snapshot_json"] is not None)
            if row["snapshot_json"] is None:
                return cached
        issue = Issue.model_validate_json(row["snapshot_json"])
        self.cache.put(issue)
        return issue

    async def _check_unchecked(self, cause: BaseException | None = None) -> None:
        """Raise StreamVersionConflict if the unchecked cached issue is no longer current."""
        issue, self.unchecked = self.unchecked, None
        if issue is None:
            return
        if self.after is not None:
            # Decided on a queued write: the head shows it only once it committed.
            await asyncio.wait([self.after])
        current = await self.read_head(issue.id, issue)
        if current is not issue:
            raise port.StreamVersionConflict(issue.id, issue.version) from cause

    async def _write(self) -> None:
        if self.claim is not None and self.answer is None:
            raise RuntimeError("an idempotency key was claimed but no answer stored")
        if self.pending is None:
            # Nothing appended: the answer must not rest on a stale cached issue.
            await self._check_unchecked()
        if self.pending is None and self.claim is None:
            return  # the command changed nothing and no key was sent: nothing to write
        moved = await self._statement()
        if self.pending is not None:
            unchecked, self.unchecked = self.unchecked, None
            if not moved:
                if unchecked is not None and unchecked.id == self.pending.issue.id:
                    # The cached issue was stale: the next run reads the head.
                    self.trust.record(stale=True)
                # Also drops this command's own issue, cached when its write was queued.
                self.cache.forget(self.pending.issue.id)
                raise port.StreamVersionConflict(
                    self.pending.issue.id, self.pending.expected_version
                )
            if unchecked is not None:
                self.trust.record(stale=False)
            self.cache.committed(self.pending.issue)

    async def _statement(self) -> int:
        """Run the unit's write; returns how many heads moved (0 or 1)."""
        write = self._command_write()
        try:
            if self._group is not None:
                return await self._queued(self._group, write)
            conn = await self.connection()
            row = await conn.fetchrow(QUERIES["append_command"], *write.arguments())
        except asyncpg.UniqueViolationError as exc:
            # The key was used meanwhile (or, defensively, an event version is taken): nothing
            # was written; the next run finds the stored answer or the moved head.
            a = self.pending
            raise port.StreamVersionConflict(
                "" if a is None else a.issue.id, 0 if a is None else a.expected_version
            ) from exc
        assert row is not None
        return int(row["moved"])

    async def _queued(self, group: GroupCommit, write: CommandWrite) -> int:
        """Queue the write; cache the issue as it leaves it, so the next command on the issue
        can be decided now and go out right after it (or with it); then wait for it."""
        written = group.submit(write)
        if self.pending is None:
            return await written
        self.cache.put(self.pending.issue, pending=written)
        write_queued()
        try:
            return await written
        except BaseException:
            self.cache.forget(self.pending.issue.id)  # nobody decides on it any more
            raise

    def _decided_on_unchecked(self) -> bool:
        """Whether the append was decided on the unchecked cached issue."""
        a, issue = self.pending, self.unchecked
        return (
            a is not None
            and issue is not None
            and issue.id == a.issue.id
            and issue.version == a.expected_version
        )

    def _command_write(self) -> CommandWrite:
        """`append_command`'s arguments for what the unit did."""
        a, claim, answer = self.pending, self.claim, self.answer
        events = [] if a is None else a.events
        first = 0 if a is None else a.expected_version + 1
        status, body, headers = (None, None, None) if answer is None else answer
        return CommandWrite(
            stream_id=None if a is None else a.issue.id,
            stream_type="issue",
            traceparent=None if a is None else a.traceparent,
            event_ids=[uuid.uuid4() for _ in events],
            versions=list(range(first, first + len(events))),
            types=[ev.type for ev in events],
            times=[None if a is None else a.time] * len(events),
            data=[ev.data_json for ev in events],
            vendor_id=None if a is None else a.issue.vendor_id,
            version=None if a is None else a.expected_version + len(events),
            snapshot=None if a is None else a.issue.model_dump_json(),
            updated_at=None if a is None else a.time,
            expected=None if a is None else a.expected_version,
            inbound_source=None if a is None or a.origin is None else uuid.UUID(a.origin.source_id),
            inbound_delivery=None if a is None or a.origin is None else a.origin.delivery_id,
            principal=None if claim is None else claim.principal,
            key=None if claim is None else claim.key,
            request_hash=None if claim is None else claim.request_hash,
            status=status,
            body=body,
            headers=headers,
            after=self.after if self._decided_on_unchecked() else None,
        )


class OneStatementUnitOfWorkFactory:
    """One-statement units of work over one pool and one reference-data cache."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        reference: ReferenceData,
        cache_size: int = 2_000,
        group: GroupCommit | None = None,
    ) -> None:
        self.pool = pool
        self.reference = reference
        self.cache = SnapshotCache(cache_size)
        self.trust = CacheTrust()
        self.group = group

    def __call__(self) -> OneStatementUnitOfWork:
        return OneStatementUnitOfWork(self.pool, self.reference, self.cache, self.trust, self.group)
