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
    ExternalRef,
    NewEvent,
    Origin,
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
    ) -> list[Outcome | IssueNotFound | InvalidTransition | UnknownVendor]:
        """Run commands against many issues in one unit of work (the SLA engine's batches).

        Each command is decided and appended exactly as `execute` would, in the given order;
        one that the domain refuses is answered with its error and changes nothing, the others
        still commit together. Issues are locked in id order, so two batches cannot deadlock.
        """
        order = sorted(range(len(commands)), key=lambda i: commands[i][0])
        answers: dict[int, Outcome | IssueNotFound | InvalidTransition | UnknownVendor] = {}
        async with self.units() as uow:
            for index in order:
                issue_id, command = commands[index]
                try:
                    answers[index] = await self._execute_in(
                        uow, principal, issue_id, command, None, None
                    )
                except (IssueNotFound, InvalidTransition, UnknownVendor) as refused:
                    answers[index] = refused
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
