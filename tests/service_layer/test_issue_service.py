"""The write path's contract, run on both units of work: in memory and on PostgreSQL.

One suite, two implementations (as eventsourcing runs one recorder suite per store): what
holds on the fake holds on PostgreSQL, and the fake makes the service tests take milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from tierline.domain import commands as c
from tierline.domain.calendar import TWENTY_FOUR_SEVEN, BusinessCalendar
from tierline.domain.governance import DEFAULT_GOVERNANCE, Vendor
from tierline.domain.issue import InvalidTransition, Issue, Rules
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
from tierline.service_layer.unit_of_work import (
    IdempotencyKeyReused,
    NewEvent,
    StreamAppend,
    StreamVersionConflict,
    UnitOfWorkFactory,
)
from tierline.store.event_store import stream_events
from tierline.store.memory import MemoryUnitOfWork, MemoryWriteSide
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
    # (version, type) of every stored event of a stream, in the order the relay publishes them
    events: Callable[[str], Awaitable[list[tuple[int, str]]]]


@pytest.fixture(params=["memory", "postgres"])
def side(request: pytest.FixtureRequest) -> WriteSide:
    """The same suite on each implementation."""
    found: WriteSide = request.getfixturevalue(f"{request.param}_side")
    return found


@pytest.fixture
def memory_side() -> WriteSide:
    rules = Rules(governance=DEFAULT_GOVERNANCE, calendar=BusinessCalendar(TWENTY_FOUR_SEVEN))
    memory = MemoryWriteSide(rules={v: rules for v in VENDORS})

    async def events(stream_id: str) -> list[tuple[int, str]]:
        return [(e.version, e.type) for e in memory.events if e.stream_id == stream_id]

    return WriteSide(
        "memory",
        IssueService(memory.unit_of_work, clock=lambda: NOW),
        memory.unit_of_work,
        events,
    )


@pytest.fixture
async def postgres_side(database_url: str) -> AsyncIterator[WriteSide]:
    pool = await create_pool(database_url, min_size=1, max_size=8)
    try:
        for vendor_id in VENDORS:
            await insert_vendor(pool, Vendor(id=vendor_id, name=vendor_id))
        units = PostgresUnitOfWorkFactory(pool, ReferenceData(pool))

        async def events(stream_id: str) -> list[tuple[int, str]]:
            # In `position` order: what the relay publishes must follow the versions.
            rows = await pool.fetch(
                "SELECT version, type FROM events WHERE stream_id = $1 ORDER BY position",
                stream_id,
            )
            assert [r["version"] for r in rows] == [
                e.version for e in await stream_events(pool, stream_id)
            ]
            return [(r["version"], r["type"]) for r in rows]

        yield WriteSide("postgres", IssueService(units, clock=lambda: NOW), units, events)
    finally:
        await pool.close()


async def acme_and_globex(side: WriteSide) -> tuple[Issue, Issue]:
    """One new issue of each vendor."""
    return (
        (await side.service.open(SYSTEM, opening())).issue,
        (await side.service.open(SYSTEM, opening("globex"))).issue,
    )


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
    a, b = await acme_and_globex(side)
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


# --- the set-based batch path (`execute_many`, `lock_many`, `append_many`) ---------------------


def later(side: WriteSide, hours: float) -> IssueService:
    """The same write side with the service's clock `hours` after NOW."""
    return IssueService(side.units, clock=lambda: NOW + timedelta(hours=hours))


async def test_a_batch_keeps_each_issues_command_order_and_versions(side: WriteSide) -> None:
    a, b = await acme_and_globex(side)
    answers = await side.service.execute_many(
        [
            (b.id, c.AddComment(body="b1")),
            (a.id, c.AddComment(body="a1")),
            (a.id, c.Acknowledge()),
            (b.id, c.AddComment(body="b2")),
            (a.id, c.AddComment(body="a2")),
        ]
    )
    assert [a.issue.version for a in answers if isinstance(a, Outcome)] == [2, 2, 3, 3, 4]
    assert [t for _, t in await side.events(a.id)] == [
        "io.tierline.issue.opened.v1",
        "io.tierline.issue.commented.v1",
        "io.tierline.issue.acknowledged.v1",
        "io.tierline.issue.commented.v1",
    ]
    assert [v for v, _ in await side.events(b.id)] == [1, 2, 3]
    last = answers[4]
    assert isinstance(last, Outcome) and last.issue == await side.service.get(SYSTEM, a.id)


async def test_a_refused_command_in_a_batch_changes_nothing_and_the_rest_commit(
    side: WriteSide,
) -> None:
    a, b = await acme_and_globex(side)
    answers = await side.service.execute_many(
        [
            (a.id, c.Acknowledge()),
            (a.id, c.Resume()),  # not on hold: refused, between two accepted commands
            (a.id, c.AddComment(body="after")),
            (b.id, c.Resume()),  # b's only command is refused: b is not touched
            (b.id, c.Acknowledge()),
        ]
    )
    assert [type(x).__name__ for x in answers] == [
        "Outcome",
        "InvalidTransition",
        "Outcome",
        "InvalidTransition",
        "Outcome",
    ]
    assert [v for v, _ in await side.events(a.id)] == [1, 2, 3]
    assert (await side.service.get(SYSTEM, b.id)).version == 2
    only_refused = await side.service.execute_many([(b.id, c.Resume())])
    assert isinstance(only_refused[0], InvalidTransition)
    assert (await side.service.get(SYSTEM, b.id)).version == 2


async def test_a_batch_records_one_breach_per_clock_whatever_repeats(side: WriteSide) -> None:
    opened = (await side.service.open(SYSTEM, opening())).issue
    clock_id = opened.clocks[0].id
    breach = c.RecordSlaBreach(clock_id=clock_id)
    late = later(side, 100)
    first = await late.execute_many([(opened.id, breach), (opened.id, breach)])
    again = await late.execute_many([(opened.id, breach)])
    breaches = [x for x in first + again if isinstance(x, Outcome) and x.events]
    assert len(breaches) == 1
    types = [t for _, t in await side.events(opened.id)]
    assert types.count("io.tierline.issue.sla_breached.v1") == 1


async def test_a_batch_answers_like_commands_one_at_a_time(side: WriteSide) -> None:
    """Only the grouping changes: the same commands one by one leave the same issues."""
    script: list[c.Command] = [
        c.AddComment(body="x"),
        c.Resume(),
        c.Hold(reason="vendor holiday"),
        c.Hold(reason="twice"),
        c.Resume(),
        c.Acknowledge(),
        c.Assign(assignee="ops"),
    ]
    batched = (await side.service.open(SYSTEM, opening())).issue
    single = (await side.service.open(SYSTEM, opening())).issue
    many = await later(side, 0.25).execute_many([(batched.id, cmd) for cmd in script])
    one_by_one: list[object] = []
    for cmd in script:
        try:
            one_by_one.append(await later(side, 0.25).execute(SYSTEM, single.id, cmd))
        except InvalidTransition as refused:
            one_by_one.append(refused)
    assert [type(x) for x in many] == [type(x) for x in one_by_one]
    assert [[e.event_type() for e in x.events] for x in many if isinstance(x, Outcome)] == [
        [e.event_type() for e in x.events] for x in one_by_one if isinstance(x, Outcome)
    ]
    left = (await side.service.get(SYSTEM, batched.id)).model_dump(exclude={"id"})
    assert left == (await side.service.get(SYSTEM, single.id)).model_dump(exclude={"id"})


async def test_a_stale_head_in_a_batch_append_raises_and_stores_nothing(side: WriteSide) -> None:
    a = (await side.service.open(SYSTEM, opening())).issue
    b = (await side.service.open(SYSTEM, opening())).issue
    comment = NewEvent("io.tierline.issue.commented.v1", '{"body": "stale"}')
    moved = a.model_copy(update={"version": 2})
    stale = b.model_copy(update={"version": 2})
    with pytest.raises(StreamVersionConflict) as raised:
        async with side.units() as uow:
            locked = await uow.issues.lock_many([b.id, a.id, "missing"])
            assert sorted(locked) == sorted([a.id, b.id])
            await uow.issues.append_many(
                [
                    StreamAppend(moved, 1, [comment], [NOW]),
                    StreamAppend(stale, 0, [comment], [NOW]),  # b is at 1, not 0
                ]
            )
    assert raised.value.stream_id == b.id
    for issue in (a, b):
        assert await side.events(issue.id) == [(1, "io.tierline.issue.opened.v1")]
        assert (await side.service.get(SYSTEM, issue.id)).version == 1


async def test_a_batch_append_refuses_a_stream_named_twice(side: WriteSide) -> None:
    a = (await side.service.open(SYSTEM, opening())).issue
    comment = NewEvent("io.tierline.issue.commented.v1", '{"body": "x"}')
    with pytest.raises(ValueError, match="more than once"):
        async with side.units() as uow:
            await uow.issues.lock_many([a.id])
            await uow.issues.append_many(
                [
                    StreamAppend(a.model_copy(update={"version": 2}), 1, [comment], [NOW]),
                    StreamAppend(a.model_copy(update={"version": 3}), 2, [comment], [NOW]),
                ]
            )
    assert await side.events(a.id) == [(1, "io.tierline.issue.opened.v1")]


async def test_batches_over_the_same_issues_in_any_order_queue_without_deadlock(
    side: WriteSide,
) -> None:
    issues = [(await side.service.open(SYSTEM, opening())).issue for _ in range(6)]
    ids = [i.id for i in issues]
    batches = [
        [(issue_id, c.AddComment(body=f"{n}")) for issue_id in (ids if n % 2 else ids[::-1])]
        for n in range(6)
    ]
    await asyncio.wait_for(
        asyncio.gather(*(side.service.execute_many(b) for b in batches)), timeout=30
    )
    for issue_id in ids:
        assert [v for v, _ in await side.events(issue_id)] == list(range(1, 8))


async def test_the_memory_and_postgres_batch_paths_agree(
    memory_side: WriteSide, postgres_side: WriteSide
) -> None:
    # None: a breach of that issue's first clock
    script: list[tuple[int, c.Command | None]] = [
        (0, c.Acknowledge()),
        (1, None),
        (0, c.Acknowledge()),
        (2, c.Hold(reason="waiting")),
        (1, None),
        (2, None),
        (3, c.AddComment(body="a vendor's issue")),
    ]
    seen = []
    for side in (memory_side, postgres_side):
        opened = [
            (await side.service.open(SYSTEM, opening(v))).issue
            for v in ("acme", "acme", "globex", "globex")
        ]
        ids = [i.id for i in opened] + ["missing"]
        acme = Principal(key_id="k", role="vendor", vendor_id="acme")
        commands: list[tuple[str, c.Command]] = [
            (ids[n], cmd or c.RecordSlaBreach(clock_id=opened[n].clocks[0].id)) for n, cmd in script
        ]
        answers = await later(side, 30).execute_many(
            [*commands, (ids[4], c.Acknowledge())], principal=acme
        )
        seen.append(
            (
                [
                    (type(x).__name__, [e.event_type() for e in x.events])
                    if isinstance(x, Outcome)
                    else type(x).__name__
                    for x in answers
                ],
                [(await side.service.get(SYSTEM, i)).model_dump(exclude={"id"}) for i in ids[:4]],
                [await side.events(i) for i in ids[:4]],
            )
        )
    assert seen[0] == seen[1]
    assert seen[0][0][3] == "IssueNotFound"  # another vendor's issue, to a vendor key
    assert seen[0][0][-1] == "IssueNotFound"


async def test_a_batch_refuses_a_unit_of_work_without_the_batch_form() -> None:
    """A unit of work that cannot lock a batch at once is refused, not run half-way."""
    rules = Rules(governance=DEFAULT_GOVERNANCE, calendar=BusinessCalendar(TWENTY_FOUR_SEVEN))
    memory = MemoryWriteSide(rules={"acme": rules})
    issue = (await IssueService(memory.unit_of_work).open(SYSTEM, opening())).issue

    class SingleOnly:
        """The memory store's single-issue methods only."""

        def __init__(self, inner: object) -> None:
            for name in ("get", "get_for_update", "append", "find_ref", "add_ref"):
                setattr(self, name, getattr(inner, name))

    def units() -> MemoryUnitOfWork:
        uow = memory.unit_of_work()
        uow.issues = SingleOnly(uow.issues)  # type: ignore[assignment]
        return uow

    with pytest.raises(TypeError, match="lock_many"):
        await IssueService(units).execute_many([(issue.id, c.Acknowledge())])
    assert memory.issue(issue.id) == issue
