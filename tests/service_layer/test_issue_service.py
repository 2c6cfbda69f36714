"""The write path's contract, run on both units of work: in memory and on PostgreSQL.

One suite, two implementations (as eventsourcing runs one recorder suite per store): what
holds on the fake holds on PostgreSQL, and the fake makes the service tests take milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from tierline.domain import commands as c
from tierline.domain.calendar import TWENTY_FOUR_SEVEN, BusinessCalendar
from tierline.domain.governance import DEFAULT_GOVERNANCE, Vendor
from tierline.domain.issue import InvalidTransition, Rules
from tierline.service_layer.issues import (
    SYSTEM,
    ExternalRefConflict,
    IssueNotFound,
    IssueService,
    Outcome,
    PreconditionFailed,
    Principal,
    UnknownVendor,
)
from tierline.service_layer.reference import ReferenceData
from tierline.service_layer.unit_of_work import IdempotencyKeyReused, UnitOfWorkFactory
from tierline.store.memory import MemoryWriteSide
from tierline.store.pool import create_pool
from tierline.store.unit_of_work import PostgresUnitOfWorkFactory
from tierline.store.vendors import insert_vendor

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
VENDORS = ("acme", "globex")


@dataclass
class WriteSide:
    """A service over one implementation, and the factory of its units of work."""

    kind: str
    service: IssueService
    units: UnitOfWorkFactory


@pytest.fixture(params=["memory", "postgres"])
def side(request: pytest.FixtureRequest) -> WriteSide:
    """The same suite on each implementation."""
    found: WriteSide = request.getfixturevalue(f"{request.param}_side")
    return found


@pytest.fixture
def memory_side() -> WriteSide:
    rules = Rules(governance=DEFAULT_GOVERNANCE, calendar=BusinessCalendar(TWENTY_FOUR_SEVEN))
    memory = MemoryWriteSide(rules={v: rules for v in VENDORS})
    return WriteSide(
        "memory", IssueService(memory.unit_of_work, clock=lambda: NOW), memory.unit_of_work
    )


@pytest.fixture
async def postgres_side(database_url: str) -> AsyncIterator[WriteSide]:
    pool = await create_pool(database_url, min_size=1, max_size=8)
    try:
        for vendor_id in VENDORS:
            await insert_vendor(pool, Vendor(id=vendor_id, name=vendor_id))
        units = PostgresUnitOfWorkFactory(pool, ReferenceData(pool))
        yield WriteSide("postgres", IssueService(units, clock=lambda: NOW), units)
    finally:
        await pool.close()


def opening(vendor_id: str = "acme", ref: str | None = None) -> c.OpenIssue:
    return c.OpenIssue(
        vendor_id=vendor_id,
        title="Reports late",
        category="quality",
        priority="P2",
        external_ref=ref,
    )


async def test_open_returns_the_new_issue_and_its_events(side: WriteSide) -> None:
    outcome = await side.service.open(SYSTEM, opening())
    assert outcome.created and outcome.issue.version == len(outcome.events) == 1
    assert (await side.service.get(SYSTEM, outcome.issue.id)) == outcome.issue


async def test_a_known_ref_returns_the_issue_for_its_vendor_and_conflicts_for_another(
    side: WriteSide,
) -> None:
    first = await side.service.open(SYSTEM, opening(ref="jira:GOV-7"))
    again = await side.service.open(SYSTEM, opening(ref="jira:GOV-7"))
    assert again == Outcome(first.issue) and not again.created
    with pytest.raises(ExternalRefConflict):
        await side.service.open(SYSTEM, opening("globex", ref="jira:GOV-7"))


async def test_racing_opens_of_one_ref_make_one_issue(side: WriteSide) -> None:
    outcomes = await asyncio.gather(
        *(side.service.open(SYSTEM, opening(ref="jira:RACE")) for _ in range(8))
    )
    assert len({o.issue.id for o in outcomes}) == 1
    assert sum(o.created for o in outcomes) == 1


async def test_commands_on_one_issue_queue_and_every_one_counts(side: WriteSide) -> None:
    issue = (await side.service.open(SYSTEM, opening())).issue
    await asyncio.gather(
        *(side.service.execute(SYSTEM, issue.id, c.AddComment(body=f"c{n}")) for n in range(10))
    )
    assert (await side.service.get(SYSTEM, issue.id)).version == 11


async def test_refusals_change_nothing(side: WriteSide) -> None:
    issue = (await side.service.open(SYSTEM, opening())).issue
    with pytest.raises(PreconditionFailed):
        await side.service.execute(SYSTEM, issue.id, c.Acknowledge(), if_match=7)
    with pytest.raises(InvalidTransition):
        await side.service.execute(SYSTEM, issue.id, c.Resume())
    with pytest.raises(IssueNotFound):
        await side.service.execute(SYSTEM, "no-such-issue", c.Acknowledge())
    with pytest.raises(UnknownVendor):
        await side.service.open(SYSTEM, opening("initech"))
    assert (await side.service.get(SYSTEM, issue.id)).version == 1


async def test_a_vendor_principal_sees_only_its_vendor(side: WriteSide) -> None:
    issue = (await side.service.open(SYSTEM, opening("globex"))).issue
    acme = Principal(key_id="k", role="vendor", vendor_id="acme")
    with pytest.raises(IssueNotFound):
        await side.service.get(acme, issue.id)
    with pytest.raises(IssueNotFound):
        await side.service.execute(acme, issue.id, c.Acknowledge())
    with pytest.raises(UnknownVendor):
        await side.service.open(acme, opening("globex"))


async def test_a_batch_commits_what_the_domain_accepts_and_answers_refusals(
    side: WriteSide,
) -> None:
    a = (await side.service.open(SYSTEM, opening())).issue
    b = (await side.service.open(SYSTEM, opening("globex"))).issue
    answers = await side.service.execute_many(
        [
            (b.id, c.Acknowledge()),
            (a.id, c.Resume()),
            ("missing", c.Acknowledge()),
            (a.id, c.Acknowledge()),
        ]
    )
    assert isinstance(answers[0], Outcome) and answers[0].issue.status == "acknowledged"
    assert isinstance(answers[1], InvalidTransition)
    assert isinstance(answers[2], IssueNotFound)
    assert isinstance(answers[3], Outcome) and answers[3].issue.version == 2
    assert (await side.service.get(SYSTEM, a.id)).status == "acknowledged"


async def test_a_unit_of_work_that_fails_leaves_nothing(side: WriteSide) -> None:
    issue = (await side.service.open(SYSTEM, opening())).issue
    with pytest.raises(RuntimeError):
        async with side.units() as uow:
            await side.service.execute(SYSTEM, issue.id, c.Acknowledge(), uow=uow)
            await uow.idempotency.claim("p", "k", "h")
            raise RuntimeError("the caller failed after the command")
    assert (await side.service.get(SYSTEM, issue.id)).version == 1
    async with side.units() as uow:
        assert await uow.idempotency.claim("p", "k", "h") is None  # the claim rolled back too
        await uow.idempotency.complete("p", "k", 200, {"ok": True}, {})


async def test_idempotency_answers_once_per_key_and_refuses_another_request(
    side: WriteSide,
) -> None:
    async with side.units() as uow:
        assert await uow.idempotency.claim("p", "k", "hash-1") is None
        await uow.idempotency.complete("p", "k", 201, {"id": "x"}, {"Location": "/x"})
    async with side.units() as uow:
        stored = await uow.idempotency.claim("p", "k", "hash-1")
    assert stored is not None and (stored.status, stored.body, stored.headers) == (
        201,
        {"id": "x"},
        {"Location": "/x"},
    )
    with pytest.raises(IdempotencyKeyReused):
        async with side.units() as uow:
            await uow.idempotency.claim("p", "k", "hash-2")
    async with side.units() as uow:  # keys are per principal
        assert await uow.idempotency.claim("other", "k", "hash-2") is None
        await uow.idempotency.complete("other", "k", 200, None, {})
