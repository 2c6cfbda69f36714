"""Open issues and run commands against them: one unit of work per command, once and only once.

The service knows nothing of HTTP. Each use case returns an `Outcome` (the issue after the
command, the events it appended, whether it was created) and raises domain errors; adapters
render those. Callers that must add their own effects to the same transaction, such as the
API's idempotency records, pass the unit of work they opened (`uow=`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from tierline.domain import commands as c
from tierline.domain.events import Event
from tierline.domain.issue import InvalidTransition, Issue, Rules, decide, evolve
from tierline.service_layer.unit_of_work import (
    BatchIssueStore,
    ExternalRef,
    NewEvent,
    Origin,
    StreamAppend,
    UnitOfWork,
    UnitOfWorkFactory,
)
from tierline.store.api_keys import Role

log = structlog.get_logger(__name__)
# A unit of work that lost a race runs again at most this often.
RETRIES = 3


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
class Outcome:
    """What a command did: the issue after it, the events it appended, whether it opened it."""

    issue: Issue
    events: tuple[Event, ...] = ()
    created: bool = False


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


class RetryUnitOfWork(Exception):
    """A race was lost (another unit registered the same external ref first): run the whole
    unit of work again, and it will find what the winner committed."""


# What `execute_many` answers per command: its outcome, or why the domain refused it.
Answer = Outcome | IssueNotFound | InvalidTransition | UnknownVendor


def _utcnow() -> datetime:
    return datetime.now(UTC)


class IssueService:
    """The write path for issues."""

    def __init__(self, units: UnitOfWorkFactory, clock: Callable[[], datetime] = _utcnow) -> None:
        self.units = units
        self._clock = clock

    async def get(self, principal: Principal, issue_id: str) -> Issue:
        """The current issue from the write side's snapshot (read-your-writes)."""
        async with self.units() as uow:
            issue = await uow.issues.get(issue_id)
        if issue is None or not principal.may_see(issue.vendor_id):
            raise IssueNotFound(issue_id)
        return issue

    async def open(
        self,
        principal: Principal,
        command: c.OpenIssue,
        *,
        uow: UnitOfWork | None = None,
        traceparent: str | None = None,
        origin: Origin | None = None,
    ) -> Outcome:
        """Open an issue, or return the existing one for a known external ref of its vendor."""
        if not principal.may_see(command.vendor_id):
            raise UnknownVendor(command.vendor_id)
        if uow is not None:  # the caller retries its whole unit of work on RetryUnitOfWork
            return await self._open_in(uow, command, traceparent, origin)
        for _ in range(RETRIES):
            try:
                async with self.units() as own:
                    return await self._open_in(own, command, traceparent, origin)
            except RetryUnitOfWork:
                continue
        raise RuntimeError("external ref kept racing")

    async def _open_in(
        self,
        uow: UnitOfWork,
        command: c.OpenIssue,
        traceparent: str | None,
        origin: Origin | None = None,
    ) -> Outcome:
        rules = await uow.rules_for(command.vendor_id)
        if rules is None:
            raise UnknownVendor(command.vendor_id)
        ref = _split_ref(command.external_ref)
        if ref is not None:
            existing = await self._by_external_ref(uow, ref, command.vendor_id)
            if existing is not None:
                return Outcome(existing)
        issue_id = str(uuid.uuid4())
        now = self._clock()
        events = decide(None, command, now, rules)
        issue = await self._append(uow, issue_id, None, events, now, traceparent, origin)
        if ref is not None and not await uow.issues.add_ref(
            *ref, ExternalRef(issue_id, command.vendor_id)
        ):
            raise RetryUnitOfWork()
        log.info("issue_opened", issue_id=issue_id, vendor_id=command.vendor_id)
        return Outcome(issue, tuple(events), created=True)

    async def _by_external_ref(
        self, uow: UnitOfWork, ref: tuple[str, str], vendor_id: str
    ) -> Issue | None:
        """The issue a ref already names, when it is this vendor's; another vendor's is a conflict.

        The vendor is compared before the issue is read, so a ref of another vendor yields
        nothing of that issue, to any caller: the same answer whoever asks.
        """
        found = await uow.issues.find_ref(*ref)
        if found is None:
            return None
        if found.vendor_id != vendor_id:
            raise ExternalRefConflict()
        issue = await uow.issues.get(found.issue_id)
        assert issue is not None, "an external ref names an issue that is not stored"
        return issue

    async def execute(
        self,
        principal: Principal,
        issue_id: str,
        command: c.Command,
        *,
        if_match: int | None = None,
        uow: UnitOfWork | None = None,
        traceparent: str | None = None,
        origin: Origin | None = None,
    ) -> Outcome:
        """Run one command against an issue inside one unit of work."""
        if uow is None:
            async with self.units() as own:
                return await self._execute_in(
                    own, principal, issue_id, command, if_match, traceparent, origin
                )
        return await self._execute_in(
            uow, principal, issue_id, command, if_match, traceparent, origin
        )

    async def execute_many(
        self, commands: Sequence[tuple[str, c.Command]], *, principal: Principal = SYSTEM
    ) -> list[Answer]:
        """Run commands against many issues in one unit of work (the SLA engine's batches).

        Set-based: every issue of the batch is locked in one statement (in id order, so two
        batches cannot deadlock), rules are read once per vendor, each issue's commands are
        decided and folded in the given order exactly as `execute` would, and all the events
        and new heads are appended in one statement, each head guarded by its version. A
        command the domain refuses is answered with its error and changes nothing; the others
        commit together.
        """
        by_issue: dict[str, list[int]] = {}
        for index, (issue_id, _) in enumerate(commands):
            by_issue.setdefault(issue_id, []).append(index)
        answers: dict[int, Answer] = {}
        async with self.units() as uow:
            store = uow.issues
            if not isinstance(store, BatchIssueStore):
                raise TypeError("execute_many needs a unit of work with lock_many/append_many")
            locked = await store.lock_many(sorted(by_issue))
            rules: dict[str, Rules | None] = {}
            appends = []
            for issue_id in sorted(by_issue):
                issue = locked.get(issue_id)
                if issue is not None and issue.vendor_id not in rules:
                    rules[issue.vendor_id] = await uow.rules_for(issue.vendor_id)
                batch = _IssueBatch(issue_id, issue, self._clock)
                for index in by_issue[issue_id]:
                    answers[index] = batch.run(principal, commands[index][1], rules)
                if batch.append is not None:
                    appends.append(batch.append)
            await store.append_many(appends)
        return [answers[i] for i in range(len(commands))]

    async def _execute_in(
        self,
        uow: UnitOfWork,
        principal: Principal,
        issue_id: str,
        command: c.Command,
        if_match: int | None,
        traceparent: str | None,
        origin: Origin | None = None,
    ) -> Outcome:
        issue = await uow.issues.get_for_update(issue_id)
        if issue is None or not principal.may_see(issue.vendor_id):
            raise IssueNotFound(issue_id)
        if if_match is not None and if_match != issue.version:
            raise PreconditionFailed(issue.version)
        rules = await uow.rules_for(issue.vendor_id)
        if rules is None:
            raise UnknownVendor(issue.vendor_id)
        now = max(self._clock(), issue.updated_at)
        events = decide(issue, command, now, rules)
        if not events:
            return Outcome(issue)
        issue = await self._append(uow, issue_id, issue, events, now, traceparent, origin)
        return Outcome(issue, tuple(events))

    async def _append(
        self,
        uow: UnitOfWork,
        issue_id: str,
        issue: Issue | None,
        events: list[Event],
        now: datetime,
        traceparent: str | None,
        origin: Origin | None = None,
    ) -> Issue:
        expected = 0 if issue is None else issue.version
        state = issue
        for offset, event in enumerate(events, start=1):
            state = evolve(state, event, issue_id=issue_id, version=expected + offset, at=now)
        assert state is not None
        await uow.issues.append(
            state,
            expected,
            [NewEvent(ev.event_type(), ev.model_dump_json()) for ev in events],
            now,
            traceparent,
            origin,
        )
        return state


class _IssueBatch:
    """One issue's share of `execute_many`: its commands decided and folded in order."""

    def __init__(self, issue_id: str, issue: Issue | None, clock: Callable[[], datetime]) -> None:
        self.issue_id = issue_id
        self.locked = issue
        self.state = issue
        self.events: list[NewEvent] = []
        self.times: list[datetime] = []
        self._clock = clock

    def run(
        self, principal: Principal, command: c.Command, rules: dict[str, Rules | None]
    ) -> Answer:
        """Decide one command on the state so far; its outcome, or the refusal as a value."""
        state = self.state
        if state is None or not principal.may_see(state.vendor_id):
            return IssueNotFound(self.issue_id)
        vendor_rules = rules[state.vendor_id]
        if vendor_rules is None:
            return UnknownVendor(state.vendor_id)
        now = max(self._clock(), state.updated_at)
        try:
            events = decide(state, command, now, vendor_rules)
        except InvalidTransition as refused:
            return refused
        for event in events:
            state = evolve(state, event, issue_id=self.issue_id, version=state.version + 1, at=now)
            self.events.append(NewEvent(event.event_type(), event.model_dump_json()))
            self.times.append(now)
        self.state = state
        return Outcome(state, tuple(events))

    @property
    def append(self) -> StreamAppend | None:
        """What to append for this issue, if any command recorded events."""
        if self.locked is None or self.state is None or not self.events:
            return None
        return StreamAppend(self.state, self.locked.version, self.events, self.times)


def _split_ref(ref: str | None) -> tuple[str, str] | None:
    if ref is None:
        return None
    system, key = ref.split(":", 1)
    return system, key


__all__ = [
    "SYSTEM",
    "ExternalRefConflict",
    "IssueNotFound",
    "IssueService",
    "Outcome",
    "PreconditionFailed",
    "Principal",
    "RetryUnitOfWork",
    "Rules",
    "UnknownVendor",
]
