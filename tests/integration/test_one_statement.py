"""The one-statement write path (store/one_statement.py): races lose cleanly, nothing half-written.

Two units that read the same head both decide; the first statement wins and the second writes
nothing at all (no event, no head move, no idempotency answer) and says so with
StreamVersionConflict. Through two API processes on one database (separate in-process queues,
so their commands really race), random mixes of commands and idempotency keys keep versions
gap-free and answer each key once.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from tests.fixtures.api import command, create_vendor, open_issue
from tests.fixtures.stack import Stack, running_stack, stack_settings
from tierline.domain import commands as c
from tierline.service_layer.issues import SYSTEM, IssueService
from tierline.service_layer.reference import ReferenceData
from tierline.service_layer.unit_of_work import StreamVersionConflict
from tierline.store.one_statement import (
    CacheTrust,
    OneStatementUnitOfWork,
    OneStatementUnitOfWorkFactory,
)
from tierline.store.pool import create_pool, taken_back
from tierline.store.unit_of_work import PostgresUnitOfWorkFactory

pytestmark = pytest.mark.postgres


@pytest.fixture
async def two_apis(database_url: str, tansu: str, topic: str) -> AsyncIterator[tuple[Stack, Stack]]:
    async with (
        running_stack(stack_settings(database_url, tansu, topic), roles=["api"]) as one,
        running_stack(stack_settings(database_url, tansu, topic), roles=["api"]) as two,
    ):
        yield one, two


@pytest.fixture
async def pool(two_apis: tuple[Stack, Stack]) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(two_apis[0].settings.database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


async def _issue(stack: Stack) -> str:
    async with stack.client() as http:
        async with http.get("/v1/vendors/acme-it") as resp:
            if resp.status == 404:
                await create_vendor(http)
        issue = await open_issue(http)
    return str(issue["id"])


async def _stream(pool: asyncpg.Pool, issue_id: str) -> tuple[list[int], int, int]:
    versions = [
        r["version"]
        for r in await pool.fetch(
            "SELECT version FROM events WHERE stream_id = $1 ORDER BY version", issue_id
        )
    ]
    head = await pool.fetchval("SELECT version FROM streams WHERE stream_id = $1", issue_id)
    keys = await pool.fetchval("SELECT count(*) FROM idempotency_keys WHERE key LIKE 'race-%'")
    return versions, head, keys


async def test_the_second_of_two_units_on_one_head_writes_nothing(
    two_apis: tuple[Stack, Stack], pool: asyncpg.Pool
) -> None:
    issue_id = await _issue(two_apis[0])
    reference = ReferenceData(pool)
    service = IssueService(PostgresUnitOfWorkFactory(pool, reference))
    first, second = OneStatementUnitOfWork(pool, reference), OneStatementUnitOfWork(pool, reference)
    await first.__aenter__()
    await first.idempotency.claim("k1", "race-a", "h")
    outcome = await service.execute(SYSTEM, issue_id, c.AddComment(body="one"), uow=first)
    await first.idempotency.complete("k1", "race-a", 200, {"v": 1}, {})
    with pytest.raises(StreamVersionConflict):
        async with second:
            await second.idempotency.claim("k1", "race-b", "h")
            await service.execute(SYSTEM, issue_id, c.AddComment(body="two"), uow=second)
            await second.idempotency.complete("k1", "race-b", 200, {"v": 2}, {})
            await first.__aexit__(None, None, None)  # the first writes while the second ran
    versions, head, keys = await _stream(pool, issue_id)
    assert outcome.issue.version == 2
    assert versions == [1, 2] and head == 2
    assert keys == 1  # only the winner's answer was stored
    bodies = await pool.fetch(
        "SELECT data->>'body' AS body FROM events WHERE stream_id = $1 AND version = 2", issue_id
    )
    assert [r["body"] for r in bodies] == ["one"]


async def test_a_key_taken_meanwhile_undoes_the_whole_statement(
    two_apis: tuple[Stack, Stack], pool: asyncpg.Pool
) -> None:
    issue_id = await _issue(two_apis[0])
    reference = ReferenceData(pool)
    service = IssueService(PostgresUnitOfWorkFactory(pool, reference))
    loser = OneStatementUnitOfWork(pool, reference)
    with pytest.raises(StreamVersionConflict):
        async with loser:
            assert await loser.idempotency.claim("k2", "race-key", "h") is None
            await service.execute(SYSTEM, issue_id, c.AddComment(body="late"), uow=loser)
            await loser.idempotency.complete("k2", "race-key", 200, {"late": True}, {})
            # Another request with the same key committed first (without touching the issue).
            await pool.execute(
                "INSERT INTO idempotency_keys (principal, key, request_hash, status, body)"
                " VALUES ('k2', 'race-key', 'h', 200, '{}')"
            )
    versions, head, _ = await _stream(pool, issue_id)
    assert versions == [1] and head == 1  # the event and the head move were undone with it


async def test_a_command_that_changes_nothing_stores_only_its_answer(
    two_apis: tuple[Stack, Stack], pool: asyncpg.Pool
) -> None:
    issue_id = await _issue(two_apis[0])  # opened at P3: asking for P3 again changes nothing
    async with two_apis[0].client() as http:
        same = {"Idempotency-Key": "race-same"}
        first = await command(http, issue_id, "priority", {"priority": "P3"}, same)
        replay = await command(http, issue_id, "priority", {"priority": "P3"}, same)
        reused = await command(http, issue_id, "priority", {"priority": "P2"}, same)
    assert first[0] == 200 and first[1]["version"] == 1, first
    assert replay[:2] == first[:2]
    assert reused[0] == 422  # the key's stored request differs
    versions, head, keys = await _stream(pool, issue_id)
    assert versions == [1] and head == 1
    assert keys == 1


def _retries() -> float:
    return REGISTRY.get_sample_value("tierline_unit_of_work_retries_total") or 0.0


async def test_two_processes_racing_random_commands_keep_versions_and_keys_exact(
    two_apis: tuple[Stack, Stack], pool: asyncpg.Pool
) -> None:
    retries_before = _retries()
    for seed in range(1, 9):  # until the race was really run again (checked after the loop)
        await _race(two_apis, pool, seed)
        if _retries() > retries_before and seed >= 3:
            break
    assert _retries() > retries_before, "no command lost a race: the retry path went untested"


async def _race(two_apis: tuple[Stack, Stack], pool: asyncpg.Pool, seed: int) -> None:
    rng = random.Random(seed)
    issue_id = await _issue(two_apis[0])
    keys = [f"race-{seed}-{i}" for i in range(12)]
    plan = []  # (which API, idempotency key or None, comment body)
    for i in range(40):
        key = rng.choice(keys) if rng.random() < 0.6 else None
        body = f"body-{key}" if key is not None else f"free-{i}"
        plan.append((rng.randrange(2), key, body))
    # One caller (one API key: idempotency keys are per key) through both processes.
    key_of_one = two_apis[0].admin_key
    async with two_apis[0].client() as one, two_apis[1].client(key_of_one) as two:
        https = (one, two)
        results = await asyncio.gather(
            *(
                command(
                    https[api],
                    issue_id,
                    "comments",
                    {"body": body},
                    {"Idempotency-Key": key} if key is not None else None,
                )
                for api, key, body in plan
            )
        )
    assert [r[0] for r in results] == [200] * len(plan), [r for r in results if r[0] != 200]
    distinct_effects = len({key for _, key, _ in plan if key is not None}) + sum(
        1 for _, key, _ in plan if key is None
    )
    versions, head, _ = await _stream(pool, issue_id)
    assert versions == list(range(1, distinct_effects + 2))
    assert head == distinct_effects + 1
    answers: dict[str, set[int]] = {}
    for (_, key, _), (_, body, _) in zip(plan, results, strict=True):
        if key is not None:
            answers.setdefault(key, set()).add(body["version"])
    assert all(len(v) == 1 for v in answers.values()), answers  # one answer per key


async def test_opens_racing_through_two_processes_create_one_issue_per_key(
    two_apis: tuple[Stack, Stack], pool: asyncpg.Pool
) -> None:
    """Opens with random Idempotency-Keys through two processes: one issue per key, no extra."""
    await _issue(two_apis[0])
    rng = random.Random(7)
    keys = [f"race-open-{i}" for i in range(6)]
    plan = []  # (which API, idempotency key or None, title)
    for i in range(36):
        key = rng.choice(keys) if rng.random() < 0.6 else None
        plan.append((rng.randrange(2), key, f"open-{key}" if key else f"open-free-{i}"))
    key_of_one = two_apis[0].admin_key
    async with two_apis[0].client() as one, two_apis[1].client(key_of_one) as two:
        https = (one, two)

        async def post(api: int, key: str | None, title: str) -> tuple[int, dict[str, Any]]:
            body = {"vendor_id": "acme-it", "title": title, "category": "quality"}
            headers = {"Idempotency-Key": key} if key is not None else None
            async with https[api].post(
                "/v1/issues", json={**body, "priority": "P2"}, headers=headers
            ) as resp:
                return resp.status, await resp.json()

        results = await asyncio.gather(*(post(*step) for step in plan))
    assert [status for status, _ in results] == [201] * len(plan), results
    ids_by_key: dict[str, set[str]] = {}
    for (_, key, _), (_, body) in zip(plan, results, strict=True):
        if key is not None:
            ids_by_key.setdefault(key, set()).add(body["id"])
    assert all(len(ids) == 1 for ids in ids_by_key.values()), ids_by_key
    created = {body["id"] for _, body in results}
    assert len(created) == len(ids_by_key) + sum(1 for _, key, _ in plan if key is None)
    rows = await pool.fetch(
        "SELECT s.stream_id, s.version, s.snapshot->>'title' AS title,"
        " array_agg(e.version ORDER BY e.version) AS versions"
        " FROM streams s JOIN events e USING (stream_id)"
        " WHERE s.snapshot->>'title' LIKE 'open-%' GROUP BY s.stream_id",
    )
    assert {r["stream_id"] for r in rows} == created  # nothing stored beyond the answers
    for row in rows:
        assert row["versions"] == list(range(1, row["version"] + 1)), dict(row)


async def test_both_write_paths_build_the_same_factory_contract(
    two_apis: tuple[Stack, Stack], pool: asyncpg.Pool
) -> None:
    reference = ReferenceData(pool)
    unit = OneStatementUnitOfWorkFactory(pool, reference)()
    async with unit:
        with pytest.raises(RuntimeError, match="external refs"):
            await unit.issues.find_ref("jira", "X-1")


async def test_a_cached_snapshot_is_replaced_once_another_writer_moved_the_head(
    two_apis: tuple[Stack, Stack], pool: asyncpg.Pool
) -> None:
    issue_id = await _issue(two_apis[0])
    reference = ReferenceData(pool)
    units = OneStatementUnitOfWorkFactory(pool, reference)
    units.trust = CacheTrust(limit=0.0)  # never decide on the cache unread: read every time
    async with units() as unit:
        before = await unit.issues.get(issue_id)
    assert before is not None and before.version == 1 and len(units.cache) == 1
    elsewhere = IssueService(PostgresUnitOfWorkFactory(pool, reference))  # another writer
    await elsewhere.execute(SYSTEM, issue_id, c.ChangePriority(priority="P1"), uow=None)
    async with units() as unit:
        after = await unit.issues.get(issue_id)
    assert after is not None and after.version == 2 and after.priority == "P1"
    async with units() as unit:
        assert await unit.issues.get(issue_id) is units.cache.get(issue_id)  # served cached


async def test_a_stale_trusted_cache_never_reaches_an_answer(
    two_apis: tuple[Stack, Stack], pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each process decides on its cached issue without reading while the cache was current;
    the other process moves the head in between. Whatever the command, its answer must be the
    one the stored head gives: a 200 shows the head it wrote, a 409 the status the head really
    had, a 412 only for an If-Match that really was stale."""
    # Both processes always decide on their caches unread (in production a process stops
    # trusting a cache that was often stale): the checks alone must keep the answers right.
    monkeypatch.setattr(CacheTrust, "trusted", property(lambda _: True))
    issue_id = await _issue(two_apis[0])
    rng = random.Random(20261201)
    bodies = {
        "acknowledge": lambda: {},
        "hold": lambda: {"reason": "waiting on the vendor"},
        "resume": lambda: {},
        # Two values each: many commands change nothing, which writes no event to guard.
        "priority": lambda: {"priority": rng.choice(["P2", "P3"])},
        "assign": lambda: {"assignee": rng.choice(["ana", "bo"])},
        "escalate": lambda: {"reason": "no answer"},
        "deescalate": lambda: {"reason": "calmer"},
        "resolve": lambda: {"resolution": "fixed"},
        "reopen": lambda: {"reason": "back again"},
        "comments": lambda: {"body": "note"},
    }
    stale_before = _cached("stale")
    key_of_one = two_apis[0].admin_key
    async with two_apis[0].client() as one, two_apis[1].client(key_of_one) as two:
        for step in range(120):
            head = await pool.fetchrow(
                "SELECT version, snapshot->>'status' AS status FROM streams WHERE stream_id = $1",
                issue_id,
            )
            name = rng.choice([*bodies, "priority", "assign", "priority", "assign"])
            headers, match = None, rng.random()
            if match < 0.3:
                headers = {"If-Match": f'"{head["version"]}"'}
            elif match < 0.4:
                headers = {"If-Match": f'"{head["version"] + rng.choice([-1, 1])}"'}
            status, body, _ = await command(
                (one, two)[rng.randrange(2)], issue_id, name, bodies[name](), headers
            )
            after = await pool.fetchrow(
                "SELECT version, snapshot::text AS snapshot FROM streams WHERE stream_id = $1",
                issue_id,
            )
            stored = json.loads(after["snapshot"])
            where = (step, name, headers, status, body)
            if status == 200:
                assert body["version"] == after["version"], where
                for field in ("status", "tier", "priority"):
                    assert body[field] == stored[field], where
            elif status == 409:
                assert body["status_now"] == head["status"], where
                assert after["version"] == head["version"], where
            elif status == 412:
                assert headers is not None and headers["If-Match"] != f'"{head["version"]}"', where
                assert body["current_version"] == head["version"], where
            else:
                raise AssertionError(where)
            if headers is not None and headers["If-Match"] != f'"{head["version"]}"':
                assert status == 412, where
    assert _cached("stale") > stale_before, "no cached issue was ever stale: nothing was tested"


def _cached(result: str) -> float:
    return REGISTRY.get_sample_value("tierline_cached_issues_total", {"result": result}) or 0.0


@pytest.mark.parametrize("path", ["one-statement", "transaction"])
@pytest.mark.parametrize("when", ["at-once", "after-the-pool-took-it-back"])
async def test_a_database_error_inside_a_unit_goes_out_as_itself(
    two_apis: tuple[Stack, Stack],
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    when: str,
) -> None:
    """PostgreSQL restarts under a command: the error that leaves the unit is the lost
    connection's, which the API answers with 503, not an error about a connection already back
    in the pool (the fault drill saw that become a 500).

    Both orders of the race: the command's next call meets the closed connection itself, or the
    pool has already taken the connection back (its close callback ran first; a CI run met that
    order and answered "released back to the pool", which read as a bug, not a lost database).
    """
    from tierline.api.app import _dependency_down

    monkeypatch.setattr(CacheTrust, "trusted", property(lambda _: True))
    issue_id = await _issue(two_apis[0])
    units: OneStatementUnitOfWorkFactory | PostgresUnitOfWorkFactory
    if path == "one-statement":
        units = OneStatementUnitOfWorkFactory(pool, ReferenceData(pool))
        async with units() as unit:
            await unit.issues.get(issue_id)  # cached
    else:
        units = PostgresUnitOfWorkFactory(pool, ReferenceData(pool))
    with pytest.raises(Exception) as caught:
        async with units() as unit:
            if isinstance(unit, OneStatementUnitOfWork):
                assert await unit.issues.get(issue_id) is units.cache.get(issue_id)  # unchecked
                conn = await unit.connection()
            else:
                await unit.issues.get(issue_id)
                conn = unit.connection
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            assert not taken_back(conn)
            await pool.execute("SELECT pg_terminate_backend($1)", pid)
            if when == "after-the-pool-took-it-back":
                for _ in range(500):
                    if taken_back(conn):
                        break
                    await asyncio.sleep(0.01)
                assert taken_back(conn), "the pool never took the closed connection back"
            try:
                await conn.fetchval("SELECT 1")  # the server went away under the command
            finally:
                # The pool takes the closed connection back meanwhile (its close callback),
                # as it did in the drill while the command unwound.
                await asyncio.sleep(0.2)
    assert _dependency_down(caught.value), repr(caught.value)
    # The pool is whole afterwards: the next unit works.
    async with units() as unit:
        assert (await unit.issues.get(issue_id)) is not None
