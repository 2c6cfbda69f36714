"""SLA engine benchmark: many clocks falling due together, recorded as breach events on Kafka.

Self-contained: starts the dev stack's PostgreSQL and Tansu in a temporary directory, and for
each scenario a fresh database and topic with `tierline relay` and `--workers` x `tierline sla`
as separate processes. The bench opens the issues through the write path with back-dated
opening times, so that their respond clocks fall due where the scenario wants them:

* burst:     --clocks clocks due within --window seconds (default 20,000 within 1 s; the
             issue's figure is 100,000: `--clocks 100000`);
* sustained: --rate clocks per second for --duration seconds (default 1,000/s for 30 s;
             `--rate 500,700,1000` runs each).

Measured per breach: recorded lateness (the `sla_breached` event's breached_at - due_at, i.e.
when the write path decided it) and Kafka lateness (when this process read the event from the
topic - due_at), p50/p99/max, and the time until every breach event is on Kafka; that way split
in stages per breach (decided -> the relay's send, the record's Kafka timestamp; send -> read
here) and the relay's own histograms (commit -> relay read, relay read -> broker ack) scraped
from its `/metrics`; also the CPU
seconds each process group used from the first due time, and PostgreSQL's costliest statements
per breach (pg_stat_statements), to show where the limit is.

Peer: pgqueuer scheduling the same deferred jobs (execute_after spread the same way) on the
same PostgreSQL, drained by as many worker processes running a no-op job; lateness = job
start - execute_after. Tierline's figure includes a full command transaction per breach, the
relay to Kafka and the round trip through the log; pgqueuer's is scheduling alone.

Run from the repository root: `python -m bench.sla` (or `make bench-sla`); `--help` for sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.common import ROOT, percentile, save
from bench.projector import scrape_histograms, stage_figures
from tierline.config import Settings
from tierline.devstack.dev import tansu_settings
from tierline.devstack.postgres import PostgresServer
from tierline.devstack.process import ManagedProcess, free_port
from tierline.devstack.tansu import TansuBroker
from tierline.domain import commands as c
from tierline.domain.governance import Governance, Priority, SlaPolicy, Tier, Vendor
from tierline.eventlog.kafka import ensure_topic
from tierline.service_layer.issues import SYSTEM
from tierline.service_layer.reference import ReferenceData
from tierline.store.migrate import migrate_url
from tierline.store.pool import create_pool
from tierline.store.unit_of_work import issue_service
from tierline.store.vendors import insert_vendor, replace_governance

console = Console(width=150)
PARTITIONS = 12  # --partitions
FETCH_WAIT_MS: str | None = None  # --fetch-wait-ms (None: the roles' default)
TARGET = timedelta(hours=1)
# One tier, one policy: each respond clock breaches once; no warnings, no escalation, and the
# resolve clock falls due long after the run.
GOVERNANCE = Governance(
    tiers=[Tier(level=1, name="Operational")],
    sla=[
        SlaPolicy(
            tier=1,
            priority="P3",
            respond_within=TARGET,
            resolve_within=TARGET * 4,
            warn_at=[],
            auto_escalate=False,
        )
    ],
)
BREACH_TYPE = b"io.tierline.issue.sla_breached.v1"
PG_SETTINGS = {
    "max_connections": "300",
    "shared_buffers": "256MB",
    "fsync": "off",
    "shared_preload_libraries": "pg_stat_statements",
    "synchronous_commit": "off",
}


@dataclass(frozen=True)
class Infrastructure:
    """Where the scenarios run, and the server processes whose CPU time they account."""

    admin_dsn: str
    bootstrap: str
    postgres_pid: int
    broker_pid: int
    # "tansu" (as `tierline dev`) or "kafka" (Apache Kafka 4 from deploy/kafka/, production)
    broker: str = "tansu"


@contextmanager
def infrastructure(broker_name: str = "tansu") -> Iterator[Infrastructure]:
    """PostgreSQL and the broker (Tansu, or Apache Kafka) in a throwaway directory."""
    with tempfile.TemporaryDirectory(prefix="tierline-bench-sla-") as tmp:
        postgres = PostgresServer(Path(tmp) / "pg", forward_logs=False, settings=PG_SETTINGS)
        broker: Any
        if broker_name == "kafka":
            from tests.fixtures.apache_kafka import ApacheKafkaBroker

            broker = ApacheKafkaBroker(Path(tmp) / "kafka")
        else:
            broker = TansuBroker(cluster_id=f"bench-{uuid.uuid4().hex[:8]}", forward_logs=False)
        postgres.start()
        try:
            broker.start()
            try:
                assert postgres.pid is not None and broker.pid is not None
                yield Infrastructure(
                    postgres.dsn, broker.bootstrap, postgres.pid, broker.pid, broker_name
                )
            finally:
                broker.stop()
        finally:
            postgres.stop()


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name ([] once the process is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def cpu_seconds(groups: dict[str, list[int]], parents: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each group of processes.

    `parents` adds every child of a process to its group (PostgreSQL's backends).
    """
    tick = os.sysconf("SC_CLK_TCK")
    members = {name: list(pids) for name, pids in groups.items()}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            for name, parent in parents.items():
                if fields and int(fields[1]) == parent:
                    members[name].append(int(entry.name))
    used = {}
    for name, pids in members.items():
        stats = [f for f in (_stat(pid) for pid in pids) if f]
        used[name] = sum(int(f[11]) + int(f[12]) for f in stats) / tick
    return used


async def new_database(admin_dsn: str) -> str:
    """A fresh, empty database on the server; returns its URL."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"


def due_times(start: datetime, clocks: int, window: float) -> list[datetime]:
    """`clocks` instants spread evenly over `window` seconds from `start`."""
    step = window / clocks
    return [start + timedelta(seconds=i * step) for i in range(clocks)]


def stats(values: list[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds."""
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 1),
        "p99_ms": round(percentile(values, 99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1) if values else float("nan"),
    }


# --- Tierline ---------------------------------------------------------------------------------


def role_process(
    name: str, role: str, env: dict[str, str], metrics_port: int = 0
) -> ManagedProcess:
    """A `tierline <role>` process; dies with this one."""
    argv = [sys.executable, "-m", "tierline.cli", role]
    env = {**env, "TIERLINE_METRICS_PORT": str(metrics_port)}
    return ManagedProcess(name, argv, env=env, forward=False, stop_signal=signal.SIGTERM)


def role_env(database_url: str, bootstrap: str, topic: str, broker: str) -> dict[str, str]:
    """The environment every role process of a scenario shares."""
    return {
        **os.environ,
        "TIERLINE_DATABASE_URL": database_url,
        "TIERLINE_KAFKA_BOOTSTRAP": bootstrap,
        "TIERLINE_KAFKA_TOPIC": topic,
        "TIERLINE_KAFKA_PARTITIONS": str(PARTITIONS),
        # Tansu has no idempotent producer; Apache Kafka runs with the production default.
        "TIERLINE_KAFKA_IDEMPOTENCE": "true" if broker == "kafka" else "false",
        "TIERLINE_METRICS_PORT": "0",
        "TIERLINE_LOG_LEVEL": "WARNING",
        "TIERLINE_RELAY_POLL_INTERVAL": "0.2",
        **({} if FETCH_WAIT_MS is None else {"TIERLINE_CONSUMER_FETCH_MAX_WAIT_MS": FETCH_WAIT_MS}),
    }


async def open_issues(
    pool: asyncpg.Pool, opened: list[datetime], priority: Priority = "P3", concurrency: int = 32
) -> float:
    """One issue per opening time, through the write path; returns issues opened per second."""
    reference = ReferenceData(pool)
    command = c.OpenIssue(vendor_id="bench", title="bench", category="quality", priority=priority)
    queue = list(reversed(opened))
    started = time.monotonic()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"opening {priority} issues", total=len(opened))

        async def opener() -> None:
            while queue:
                opened_at = queue.pop()
                service = issue_service(pool, reference, clock=lambda at=opened_at: at)
                await service.open(SYSTEM, command)
                progress.advance(task)

        await asyncio.gather(*(opener() for _ in range(concurrency)))
    return len(opened) / (time.monotonic() - started)


async def lead_time(pool: asyncpg.Pool, clocks: int, lead: float | None) -> float:
    """Seconds to leave before the first clock is due: set-up must be over by then.

    Measured, unless given: the write path's opening rate on P4 issues (no policy, no clocks,
    nothing for the SLA engine), with a wide margin for the consumers to catch up.
    """
    if lead is not None:
        return lead
    sample = min(2000, max(200, clocks // 50))
    rate = await open_issues(pool, [datetime.now(UTC)] * sample, priority="P4")
    return 15 + 1.6 * clocks / rate


async def wait_for_ingest(pool: asyncpg.Pool, issues: int, deadline: datetime) -> bool:
    """Wait until the SLA consumers know every issue's clocks; False if not before `deadline`."""
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("SLA consumers ingesting", total=issues)
        while True:
            # sla_issues keeps a row per issue; clock rows go once breached.
            count = await pool.fetchval("SELECT count(*) FROM sla_issues")
            progress.update(task, completed=count)
            if count >= issues:
                return datetime.now(UTC) < deadline
            if datetime.now(UTC) > deadline + timedelta(seconds=300):
                return False
            await asyncio.sleep(0.2)


@dataclass
class KafkaBreaches:
    """Reads the topic from the start and notes each breach event as it arrives."""

    bootstrap: str
    topic: str
    # (read here, the record's Kafka timestamp, due_at, breached_at) per breach event
    seen: list[tuple[float, float, datetime, datetime]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    async def run(self) -> None:
        """Consume until `expected` breaches were seen (task is cancelled otherwise)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            # Fewer, fuller fetches: the reader must not load the broker it measures.
            fetch_min_bytes=64 * 1024,
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        try:
            partitions = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            while len(self.seen) < self.expected:
                batches = await consumer.getmany(timeout_ms=100, max_records=10_000)
                received = time.time()
                for messages in batches.values():
                    for msg in messages:
                        if dict(msg.headers).get("ce_type") == BREACH_TYPE:
                            data = json.loads(msg.value)
                            due = datetime.fromisoformat(data["due_at"])
                            breached = datetime.fromisoformat(data["breached_at"])
                            sent = msg.timestamp / 1000
                            self.seen.append((received, sent, due, breached))
            self.done.set()
        finally:
            await consumer.stop()


TOP_STATEMENTS = """
SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 70), calls, total_exec_time
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time DESC LIMIT 10
"""


async def top_statements(pool: asyncpg.Pool, breaches: int) -> list[dict[str, Any]]:
    """Where PostgreSQL spent its time since the first due time, per breach recorded."""
    rows = await pool.fetch(TOP_STATEMENTS)
    return [
        {
            "query": query,
            "calls_per_breach": round(calls / breaches, 2),
            "ms_per_breach": round(total / breaches, 3),
        }
        for query, calls, total in rows
    ]


@contextmanager
def profiled(groups: dict[str, list[int]], directory: Path | None) -> Iterator[None]:
    """py-spy records each sla and relay process while the block runs (`--profile DIR`)."""
    if directory is None:
        yield
        return
    import subprocess

    directory.mkdir(parents=True, exist_ok=True)
    spies = [
        subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "200",
                "--output",
                str(directory / f"{name}-{n}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in ("sla", "relay")
        for n, pid in enumerate(groups[name])
    ]
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(timeout=60)


async def tierline_scenario(
    infra: Infrastructure,
    clocks: int,
    window: float,
    workers: int,
    lead: float | None,
    profile: Path | None = None,
    read_after: bool = False,
) -> dict[str, Any]:
    """Breach `clocks` respond clocks due within `window` s; lateness, drain time, CPU."""
    bootstrap = infra.bootstrap
    url = await new_database(infra.admin_dsn)
    await migrate_url(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        await conn.close()
    topic = f"bench.sla.{uuid.uuid4().hex[:8]}"
    await ensure_topic(bootstrap, topic, PARTITIONS)
    pool = await create_pool(url, min_size=4, max_size=40)
    env = role_env(url, bootstrap, topic, infra.broker)
    relay_metrics = f"http://127.0.0.1:{(relay_port := free_port())}/metrics"
    procs = [role_process("relay", "relay", env, metrics_port=relay_port)]
    procs += [role_process(f"sla-{n}", "sla", env) for n in range(workers)]
    try:
        await insert_vendor(pool, Vendor(id="bench", name="Bench"))
        async with pool.acquire() as conn:
            await replace_governance(conn, GOVERNANCE, datetime.now(UTC))
        for proc in procs:
            proc.start()
        lead = await lead_time(pool, clocks, lead)
        first_due = datetime.now(UTC) + timedelta(seconds=lead)
        dues = due_times(first_due, clocks, window)
        setup_started = time.monotonic()
        await open_issues(pool, [due - TARGET for due in dues])
        in_time = await wait_for_ingest(pool, clocks, first_due)
        setup = time.monotonic() - setup_started
        if not in_time:
            console.print(f"[yellow]set-up overran the first due time; raise --lead ({lead:.0f}s)")
        reader = KafkaBreaches(bootstrap, topic, expected=clocks)
        # Live, the reader's fetches load the broker it measures (Tansu's CPU about doubled at
        # 1,000/s: sla_live_probe.json); with --read-after it reads the topic once all are acked.
        reading = None if read_after else asyncio.create_task(reader.run())
        groups = {
            "bench": [os.getpid()],
            "relay": [p.pid for p in procs[:1] if p.pid],
            "sla": [p.pid for p in procs[1:] if p.pid],
            infra.broker: [infra.broker_pid],
            "postgres": [infra.postgres_pid],
        }
        parents = {"postgres": infra.postgres_pid}
        await asyncio.sleep(max(0.0, (first_due - datetime.now(UTC)).total_seconds()))
        cpu_before = cpu_seconds(groups, parents)
        histograms_before = await scrape_histograms([relay_metrics])
        await pool.execute("SELECT pg_stat_statements_reset()")
        budget = (dues[-1] - datetime.now(UTC)).total_seconds() + max(120.0, clocks / 200)
        with profiled(groups, profile), Progress(console=console, transient=True) as progress:
            task = progress.add_task("breaches on Kafka", total=clocks)
            acked_progress = AckedProgress()
            while not (reader.done.is_set() or acked_progress.finished) and budget > 0:
                if reading is None:
                    await acked_progress.poll(pool, clocks)
                    progress.update(task, completed=acked_progress.breaches)
                else:
                    if reading.done():
                        reading.result()
                    progress.update(task, completed=len(reader.seen))
                await asyncio.sleep(0.2)
                budget -= 0.2
        cpu_after = cpu_seconds(groups, parents)
        if reading is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.run(), timeout=120)
        else:
            reading.cancel()
        relay_stages = [
            figure
            for figure in stage_figures(histograms_before, await scrape_histograms([relay_metrics]))
            if figure["metric"].startswith("tierline_relay_")
        ]
        statements = await top_statements(pool, max(1, len(reader.seen)))
        acked = await acked_lateness(pool)
        crashed = [p.name for p in procs if not p.alive()]
    finally:
        for proc in procs:
            proc.stop()
        await pool.close()
    result = summarise_tierline(reader.seen, clocks, window, workers, setup, in_time, crashed)
    if read_after:
        # Read after the run: the times it read at say nothing; the record timestamps still do.
        for key in ("all_on_kafka_after_first_due_s", "kafka_lateness", "sent_to_read"):
            result[key] = None
    result["reader"] = "after the run" if read_after else "live"
    # Other work on the machine skews every figure; the load average says how much there was.
    cpu = {name: round(cpu_after[name] - cpu_before[name], 1) for name in cpu_after}
    per_breach = 1000 * sum(cpu.values()) / max(1, len(reader.seen))
    return {
        **result,
        **acked,
        "lead_s": round(lead, 1),
        "cpu_s_from_first_due": cpu,
        "cpu_ms_per_breach": round(per_breach, 2),
        "relay_stages": relay_stages,
        "postgres_statements_per_breach": statements,
        "load_average_1m": os.getloadavg()[0],
        "sla_settings": scanner_settings(),
    }


def scanner_settings() -> dict[str, int]:
    """The claim size and units of work per claim the `tierline sla` processes ran with."""
    settings = Settings()
    return {"sla_max_batch": settings.sla_max_batch, "sla_groups": settings.sla_groups}


ACKED = """
SELECT extract(epoch FROM published_at) AS acked,
    extract(epoch FROM (data->>'due_at')::timestamptz) AS due
FROM events WHERE type = $1 AND published_at IS NOT NULL
"""


# The --read-after poll must not load PostgreSQL: breaches are counted in the rows appended
# since the last poll (a primary-key range), and the unpublished ones through the relay's
# partial index. (A count over the whole table every 0.2 s was the costliest statement of a
# 100k burst.) Rows commit out of position order, so that running count can fall short; the
# exact count over the table is taken only once nothing new was appended and nothing is left
# to publish, which during a run is at its end.
NEW_ROWS = """
SELECT count(*) FILTER (WHERE type = $1) AS breaches, max(position) AS last
FROM events WHERE position > $2
"""
UNPUBLISHED = "SELECT count(*) FROM events WHERE published_at IS NULL"
ALL_BREACHES = "SELECT count(*) FROM events WHERE type = $1"


@dataclass
class AckedProgress:
    """Breaches appended so far, and whether all of them are acked on the topic."""

    breaches: int = 0
    last_position: int = 0
    # Every one of the `expected` breaches is appended and published.
    finished: bool = False

    async def poll(self, pool: asyncpg.Pool, expected: int) -> None:
        """Count the breaches appended since the last poll; at the end, check them all."""
        row = await pool.fetchrow(NEW_ROWS, BREACH_TYPE.decode(), self.last_position)
        assert row is not None  # an aggregate always returns its row
        if row["last"] is not None:
            self.breaches += row["breaches"]
            self.last_position = row["last"]
        elif await pool.fetchval(UNPUBLISHED) == 0:
            self.breaches = await pool.fetchval(ALL_BREACHES, BREACH_TYPE.decode())
            self.finished = self.breaches >= expected


async def acked_lateness(pool: asyncpg.Pool) -> dict[str, Any]:
    """Per breach, due time -> the relay marking it published (after the broker's ack).

    That is when the breach event is on the topic, whoever reads it and however they fetch;
    `kafka_lateness` adds this reader's fetch. Measured in PostgreSQL, per event, no sampling.
    """
    rows = [
        (float(r["acked"]), float(r["due"])) for r in await pool.fetch(ACKED, BREACH_TYPE.decode())
    ]
    return {
        "breaches_acked": len(rows),
        "acked_lateness": stats([acked - due for acked, due in rows]),
        "all_acked_after_first_due_s": (
            round(max(a for a, _ in rows) - min(d for _, d in rows), 2) if rows else None
        ),
    }


def summarise_tierline(
    seen: list[tuple[float, float, datetime, datetime]],
    clocks: int,
    window: float,
    workers: int,
    setup: float,
    in_time: bool,
    crashed: list[str],
) -> dict[str, Any]:
    """The figures of one Tierline scenario."""
    recorded = [(breached - due).total_seconds() for _, _, due, breached in seen]
    on_kafka = [received - due.timestamp() for received, _, due, _ in seen]
    first_due = min((due for _, _, due, _ in seen), default=None)
    last_seen = max((received for received, _, _, _ in seen), default=float("nan"))
    return {
        "engine": "tierline",
        "clocks": clocks,
        "window_s": window,
        "workers": workers,
        "breaches_on_kafka": len(seen),
        "setup_s": round(setup, 1),
        "setup_in_time": in_time,
        "crashed": crashed,
        "all_on_kafka_after_first_due_s": (
            round(last_seen - first_due.timestamp(), 2) if first_due else None
        ),
        "recorded_lateness": stats(recorded),
        "kafka_lateness": stats(on_kafka),
        # The way to the topic per breach: the decision to the relay's send (commit, relay
        # wake-up and read), then the send to this reader (produce, ack, the reader's fetch).
        "decided_to_sent": stats([sent - b.timestamp() for _, sent, _, b in seen]),
        "sent_to_read": stats([received - sent for received, sent, _, _ in seen]),
    }


# --- pgqueuer ---------------------------------------------------------------------------------


async def pgqueuer_worker(dsn: str, batch_size: int) -> list[float]:
    """One pgqueuer worker with a no-op job until SIGTERM; returns the lateness samples (s)."""
    from pgqueuer import QueueManager
    from pgqueuer.models import Job
    from pgqueuer.queries import Queries

    conn = await asyncpg.connect(dsn)
    qm = QueueManager(Queries.from_asyncpg_connection(conn))
    samples: list[float] = []

    @qm.entrypoint("breach")
    async def breach(job: Job) -> None:
        samples.append(time.time() - job.execute_after.timestamp())

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, qm.shutdown.set)
    await qm.run(batch_size=batch_size, dequeue_timeout=timedelta(seconds=1))
    await conn.close()
    return samples


def collect(outs: list[Path]) -> list[float]:
    """The samples the workers wrote, files removed."""
    samples: list[float] = []
    for out in outs:
        if out.exists():
            samples.extend(json.loads(out.read_text()))
        out.unlink(missing_ok=True)
    return samples


async def enqueue_jobs(dsn: str, dues: list[datetime], chunk: int = 5000) -> None:
    """Defer one job per due time; execute_after is relative to the database's NOW()."""
    from pgqueuer.queries import Queries

    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries.from_asyncpg_connection(conn)
        for start in range(0, len(dues), chunk):
            part = dues[start : start + chunk]
            now = datetime.now(UTC)
            await queries.enqueue(
                ["breach"] * len(part),
                [None] * len(part),
                [0] * len(part),
                [due - now for due in part],
            )
    finally:
        await conn.close()


async def pgqueuer_scenario(
    infra: Infrastructure, clocks: int, window: float, workers: int, batch_size: int
) -> dict[str, Any]:
    """The same deferred work with pgqueuer on the same PostgreSQL."""
    from pgqueuer.queries import Queries

    url = await new_database(infra.admin_dsn)
    conn = await asyncpg.connect(url)
    try:
        await Queries.from_asyncpg_connection(conn).install()
        outs = [Path(tempfile.mktemp(suffix=".json", prefix="pgq-")) for _ in range(workers)]
        argv = [sys.executable, "-m", "bench.sla", "--pgqueuer-worker", url]
        argv += ["--batch", str(batch_size)]
        procs = [
            ManagedProcess(f"pgq-{n}", [*argv, "--out", str(out)], cwd=ROOT, forward=False)
            for n, out in enumerate(outs)
        ]
        for proc in procs:
            proc.start()
        first_due = datetime.now(UTC) + timedelta(seconds=5 + clocks / 20_000)
        dues = due_times(first_due, clocks, window)
        await enqueue_jobs(url, dues)
        budget = window + max(120.0, clocks / 200) + (first_due - datetime.now(UTC)).seconds
        started = time.monotonic()
        while await conn.fetchval("SELECT count(*) FROM pgqueuer") > 0:
            if time.monotonic() - started > budget:
                break
            await asyncio.sleep(0.05)
        drained = time.time()
        for proc in procs:
            proc.stop()
        samples = collect(outs)
    finally:
        await conn.close()
    return {
        "engine": "pgqueuer",
        "clocks": clocks,
        "window_s": window,
        "workers": workers,
        "batch_size": batch_size,
        "jobs_run": len(samples),
        "all_done_after_first_due_s": round(drained - first_due.timestamp(), 2),
        "recorded_lateness": stats(samples),
        "load_average_1m": os.getloadavg()[0],
    }


# --- driver -----------------------------------------------------------------------------------


def render(rows: list[tuple[str, dict[str, Any]]]) -> None:
    """One table for every scenario."""
    table = Table(title="SLA clocks falling due: lateness of the recorded outcome")
    columns = ("scenario", "engine", "clocks", "window s", "done", "all done s", "all acked s")
    tail = ("p50 ms", "p99 ms", "max ms", "acked p50/p99 ms", "read back p50/p99 ms")
    for column in (*columns, *tail):
        table.add_column(column)
    for scenario, r in rows:
        late = r["recorded_lateness"]
        kafka = r.get("kafka_lateness")
        acked = r.get("acked_lateness")
        table.add_row(
            scenario,
            r["engine"],
            str(r["clocks"]),
            str(r["window_s"]),
            str(r.get("breaches_on_kafka", r.get("jobs_run"))),
            str(r.get("all_on_kafka_after_first_due_s", r.get("all_done_after_first_due_s"))),
            str(r.get("all_acked_after_first_due_s", "-")),
            str(late["p50_ms"]),
            str(late["p99_ms"]),
            str(late["max_ms"]),
            f"{acked['p50_ms']} / {acked['p99_ms']}" if acked else "-",
            f"{kafka['p50_ms']} / {kafka['p99_ms']}" if kafka else "-",
        )
    console.print(table)


async def run_scenarios(
    args: argparse.Namespace, infra: Infrastructure
) -> list[tuple[str, dict[str, Any]]]:
    """Every scenario asked for, Tierline then its peer."""
    scenarios = [("burst", args.clocks, args.window)] + [
        (f"sustained {rate}/s", rate * args.duration, float(args.duration)) for rate in args.rate
    ]
    rows: list[tuple[str, dict[str, Any]]] = []
    for name, clocks, window in scenarios:
        if name.split()[0] not in args.only:
            continue
        console.print(f"[bold]{name}[/]: {clocks} clocks due within {window}s (tierline)")
        profile = args.profile / name.replace(" ", "_").replace("/", "") if args.profile else None
        result = await tierline_scenario(
            infra, clocks, window, args.workers, args.lead, profile, args.read_after
        )
        console.print(result)
        rows.append((name, result))
        if not args.skip_peer:
            console.print(f"[bold]{name}[/]: the same with pgqueuer")
            peer = await pgqueuer_scenario(infra, clocks, window, args.workers, args.batch)
            console.print(peer)
            rows.append((name, peer))
    return rows


def main(args: argparse.Namespace) -> None:
    """Start the infrastructure (its start-up runs its own event loops), then the scenarios."""
    global PARTITIONS, FETCH_WAIT_MS
    # The Tansu shape runs with `tierline dev`'s settings for Tansu unless told otherwise.
    dev = tansu_settings({}) if args.broker == "tansu" else {}
    if args.partitions is None:
        default = Settings.model_fields["kafka_partitions"].default
        args.partitions = int(str(dev.get("kafka_partitions", default)))
    PARTITIONS = args.partitions
    fetch_wait = (
        dev.get("consumer_fetch_max_wait_ms") if args.fetch_wait_ms is None else args.fetch_wait_ms
    )
    FETCH_WAIT_MS = None if fetch_wait is None else str(fetch_wait)
    args.fetch_wait_ms = FETCH_WAIT_MS
    with infrastructure(args.broker) as infra:
        rows = asyncio.run(run_scenarios(args, infra))
    render(rows)
    result = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": [{"scenario": n, **r} for n, r in rows],
    }
    result["percentile_method"] = "nearest rank"
    console.print(f"saved {save(args.name, result)}")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clocks", type=int, default=20_000, help="clocks in the burst")
    parser.add_argument("--window", type=float, default=1.0, help="burst due-time spread (s)")
    parser.add_argument(
        "--rate",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1000],
        help="sustained clocks per second (comma-separated for several runs)",
    )
    parser.add_argument("--duration", type=int, default=30, help="sustained seconds")
    parser.add_argument("--workers", type=int, default=2, help="tierline sla / pgqueuer processes")
    parser.add_argument("--batch", type=int, default=100, help="pgqueuer dequeue batch size")
    parser.add_argument("--lead", type=float, default=None, help="seconds of set-up before due")
    parser.add_argument("--only", nargs="+", default=["burst", "sustained"])
    parser.add_argument("--skip-peer", action="store_true", help="tierline only")
    parser.add_argument("--name", default="sla", help="bench/results/<name>.json")
    parser.add_argument(
        "--broker",
        choices=("tansu", "kafka"),
        default="tansu",
        help="tansu (as tierline dev) or kafka (Apache Kafka 4, deploy/kafka/; production shape)",
    )
    parser.add_argument(
        "--read-after",
        action="store_true",
        help="read the topic back after the run, not during it (no reader load on the broker)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy records the sla and relay processes from the first due time (DIR/<scenario>)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="the topic's partitions (default: as `tierline dev` on Tansu, 12 on Kafka)",
    )
    parser.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=None,
        help="the roles' consumer fetch wait (default: as `tierline dev` on Tansu, the roles'"
        " default on Kafka)",
    )
    parser.add_argument("--pgqueuer-worker", metavar="DSN", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    options = parse()
    if options.pgqueuer_worker:
        lateness = asyncio.run(pgqueuer_worker(options.pgqueuer_worker, options.batch))
        options.out.write_text(json.dumps(lateness))
    else:
        main(options)
