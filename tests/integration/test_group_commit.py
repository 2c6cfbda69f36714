"""Group commit (store/group_commit.py): batched commands end exactly as they would alone.

The property: any queue of command writes (fresh and stale head versions, idempotency keys new,
taken before or repeated within the queue, commands that only store an answer, several
commands on one issue) leaves the database and the callers' answers exactly as writing each
command alone, in queue order, with `append_command` does. Written against a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import pytest
from prometheus_client import REGISTRY

from tierline.store.group_commit import CommandWrite, GroupCommit, batch_arguments

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


async def test_a_command_cancelled_while_queued_is_not_written(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await _streams(conn, "cancel", 2)
    group = GroupCommit(database_url, writers=1)
    await group.start()
    blocker = await asyncpg.connect(database_url)
    try:
        # Hold the first issue's head: the writer's first statement waits on it.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM streams WHERE stream_id = 'cancel-0' FOR UPDATE")
        first = asyncio.create_task(group.write(_write("cancel-0", 3, 1)))
        while not await blocker.fetchval(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
        ):
            await asyncio.sleep(0.01)
        queued = asyncio.create_task(group.write(_write("cancel-1", 3, 1, key="gone")))
        await asyncio.sleep(0.05)
        queued.cancel()
        await tx.rollback()
        assert await first == 1
        with pytest.raises(asyncio.CancelledError):
            await queued
    finally:
        await blocker.close()
        await group.close()
    assert await conn.fetchval("SELECT version FROM streams WHERE stream_id = 'cancel-1'") == 3
    assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'gone'") == 0


async def test_a_lost_connection_fails_the_batch_and_the_next_one_writes(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await _streams(conn, "lost", 4)
    group = GroupCommit(database_url)
    await group.start()
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'tierline' AND pid <> pg_backend_pid()"
        )
        results = await asyncio.gather(
            *(group.write(_write(f"lost-{i}", 3, 1)) for i in range(2)), return_exceptions=True
        )
        assert all(isinstance(r, Exception) for r in results), results
        assert await _outcomes(group, [_write(f"lost-{i}", 3, 1) for i in range(2, 4)]) == [1, 1]
    finally:
        await group.close()
    assert await conn.fetchval("SELECT count(*) FROM events") == 2


def test_batch_arguments_number_commands_and_attach_events_and_keys() -> None:
    writes = [_write("a", 1, 2, key="k1"), _write(None, 0, 0, key="k2"), _write("c", 5, 1)]
    args = batch_arguments(writes)
    assert args[0] == [1, 2, 3]
    assert args[1] == ["a", None, "c"]
    assert args[10] == [True, False, True]
    assert args[12] == [1, 1, 3]  # events' command numbers
    assert args[14] == [2, 3, 6]  # their versions
    assert args[18] == [1, 2]  # keyed commands
    assert args[20] == ["k1", "k2"]
    with pytest.raises(ValueError):
        GroupCommit("postgresql://unused", max_batch=0)
    with pytest.raises(ValueError):
        GroupCommit("postgresql://unused", writers=0)


async def test_writing_before_start_or_after_close_is_refused(database_url: str) -> None:
    group = GroupCommit(database_url)
    with pytest.raises(RuntimeError):
        await group.write(_write("x", 1, 1))
    await group.start()
    await group.close()
    with pytest.raises(RuntimeError):
        await group.write(_write("x", 1, 1))
