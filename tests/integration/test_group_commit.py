"""Group commit (store/group_commit.py): batched commands end exactly as they would alone.

The property: any queue of command writes (fresh and stale head versions, idempotency keys new,
taken before or repeated within the queue, commands that only store an answer, several
commands on one issue) leaves the database and the callers' answers exactly as writing each
command alone, in queue order, with `append_command` does. Written against a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import pytest
from prometheus_client import REGISTRY

from tierline.store.group_commit import CommandWrite, GroupCommit, _Job, batch_arguments

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


async def _streams(conn: asyncpg.Connection, prefix: str, count: int, version: int = 3) -> None:
    await conn.executemany(
        "INSERT INTO streams (stream_id, stream_type, vendor_id, version, snapshot, updated_at)"
        " VALUES ($1, 'issue', 'acme-it', $2, '{}', $3)",
        [(f"{prefix}-{i}", version, NOW) for i in range(count)],
    )


def _write(
    stream: str | None,
    expected: int,
    events: int,
    key: str | None = None,
    principal: str = "key-a",
) -> CommandWrite:
    return CommandWrite(
        stream_id=stream,
        stream_type="issue",
        traceparent=None,
        event_ids=[uuid.uuid4() for _ in range(events)],
        versions=list(range(expected + 1, expected + 1 + events)),
        types=["io.tierline.issue.commented.v1"] * events,
        times=[NOW] * events,
        data=[json.dumps({"n": expected + 1 + i}) for i in range(events)],
        vendor_id=None if stream is None else "acme-it",
        version=None if stream is None else expected + events,
        snapshot=None if stream is None else json.dumps({"v": expected + events}),
        updated_at=None if stream is None else NOW,
        expected=None if stream is None else expected,
        inbound_source=None,
        inbound_delivery=None,
        principal=None if key is None else principal,
        key=key,
        request_hash=None if key is None else "hash",
        status=None if key is None else 201,
        body=None if key is None else json.dumps({"key": key}),
        headers=None if key is None else "{}",
    )


@dataclass
class Model:
    """Each command alone, in queue order, as `append_command` decides it."""

    heads: dict[str, int]
    keys: set[tuple[str, str]] = field(default_factory=set)
    events: set[tuple[str, int]] = field(default_factory=set)

    def apply(self, w: CommandWrite) -> int | str:
        key = None if w.key is None else (w.principal or "", w.key)
        appends = bool(w.types) and w.stream_id is not None
        if appends and self.heads.get(w.stream_id or "") != w.expected:
            return 0  # nothing written, not even the answer: the caller runs the unit again
        if key is not None and key in self.keys:
            return "unique_violation"  # the whole statement is undone
        moved = 0
        if appends:
            assert w.stream_id is not None and w.version is not None
            self.heads[w.stream_id] = w.version
            self.events.update((w.stream_id, v) for v in w.versions)
            moved = 1
        if key is not None:
            self.keys.add(key)
        return moved


async def _outcomes(group: GroupCommit, writes: list[CommandWrite]) -> list[int | str]:
    results = await asyncio.gather(*(group.write(w) for w in writes), return_exceptions=True)
    outcomes: list[int | str] = []
    for result in results:
        if isinstance(result, asyncpg.UniqueViolationError):
            outcomes.append("unique_violation")
        elif isinstance(result, BaseException):
            raise result
        else:
            outcomes.append(result)
    return outcomes


def _batches_over_one() -> float:
    total = REGISTRY.get_sample_value("tierline_write_batch_commands_count") or 0.0
    alone = REGISTRY.get_sample_value("tierline_write_batch_commands_bucket", {"le": "1.0"}) or 0.0
    return total - alone


@pytest.mark.parametrize("writers", [1, 2])
async def test_random_queues_end_as_each_command_alone_in_order(
    database_url: str, conn: asyncpg.Connection, writers: int
) -> None:
    """With two writers, two batches are written at once: which of two commands reusing a key
    wins is then a race (either answer is right), so those queues reuse only stored keys."""
    rng = random.Random(20261202 + writers)
    batched_before = _batches_over_one()
    for round_ in range(12):
        prefix = f"r{round_}"
        await _streams(conn, prefix, 8)
        # Keys stored before the queue: a command reusing one fails as it would alone.
        await conn.execute(
            "INSERT INTO idempotency_keys (principal, key, request_hash, status, body, headers)"
            " VALUES ('key-a', $1, 'hash', 201, '{}', '{}')",
            f"{prefix}-taken",
        )
        model = Model({f"{prefix}-{i}": 3 for i in range(8)}, keys={("key-a", f"{prefix}-taken")})
        planned = dict(model.heads)
        writes = []
        for n in range(rng.randint(2, 24)):
            stream = f"{prefix}-{rng.randrange(8)}"
            fresh = rng.random() < 0.7
            expected = planned[stream] if fresh else planned[stream] - rng.randint(1, 2)
            events = 0 if rng.random() < 0.1 else rng.randint(1, 3)
            reused = [f"{prefix}-k0"] if writers == 1 else []
            key = rng.choice([None, None, f"{prefix}-k{n}", f"{prefix}-taken", *reused])
            write = _write(stream if events else None, expected, events, key)
            if events and fresh:
                planned[stream] = expected + events
            writes.append(write)
        expected_outcomes = [model.apply(w) for w in writes]
        group = GroupCommit(database_url, max_batch=rng.choice([2, 3, 64]), writers=writers)
        await group.start()
        try:
            outcomes = await _outcomes(group, writes)
        finally:
            await group.close()
        assert outcomes == expected_outcomes, f"round {round_}"
        heads = {
            r["stream_id"]: r["version"]
            for r in await conn.fetch(
                "SELECT stream_id, version FROM streams WHERE stream_id LIKE $1", f"{prefix}-%"
            )
        }
        assert heads == model.heads
        events = {
            (r["stream_id"], r["version"])
            for r in await conn.fetch(
                "SELECT stream_id, version FROM events WHERE stream_id LIKE $1", f"{prefix}-%"
            )
        }
        assert events == model.events
        keys = {
            (r["principal"], r["key"])
            for r in await conn.fetch(
                "SELECT principal, key FROM idempotency_keys WHERE key LIKE $1", f"{prefix}-%"
            )
        }
        assert keys == model.keys
    # The queues above were written in batches, not only one by one.
    assert _batches_over_one() > batched_before


async def test_a_batch_puts_each_issues_events_in_version_order(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await _streams(conn, "order", 6)
    group = GroupCommit(database_url)
    await group.start()
    try:
        writes = [_write(f"order-{i % 6}", 3 + 2 * (i // 6), 2) for i in range(18)]
        assert await _outcomes(group, writes) == [1] * 18
    finally:
        await group.close()
    rows = await conn.fetch("SELECT stream_id, version FROM events ORDER BY position")
    by_stream: dict[str, list[int]] = {}
    for row in rows:
        by_stream.setdefault(row["stream_id"], []).append(row["version"])
    assert by_stream == {f"order-{i}": list(range(4, 10)) for i in range(6)}


class HeldHead:
    """Another transaction holding one issue's head row, so the writer's statement waits."""

    def __init__(self, database_url: str, stream_id: str) -> None:
        self._database_url = database_url
        self._stream_id = stream_id

    async def __aenter__(self) -> HeldHead:
        self._conn = await asyncpg.connect(self._database_url)
        self._tx = self._conn.transaction()
        await self._tx.start()
        await self._conn.execute(
            "SELECT 1 FROM streams WHERE stream_id = $1 FOR UPDATE", self._stream_id
        )
        return self

    async def until_a_write_waits(self) -> None:
        """Until a statement waits on the held row."""
        while not await self._conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
        ):
            await asyncio.sleep(0.01)

    async def release(self) -> None:
        """Let the waiting statement go on."""
        await self._tx.rollback()

    async def __aexit__(self, *_: object) -> None:
        await self._conn.close()


async def test_a_command_cancelled_while_queued_is_not_written(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await _streams(conn, "cancel", 2)
    group = GroupCommit(database_url, writers=1)
    await group.start()
    try:
        # Hold the first issue's head: the writer's first statement waits on it.
        async with HeldHead(database_url, "cancel-0") as held:
            first = asyncio.create_task(group.write(_write("cancel-0", 3, 1)))
            await held.until_a_write_waits()
            queued = asyncio.create_task(group.write(_write("cancel-1", 3, 1, key="gone")))
            await asyncio.sleep(0.05)
            queued.cancel()
            await held.release()
            assert await first == 1
            with pytest.raises(asyncio.CancelledError):
                await queued
    finally:
        await group.close()
    assert await conn.fetchval("SELECT version FROM streams WHERE stream_id = 'cancel-1'") == 3
    assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'gone'") == 0


async def test_a_lost_connection_fails_the_batch_and_the_next_one_writes(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await _streams(conn, "lost", 4)
    group = GroupCommit(database_url, writers=1)
    await group.start()
    try:
        async with HeldHead(database_url, "lost-0") as held:
            writes = asyncio.gather(
                *(group.write(_write(f"lost-{i}", 3, 1)) for i in range(2)),
                return_exceptions=True,
            )
            # The batch waits on the lock; its connection dies under it.
            while not await conn.fetchval(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'tierline' AND wait_event_type = 'Lock'"
            ):
                await asyncio.sleep(0.01)
            results = await writes
            assert all(isinstance(r, Exception) for r in results), results
            await held.release()
        assert await _outcomes(group, [_write(f"lost-{i}", 3, 1) for i in range(4)]) == [1] * 4
    finally:
        await group.close()
    assert await conn.fetchval("SELECT count(*) FROM events") == 4


def test_batch_arguments_number_groups_and_attach_events_and_keys() -> None:
    first = _write("a", 1, 2, key="k1")
    chained = _write("a", 3, 1, key="k3")
    groups = [[first, chained], [_write(None, 0, 0, key="k2")], [_write("c", 5, 1)]]
    args = batch_arguments(groups)
    assert args[0] == [1, 2, 3]
    assert args[1] == ["a", None, "c"]
    assert args[3] == [4, None, 6]  # a chain ends at its last command's version...
    assert args[6] == [1, None, 5]  # ...and starts from its first one's expected version
    assert args[7] == [True, False, True]
    assert args[9] == [1, 1, 1, 3]  # events' numbers
    assert args[11] == [2, 3, 4, 6]  # their versions
    assert args[18] == [1, 1, 2]  # keyed commands' numbers
    assert args[20] == ["k1", "k3", "k2"]
    with pytest.raises(ValueError):
        GroupCommit("postgresql://unused", max_batch=0)
    with pytest.raises(ValueError):
        GroupCommit("postgresql://unused", writers=0)


def _after(write: CommandWrite, before: asyncio.Future[int]) -> CommandWrite:
    return dataclasses.replace(write, after=before)


async def test_a_command_decided_on_a_queued_write_goes_out_with_it(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await _streams(conn, "chain", 1)
    group = GroupCommit(database_url, writers=1)
    await group.start()
    batches_before = _batches_over_one()
    try:
        first = group.submit(_write("chain-0", 3, 2))
        second = group.submit(_after(_write("chain-0", 5, 1), first))
        third = group.submit(_after(_write("chain-0", 6, 1, key="k-third"), second))
        assert [await first, await second, await third] == [1, 1, 1]
    finally:
        await group.close()
    assert _batches_over_one() == batches_before + 1  # one statement for the three
    rows = await conn.fetch("SELECT version FROM events ORDER BY position")
    assert [r["version"] for r in rows] == [4, 5, 6, 7]
    assert await conn.fetchval("SELECT version FROM streams") == 7


@pytest.mark.parametrize("writers", [1, 2])
async def test_a_command_decided_on_a_write_that_failed_is_never_written(
    database_url: str, conn: asyncpg.Connection, writers: int
) -> None:
    """The head is at 5 by another writer; the first command was decided on 3, the second on
    the first's result, 5. Alone the second would move the head, on an issue that never was."""
    await _streams(conn, "phantom", 2, version=5)
    group = GroupCommit(database_url, writers=writers)
    await group.start()
    try:
        stale = group.submit(_write("phantom-0", 3, 2))
        on_it = group.submit(_after(_write("phantom-0", 5, 1, key="k-phantom"), stale))
        other = group.submit(_write("phantom-1", 5, 1))
        assert [await stale, await on_it, await other] == [0, 0, 1]
        # The same once the first one's outcome is known before the second is queued.
        late = group.submit(_after(_write("phantom-0", 5, 1), stale))
        assert await late == 0
    finally:
        await group.close()
    assert await conn.fetchval("SELECT version FROM streams WHERE stream_id = 'phantom-0'") == 5
    assert await conn.fetchval("SELECT count(*) FROM events WHERE stream_id = 'phantom-0'") == 0
    assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 0


async def test_a_command_waits_for_the_write_it_was_decided_on(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await _streams(conn, "wait", 1)
    group = GroupCommit(database_url, writers=2)
    await group.start()
    try:
        async with HeldHead(database_url, "wait-0") as held:
            first = group.submit(_write("wait-0", 3, 1))
            await held.until_a_write_waits()
            # The second writer is free, but the second command must not overtake the first.
            second = group.submit(_after(_write("wait-0", 4, 1), first))
            await asyncio.sleep(0.1)
            assert not second.done()
            await held.release()
            assert [await first, await second] == [1, 1]
    finally:
        await group.close()
    rows = await conn.fetch("SELECT version FROM events ORDER BY position")
    assert [r["version"] for r in rows] == [4, 5]


async def test_writing_before_start_or_after_close_is_refused(database_url: str) -> None:
    group = GroupCommit(database_url)
    with pytest.raises(RuntimeError):
        await group.write(_write("x", 1, 1))
    await group.start()
    await group.close()
    with pytest.raises(RuntimeError):
        await group.write(_write("x", 1, 1))


class _Counting:
    """A connection that counts the statements sent through it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.statements = 0

    async def fetchval(self, *args: object) -> object:
        self.statements += 1
        return await self.conn.fetchval(*args)

    async def fetchrow(self, *args: object) -> object:
        self.statements += 1
        return await self.conn.fetchrow(*args)


async def test_one_failing_command_costs_its_batch_a_few_statements_not_one_each(
    database_url: str, conn: asyncpg.Connection
) -> None:
    """A client racing its own idempotency key undoes the whole statement; the batch is split
    in halves, so the 31 others are written in a handful of statements, with their answers."""
    await _streams(conn, "split", 32)
    await conn.execute(
        "INSERT INTO idempotency_keys (principal, key, request_hash, status, body, headers)"
        " VALUES ('key-a', 'raced', 'hash', 201, '{}', '{}')"
    )
    group = GroupCommit(database_url)
    await group.start()
    counting = _Counting(conn)
    try:
        jobs = [
            _Job(_write(f"split-{i}", 3, 1, key="raced" if i == 17 else f"split-k{i}"))
            for i in range(32)
        ]
        await group._flush(counting, [[job] for job in jobs])  # type: ignore[arg-type]
        outcomes = [j.done.exception() or j.done.result() for j in jobs]
    finally:
        await group.close()
    assert [o for i, o in enumerate(outcomes) if i != 17] == [1] * 31
    assert isinstance(outcomes[17], asyncpg.UniqueViolationError)
    assert counting.statements <= 2 * 5 + 1  # halving 32 down to the one: 11, not 33
    assert await conn.fetchval("SELECT count(*) FROM events WHERE stream_id LIKE 'split-%'") == 31
