"""The drill's invariants, checked once the shape has settled after a run.

Each check returns a `Check` (name, passed, what was seen); the drill prints them as a table
and exits non-zero when one fails. They read PostgreSQL directly (the event store, the read
models, the delivery queue), the API over HTTP, and what the webhook receiver recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench.drill_cluster import (
    MIN_INSYNC_REPLICAS,
    REPLICATION_FACTOR,
    TIERLINE,
    Service,
    Shape,
)
from bench.drill_load import SUBSCRIPTIONS, Load, WebhookReceiver
from tierline.domain.events import SlaBreached

CONSUMERS = ("projector", "sla", "webhooks")
# Issue streams whose events a consumer has not applied yet.
STREAMS_BEHIND = """
SELECT count(*) FROM streams AS s
LEFT JOIN consumer_stream_versions AS c ON c.consumer = $1 AND c.stream_id = s.stream_id
WHERE s.stream_type = 'issue' AND coalesce(c.version, 0) < s.version
"""
UNPUBLISHED = "SELECT count(*) FROM events WHERE published_at IS NULL"
UNDELIVERED = "SELECT count(*) FROM webhook_deliveries WHERE status <> 'delivered'"
# A clock row whose next action (warning or breach) is due and not yet recorded.
CLOCKS_DUE = "SELECT count(*) FROM sla_clocks WHERE fire_at <= now() - interval '1 second'"
LAST_POSITION = "SELECT coalesce(max(position), 0) FROM events"
# Columns that legitimately differ between the live tables and a rebuild.
UNCOMPARED = {"issues": {"list_seq"}}
TABLE_COLUMNS = """
SELECT column_name FROM information_schema.columns
WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position
"""
# Breach events per clock: at most one each.
DOUBLE_BREACHES = """
SELECT count(*) FROM (
    SELECT stream_id, data->>'clock_id' FROM events WHERE type = $1
    GROUP BY 1, 2 HAVING count(*) > 1
) AS twice
"""
BREACHES = "SELECT count(*) FROM events WHERE type = $1"
# Clocks that fell due (with a margin for the scan) and are still running: a missed breach.
MISSED_BREACHES_WRITE_SIDE = """
SELECT count(*) FROM sla_clocks
WHERE state = 'running' AND due_at < now() - interval '5 seconds'
"""
MISSED_BREACHES_READ_SIDE = """
SELECT count(*) FROM read.sla_clocks
WHERE state = 'running' AND due_at < now() - interval '5 seconds'
"""
BREACHED_WITHOUT_EVENT = """
SELECT count(*) FROM read.sla_clocks AS c
WHERE c.state = 'breached' AND NOT EXISTS (
    SELECT 1 FROM events AS e
    WHERE e.stream_id = c.issue_id AND e.type = $1 AND e.data->>'clock_id' = c.clock_id
)
"""
FELL_DUE = "SELECT count(*) FROM read.sla_clocks WHERE state = 'breached'"
# The events each subscription must have received: recorded after it, of its types and vendor.
OWED = """
SELECT s.id::text AS subscription, e.event_id::text AS event_id
FROM webhook_subscriptions AS s
JOIN events AS e
  ON e.stream_type = 'issue'
 AND e.time >= s.created_at
 AND ('*' = ANY (s.event_types) OR e.type = ANY (s.event_types))
 AND (s.vendor_id IS NULL OR s.vendor_id = e.vendor_id)
"""
# The event store keeps the CloudEvents type.
BREACH_TYPE = SlaBreached.event_type()
RSS_LIMIT_KIB = 600 * 1024


@dataclass
class Check:
    """One invariant and what the drill saw."""

    name: str
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """For drill.json."""
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


async def poll(what: str, probe: Callable[[], Awaitable[bool]], timeout: float) -> float:
    """Seconds until `probe` holds; TimeoutError naming `what` after `timeout`."""
    started = time.monotonic()
    while True:
        try:
            if await probe():
                return time.monotonic() - started
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not settled in {timeout:.0f}s: {what}")
        await asyncio.sleep(0.5)


async def settled(pool: asyncpg.Pool) -> dict[str, int]:
    """What is still in flight: unpublished events, consumers behind, deliveries, due clocks."""
    state = {
        "unpublished": int(await pool.fetchval(UNPUBLISHED)),
        "undelivered": int(await pool.fetchval(UNDELIVERED)),
        "clocks_due": int(await pool.fetchval(CLOCKS_DUE)),
    }
    for consumer in CONSUMERS:
        state[f"{consumer}_behind"] = int(await pool.fetchval(STREAMS_BEHIND, consumer))
    return state


async def wait_settled(pool: asyncpg.Pool, timeout: float) -> float:
    """Until nothing is in flight and the event store stopped growing for two polls."""
    last = [-1]

    async def probe() -> bool:
        position = int(await pool.fetchval(LAST_POSITION))
        quiet = position == last[0] and not any((await settled(pool)).values())
        last[0] = position
        return quiet

    return await poll("events published, applied and delivered", probe, timeout)


async def check_accepted(pool: asyncpg.Pool, load: Load) -> list[Check]:
    """Every 2xx command is in the event store, behind GET /v1/issues/{id}, in read.issues."""
    accepted = load.stats.accepted
    latest: dict[str, int] = {}
    for a in accepted:
        latest[a.issue_id] = max(latest.get(a.issue_id, 0), a.version)
    rows = await pool.fetch(
        "SELECT t.s, t.v FROM unnest($1::text[], $2::int[]) AS t(s, v) "
        "WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.stream_id = t.s AND e.version = t.v)",
        [a.issue_id for a in accepted],
        [a.version for a in accepted],
    )
    in_store = Check(
        "every 2xx command is in the event store",
        not rows and bool(accepted),
        f"{len(accepted)} accepted, {len(rows)} missing",
    )
    sem = asyncio.Semaphore(16)
    behind_api: list[str] = []

    async def get(issue_id: str, version: int) -> None:
        async with sem:
            status, body = await load.call("GET", f"/v1/issues/{issue_id}", count=False)
        if status != 200 or int(body.get("version", 0)) < version:
            behind_api.append(issue_id)

    await asyncio.gather(*(get(i, v) for i, v in latest.items()))
    via_api = Check(
        "... and visible through GET /v1/issues/{id}",
        not behind_api and bool(latest),
        f"{len(latest)} issues read, {len(behind_api)} missing or older",
    )
    read_rows = await pool.fetch(
        "SELECT t.s FROM unnest($1::text[], $2::int[]) AS t(s, v) "
        "LEFT JOIN read.issues AS r ON r.issue_id = t.s "
        "LEFT JOIN streams AS h ON h.stream_id = t.s "
        "WHERE r.version IS NULL OR r.version < t.v OR r.version <> h.version",
        list(latest),
        list(latest.values()),
    )
    in_read = Check(
        "... and in the read models (read.issues at the stream's version)",
        not read_rows and bool(latest),
        f"{len(latest)} issues, {len(read_rows)} missing or behind",
    )
    return [in_store, via_api, in_read]


async def check_replay(pool: asyncpg.Pool, shape: Shape) -> Check:
    """`tierline replay --scratch` rebuilds read models equal, row for row, to the live ones."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        TIERLINE,
        "replay",
        "--scratch",
        env={**shape.role_env(), "TIERLINE_LOG_LEVEL": "WARNING"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        return Check(
            "read models equal a from-scratch replay",
            False,
            f"tierline replay --scratch exited {proc.returncode}: {out.decode()[-500:]}",
        )
    from tierline.projector.tables import PROJECTION_TABLES, REPLAY_SCHEMA

    differing: dict[str, int] = {}
    rows_total = 0
    for projection, table in PROJECTION_TABLES.items():
        skip = UNCOMPARED.get(projection, set())
        columns = [r[0] for r in await pool.fetch(TABLE_COLUMNS, "read", table) if r[0] not in skip]
        cols = ", ".join(columns)
        live = f"SELECT {cols} FROM read.{table}"
        rebuilt = f"SELECT {cols} FROM {REPLAY_SCHEMA}.{table}"
        diff = await pool.fetchval(
            f"SELECT count(*) FROM (({live} EXCEPT ALL {rebuilt}) "
            f"UNION ALL ({rebuilt} EXCEPT ALL {live})) AS d"
        )
        rows_total += int(await pool.fetchval(f"SELECT count(*) FROM read.{table}"))
        if diff:
            differing[table] = int(diff)
    return Check(
        "read models equal a from-scratch replay (tierline replay --scratch)",
        not differing and rows_total > 0,
        f"{rows_total} rows in {len(PROJECTION_TABLES)} tables compared in "
        f"{time.monotonic() - started:.1f}s; differing: {differing or 'none'}",
    )


async def check_clocks(pool: asyncpg.Pool) -> Check:
    """At most one breach per clock; every clock that fell due has one."""
    twice = int(await pool.fetchval(DOUBLE_BREACHES, BREACH_TYPE))
    breaches = int(await pool.fetchval(BREACHES, BREACH_TYPE))
    missed_write = int(await pool.fetchval(MISSED_BREACHES_WRITE_SIDE))
    missed_read = int(await pool.fetchval(MISSED_BREACHES_READ_SIDE))
    unexplained = int(await pool.fetchval(BREACHED_WITHOUT_EVENT, BREACH_TYPE))
    fell_due = int(await pool.fetchval(FELL_DUE))
    return Check(
        "each clock has at most one breach; every clock that fell due has one",
        twice == 0 and missed_write == 0 and missed_read == 0 and unexplained == 0 and breaches > 0,
        f"{breaches} breach events for {fell_due} breached clocks; {twice} clocks breached "
        f"twice; {missed_write + missed_read} overdue clocks without a breach",
    )


async def check_webhooks(pool: asyncpg.Pool, receiver: WebhookReceiver, load: Load) -> Check:
    """Each event reached each matching subscription at least once, always as one webhook-id."""
    names = {sub_id: name for name, sub_id in load.subscription_ids.items()}
    owed = await pool.fetch(OWED)
    missing = 0
    per_sub: dict[str, int] = defaultdict(int)
    for row in owed:
        name = names.get(row["subscription"])
        if name is None:
            continue
        per_sub[name] += 1
        if not receiver.received.get((name, row["event_id"])):
            missing += 1
    mixed = sum(1 for (_, event_id), ids in receiver.received.items() if set(ids) != {event_id})
    redelivered = sum(len(ids) - 1 for ids in receiver.received.values())
    passed = (
        missing == 0
        and mixed == 0
        and receiver.bad_signatures == 0
        and len(per_sub) == len(SUBSCRIPTIONS)
    )
    return Check(
        "each event reached each matching subscription, always under one webhook-id",
        passed and all(per_sub.values()),
        f"{sum(per_sub.values())} owed ({dict(per_sub)}), {missing} missing, {mixed} under "
        f"another id, {redelivered} repeats ({receiver.failed_on_purpose} answered 503 on "
        f"purpose), {receiver.bad_signatures} bad signatures",
    )


async def check_topic(shape: Shape) -> Check:
    """The log is replicated as production runs it, and every replica is back in sync."""
    deadline = time.monotonic() + 60
    parts = await shape.kafka.partitions()
    # A restarted broker's replicas rejoin the ISR once they have caught up.
    while any(len(p["isr"]) != len(p["replicas"]) for p in parts) and time.monotonic() < deadline:
        await asyncio.sleep(1)
        parts = await shape.kafka.partitions()
    min_isr = await shape.kafka.topic_config("min.insync.replicas")
    factors = sorted({len(p["replicas"]) for p in parts})
    behind = [p["partition"] for p in parts if len(p["isr"]) != len(p["replicas"])]
    return Check(
        f"topic replicated {REPLICATION_FACTOR}x with min ISR {MIN_INSYNC_REPLICAS}, all in sync",
        factors == [REPLICATION_FACTOR] and min_isr == str(MIN_INSYNC_REPLICAS) and not behind,
        f"{len(parts)} partitions, replication {factors}, min.insync.replicas={min_isr}, "
        f"partitions out of sync: {behind or 'none'}",
    )


def check_no_manual_restart(shape: Shape) -> Check:
    """Every process runs, and none was started more often than the drill restarted it."""
    services: Sequence[Service] = [*shape.roles.values(), *shape.kafka.services.values()]
    dead = [s.name for s in services if not s.alive()]
    extra = [s.name for s in services if s.starts != 1 + s.drill_restarts]
    return Check(
        "no role needed a manual restart",
        not dead and not extra and shape.postgres.pid is not None,
        f"{len(services)} processes running; dead: {dead or 'none'}; started more than the "
        f"drill restarted them: {extra or 'none'}",
    )


def rss_by_role(shape: Shape) -> dict[str, int | None]:
    """RSS in MiB of every role process now."""
    out: dict[str, int | None] = {}
    for name, service in shape.roles.items():
        kib = service.rss_kib()
        out[name] = None if kib is None else round(kib / 1024)
    return out


def check_rss(shape: Shape) -> Check:
    """The RSS of each role process at the end, each under a sanity bound."""
    rss = rss_by_role(shape)
    over = [n for n, mib in rss.items() if mib is None or mib * 1024 > RSS_LIMIT_KIB]
    shown = ", ".join(f"{n} {m}" for n, m in rss.items())
    return Check(
        f"RSS of each role process at the end (MiB, each < {RSS_LIMIT_KIB // 1024})",
        not over,
        shown,
    )


def check_no_5xx_but_503(load: Load) -> Check:
    """Outages answer 503 (with Retry-After), never another 5xx."""
    other = {k: v for k, v in load.stats.attempts.items() if k.startswith("5") and k != "503"}
    return Check(
        "no 5xx other than 503 during faults",
        not other,
        f"attempt answers: {dict(sorted(load.stats.attempts.items()))}",
    )


async def run_checks(
    shape: Shape, load: Load, receiver: WebhookReceiver, settle_timeout: float
) -> tuple[list[Check], float]:
    """Wait until settled, then check every invariant; returns the checks and the wait."""
    pool = await asyncpg.create_pool(shape.postgres.url, min_size=1, max_size=4)
    try:
        try:
            waited = await wait_settled(pool, settle_timeout)
        except TimeoutError as exc:
            state = await settled(pool)
            return [Check("the shape settled after the load", False, f"{exc}: {state}")], float(
                settle_timeout
            )
        checks = [Check("the shape settled after the load", True, f"in {waited:.1f}s")]
        checks += await check_accepted(pool, load)
        checks.append(await check_replay(pool, shape))
        checks.append(await check_clocks(pool))
        checks.append(await check_webhooks(pool, receiver, load))
        checks.append(await check_topic(shape))
        checks.append(check_no_manual_restart(shape))
        checks.append(check_no_5xx_but_503(load))
        checks.append(check_rss(shape))
        return checks, waited
    finally:
        await pool.close()
