"""Write-path benchmark.

1. HTTP: commands/s and p50/p99 latency with N concurrent clients against `tierline dev`
   (every role in one process, PostgreSQL and the broker as children), on distinct issues and
   on a few hot issues.
2. In-process append: Tierline's `append_events` (lock head, insert event, update head and
   snapshot, one transaction per command) side by side with the `eventsourcing` library's
   PostgreSQL recorder `insert_events`, same event size, same writer count, same PostgreSQL.

With `--api-workers N`, (1) runs instead against `tierline api --workers N` and `tierline relay`
as separate processes on their own PostgreSQL (durable defaults, as `tierline dev`) and Tansu,
and (2) is skipped; the CPU each process group used during each load is recorded.

Run: `python bench/write_path.py` (or `make bench-write`); `--help` for sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from rich.console import Console
from rich.table import Table

from bench.common import dev_stack, save, summary, tree_cpu_seconds
from bench.sla import cpu_seconds, new_database, role_env, role_process
from tierline.config import Settings
from tierline.devstack.postgres import PostgresServer
from tierline.devstack.process import ManagedProcess, free_port, wait_for_tcp
from tierline.devstack.tansu import TansuBroker
from tierline.eventlog.kafka import ensure_topic
from tierline.secretbox import generate_key
from tierline.store.api_keys import create_api_key
from tierline.store.event_store import NewEvent, append_events, lock_head
from tierline.store.migrate import migrate_url
from tierline.store.pool import create_pool
from tierline.store.unit_of_work import QUERIES as STORE_QUERIES

console = Console()


async def http_load(
    api: str, key: str, clients: int, seconds: float, hot: int | None
) -> dict[str, Any]:
    """Drive comment commands for `seconds`; hot=None gives each client its own issue."""
    headers = {"Authorization": f"Bearer {key}"}
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(api, headers=headers, connector=conn) as http:
        n_issues = clients if hot is None else hot
        ids = []
        for i in range(n_issues):
            body = {
                "vendor_id": "bench",
                "title": f"bench {i}",
                "category": "quality",
                "priority": "P3",
            }
            async with http.post("/v1/issues", json=body) as resp:
                ids.append((await resp.json())["id"])
        latencies: list[float] = []
        errors = 0
        stop_at = time.perf_counter() + seconds

        async def client(n: int) -> None:
            nonlocal errors
            issue = ids[n % len(ids)]
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                async with http.post(
                    f"/v1/issues/{issue}/comments", json={"body": "bench comment " + "x" * 200}
                ) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "issues": n_issues,
        "commands": len(latencies),
        "errors": errors,
        "commands_per_s": round(len(latencies) / elapsed),
        **summary(latencies),
    }


LOADGEN_SOURCE = Path(__file__).resolve().parent / "loadgen"


def build_loadgen() -> Path:
    """Compile bench/loadgen (standard library only: no module download) into a temp dir."""
    go = shutil.which("go")
    if go is None:
        raise SystemExit("the Go load client needs `go` on PATH (or run with --client python)")
    out = Path(tempfile.mkdtemp(prefix="tierline-loadgen-")) / "loadgen"
    subprocess.run(
        [go, "build", "-o", str(out), "."],
        cwd=LOADGEN_SOURCE,
        check=True,
        env={**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"},
    )
    return out


async def go_load(
    loadgen: Path, api: str, key: str, clients: int, seconds: float, hot: int | None
) -> dict[str, Any]:
    """The same load as `http_load`, from the Go client (bench/loadgen/main.go)."""
    argv = [str(loadgen), "-url", api, "-key", key, "-clients", str(clients)]
    argv += ["-seconds", str(seconds), "-hot", str(hot or 0)]
    done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stderr[-2000:]}")
    row: dict[str, Any] = json.loads(done.stdout)
    return {
        "clients": row["clients"],
        "issues": row["issues"],
        "commands": row["commands"],
        "errors": row["errors"],
        "commands_per_s": round(row["commands_per_s"]),
        "p50_ms": round(row["p50_ms"], 2),
        "p99_ms": round(row["p99_ms"], 2),
        "mean_ms": round(row["mean_ms"], 2),
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def measured_load(
    args: argparse.Namespace,
    loadgen: Path | None,
    dev: dict[str, Any],
    clients: int,
    hot: int | None,
) -> dict[str, Any]:
    """One measured load with the CPU every process group spent on it, per command."""
    api, key = dev["api_url"], dev["admin_key"]
    if loadgen is not None:
        await go_load(loadgen, api, key, clients, 1.0, hot)  # warm-up
    else:
        await http_load(api, key, clients, 1.0, hot)
    before, started = tree_cpu_seconds(dev["dev_pid"]), time.time()
    client_before = _children_cpu() if loadgen is not None else time.process_time()
    if loadgen is not None:
        row = await go_load(loadgen, api, key, clients, args.seconds, hot)
        client = _children_cpu() - client_before
    else:
        row = await http_load(api, key, clients, args.seconds, hot)
        client = time.process_time() - client_before
    elapsed = time.time() - started
    used = {k: v - before[k] for k, v in tree_cpu_seconds(dev["dev_pid"]).items()}
    used["load client"] = client
    commands = max(1, row["commands"])
    row["cpu_ms_per_command"] = {k: round(v * 1000 / commands, 3) for k, v in used.items()}
    row["cpu_cores"] = {k: round(v / elapsed, 2) for k, v in used.items()}
    row["load_average_1m"] = round(os.getloadavg()[0], 2)
    return row


async def http_part(args: argparse.Namespace) -> dict[str, Any]:
    """Every write path, client count and scenario, runs interleaved across write paths."""
    loadgen = build_loadgen() if args.client == "go" else None
    rows: list[dict[str, Any]] = []
    modes = args.dev_processes
    groups = [tuple(g.split("x")) for g in args.group_commit]
    variants = [(p, m, g) for p in args.write_paths for m in modes for g in groups]
    labels = [
        p
        + ("" if len(modes) == 1 else f" dev={m}")
        + ("" if len(groups) == 1 else f" gc={'x'.join(g)}")
        for p, m, g in variants
    ]
    for run in range(args.http_runs):
        for (path, mode, group), label in zip(variants, labels, strict=True):
            env = {
                "TIERLINE_WRITE_PATH": path,
                "TIERLINE_DEV_PROCESSES": mode,
                "TIERLINE_WRITE_GROUP_COMMIT_MAX": group[0],
            }
            if len(group) > 1:
                env["TIERLINE_WRITE_GROUP_COMMIT_WRITERS"] = group[1]
            with dev_stack(env=env) as dev:
                headers = {"Authorization": f"Bearer {dev['admin_key']}"}
                async with aiohttp.ClientSession(dev["api_url"], headers=headers) as http:
                    await http.post("/v1/vendors", json={"id": "bench", "name": "Bench"})
                for clients in args.clients:
                    for hot in (None, args.hot):
                        row = await measured_load(args, loadgen, dev, clients, hot)
                        row |= {
                            "run": run,
                            "write_path": label,
                            "scenario": "distinct" if hot is None else f"hot({hot})",
                        }
                        rows.append(row)
                        console.print(row)
    return {"client": args.client, "runs": rows, "http": http_medians(rows, labels)}


def http_medians(rows: list[dict[str, Any]], paths: list[str]) -> list[dict[str, Any]]:
    """Per write path, clients and scenario: medians over runs; per run, the ratio of each
    write path to the first one measured in the same run (paired)."""
    out = []
    keys = sorted({(r["clients"], r["scenario"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for clients, scenario in keys:
        for path in paths:
            mine = [
                r
                for r in rows
                if (r["clients"], r["scenario"], r["write_path"]) == (clients, scenario, path)
            ]
            base = [
                r
                for r in rows
                if (r["clients"], r["scenario"], r["write_path"]) == (clients, scenario, paths[0])
            ]
            cpu_groups = mine[0]["cpu_ms_per_command"].keys()
            row: dict[str, Any] = {
                "write_path": path,
                "clients": clients,
                "scenario": scenario,
                "runs": len(mine),
                "commands_per_s": round(statistics.median(r["commands_per_s"] for r in mine)),
                "commands_per_s_runs": [r["commands_per_s"] for r in mine],
                "p50_ms": round(statistics.median(r["p50_ms"] for r in mine), 2),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in mine), 2),
                "errors": sum(r["errors"] for r in mine),
                "cpu_ms_per_command": {
                    g: round(statistics.median(r["cpu_ms_per_command"][g] for r in mine), 3)
                    for g in cpu_groups
                },
            }
            if path != paths[0]:
                row[f"paired_ratio_vs_{paths[0]}"] = paired_ratio(
                    [r["commands_per_s"] for r in mine], [r["commands_per_s"] for r in base]
                )
            out.append(row)
    return out


def realistic_payloads(count: int) -> list[tuple[str, str, str]]:
    """(event type, event data, snapshot after) from the seeded workload `tierline replay`'s bench
    uses: real issues with their clocks, comments, escalations and SLA events."""
    from tierline.projector.workload import Workload

    out: list[tuple[str, str, str]] = []
    for command in Workload(seed=42).commands(count):
        snapshot = command.issue.model_dump_json()
        out.extend((ev.type, ev.data_json, snapshot) for ev in command.events)
    return out[:count]


def paired_ratio(ours: list[float], theirs: list[float]) -> float:
    """Median of ours/theirs over runs that ran side by side."""
    return round(statistics.median(a / b for a, b in zip(ours, theirs, strict=True)), 2)


def payload_sizes(payloads: list[tuple[str, str, str]]) -> dict[str, float]:
    """Mean event and snapshot sizes in bytes, for the results file."""
    return {
        "event_bytes_mean": round(statistics.fmean(len(d) for _, d, _ in payloads)),
        "snapshot_bytes_mean": round(statistics.fmean(len(s) for _, _, s in payloads)),
    }


async def tierline_append(
    database_url: str, writers: int, per_writer: int, payloads: list[tuple[str, str, str]]
) -> float:
    """Events/s through `append_events`, one transaction per event, one stream per writer: lock
    the head, insert the event, move the head and store the snapshot."""
    pool = await create_pool(database_url, min_size=writers, max_size=writers)
    now = datetime.now(UTC)

    async def writer(offset: int) -> None:
        stream = str(uuid.uuid4())
        for version in range(per_writer):
            kind, data, snapshot = payloads[(offset + version) % len(payloads)]
            async with pool.acquire() as conn, conn.transaction():
                await lock_head(conn, stream)
                await append_events(
                    conn,
                    stream_id=stream,
                    stream_type="bench",
                    vendor_id=None,
                    expected_version=version,
                    events=[NewEvent(kind, data)],
                    snapshot_json=snapshot,
                    time=now,
                )

    started = time.perf_counter()
    await asyncio.gather(*(writer(n * 97) for n in range(writers)))
    elapsed = time.perf_counter() - started
    await pool.close()
    return writers * per_writer / elapsed


async def tierline_one_statement_append(
    database_url: str, writers: int, per_writer: int, payloads: list[tuple[str, str, str]]
) -> float:
    """Events/s as the API's one-statement unit of work writes a command (ADR 0013): read the
    head (its snapshot cached, so only the version comes back), then `append_command` moves the
    head, inserts the event and stores the snapshot in one statement, without a transaction."""
    pool = await create_pool(database_url, min_size=writers, max_size=writers)
    now = datetime.now(UTC)

    async def writer(offset: int) -> None:
        stream = str(uuid.uuid4())
        kind, data, snapshot = payloads[offset % len(payloads)]
        async with pool.acquire() as conn:  # the stream's first event opens it
            await append_events(
                conn,
                stream_id=stream,
                stream_type="bench",
                vendor_id=None,
                expected_version=0,
                events=[NewEvent(kind, data)],
                snapshot_json=snapshot,
                time=now,
            )
        for version in range(1, per_writer):
            kind, data, snapshot = payloads[(offset + version) % len(payloads)]
            async with pool.acquire() as conn:
                head = await conn.fetchrow(STORE_QUERIES["read_head_unless_at"], stream, version)
                assert head is not None and head["snapshot_json"] is None
                row = await conn.fetchrow(
                    STORE_QUERIES["append_command"],
                    *(stream, "bench", None, [uuid.uuid4()], [version + 1], [kind], [now]),
                    *([data], None, version + 1, snapshot, now, version),
                    *(None,) * 8,
                )
                assert row is not None and row["moved"] == 1

    started = time.perf_counter()
    await asyncio.gather(*(writer(n * 97) for n in range(writers)))
    elapsed = time.perf_counter() - started
    await pool.close()
    return writers * per_writer / elapsed


def eventsourcing_append(
    dsn: dict[str, Any],
    writers: int,
    per_writer: int,
    payloads: list[tuple[str, str, str]],
    recorder_kind: str,
) -> float:
    """Events/s through one of eventsourcing's PostgreSQL recorders, `insert_events` per event.

    `aggregate`: `PostgresAggregateRecorder`, events per aggregate with no global order — the
    like-for-like peer of Tierline's append (which has no global order either; the relay reads
    by commit). `application`: `PostgresApplicationRecorder`, which also numbers every event in
    one gap-free global sequence and takes a table lock per insert to do so.
    Neither writes a snapshot; Tierline's append stores one per event in the same transaction.
    """
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.postgres import (
        PostgresAggregateRecorder,
        PostgresApplicationRecorder,
        PostgresDatastore,
    )

    datastore = PostgresDatastore(
        dsn["database"],
        dsn["host"],
        dsn["port"],
        dsn["user"],
        "",
        pool_size=writers,
        max_overflow=0,
    )
    table = f"es_{recorder_kind}_{uuid.uuid4().hex[:8]}"
    cls = PostgresAggregateRecorder if recorder_kind == "aggregate" else PostgresApplicationRecorder
    recorder = cls(datastore, events_table_name=table)
    recorder.create_table()
    encoded = [(kind, data.encode()) for kind, data, _ in payloads]

    def writer(offset: int) -> None:
        originator = uuid.uuid4()
        for version in range(1, per_writer + 1):
            kind, state = encoded[(offset + version - 1) % len(encoded)]
            recorder.insert_events([StoredEvent(originator, version, kind, state)])

    threads = [threading.Thread(target=writer, args=(n * 97,)) for n in range(writers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    datastore.close()
    return writers * per_writer / elapsed


async def prepare_append_db(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DROP DATABASE IF EXISTS bench_append")
        await conn.execute("CREATE DATABASE bench_append")
    finally:
        await conn.close()
    from tierline.store.migrate import migrate_url

    url = database_url.rsplit("/", 1)[0] + "/bench_append"
    await migrate_url(url)
    return url


@asynccontextmanager
async def split_stack(workers: int) -> AsyncIterator[dict[str, Any]]:
    """`tierline api --workers N` and `tierline relay` as processes on a fresh PostgreSQL/Tansu."""
    with tempfile.TemporaryDirectory(prefix="tierline-bench-write-") as tmp:
        postgres = PostgresServer(Path(tmp) / "pg", forward_logs=False)
        broker = TansuBroker(cluster_id=f"bench-{uuid.uuid4().hex[:8]}", forward_logs=False)
        await asyncio.gather(asyncio.to_thread(postgres.start), asyncio.to_thread(broker.start))
        procs: list[ManagedProcess] = []
        try:
            database_url = await new_database(postgres.dsn)
            await migrate_url(database_url)
            topic = f"bench-write-{uuid.uuid4().hex[:8]}"
            await ensure_topic(broker.bootstrap, topic, 12)
            port = free_port()
            env = {
                **role_env(database_url, broker.bootstrap, topic),
                "TIERLINE_API_PORT": str(port),
                "TIERLINE_SECRET_KEY": generate_key(),
                # The load client drives one key far past a per-key limit on purpose.
                "TIERLINE_RATE_LIMIT_RPS": "0",
            }
            api_argv = [sys.executable, "-m", "tierline.cli", "api", "--workers", str(workers)]
            api = ManagedProcess("api", api_argv, env=env, forward=False)
            procs = [api, role_process("relay", "relay", env)]
            for proc in procs:
                proc.start()
            await asyncio.to_thread(wait_for_tcp, "127.0.0.1", port, 60, api)
            await asyncio.sleep(1.0)  # every worker listening, not only the first
            pool = await create_pool(database_url, min_size=1, max_size=1)
            try:
                _, key = await create_api_key(pool, name="bench", role="admin")
            finally:
                await pool.close()
            assert api.pid and procs[1].pid and postgres.pid and broker.pid
            groups = {
                "api": [api.pid],
                "relay": [procs[1].pid],
                "postgres": [postgres.pid],
                "tansu": [broker.pid],
            }
            yield {
                "api_url": f"http://127.0.0.1:{port}",
                "admin_key": key,
                "database_url": database_url,
                "cpu": lambda: cpu_seconds(groups, {"api": api.pid, "postgres": postgres.pid}),
            }
        finally:
            for proc in procs:
                await asyncio.to_thread(proc.stop)
            await asyncio.to_thread(broker.stop)
            await asyncio.to_thread(postgres.stop)


async def split_main(args: argparse.Namespace) -> None:
    """HTTP load only, against `tierline api --workers N` + `tierline relay` processes."""
    target = f"tierline api --workers {args.api_workers} + tierline relay"
    results: dict[str, Any] = {"target": target, "http": [], "append": []}
    async with split_stack(args.api_workers) as stack:
        api, key = stack["api_url"], stack["admin_key"]
        async with aiohttp.ClientSession(api, headers={"Authorization": f"Bearer {key}"}) as http:
            await http.post("/v1/vendors", json={"id": "bench", "name": "Bench"})
        for clients in args.clients:
            for hot in (None, args.hot):
                await http_load(api, key, clients, 1.0, hot)  # warm-up
                before, bench_before, started = stack["cpu"](), time.process_time(), time.time()
                row = await http_load(api, key, clients, args.seconds, hot)
                elapsed = time.time() - started
                used = {k: v - before[k] for k, v in stack["cpu"]().items()}
                used["load generator"] = time.process_time() - bench_before
                row["cpu_cores"] = {k: round(v / elapsed, 2) for k, v in used.items()}
                row["scenario"] = "distinct" if hot is None else f"hot({hot})"
                results["http"].append(row)
                console.print(row)
    render(results)
    results["percentile_method"] = "nearest rank"
    name = args.out or f"write_path_api_workers_{args.api_workers}"
    console.print(f"saved {save(name, results)}")


async def main(args: argparse.Namespace) -> None:
    if args.api_workers is not None:
        await split_main(args)
        return
    results: dict[str, Any] = {"http": [], "append": []}
    if not args.skip_http:
        results |= await http_part(args)
    if args.skip_append:
        render(results)
        console.print(f"saved {save(args.out or 'write_path', results)}")
        return
    with dev_stack() as dev:
        url = await prepare_append_db(dev["database_url"])
        host_port = url.split("@", 1)[1].split("/", 1)[0]
        dsn = {
            "database": "bench_append",
            "host": host_port.split(":")[0],
            "port": host_port.split(":")[1],
            "user": url.split("//", 1)[1].split("@")[0],
        }
        payloads = realistic_payloads(2000)
        results["append_payload"] = payload_sizes(payloads)
        results["append_runs"] = args.runs
        for writers in args.writers:
            per_writer = args.events // writers
            runs: dict[str, list[float]] = {
                "tierline": [],
                "tierline_one_statement": [],
                "aggregate": [],
                "application": [],
            }
            for _ in range(args.runs):  # interleaved, so drift on the machine hits all four
                runs["tierline"].append(await tierline_append(url, writers, per_writer, payloads))
                runs["tierline_one_statement"].append(
                    await tierline_one_statement_append(url, writers, per_writer, payloads)
                )
                for kind in ("aggregate", "application"):
                    runs[kind].append(
                        await asyncio.to_thread(
                            eventsourcing_append, dsn, writers, per_writer, payloads, kind
                        )
                    )
            med = {k: statistics.median(v) for k, v in runs.items()}
            row = {
                "writers": writers,
                "runs": {k: [round(x) for x in v] for k, v in runs.items()},
                "tierline_events_per_s": round(med["tierline"]),
                "tierline_one_statement_events_per_s": round(med["tierline_one_statement"]),
                "aggregate_recorder_events_per_s": round(med["aggregate"]),
                "application_recorder_events_per_s": round(med["application"]),
                "ratio_vs_aggregate": round(med["tierline"] / med["aggregate"], 2),
                "ratio_vs_application": round(med["tierline"] / med["application"], 2),
                # Each run's three systems ran back to back: the median of the per-run ratios
                # cancels most of the machine's drift between runs.
                "paired_ratio_vs_aggregate": paired_ratio(runs["tierline"], runs["aggregate"]),
                "paired_ratio_vs_application": paired_ratio(runs["tierline"], runs["application"]),
                "one_statement_paired_ratio_vs_aggregate": paired_ratio(
                    runs["tierline_one_statement"], runs["aggregate"]
                ),
                "one_statement_paired_ratio_vs_application": paired_ratio(
                    runs["tierline_one_statement"], runs["application"]
                ),
            }
            results["append"].append(row)
            console.print(row)
    render(results)
    results["percentile_method"] = "nearest rank"
    console.print(f"saved {save(args.out or 'write_path', results)}")


def render(results: dict[str, Any]) -> None:
    target = results.get("target", "tierline dev")
    table = Table(title=f"HTTP commands (comments) through {target}")
    cols = ("write path", "scenario", "clients", "commands/s", "p50 ms", "p99 ms", "errors")
    for col in (*cols, "ratio", "CPU ms/command"):
        table.add_column(col)
    for r in results["http"]:
        ratio = next((v for k, v in r.items() if k.startswith("paired_ratio")), "")
        cpu = r.get("cpu_ms_per_command") or r.get("cpu_cores") or {}
        table.add_row(
            r.get("write_path", ""),
            r["scenario"],
            str(r["clients"]),
            str(r["commands_per_s"]),
            str(r["p50_ms"]),
            str(r["p99_ms"]),
            str(r["errors"]),
            str(ratio),
            " ".join(f"{k} {v}" for k, v in cpu.items()),
        )
    console.print(table)
    table = Table(title="In-process append, one transaction per event (median of runs)")
    cols = ("writers", "tierline (locking)", "one-statement", "aggregate rec.", "ratio")
    for col in (*cols, "application rec.", "ratio"):
        table.add_column(col)
    for r in results["append"]:
        table.add_row(
            str(r["writers"]),
            str(r["tierline_events_per_s"]),
            str(r.get("tierline_one_statement_events_per_s", "")),
            str(r["aggregate_recorder_events_per_s"]),
            str(r["ratio_vs_aggregate"]),
            str(r["application_recorder_events_per_s"]),
            str(r["ratio_vs_application"]),
        )
    console.print(table)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--clients", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32, 128]
    )
    parser.add_argument("--hot", type=int, default=4, help="issues shared in the hot scenario")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--writers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32]
    )
    parser.add_argument("--events", type=int, default=8000, help="events per append run")
    parser.add_argument("--runs", type=int, default=3, help="append runs per writer count")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-append", action="store_true")
    parser.add_argument(
        "--client",
        choices=("go", "python"),
        default="go",
        help="HTTP load client: bench/loadgen in Go (default; leaves the CPU to the server) or"
        " aiohttp in this process",
    )
    parser.add_argument(
        "--write-paths",
        type=lambda s: s.split(","),
        default=["locking", "one-statement"],
        help="TIERLINE_WRITE_PATH values to compare, interleaved in each run; ratios are to the"
        " first",
    )
    parser.add_argument(
        "--dev-processes",
        type=lambda s: s.split(","),
        # tierline dev's own default, so the headline figure is what a newcomer runs.
        default=[Settings.model_fields["dev_processes"].default],
        help="TIERLINE_DEV_PROCESSES values (per-role, two, one) to compare, interleaved too"
        " (default: tierline dev's)",
    )
    parser.add_argument(
        "--group-commit",
        type=lambda s: s.split(","),
        default=[str(Settings.model_fields["write_group_commit_max"].default)],
        help="group commit settings to compare, interleaved too: MAX or MAXxWRITERS"
        " (TIERLINE_WRITE_GROUP_COMMIT_MAX / _WRITERS; 1: each command alone; default:"
        " tierline's)",
    )
    parser.add_argument("--http-runs", type=int, default=3, help="interleaved HTTP runs")
    parser.add_argument(
        "--api-workers",
        type=int,
        default=None,
        help="drive `tierline api --workers N` + `tierline relay` processes instead of "
        "`tierline dev` (HTTP load only)",
    )
    parser.add_argument("--out", default=None, help="result file name under bench/results/")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
