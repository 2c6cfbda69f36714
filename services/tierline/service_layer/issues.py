"""Open issues and run commands against them: one transaction per command, once and only once."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from tierline.domain import commands as c
from tierline.domain.events import Event
from tierline.domain.issue import Issue, decide, evolve
from tierline.service_layer.reference import ReferenceData
from tierline.store import idempotency
from tierline.store.api_keys import Role
from tierline.store.event_store import NewEvent, append_events, lock_head, read_head
from tierline.store.pool import Conn

log = structlog.get_logger(__name__)

FIND_REF = "SELECT stream_id, vendor_id FROM external_refs WHERE system = $1 AND key = $2"
INSERT_REF = """
INSERT INTO external_refs (system, key, stream_id, vendor_id) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING RETURNING 1
"""

# (status, body, headers) as the API answers; stored with the effects for idempotent retries.
Response = tuple[int, Any, dict[str, str]]
Render = Callable[[Issue, bool], Response]


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key's role and, for vendor keys, its vendor."""

    key_id: str
    role: Role
    vendor_id: str | None = None

    def may_see(self, vendor_id: str) -> bool:
        """Vendor keys see only their own vendor's data."""
        return self.role != "vendor" or self.vendor_id == vendor_id


SYSTEM = Principal(key_id="system", role="admin")


@dataclass(frozen=True)
class IdempotencyRequest:
    """The `Idempotency-Key` header and a hash of what was asked."""

    key: str
    request_hash: str


class IssueNotFound(Exception):
    """No such issue (or not visible to this principal)."""


class UnknownVendor(Exception):
    """The command names a vendor that is not registered."""


class PreconditionFailed(Exception):
    """`If-Match` named a version other than the current one."""

    def __init__(self, current: int) -> None:
        self.current = current
        super().__init__(f"issue is at version {current}")


class ExternalRefConflict(Exception):
    """The external ref belongs to an issue of another vendor (which is not named)."""


class _ExternalRefRaced(Exception):
    """Another request registered the same external ref first; retry to return it."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class IssueService:
    """The write path for issues."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        reference: ReferenceData,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._pool = pool
        self._reference = reference
        self._clock = clock

    async def get(self, principal: Principal, issue_id: str) -> Issue:
        """The current issue from the write side's snapshot (read-your-writes)."""
        head = await read_head(self._pool, issue_id)
        if head is None:
            raise IssueNotFound(issue_id)
        issue = Issue.model_validate_json(head[1])
        if not principal.may_see(issue.vendor_id):
            raise IssueNotFound(issue_id)
        return issue

    async def open(
        self,
        principal: Principal,
        command: c.OpenIssue,
        render: Render,
        idem: IdempotencyRequest | None = None,
        traceparent: str | None = None,
    ) -> Response:
        """Open an issue, or return the existing one for a known external ref."""
        if not principal.may_see(command.vendor_id):
            raise UnknownVendor(command.vendor_id)
        rules = await self._reference.rules_for(command.vendor_id)
        if rules is None:
            raise UnknownVendor(command.vendor_id)
        for _ in range(3):
            try:
                return await self._open_once(principal, command, render, idem, traceparent, rules)
            except _ExternalRefRaced:
                continue
        raise RuntimeError("external ref kept racing")

    async def _open_once(
        self,
        principal: Principal,
        command: c.OpenIssue,
        render: Render,
        idem: IdempotencyRequest | None,
        traceparent: str | None,
        rules: Any,
    ) -> Response:
        async with self._pool.acquire() as conn, conn.transaction():
            if idem is not None:
                stored = await idempotency.claim(
                    conn, principal.key_id, idem.key, idem.request_hash
                )
                if stored is not None:
                    return stored.status, stored.body, stored.headers
            if command.external_ref is not None:
                existing = await self._by_external_ref(conn, command.external_ref, command)
                if existing is not None:
                    return await self._finish(conn, principal, idem, render(existing, False))
            issue_id = str(uuid.uuid4())
            now = self._clock()
            events = decide(None, command, now, rules)
            issue = await self._append(conn, issue_id, None, events, now, traceparent)
            if command.external_ref is not None:
                system, key = command.external_ref.split(":", 1)
                inserted = await conn.fetchval(INSERT_REF, system, key, issue_id, command.vendor_id)
                if inserted is None:
                    raise _ExternalRefRaced()
            log.info("issue_opened", issue_id=issue_id, vendor_id=command.vendor_id)
            return await self._finish(conn, principal, idem, render(issue, True))

    async def _by_external_ref(self, conn: Conn, ref: str, command: c.OpenIssue) -> Issue | None:
        """The issue a ref already names, when it is this vendor's; another vendor's is a conflict.

        The vendor is compared before the issue is read, so a ref of another vendor yields
        nothing of that issue, to any caller: the same answer whoever asks.
        """
        system, key = ref.split(":", 1)
        row = await conn.fetchrow(FIND_REF, system, key)
        if row is None:
            return None
        if row["vendor_id"] != command.vendor_id:
            raise ExternalRefConflict()
        head = await read_head(conn, row["stream_id"])
        assert head is not None
        return Issue.model_validate_json(head[1])

    async def execute(
        self,
        principal: Principal,
        issue_id: str,
        command: c.Command,
        render: Render,
        *,
        if_match: int | None = None,
        idem: IdempotencyRequest | None = None,
        traceparent: str | None = None,
    ) -> Response:
        """Run one command against an issue inside one transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            if idem is not None:
                stored = await idempotency.claim(
                    conn, principal.key_id, idem.key, idem.request_hash
                )
                if stored is not None:
                    return stored.status, stored.body, stored.headers
            head = await lock_head(conn, issue_id)
            if head is None:
                raise IssueNotFound(issue_id)
            issue = Issue.model_validate_json(head[1])
            if not principal.may_see(issue.vendor_id):
                raise IssueNotFound(issue_id)
            if if_match is not None and if_match != issue.version:
                raise PreconditionFailed(issue.version)
            rules = await self._reference.rules_for(issue.vendor_id, conn)
            if rules is None:
                raise UnknownVendor(issue.vendor_id)
            now = max(self._clock(), issue.updated_at)
            events = decide(issue, command, now, rules)
            if events:
                issue = await self._append(conn, issue_id, issue, events, now, traceparent)
            return await self._finish(conn, principal, idem, render(issue, False))

    async def _append(
        self,
        conn: Conn,
        issue_id: str,
        issue: Issue | None,
        events: list[Event],
        now: datetime,
        traceparent: str | None,
    ) -> Issue:
        expected = 0 if issue is None else issue.version
        state = issue
        for offset, event in enumerate(events, start=1):
            state = evolve(state, event, issue_id=issue_id, version=expected + offset, at=now)
        assert state is not None
        await append_events(
            conn,
            stream_id=issue_id,
            stream_type="issue",
            vendor_id=state.vendor_id,
            expected_version=expected,
            events=[NewEvent(ev.event_type(), ev.model_dump_json()) for ev in events],
            snapshot_json=state.model_dump_json(),
            time=now,
            traceparent=traceparent,
        )
        return state

    async def _finish(
        self,
        conn: Conn,
        principal: Principal,
        idem: IdempotencyRequest | None,
        response: Response,
    ) -> Response:
        if idem is not None:
            await idempotency.complete(conn, principal.key_id, idem.key, *response)
        return response
