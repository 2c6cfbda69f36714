"""The write path's unit of work in memory: for service-layer tests and benchmarks.

It keeps the PostgreSQL implementation's contract, including what matters under concurrency:
a unit of work's changes appear only when it commits, `get_for_update` makes other units wait
for that issue until the first ends, a ref or an idempotency key being registered by one unit
makes another wait for its outcome. tests/service_layer runs the same suite on both.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

from tierline.domain.issue import Issue, Rules
from tierline.service_layer import unit_of_work as port


@dataclass
class StoredEvent:
    """An appended event as the memory store keeps it."""

    stream_id: str
    version: int
    type: str
    data: dict[str, Any]
    time: datetime
    traceparent: str | None
    origin: port.Origin | None = None


@dataclass
class MemoryWriteSide:
    """What PostgreSQL would hold: heads, events, refs, idempotency answers, reference data."""

    rules: dict[str, Rules] = field(default_factory=dict)
    heads: dict[str, str] = field(default_factory=dict)  # issue id -> snapshot JSON
    events: list[StoredEvent] = field(default_factory=list)
    refs: dict[tuple[str, str], port.ExternalRef] = field(default_factory=dict)
    answers: dict[tuple[str, str], tuple[str, port.StoredAnswer | None]] = field(
        default_factory=dict
    )
    locks: defaultdict[object, asyncio.Lock] = field(
        default_factory=lambda: defaultdict(asyncio.Lock)
    )

    def unit_of_work(self) -> MemoryUnitOfWork:
        """A fresh unit of work over this state (a UnitOfWorkFactory)."""
        return MemoryUnitOfWork(self)

    def issue(self, issue_id: str) -> Issue | None:
        """The committed issue, for assertions."""
        raw = self.heads.get(issue_id)
        return None if raw is None else Issue.model_validate_json(raw)


class _Staged:
    """A unit of work's changes, applied only at commit."""

    def __init__(self) -> None:
        self.heads: dict[str, str] = {}
        self.events: list[StoredEvent] = []
        self.refs: dict[tuple[str, str], port.ExternalRef] = {}
        self.answers: dict[tuple[str, str], tuple[str, port.StoredAnswer | None]] = {}


class MemoryIssueStore:
    """Issue heads, events and refs of one unit of work."""

    def __init__(self, uow: MemoryUnitOfWork) -> None:
        self._uow = uow

    def _head(self, issue_id: str) -> str | None:
        staged = self._uow.staged.heads.get(issue_id)
        return staged if staged is not None else self._uow.state.heads.get(issue_id)

    async def get(self, issue_id: str) -> Issue | None:
        """The issue as this unit of work sees it."""
        raw = self._head(issue_id)
        return None if raw is None else Issue.model_validate_json(raw)

    async def get_for_update(self, issue_id: str) -> Issue | None:
        """The issue, locked for this unit of work until it ends."""
        await self._uow.lock(("issue", issue_id))
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
        """Stage events and the new snapshot, refusing a version that moved on."""
        current = await self.get(issue.id)
        if (0 if current is None else current.version) != expected_version:
            raise port.StreamVersionConflict(issue.id, expected_version)
        staged = self._uow.staged
        for offset, event in enumerate(events, start=1):
            staged.events.append(
                StoredEvent(
                    issue.id,
                    expected_version + offset,
                    event.type,
                    json.loads(event.data_json),
                    time,
                    traceparent,
                    origin,
                )
            )
        staged.heads[issue.id] = issue.model_dump_json()

    async def lock_many(self, issue_ids: Sequence[str]) -> dict[str, Issue]:
        """The existing issues among these, locked in id order for this unit of work."""
        found = {}
        for issue_id in sorted(set(issue_ids)):
            await self._uow.lock(("issue", issue_id))
            issue = await self.get(issue_id)
            if issue is not None:
                found[issue_id] = issue
        return found

    async def append_many(self, appends: Sequence[port.StreamAppend]) -> None:
        """Stage every issue's events and head, or none when any head moved on."""
        port.check_distinct_streams(appends)
        for append in appends:
            current = await self.get(append.issue.id)
            if current is None or current.version != append.expected_version:
                raise port.StreamVersionConflict(append.issue.id, append.expected_version)
        for append in appends:
            staged = self._uow.staged
            for offset, (event, at) in enumerate(zip(append.events, append.times, strict=True), 1):
                staged.events.append(
                    StoredEvent(
                        append.issue.id,
                        append.expected_version + offset,
                        event.type,
                        json.loads(event.data_json),
                        at,
                        None,
                    )
                )
            staged.heads[append.issue.id] = append.issue.model_dump_json()

    async def find_ref(self, system: str, key: str) -> port.ExternalRef | None:
        """The committed (or this unit's own) registration of a ref."""
        return self._uow.staged.refs.get((system, key)) or self._uow.state.refs.get((system, key))

    async def add_ref(self, system: str, key: str, ref: port.ExternalRef) -> bool:
        """Register a ref; another unit registering it first makes this one wait, then lose."""
        await self._uow.lock(("ref", system, key))
        if await self.find_ref(system, key) is not None:
            return False
        self._uow.staged.refs[(system, key)] = ref
        return True


class MemoryIdempotency:
    """Idempotency answers of one unit of work."""

    def __init__(self, uow: MemoryUnitOfWork) -> None:
        self._uow = uow

    async def claim(self, principal: str, key: str, request_hash: str) -> port.StoredAnswer | None:
        """Claim the key (waiting for a unit that holds it), or its stored answer."""
        await self._uow.lock(("idempotency", principal, key))
        found = self._uow.state.answers.get((principal, key))
        if found is None:
            self._uow.staged.answers[(principal, key)] = (request_hash, None)
            return None
        if found[0] != request_hash:
            raise port.IdempotencyKeyReused(key)
        return found[1]

    async def complete(
        self, principal: str, key: str, status: int, body: Any, headers: dict[str, str]
    ) -> None:
        """Stage the answer with the effects (JSON round trip, as PostgreSQL stores it)."""
        request_hash = self._uow.staged.answers[(principal, key)][0]
        stored = port.StoredAnswer(status, json.loads(json.dumps(body)), dict(headers))
        self._uow.staged.answers[(principal, key)] = (request_hash, stored)


class MemoryUnitOfWork:
    """One "transaction" over a MemoryWriteSide."""

    def __init__(self, state: MemoryWriteSide) -> None:
        self.state = state
        self.staged = _Staged()
        self._held: list[asyncio.Lock] = []
        self.issues = MemoryIssueStore(self)
        self.idempotency = MemoryIdempotency(self)

    async def lock(self, name: object) -> None:
        """Hold a named lock until this unit of work ends (re-entrant within it)."""
        lock = self.state.locks[name]
        if lock in self._held:
            return
        await lock.acquire()
        self._held.append(lock)

    async def rules_for(self, vendor_id: str) -> Rules | None:
        """The rules the test or bench registered for the vendor."""
        return self.state.rules.get(vendor_id)

    async def __aenter__(self) -> MemoryUnitOfWork:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.state.heads.update(self.staged.heads)
                self.state.events.extend(self.staged.events)
                self.state.refs.update(self.staged.refs)
                self.state.answers.update(
                    {k: v for k, v in self.staged.answers.items() if v[1] is not None}
                )
        finally:
            for lock in reversed(self._held):
                lock.release()
            self._held.clear()
