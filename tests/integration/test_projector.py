"""The projector against real PostgreSQL and a real broker: replays, crashes and rebalances.

Every test writes a randomised workload through the write side's `append_events`, lets the relay
publish it, and compares the read models the projector built live, table by table and row by
row, with ones rebuilt from scratch. The seed is in every failure message; set
TIERLINE_TEST_SEED to replay a failing run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import asyncpg
import pytest

from tests.fixtures.stack import running_stack, stack_settings
from tierline.config import Settings
from tierline.eventlog.cloudevents import LogEvent
from tierline.eventlog.kafka import cluster_identity, ensure_topic
from tierline.projector.gate import ReplayGate
from tierline.projector.handler import Projector
from tierline.projector.logreader import log_ends, topic_partitions
from tierline.projector.rebuild import REPLAY_CONSUMER, stored_offsets
from tierline.projector.replay import Replay, replay_command
from tierline.projector.role import CONSUMER_NAME, ProjectorConsumer, group_for
from tierline.projector.tables import LIVE_SCHEMA, PROJECTION_TABLES, REPLAY_SCHEMA, ReadTables
from tierline.projector.workload import GeneratedCommand, Workload
from tierline.store.event_store import NewEvent, append_events
from tierline.store.pool import create_pool

SEED = int(os.environ.get("TIERLINE_TEST_SEED", random.randrange(1 << 30)))
POLL_ATTEMPTS = 600
POLL_DELAY = 0.05
# Columns that legitimately differ between two builds: list_seq numbers issues in commit order.
UNCOMPARED = {"issues": {"list_seq"}}

STREAMS_BEHIND = """
SELECT count(*) FROM streams AS s
LEFT JOIN consumer_stream_versions AS c ON c.consumer = $1 AND c.stream_id = s.stream_id
WHERE s.stream_type = 'issue' AND coalesce(c.version, 0) < s.version
"""
UNPUBLISHED = "SELECT count(*) FROM events WHERE published_at IS NULL"
TABLE_COLUMNS = """
SELECT column_name FROM information_schema.columns
WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position
"""
PRIMARY_KEY = """
SELECT a.attname FROM pg_index AS i
JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY a.attnum
"""
# What a replay must leave as the migration made it: indexes, constraints, column defaults.
READ_SHAPE = """
SELECT 'index', indexname, indexdef FROM pg_indexes WHERE schemaname = 'read'
UNION ALL
SELECT 'constraint', conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE connamespace = 'read'::regnamespace
UNION ALL
SELECT 'column', table_name || '.' || column_name, coalesce(column_default, '') || data_type
FROM information_schema.columns WHERE table_schema = 'read'
ORDER BY 1, 2, 3
"""


def seeded(offset: int = 0) -> Workload:
    """The test's workload; each use in a test takes its own offset."""
    return Workload(seed=SEED + offset)


async def append_commands(pool: asyncpg.Pool, commands: Iterable[GeneratedCommand]) -> int:
    """Record each command's events as the write path does: one transaction per command."""
    count = 0
    for command in commands:
        first = command.events[0]
        async with pool.acquire() as conn, conn.transaction():
            await append_events(
                conn,
                stream_id=first.stream_id,
                stream_type="issue",
                vendor_id=first.vendor_id,
                expected_version=first.version - 1,
                events=[NewEvent(e.type, e.data_json) for e in command.events],
                snapshot_json=command.issue.model_dump_json(),
                time=first.time,
            )
        count += len(command.events)
    return count


async def poll(probe: Any, what: str) -> None:
    """Wait, a bounded number of times, until `probe()` is true."""
    for _ in range(POLL_ATTEMPTS):
        if await probe():
            return
        await asyncio.sleep(POLL_DELAY)
    raise AssertionError(f"never happened: {what} (seed {SEED})")


async def caught_up(pool: asyncpg.Pool, consumer: str = CONSUMER_NAME) -> None:
    """Wait until the consumer has applied every issue event the store holds."""

    async def probe() -> bool:
        return bool(await pool.fetchval(STREAMS_BEHIND, consumer) == 0)

    await poll(probe, f"{consumer} caught up")


async def published(pool: asyncpg.Pool) -> None:
    """Wait until the relay has put every stored event on the log."""

    async def probe() -> bool:
        return bool(await pool.fetchval(UNPUBLISHED) == 0)

    await poll(probe, "every event published")


async def snapshot(pool: asyncpg.Pool, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every projection table's rows in primary-key order (list_seq left out)."""
    tables: dict[str, list[tuple[Any, ...]]] = {}
    for projection, table in PROJECTION_TABLES.items():
        skip = UNCOMPARED.get(projection, set())
        columns = [r[0] for r in await pool.fetch(TABLE_COLUMNS, schema, table) if r[0] not in skip]
        key = [r[0] for r in await pool.fetch(PRIMARY_KEY, f"{LIVE_SCHEMA}.{table}")]
        rows = await pool.fetch(
            f"SELECT {', '.join(columns)} FROM {schema}.{table} ORDER BY {', '.join(key)}"
        )
        tables[table] = [tuple(r) for r in rows]
    return tables


async def assert_same_as_a_clean_rebuild(settings: Settings, pool: asyncpg.Pool) -> None:
    """Rebuild everything from offset 0 beside the live tables and compare row by row.

    In this process: replays that swap use worker processes, so the two builds cross-check.
    """
    await Replay(settings, swap=False, workers=1).run()
    live = await snapshot(pool, LIVE_SCHEMA)
    rebuilt = await snapshot(pool, REPLAY_SCHEMA)
    assert live["issues"], f"nothing was projected (seed {SEED})"
    for table in PROJECTION_TABLES.values():
        assert len(live[table]) == len(rebuilt[table]), f"{table}: row count (seed {SEED})"
        for got, want in zip(live[table], rebuilt[table], strict=True):
            assert got == want, f"{table} differs (seed {SEED})"


def settings_for(database_url: str, bootstrap: str, topic: str, **overrides: Any) -> Settings:
    """Settings for roles under test; small batches, so there are many of them."""
    return stack_settings(database_url, bootstrap, topic, consumer_batch_size=50, **overrides)


@contextlib.asynccontextmanager
async def relaying(
    settings: Settings, roles: Sequence[str] = ("relay",)
) -> AsyncIterator[asyncpg.Pool]:
    """The topic, the given roles running, and a pool on the database."""
    await ensure_topic(settings.kafka_bootstrap, settings.kafka_topic, settings.kafka_partitions)
    pool = await create_pool(settings.database_url, min_size=1, max_size=4)
    try:
        async with running_stack(settings, roles=list(roles)):
            yield pool
    finally:
        await pool.close()


async def test_replays_rebuild_exactly_what_the_projector_built(
    database_url: str, tansu: str, topic: str
) -> None:
    settings = settings_for(database_url, tansu, topic)
    async with relaying(settings, ("relay", "projector")) as pool:
        shape = [tuple(r) for r in await pool.fetch(READ_SHAPE)]
        await append_commands(pool, seeded().commands(400))
        await caught_up(pool)
        positions = dict(await pool.fetch("SELECT issue_id, list_seq FROM read.issues"))
        logged = await pool.fetchval("SELECT count(*) FROM events")

        # A full replay while the projector runs and new commands keep arriving.
        more = asyncio.create_task(append_commands(pool, seeded(1).commands(150)))
        assert await replay_command(settings, None) == 0
        await more
        await caught_up(pool)
        read = await pool.fetchval("SELECT events FROM read.rebuilds")
        assert read >= logged, "the replay stopped before the end of the log"
        after = dict(await pool.fetch("SELECT issue_id, list_seq FROM read.issues"))
        assert {i: after[i] for i in positions} == positions, "list order changed by the swap"
        assert [tuple(r) for r in await pool.fetch(READ_SHAPE)] == shape
        assert await pool.fetchval("SELECT count(*) FROM read.vendor_scorecard_daily") > 0
        await pool.fetchval("SELECT count(*) FROM read.sla_at_risk")
        await assert_same_as_a_clean_rebuild(settings, pool)

        # One damaged projection, rebuilt alone while the others keep moving.
        lost = await pool.execute("DELETE FROM read.escalations WHERE direction = 'up'")
        assert lost != "DELETE 0", f"the workload escalated nothing (seed {SEED})"
        timeline = await pool.fetchval("SELECT count(*) FROM read.issue_timeline")
        more = asyncio.create_task(append_commands(pool, seeded(2).commands(100)))
        assert await replay_command(settings, "escalations") == 0
        assert await replay_command(settings, "nonsense") == 2
        await more
        await caught_up(pool)
        assert await pool.fetchval("SELECT count(*) FROM read.issue_timeline") > timeline
        assert [tuple(r) for r in await pool.fetch(READ_SHAPE)] == shape
        rebuilds = await pool.fetch("SELECT projections FROM read.rebuilds ORDER BY id")
        assert [r[0] for r in rebuilds] == [list(PROJECTION_TABLES), ["escalations"]]
        await assert_same_as_a_clean_rebuild(settings, pool)


async def test_a_scratch_replay_rebuilds_beside_the_live_tables_and_swaps_nothing(
    database_url: str, tansu: str, topic: str
) -> None:
    """`tierline replay --scratch`: what the fault drill compares the live read models with."""
    settings = settings_for(database_url, tansu, topic)
    async with relaying(settings, ("relay", "projector")) as pool:
        await append_commands(pool, seeded(3).commands(150))
        await caught_up(pool)
        before = await snapshot(pool, LIVE_SCHEMA)
        damaged = await pool.execute("DELETE FROM read.issue_timeline WHERE version > 1")
        assert damaged != "DELETE 0", f"the workload had no second events (seed {SEED})"
        assert await replay_command(settings, None, scratch=True) == 0
        assert await pool.fetchval("SELECT count(*) FROM read.rebuilds") == 0, "it swapped"
        rebuilt = await snapshot(pool, REPLAY_SCHEMA)
        after = await snapshot(pool, LIVE_SCHEMA)
        assert rebuilt == before, f"the scratch rebuild differs from the live build (seed {SEED})"
        assert after["issue_timeline"] != before["issue_timeline"], "the live tables were touched"
        assert after["issues"] == before["issues"]


class RepublishesAfterTheEnds(Replay):
    """A replay during which a relay sends part of the store again right after the log's ends
    were taken: the second copies land in the tail the replay reads after the store."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, **options: Any) -> None:
        super().__init__(settings, **options)
        self._pool = pool
        self.resent = ""

    async def log_ends(self, partitions: list[int]) -> dict[int, int]:
        """The ends, then every third event published again."""
        ends = await super().log_ends(partitions)
        self.resent = await self._pool.execute(
            "UPDATE events SET published_at = NULL WHERE version % 3 = 0"
        )
        await published(self._pool)
        return ends


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_replay_applies_events_the_log_holds_twice_once(
    database_url: str, tansu: str, topic: str, workers: int
) -> None:
    """A relay that died between sending and marking sends again. Second copies below the log's
    ends are never read (the store gives each event once); second copies in the tail are
    skipped as already applied, in the rebuild processes (versions in memory until they flush)
    and in the one reading the tail after them. The versions are left for the live projector."""
    settings = settings_for(database_url, tansu, topic)
    async with relaying(settings, ("relay", "projector")) as pool:
        await append_commands(pool, seeded(4).commands(150))
        await published(pool)
        resent = await pool.execute("UPDATE events SET published_at = NULL WHERE version % 2 = 0")
        assert resent != "UPDATE 0", f"the workload had no second events (seed {SEED})"
        await published(pool)
        await caught_up(pool)
        replay = RepublishesAfterTheEnds(settings, pool, swap=False, workers=workers)
        result = await replay.run()
        assert replay.resent != "UPDATE 0", f"the workload had no third events (seed {SEED})"
        logged = await pool.fetchval("SELECT count(*) FROM events")
        assert result.events > logged, "the tail held no second copies: nothing was tested"
        assert await snapshot(pool, REPLAY_SCHEMA) == await snapshot(pool, LIVE_SCHEMA), (
            f"the rebuild differs from the live build (seed {SEED})"
        )
        versions = await pool.fetch(
            "SELECT stream_id, version FROM consumer_stream_versions WHERE consumer = $1",
            REPLAY_CONSUMER,
        )
        heads = await pool.fetch("SELECT stream_id, version FROM streams")
        assert dict(versions) == dict(heads), "applied versions not recorded for the swap"


async def consumed_to_the_end(settings: Settings, pool: asyncpg.Pool) -> None:
    """Wait until the live projector's stored offsets reach the log's ends."""
    bootstrap, topic = settings.kafka_bootstrap, settings.kafka_topic
    identity = await cluster_identity(bootstrap)
    ends = await log_ends(bootstrap, topic, await topic_partitions(bootstrap, topic))

    async def probe() -> bool:
        offsets = await stored_offsets(pool, CONSUMER_NAME, topic, identity)
        return all(offsets.get(p, 0) >= end for p, end in ends.items())

    await poll(probe, "the live projector read the log to its end")


async def test_a_replay_folds_events_committed_but_not_yet_published(
    database_url: str, tansu: str, topic: str
) -> None:
    """With the relay stopped the store holds events the log does not have yet. A rebuild folds
    them: beside the live tables it equals what the live projector builds once they are
    published; swapped in (all projections, or one) it hands them over, and the live projector
    reading them from the log later applies none of them twice."""
    settings = settings_for(database_url, tansu, topic)
    async with relaying(settings, ("projector",)) as pool:
        async with running_stack(settings, roles=["relay"]):
            await append_commands(pool, seeded(5).commands(120))
            await published(pool)
            await caught_up(pool)
        await append_commands(pool, seeded(6).commands(120))
        unpublished = await pool.fetchval(UNPUBLISHED)
        assert unpublished > 0

        await Replay(settings, swap=False, workers=2).run()
        rebuilt = await snapshot(pool, REPLAY_SCHEMA)
        assert await pool.fetchval(UNPUBLISHED) == unpublished, "something published meanwhile"
        async with running_stack(settings, roles=["relay"]):
            await published(pool)
            await caught_up(pool)
        assert rebuilt == await snapshot(pool, LIVE_SCHEMA), (
            f"the rebuild differs from what the live projector built (seed {SEED})"
        )

        for offset, projection in ((7, None), (8, "timeline")):
            await append_commands(pool, seeded(offset).commands(80))
            assert await pool.fetchval(UNPUBLISHED) > 0
            assert await replay_command(settings, projection) == 0
            assert await pool.fetchval(STREAMS_BEHIND, CONSUMER_NAME) == 0, (
                "the live projector was not handed the events the rebuild read from the store"
            )
            async with running_stack(settings, roles=["relay"]):
                await published(pool)
                await consumed_to_the_end(settings, pool)
            await assert_same_as_a_clean_rebuild(settings, pool)


class Killed(Exception):
    """Stands for the process dying: raised inside the batch's transaction."""


class DiesMidBatch(Projector):
    """Writes its batch, then dies before the transaction commits."""

    def __init__(self, tables: ReadTables, die_in_batch: int) -> None:
        super().__init__(tables)
        self._batches = 0
        self._die_in_batch = die_in_batch

    async def apply(self, conn: asyncpg.Connection, events: Sequence[LogEvent]) -> None:
        """Apply, and die inside the transaction of the chosen batch."""
        await super().apply(conn, events)
        self._batches += 1
        if self._batches == self._die_in_batch:
            raise Killed()


class Counting(Projector):
    """Counts what it applies."""

    def __init__(self, tables: ReadTables) -> None:
        super().__init__(tables)
        self.applied = 0

    async def apply(self, conn: asyncpg.Connection, events: Sequence[LogEvent]) -> None:
        """Apply and count."""
        await super().apply(conn, events)
        self.applied += len(events)


@contextlib.asynccontextmanager
async def projector(
    settings: Settings, handler: Projector, group_id: str | None = None
) -> AsyncIterator[tuple[ProjectorConsumer, asyncio.Task[None]]]:
    """A live projector process stand-in: own pool and gate, the projector's consumer name."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    gate = ReplayGate(settings.database_url)
    consumer = ProjectorConsumer(
        name=CONSUMER_NAME,
        pool=pool,
        bootstrap=settings.kafka_bootstrap,
        topic=settings.kafka_topic,
        projector=handler,
        gate=gate,
        batch_size=settings.consumer_batch_size,
        group_id=group_id or group_for(settings.kafka_topic),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield consumer, task
    finally:
        stop.set()
        with contextlib.suppress(Killed):
            await asyncio.wait_for(task, 30)
        await gate.close()
        await pool.close()


async def test_a_projector_killed_mid_batch_applies_nothing_twice(
    database_url: str, broker: tuple[str, str], topic: str
) -> None:
    _, bootstrap = broker
    settings = settings_for(database_url, bootstrap, topic)
    async with relaying(settings) as pool:
        total = await append_commands(pool, seeded().commands(300))
        await published(pool)
        async with projector(settings, DiesMidBatch(ReadTables(LIVE_SCHEMA), 4)) as (_, task):
            with pytest.raises(Killed):
                await asyncio.wait_for(task, 60)
        applied = await pool.fetchval(
            "SELECT coalesce(sum(version), 0) FROM consumer_stream_versions WHERE consumer = $1",
            CONSUMER_NAME,
        )
        assert 0 < applied < total, f"the crash was not mid-stream (seed {SEED})"
        # Where to resume comes from PostgreSQL alone, so the successor may join under a group
        # of its own (Tansu would hold the dead member's partitions until its session expires).
        fresh_group = f"{group_for(settings.kafka_topic)}.restarted"
        async with projector(settings, Projector(ReadTables(LIVE_SCHEMA)), fresh_group):
            await caught_up(pool)
        await assert_same_as_a_clean_rebuild(settings, pool)


async def test_a_rebalance_between_two_projectors_applies_nothing_twice(
    database_url: str, broker: tuple[str, str], topic: str
) -> None:
    _, bootstrap = broker
    settings = settings_for(database_url, bootstrap, topic)
    workload = seeded()
    async with relaying(settings) as pool:
        await append_commands(pool, workload.commands(150))
        first, second = Counting(ReadTables(LIVE_SCHEMA)), Counting(ReadTables(LIVE_SCHEMA))
        async with projector(settings, first) as (a, _):
            await poll(lambda: _true(first.applied > 0), "the first projector applies events")
            async with projector(settings, second) as (b, _):
                # Commands keep arriving during the rebalance and after it.
                writing = asyncio.create_task(append_commands(pool, workload.commands(100)))
                await poll(lambda: _true(bool(a.assigned and b.assigned)), "partitions shared")
                await writing
                await append_commands(pool, workload.commands(150))
                await caught_up(pool)
        assert first.applied and second.applied, f"one projector did nothing (seed {SEED})"
        await assert_same_as_a_clean_rebuild(settings, pool)


async def _true(value: bool) -> bool:
    return value
