"""Webhook delivery benchmark: deliveries/s to a local receiver and event-to-receipt latency.

Starts its own PostgreSQL and Tansu broker, runs `tierline relay` and `tierline webhooks` as
child processes (exactly as in production), a receiver in another child process, and writes
events through the real write path from this process. Two phases:

1. burst: N issues opened as fast as the write path takes them; every event goes to every
   subscription. Reports deliveries/s from the first receipt to the last.
2. steady: events at a fixed rate well under capacity; reports latency from the event's
   commit (its CloudEvent `time`, stamped inside the committing transaction) to its receipt.

    .venv/bin/python -m bench.webhooks --processes 1,2      (from the repository root)

Figures go to bench/results/webhooks.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.common import ROOT, percentile, save
from tierline.devstack.postgres import PostgresServer
from tierline.devstack.process import free_port
from tierline.devstack.tansu import TansuBroker
from tierline.domain.commands import OpenIssue
from tierline.domain.governance import Vendor
from tierline.eventlog.kafka import ensure_topic
from tierline.logs import configure_logging
from tierline.secretbox import SecretBox, generate_key
from tierline.service_layer.issues import SYSTEM, IssueService
from tierline.store.migrate import migrate_url
from tierline.store.pool import create_pool
from tierline.store.unit_of_work import issue_service
from tierline.store.vendors import insert_vendor
from tierline.webhooks.signing import new_secret
from tierline.webhooks.subscriptions import insert_subscription

console = Console(stderr=True)
VENDOR = "bench"
# Where the steady phase's time goes: commit -> delivery row (relay, log, consumer) and
# delivery row -> attempt start (sender), from the rows the roles wrote.
BREAKDOWN = """
SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM d.created_at - e.time)),
       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM d.last_attempt_at - d.created_at))
FROM webhook_deliveries d JOIN webhook_events e ON e.event_id = d.event_id
WHERE e.time >= $1
"""
FAST_PG = {"fsync": "off", "full_page_writes": "off", "max_connections": "300"}


# -- receiver (child process) ------------------------------------------------------------


def run_receiver(port: int) -> None:
    """Record the first receipt of each (subscription, event): commit and receipt times."""
    seen: dict[tuple[str, str], tuple[float, float]] = {}
    receipts = {"total": 0}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        receipts["total"] += 1
        key = (request.match_info["sub"], request.headers["webhook-id"])
        if key not in seen:
            sent = json.loads(body)["time"].replace("Z", "+00:00")
            seen[key] = (datetime.fromisoformat(sent).timestamp(), now)
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"unique": len(seen), "total": receipts["total"]})

    async def dump(request: web.Request) -> web.Response:
        return web.json_response({"times": list(seen.values()), "total": receipts["total"]})

    async def reset(request: web.Request) -> web.Response:
        seen.clear()
        receipts["total"] = 0
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks/{sub}", hook)
    app.router.add_get("/stats", stats)
    app.router.add_get("/dump", dump)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- infrastructure ------------------------------------------------------------------------


@contextlib.contextmanager
def child(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, stopped with SIGTERM (then SIGKILL) on exit."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.asynccontextmanager
async def infrastructure(workdir: Path) -> AsyncIterator[tuple[str, str]]:
    """PostgreSQL and Tansu for this run; yields (database_url, bootstrap)."""
    postgres = PostgresServer(workdir / "pg", forward_logs=False, settings=FAST_PG)
    broker = TansuBroker(cluster_id=f"bench-{uuid.uuid4().hex[:8]}", forward_logs=False)
    await asyncio.gather(asyncio.to_thread(postgres.start), asyncio.to_thread(broker.start))
    try:
        yield postgres.dsn, broker.bootstrap
    finally:
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(postgres.stop)


async def prepare(
    database_url: str, bootstrap: str, subscriptions: int, port: int, secret_key: str
) -> None:
    """Schema, topic, one vendor and the subscriptions (secrets sealed as the API does)."""
    box = SecretBox.from_setting(secret_key)
    await migrate_url(database_url)
    await ensure_topic(bootstrap, "tierline.issue-events.v1", 12)
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        await insert_vendor(pool, Vendor(id=VENDOR, name="Bench vendor"))
        for n in range(subscriptions):
            await insert_subscription(
                pool,
                url=f"http://127.0.0.1:{port}/hooks/s{n}",
                event_types=["*"],
                vendor_id=None,
                description=f"bench {n}",
                secret=new_secret(),
                box=box,
            )
    finally:
        await pool.close()


# -- load and measurement --------------------------------------------------------------------


async def open_issues(service: IssueService, count: int, concurrency: int = 16) -> None:
    """Open `count` issues through the write path, `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(n: int) -> None:
        async with gate:
            command = OpenIssue(
                vendor_id=VENDOR, title=f"Bench {n}", category="quality", priority="P2"
            )
            await service.open(SYSTEM, command)

    await asyncio.gather(*(one(n) for n in range(count)))


async def open_at_rate(service: IssueService, rate: float, duration: float) -> int:
    """Open issues at a fixed rate; returns how many."""
    count = int(rate * duration)
    started = time.monotonic()
    tasks = []
    for n in range(count):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(open_issues(service, 1)))
    await asyncio.gather(*tasks)
    return count


async def wait_received(
    http: aiohttp.ClientSession, receiver: str, expected: int, label: str
) -> float:
    """Show progress until the receiver has `expected` unique deliveries; seconds it took."""
    started = time.monotonic()
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(label, total=expected)
        while True:
            async with http.get(f"{receiver}/stats") as resp:
                unique = (await resp.json())["unique"]
            progress.update(task, completed=unique)
            if unique >= expected:
                return time.monotonic() - started
            await asyncio.sleep(0.05)


async def run(args: argparse.Namespace, processes: int) -> dict[str, Any]:
    """Both phases with `processes` webhooks roles; returns the figures."""
    workdir = Path(tempfile.mkdtemp(prefix="tierline-bench-webhooks-"))
    port = free_port()
    receiver = f"http://127.0.0.1:{port}"
    async with infrastructure(workdir) as (admin_dsn, bootstrap):
        database_url = admin_dsn
        secret_key = generate_key()
        await prepare(database_url, bootstrap, args.subscriptions, port, secret_key)
        env = {
            **os.environ,
            "TIERLINE_SECRET_KEY": secret_key,
            "TIERLINE_DATABASE_URL": database_url,
            "TIERLINE_KAFKA_BOOTSTRAP": bootstrap,
            "TIERLINE_KAFKA_IDEMPOTENCE": "false",
            "TIERLINE_WEBHOOKS_ALLOW_PRIVATE_TARGETS": "true",
            "TIERLINE_RELAY_POLL_INTERVAL": "0.2",
            "TIERLINE_LOG_LEVEL": "WARNING",
            "TIERLINE_METRICS_PORT": "0",
        }
        tierline = [sys.executable, "-m", "tierline.cli"]
        with contextlib.ExitStack() as children:
            receiver_argv = [sys.executable, "-m", "bench.webhooks", "--receiver", str(port)]
            children.enter_context(child(receiver_argv, env, workdir / "rx.log"))
            children.enter_context(child([*tierline, "relay"], env, workdir / "relay.log"))
            for n in range(processes):
                log = workdir / f"webhooks-{n}.log"
                children.enter_context(child([*tierline, "webhooks"], env, log))
            pool = await create_pool(database_url, min_size=2, max_size=20)
            try:
                async with aiohttp.ClientSession() as http:
                    figures = await _phases(args, http, receiver, pool)
            finally:
                await pool.close()
            rounded = {k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}
            return {"webhooks_processes": processes, **rounded}


async def _phases(
    args: argparse.Namespace,
    http: aiohttp.ClientSession,
    receiver: str,
    pool: asyncpg.Pool,
) -> dict[str, Any]:
    service = issue_service(pool)
    await _wait_up(http, receiver)
    subs = args.subscriptions
    # Warm-up: the consumer group join and first connections are not part of the figures.
    await open_issues(service, 1)
    await wait_received(http, receiver, subs, "warm-up")
    await http.post(f"{receiver}/reset")

    await open_issues(service, args.burst)
    await wait_received(http, receiver, args.burst * subs, "burst")
    burst = await (await http.get(f"{receiver}/dump")).json()
    await http.post(f"{receiver}/reset")

    steady_from = datetime.now(UTC)
    count = await open_at_rate(service, args.rate, args.duration)
    await wait_received(http, receiver, count * subs, "steady")
    steady = await (await http.get(f"{receiver}/dump")).json()
    queued, sending = await breakdown(pool, steady_from)
    burst_latency = latencies(burst)
    steady_latency = [1000 * s for s in latencies(steady)]
    return {
        "subscriptions": subs,
        "burst_events": args.burst,
        "burst_deliveries": args.burst * subs,
        "burst_deliveries_per_s": args.burst * subs / span(burst),
        "burst_p50_s": percentile(burst_latency, 50),
        "burst_p99_s": percentile(burst_latency, 99),
        "burst_duplicates": burst["total"] - len(burst_latency),
        "steady_events_per_s": args.rate,
        "steady_deliveries": count * subs,
        "steady_p50_ms": percentile(steady_latency, 50),
        "steady_p95_ms": percentile(steady_latency, 95),
        "steady_p99_ms": percentile(steady_latency, 99),
        "steady_max_ms": max(steady_latency),
        "steady_mean_ms": statistics.fmean(steady_latency),
        "steady_commit_to_queued_p50_ms": 1000 * queued[0],
        "steady_commit_to_queued_p99_ms": 1000 * queued[1],
        "steady_queued_to_attempt_p50_ms": 1000 * sending[0],
        "steady_queued_to_attempt_p99_ms": 1000 * sending[1],
    }


async def breakdown(pool: asyncpg.Pool, since: datetime) -> tuple[list[float], list[float]]:
    """Percentiles (p50, p99) of commit -> queued and queued -> attempt, in seconds."""
    row = await pool.fetchrow(BREAKDOWN, since)
    assert row is not None
    return [float(v) for v in row[0]], [float(v) for v in row[1]]


def latencies(dump: dict[str, Any]) -> list[float]:
    """Seconds from each event's commit to its receipt."""
    return [float(received) - float(committed) for committed, received in dump["times"]]


def span(dump: dict[str, Any]) -> float:
    """Seconds from the first event's commit to the last receipt."""
    times: list[tuple[float, float]] = [(float(c), float(r)) for c, r in dump["times"]]
    return max(r for _, r in times) - min(c for c, _ in times)


async def _wait_up(http: aiohttp.ClientSession, receiver: str) -> None:
    for _ in range(200):
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{receiver}/stats") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError("receiver did not start")


def main() -> None:
    """Parse arguments; run the receiver or the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=50)
    parser.add_argument("--burst", type=int, default=400, help="events in the burst phase")
    parser.add_argument("--rate", type=float, default=20.0, help="events/s in the steady phase")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of steady load")
    parser.add_argument(
        "--processes",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 2],
        help="webhooks role processes per run, comma-separated (SKIP LOCKED peers)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--receiver", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver is not None:
        run_receiver(args.receiver)
        return
    configure_logging("WARNING", "console")
    # A SIGTERM unwinds like Ctrl-C, so the children are stopped too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    runs = [asyncio.run(run(args, processes)) for processes in args.processes]
    result = {"runs": runs, "percentile_method": "nearest rank"}
    if args.json:
        print(json.dumps(result, indent=2))
    render(runs)
    console.print(f"saved {save('webhooks', result)}")


def render(runs: list[dict[str, Any]]) -> None:
    """One column per run."""
    table = Table(title="Webhook delivery to a local receiver")
    table.add_column("figure")
    for figures in runs:
        table.add_column(f"{figures['webhooks_processes']} process(es)", justify="right")
    for name in runs[0]:
        values = [figures[name] for figures in runs]
        table.add_row(name, *(f"{v:,.1f}" if isinstance(v, float) else str(v) for v in values))
    Console().print(table)


if __name__ == "__main__":
    main()
