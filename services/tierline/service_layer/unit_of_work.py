"""The ports the write path needs: a unit of work holding the issue store and idempotency records.

One unit of work is one transaction: everything done through it commits together when the
`async with` block ends normally and rolls back when it raises. Two implementations keep the
same contract (tests/service_layer runs one suite on both): PostgreSQL
(`tierline.store.unit_of_work`) and in memory (`tierline.store.memory`), on which the
service-layer tests run in milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from tierline.domain.issue import Issue, Rules


class StreamVersionConflict(Exception):
    """The stream is not at the version the writer expected."""

    def __init__(self, stream_id: str, expected: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        super().__init__(f"stream {stream_id} is not at version {expected}")


class IdempotencyKeyReused(Exception):
    """The key was used before with a different request."""


@dataclass(frozen=True)
class NewEvent:
    """An event ready to append: type name and JSON data."""

    type: str
    data_json: str


@dataclass(frozen=True)
class StreamAppend:
    """One issue's share of a batch append: its events (each with its time) after
    `expected_version`, and `issue` as the new snapshot."""

    issue: Issue
    expected_version: int
    events: Sequence[NewEvent]
    times: Sequence[datetime]


def check_distinct_streams(appends: Sequence[StreamAppend]) -> None:
    """A batch append names each stream once (its events in one run); ValueError otherwise."""
    ids = [append.issue.id for append in appends]
    if len(set(ids)) != len(ids):
        raise ValueError("a batch append names a stream more than once")


@dataclass(frozen=True)
class Origin:
    """Where a command came from when not from an API call: an inbound source and delivery."""

    source_id: str
    delivery_id: str


@dataclass(frozen=True)
class ExternalRef:
    """Who registered an external ref: the issue and its vendor."""

    issue_id: str
    vendor_id: str


@dataclass(frozen=True)
class StoredAnswer:
    """What the first request with an idempotency key answered."""

    status: int
    body: Any
    headers: dict[str, str]


class IssueStore(Protocol):
    """Issue streams: snapshot heads, appended events, external refs."""

    async def get(self, issue_id: str) -> Issue | None:
        """The issue as last committed, without locking."""

    async def get_for_update(self, issue_id: str) -> Issue | None:
        """The issue, locked until the unit of work ends (commands on it queue up); or, in the
        one-statement unit (docs/adr/0013), read unlocked and checked again when written."""

    async def append(
        self,
        issue: Issue,
        expected_version: int,
        events: list[NewEvent],
        time: datetime,
        traceparent: str | None,
        origin: Origin | None = None,
    ) -> None:
        """Append events after `expected_version` and store `issue` as the new snapshot."""

    async def find_ref(self, system: str, key: str) -> ExternalRef | None:
        """The issue an external ref names, if any."""

    async def add_ref(self, system: str, key: str, ref: ExternalRef) -> bool:
        """Register a ref; False when another unit of work registered it first."""


@runtime_checkable
class BatchIssueStore(IssueStore, Protocol):
    """An issue store with the set-based batch form (`IssueService.execute_many`).

    Apart from `IssueStore` so that a unit of work without it (one that never locks) still
    serves single commands; both adapters here (PostgreSQL, memory) have it.
    """

    async def lock_many(self, issue_ids: Sequence[str]) -> dict[str, Issue]:
        """The issues that exist among these, all locked (in id order) until the unit of work
        ends; for a batch of commands."""

    async def append_many(self, appends: Sequence[StreamAppend]) -> None:
        """Append several existing issues' events and new snapshots at once; raises
        StreamVersionConflict, and stores none of them, when any is not at its expected
        version."""


class IdempotencyRecords(Protocol):
    """Answers stored per (principal, key), in the same transaction as the effects."""

    async def claim(self, principal: str, key: str, request_hash: str) -> StoredAnswer | None:
        """Claim the key; the stored answer if it was used already (IdempotencyKeyReused if
        with another request). A concurrent claim of the same key waits for the first."""

    async def complete(
        self, principal: str, key: str, status: int, body: Any, headers: dict[str, str]
    ) -> None:
        """Store the answer for later retries."""


class UnitOfWork(Protocol):
    """One transaction over the write side."""

    @property
    def issues(self) -> IssueStore:
        """The issue streams, through this transaction."""

    @property
    def idempotency(self) -> IdempotencyRecords:
        """Idempotency answers, through this transaction."""

    async def rules_for(self, vendor_id: str) -> Rules | None:
        """Governance and the vendor's calendar, read consistently with this transaction."""

    async def __aenter__(self) -> UnitOfWork: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class UnitOfWorkFactory(Protocol):
    """Makes a fresh unit of work per use."""

    def __call__(self) -> UnitOfWork: ...
