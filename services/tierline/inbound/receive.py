"""Receiving one delivery: verify, then one unit of work that claims the delivery id, runs the
commands through the issue service and records the outcome. Nothing here calls out.

The source acts as a principal of its own: bound to its vendor when it has one (it can then
neither open nor touch another vendor's issues), otherwise as an integration. Commands carry
the delivery as their origin, so every event they append names the source and the delivery.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import structlog
from prometheus_client import Counter
from pydantic import ValidationError

from tierline.domain.issue import InvalidTransition, Issue
from tierline.inbound import deliveries, mapping, sources, verify
from tierline.inbound.deliveries import Result
from tierline.service_layer.issues import (
    RETRIES,
    ExternalRefConflict,
    IssueNotFound,
    IssueService,
    Principal,
    RetryUnitOfWork,
    UnknownVendor,
)
from tierline.service_layer.unit_of_work import Origin
from tierline.store.unit_of_work import PostgresUnitOfWork, PostgresUnitOfWorkFactory

log = structlog.get_logger(__name__)

UNVERIFIED = Counter(
    "tierline_inbound_unverified_total",
    "Requests to /v1/inbound refused with 401 (unknown source or bad signature alike)",
)
DELIVERIES = Counter(
    "tierline_inbound_deliveries_total",
    "Verified inbound deliveries by source type and outcome (duplicate: a redelivery)",
    ["type", "outcome"],
)


class Unauthorized(Exception):
    """No such source, or the signature does not verify: the caller learns which of neither."""


@dataclass(frozen=True)
class Answer:
    """What became of a delivery (or of the first one with its id, for a redelivery)."""

    delivery_id: str
    result: Result
    duplicate: bool = False


class InboundReceiver:
    """Verifies deliveries and runs them on the write path."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        units: PostgresUnitOfWorkFactory,
        issues: IssueService,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.units = units
        self.issues = issues
        self._clock = clock

    async def verified_source(
        self, raw_id: str, headers: Mapping[str, str], body: bytes
    ) -> sources.Receiving:
        """The source, when the request carries its valid signature; Unauthorized otherwise."""
        try:
            source_id = uuid.UUID(raw_id)
        except ValueError:
            source_id = None
        source = None if source_id is None else await sources.for_receiving(self.pool, source_id)
        if source is None:
            UNVERIFIED.inc()
            raise Unauthorized()
        try:
            verify.verify(source.type, source.secrets, headers, body, self._clock())
        except verify.Unverified as exc:
            UNVERIFIED.inc()
            claimed = _storable(verify.claimed_delivery_id(source.type, headers))
            await deliveries.record_rejected(
                self.pool, source.id, claimed, source.vendor_id, str(exc)
            )
            log.info("inbound_rejected", source_id=str(source.id), reason=str(exc))
            raise Unauthorized() from None
        return source

    async def record_failed(
        self, source: sources.Receiving, headers: Mapping[str, str], body: bytes, error: str
    ) -> str:
        """Record a verified delivery that could not even be read (its body is not JSON)."""
        delivery_id = _storable(verify.delivery_id(source.type, headers, None, body))
        async with self.units() as uow:
            row = await deliveries.claim(uow.connection, source.id, delivery_id)
            if row is not None:
                result = Result("failed", vendor_id=source.vendor_id, error=error)
                await deliveries.complete(uow.connection, row, result)
        DELIVERIES.labels(source.type, "failed").inc()
        return delivery_id

    async def receive(
        self, source: sources.Receiving, headers: Mapping[str, str], body: bytes, payload: Any
    ) -> Answer:
        """Map a verified delivery to commands and run them with its record, once per id."""
        body_id = payload.get("id") if isinstance(payload, dict) else None
        delivery_id = _storable(verify.delivery_id(source.type, headers, body_id, body))
        try:
            rules = mapping.rules_for(source.type, mapping.Mapping.model_validate(source.mapping))
            event = mapping.read_event(rules, headers, payload)
        except ValidationError:  # stored before a stricter release: refuse, do not guess
            rules, event = None, None
        for _ in range(RETRIES):
            try:
                result = await self._once(source, delivery_id, rules, event)
            except RetryUnitOfWork:  # another delivery registered the same ticket first
                continue
            if result is None:
                return await self._first_answer(source, delivery_id)
            DELIVERIES.labels(source.type, result.outcome).inc()
            log.info(
                "inbound_delivery",
                source_id=str(source.id),
                delivery_id=delivery_id,
                outcome=result.outcome,
                issue_id=result.issue_id,
            )
            return Answer(delivery_id, result)
        raise RuntimeError("the unit of work kept losing races")

    async def _once(
        self,
        source: sources.Receiving,
        delivery_id: str,
        rules: mapping.Rules | None,
        event: mapping.TicketEvent | None,
    ) -> Result | None:
        """Claim the id, run the commands, record the result: one unit of work (None: a
        redelivery of an id recorded before)."""
        async with self.units() as uow:
            row = await deliveries.claim(uow.connection, source.id, delivery_id)
            if row is None:
                return None
            if rules is None or event is None:
                result = Result("failed", error="the source's mapping is not valid")
            else:
                origin = Origin(str(source.id), delivery_id)
                result = await self._apply(uow, source, rules, event, origin)
            await deliveries.complete(uow.connection, row, result)
        return result

    async def _first_answer(self, source: sources.Receiving, delivery_id: str) -> Answer:
        """What the first delivery with this id became, for a redelivery."""
        stored = await deliveries.by_delivery_id(self.pool, source.id, delivery_id)
        assert stored is not None, "a claimed delivery id has no record"
        DELIVERIES.labels(source.type, "duplicate").inc()
        first = Result(
            stored.outcome,
            stored.event,
            stored.ticket_key,
            stored.vendor_id,
            stored.issue_id,
            tuple(stored.commands),
            stored.error,
        )
        return Answer(delivery_id, first, duplicate=True)

    async def _apply(
        self,
        uow: PostgresUnitOfWork,
        source: sources.Receiving,
        rules: mapping.Rules,
        event: mapping.TicketEvent,
        origin: Origin,
    ) -> Result:
        ticket = event.ticket
        base = Result(
            "ignored", event=event.name, ticket_key=ticket.key, vendor_id=source.vendor_id
        )
        if not event.changes:
            return replace(base, error=event.unmapped or "nothing to do")
        if not ticket.key:
            return replace(base, outcome="failed", error="the payload has no ticket key")
        principal = Principal(f"inbound:{source.id}", *_scope(source))
        run = _Run(self.issues, uow, principal, origin)
        found = await uow.issues.find_ref(rules.kind, ticket.key)
        issue_id = None if found is None else found.issue_id
        for change in event.changes:
            if change.kind == "created":
                vendor, why_not = _vendor(rules, source, ticket)
                if vendor is None:
                    return replace(base, outcome="failed", error=why_not)
                issue_id = await run.open(rules, ticket, vendor) or issue_id
            elif issue_id is None:
                run.ignore(change, "unknown ticket: no issue has this external ref")
            else:
                await run.execute(rules, change, issue_id)
        if run.failed is not None:
            return replace(base, outcome="failed", error=run.failed, commands=tuple(run.records))
        applied = any(r["outcome"] == "applied" for r in run.records)
        reasons = [r["reason"] for r in run.records if r.get("reason")]
        return Result(
            "applied" if applied else "ignored",
            event.name,
            ticket.key,
            run.vendor_id or source.vendor_id,
            issue_id if run.visible else None,
            tuple(run.records),
            None if applied else "; ".join(reasons) or None,
        )


def _scope(source: sources.Receiving) -> tuple[Any, str | None]:
    """A source bound to a vendor acts as that vendor; an unbound one as an integration."""
    return ("vendor", source.vendor_id) if source.vendor_id else ("integration", None)


def _vendor(
    rules: mapping.Rules, source: sources.Receiving, ticket: mapping.Ticket
) -> tuple[str | None, str | None]:
    """The vendor of a new issue, or None and why there is none."""
    named = ticket.vendor if rules.routes_vendors else None
    if named:
        named = rules.vendors.get(named.strip().lower(), named.strip())
        if source.vendor_id is not None and named != source.vendor_id:
            return None, f"the payload names vendor {named[:63]!r}, not the source's vendor"
        return named, None
    if source.vendor_id is None:
        return None, "no vendor: give the source a vendor_id or map fields.vendor"
    return source.vendor_id, None


class _Run:
    """The commands of one delivery, run in its unit of work, and their records."""

    def __init__(
        self, issues: IssueService, uow: PostgresUnitOfWork, who: Principal, origin: Origin
    ) -> None:
        self.issues, self.uow, self.who, self.origin = issues, uow, who, origin
        self.records: list[dict[str, Any]] = []
        self.failed: str | None = None
        self.vendor_id: str | None = None
        self.visible = True

    def ignore(self, change: mapping.Change, reason: str, command: str | None = None) -> None:
        self.records.append(
            {"change": change.kind, "command": command, "outcome": "ignored", "reason": reason}
        )

    async def open(self, rules: mapping.Rules, ticket: mapping.Ticket, vendor: str) -> str | None:
        change = mapping.Change("created")
        command = mapping.open_command(rules, ticket, vendor)
        if isinstance(command, str):
            self.failed = command
            return None
        try:
            outcome = await self.issues.open(self.who, command, uow=self.uow, origin=self.origin)
        except UnknownVendor:
            self.failed = f"vendor {vendor[:63]!r} is not registered"
            return None
        except ExternalRefConflict:
            self.visible = False
            self.ignore(change, "the external ref belongs to another vendor's issue", "open")
            return None
        self.vendor_id = outcome.issue.vendor_id
        if not outcome.created:
            self.ignore(change, "the ticket's issue exists already", "open")
        else:
            self.records.append(
                {"change": "created", "command": "open", "outcome": "applied", "version": 1}
            )
        return outcome.issue.id

    async def execute(self, rules: mapping.Rules, change: mapping.Change, issue_id: str) -> None:
        issue: Issue | None = await self.uow.issues.get_for_update(issue_id)
        if issue is None or not self.who.may_see(issue.vendor_id):
            self.visible = False
            self.ignore(change, "unknown ticket: no issue has this external ref")
            return
        self.vendor_id = issue.vendor_id
        command = mapping.command_for(rules, change, issue)
        if isinstance(command, str):
            self.ignore(change, command)
            return
        name = command.route
        try:
            outcome = await self.issues.execute(
                self.who, issue_id, command, uow=self.uow, origin=self.origin
            )
        except InvalidTransition as exc:
            self.ignore(change, f"forbidden transition: {exc.detail}", name)
            return
        except IssueNotFound:
            self.ignore(change, "unknown ticket: no issue has this external ref", name)
            return
        if not outcome.events:
            self.ignore(change, "nothing changed", name)
            return
        self.records.append(
            {
                "change": change.kind,
                "command": name,
                "outcome": "applied",
                "version": outcome.issue.version,
            }
        )


def _storable(text: str) -> str:
    """A header value PostgreSQL can keep (no NUL, valid Unicode)."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


__all__ = ["Answer", "InboundReceiver", "Unauthorized"]
