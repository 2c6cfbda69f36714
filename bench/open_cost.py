"""What opening an issue costs: opens/s and CPU per open through `tierline dev`, closed loop.

    .venv/bin/python -m bench.open_cost --clients 16 --seconds 8 --name open_cost

Each run starts a fresh `tierline dev` (its default layout), creates a vendor, then `--clients`
aiohttp clients POST /v1/issues (no external ref, no Idempotency-Key) for `--seconds`. CPU is
read from /proc for the dev process tree before and after (bench/common.tree_cpu_seconds):
PostgreSQL, Tansu, the dev process (the API) and all of Tierline's Python. The load client runs
in this process, so opens/s is shared with it; CPU per open is the comparable figure. For an
A/B, run it once per tree with PYTHONPATH pointing at the other tree's `services/`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import aiohttp

from bench.common import dev_stack, save, summary, tree_cpu_seconds


async def drive(api: str, key: str, clients: int, seconds: float) -> dict[str, Any]:
    """Open issues from `clients` loops for `seconds`; opens/s and latencies."""
    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(api, headers=headers) as http:
        await http.post("/v1/vendors", json={"id": "bench", "name": "Bench"})
        body = {"vendor_id": "bench", "title": "open cost", "category": "quality", "priority": "P3"}
        deadline = time.monotonic() + seconds

        async def client() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                started = time.monotonic()
                async with http.post("/v1/issues", json=body) as resp:
                    await resp.read()
                    if resp.status != 201:
                        errors += 1
                        continue
                latencies.append(time.monotonic() - started)

        await asyncio.gather(*(client() for _ in range(clients)))
    return {"opens": len(latencies), "errors": errors, "latency": summary(latencies)}


def one_run(clients: int, seconds: float) -> dict[str, Any]:
    with dev_stack() as dev:
        root = int(dev["dev_pid"])
        time.sleep(2.0)  # let the demo-free stack settle
        before = tree_cpu_seconds(root)
        result = asyncio.run(drive(dev["api_url"], dev["admin_key"], clients, seconds))
        time.sleep(1.0)  # the log roles catch up: their CPU belongs to these opens too
        after = tree_cpu_seconds(root)
    opens = max(1, result["opens"])
    cpu = {k: round((after[k] - before[k]) * 1000 / opens, 3) for k in after}
    return result | {"opens_per_s": round(result["opens"] / seconds), "cpu_ms_per_open": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--name", default="open_cost")
    args = parser.parse_args()
    runs = [one_run(args.clients, args.seconds) for _ in range(args.runs)]
    for run in runs:
        print(run)
    median_cpu = {
        k: round(statistics.median(r["cpu_ms_per_open"][k] for r in runs), 3)
        for k in runs[0]["cpu_ms_per_open"]
    }
    save(
        args.name,
        {
            "clients": args.clients,
            "seconds": args.seconds,
            "runs": runs,
            "median_opens_per_s": statistics.median(r["opens_per_s"] for r in runs),
            "median_cpu_ms_per_open": median_cpu,
        },
    )


if __name__ == "__main__":
    main()
