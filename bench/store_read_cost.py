"""PostgreSQL's CPU for sending one replay worker's share of the event store (ADR 0014).

Fills a fresh PostgreSQL with the replay workload's events (marked published, as the relay
leaves them), then reads share 0 of 2 as `tierline replay` does (read-only snapshot, cursor,
position order) with and without the `data` column, and from a `json` copy of the column, and
reads the server backend's CPU seconds from /proc before and after each.

    .venv/bin/python -m bench.store_read_cost --events 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import save
from bench.projector import COPY_COLUMNS, generate
from tierline.devstack.postgres import PostgresServer
from tierline.store.migrate import migrate_url

SHARE = "WHERE (hashtext(stream_id) & 2147483647) % 2 = 0 ORDER BY position"
READS = {
    "with_data": f"SELECT event_id::text, stream_id, version, type, time, data FROM events {SHARE}",
    "without_data": f"SELECT event_id::text, stream_id, version, type, time FROM events {SHARE}",
    "json_copy": f"SELECT data FROM events_json {SHARE}",
}


def backend_cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def read_share(conn: asyncpg.Connection, pid: int, sql: str) -> dict[str, float]:
    """Read every row through a cursor in one snapshot; the backend's CPU and the wall time."""
    cpu, wall = backend_cpu_seconds(pid), time.perf_counter()
    rows = 0
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        cursor = await conn.cursor(sql)
        while batch := await cursor.fetch(5000):
            rows += len(batch)
    return {
        "rows": rows,
        "backend_cpu_s": round(backend_cpu_seconds(pid) - cpu, 3),
        "wall_s": round(time.perf_counter() - wall, 3),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    """Fill, then read each way `--repeat` times."""
    events = generate(args.events, args.seed)
    with tempfile.TemporaryDirectory(prefix="tierline-bench-store-read-") as tmp:
        postgres = PostgresServer(Path(tmp) / "pg", forward_logs=False)
        await asyncio.to_thread(postgres.start)
        try:
            await migrate_url(postgres.dsn)
            conn = await asyncpg.connect(postgres.dsn)
            rows = [
                (e.event_id, e.stream_id, "issue", e.version, e.type, e.time, e.data_json)
                for e in events
            ]
            await conn.copy_records_to_table("events", columns=COPY_COLUMNS, records=rows)
            await conn.execute("UPDATE events SET published_at = now()")
            await conn.execute("CREATE TABLE events_json AS SELECT * FROM events")
            await conn.execute("ALTER TABLE events_json ALTER data TYPE json")
            await conn.execute("VACUUM ANALYZE events, events_json")
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            reads: dict[str, list[dict[str, float]]] = {name: [] for name in READS}
            for _ in range(args.repeat):
                for name, sql in READS.items():
                    reads[name].append(await read_share(conn, pid, sql))
            await conn.close()
        finally:
            await asyncio.to_thread(postgres.stop)
    return {"events": args.events, "load_1m": round(os.getloadavg()[0], 2), "reads": reads}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--name", default="store_read_cost", help="bench/results/<name>.json")
    options = parser.parse_args()
    result = asyncio.run(main(options))
    for name, runs in result["reads"].items():
        print(name, ", ".join(f"{r['backend_cpu_s']} s CPU / {r['rows']} rows" for r in runs))
    print(f"saved {save(options.name, result)}")
