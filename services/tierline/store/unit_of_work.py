"""The write path's unit of work on PostgreSQL: one pooled connection, one transaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from asyncpg.transaction import Transaction

from tierline.domain.issue import Issue, Rules
from tierline.service_layer import unit_of_work as port
from tierline.service_layer.issues import IssueService
from tierline.service_layer.reference import ReferenceData
from tierline.sqlfile import load_queries
from tierline.store import event_store, idempotency
from tierline.store.pool import Conn, raise_if_lost, taken_back

QUERIES = load_queries("tierline.store")


class PostgresIssueStore:
    """Issue streams in `streams` (head + snapshot) and `events`, refs in `external_refs`."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def get(self, issue_id: str) -> Issue | None:
        """The issue as last committed, without locking."""
        head = await event_store.read_head(self._conn, issue_id)
        return None if head is None else Issue.model_validate_json(head.snapshot_json)

    async def get_for_update(self, issue_id: str) -> Issue | None:
        """The issue, its head row locked until the transaction ends."""
        head = await event_store.lock_head(self._conn, issue_id)
        return None if head is None else Issue.model_validate_json(head.snapshot_json)

    async def append(
        self,
        issue: Issue,
        expected_version: int,
        events: list[port.NewEvent],
        time: datetime,
        traceparent: str | None,
        origin: port.Origin | None = None,
    ) -> None:
        """Events and the new head in one statement (see `append_events` in store/queries.sql)."""
        await event_store.append_events(
            self._conn,
            stream_id=issue.id,
            stream_type="issue",
            vendor_id=issue.vendor_id,
            expected_version=expected_version,
            events=events,
            snapshot_json=issue.model_dump_json(),
            time=time,
            traceparent=traceparent,
            origin=origin,
        )

    async def lock_many(self, issue_ids: Sequence[str]) -> dict[str, Issue]:
        """The existing issues among these, their head rows locked in one statement."""
        heads = await event_store.lock_heads(self._conn, issue_ids)
        return {
            issue_id: Issue.model_validate_json(head.snapshot_json)
            for issue_id, head in heads.items()
        }

    async def append_many(self, appends: Sequence[port.StreamAppend]) -> None:
        """Every issue's events and new head in one statement (`append_to_streams`)."""
        await event_store.append_to_streams(self._conn, appends)

    async def find_ref(self, system: str, key: str) -> port.ExternalRef | None:
        """The issue and vendor that registered this ref."""
        row = await self._conn.fetchrow(QUERIES["find_external_ref"], system, key)
        return None if row is None else port.ExternalRef(row["stream_id"], row["vendor_id"])

    async def add_ref(self, system: str, key: str, ref: port.ExternalRef) -> bool:
        """Register a ref; the primary key decides a race."""
        inserted = await self._conn.fetchval(
            QUERIES["insert_external_ref"], system, key, ref.issue_id, ref.vendor_id
        )
        return inserted is not None


class PostgresIdempotency:
    """`idempotency_keys` rows, claimed and completed inside the caller's transaction."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def claim(self, principal: str, key: str, request_hash: str) -> port.StoredAnswer | None:
        """Claim the key, or the stored answer of its first use."""
        try:
            stored = await idempotency.claim(self._conn, principal, key, request_hash)
        except idempotency.IdempotencyKeyReused as exc:
            raise port.IdempotencyKeyReused(key) from exc
        return (
            None
            if stored is None
            else port.StoredAnswer(stored.status, stored.body, stored.headers)
        )

    async def complete(
        self, principal: str, key: str, status: int, body: Any, headers: dict[str, str]
    ) -> None:
        """Store the answer with the effects."""
        await idempotency.complete(self._conn, principal, key, status, body, headers)


class PostgresUnitOfWork:
    """A connection from the pool inside one transaction; `connection` for other adapters."""

    issues: PostgresIssueStore
    idempotency: PostgresIdempotency
    connection: PoolConnectionProxy[asyncpg.Record]

    def __init__(self, pool: asyncpg.Pool, reference: ReferenceData) -> None:
        self._pool = pool
        self._reference = reference
        self._transaction: Transaction | None = None

    async def rules_for(self, vendor_id: str) -> Rules | None:
        """Reference data through this transaction's connection (a second one could deadlock)."""
        return await self._reference.rules_for(vendor_id, self.connection)

    async def __aenter__(self) -> PostgresUnitOfWork:
        self.connection = await self._pool.acquire()
        try:
            self._transaction = self.connection.transaction()
            await self._transaction.start()
        except BaseException:
            await self._pool.release(self.connection)
            raise
        self.issues = PostgresIssueStore(self.connection)
        self.idempotency = PostgresIdempotency(self.connection)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._transaction is not None
        try:
            if exc_type is None:
                await self._transaction.commit()
            elif not taken_back(self.connection):
                await self._transaction.rollback()
            # else: the server closed the connection, and with it rolled the transaction back.
        except asyncpg.InterfaceError as raised:
            raise_if_lost(self.connection, raised)
            raise
        finally:
            await self._pool.release(self.connection)
        if exc is not None:
            # The command's own call may have met the connection the pool had taken back.
            raise_if_lost(self.connection, exc)


class PostgresUnitOfWorkFactory:
    """Units of work over one pool and one reference-data cache."""

    def __init__(self, pool: asyncpg.Pool, reference: ReferenceData) -> None:
        self.pool = pool
        self.reference = reference

    def __call__(self) -> PostgresUnitOfWork:
        return PostgresUnitOfWork(self.pool, self.reference)


def issue_service(
    pool: asyncpg.Pool,
    reference: ReferenceData | None = None,
    clock: Callable[[], datetime] | None = None,
) -> IssueService:
    """The write path on PostgreSQL, as roles, tests and benchmarks outside the API build it."""
    units = PostgresUnitOfWorkFactory(pool, reference or ReferenceData(pool))
    return IssueService(units) if clock is None else IssueService(units, clock=clock)
