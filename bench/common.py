"""Shared bench plumbing: a throwaway PostgreSQL + broker, `tierline dev` as a subprocess, stats."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ADMIN_KEY = "tl_bench_admin_key_0123456789abcdef"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def summary(latencies: list[float]) -> dict[str, float]:
    """p50/p99/mean in milliseconds."""
    return {
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else float("nan"),
    }


@contextmanager
def dev_stack(port: int = 18080) -> Iterator[dict[str, Any]]:
    """`tierline dev` in a fresh data dir as a subprocess; yields its dev.json."""
    data = Path(tempfile.mkdtemp(prefix="tierline-bench-"))
    env = {
        **os.environ,
        "TIERLINE_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "TIERLINE_LOG_LEVEL": "WARNING",
        # The load client drives one key far past a per-key limit on purpose.
        "TIERLINE_RATE_LIMIT_RPS": "0",
    }
    log = open(data / "dev.log", "w")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierline.cli", "dev", "--data-dir", str(data), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        info = data / "dev.json"
        deadline = time.monotonic() + 120
        while not info.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((data / "dev.log").read_text()[-3000:])
            time.sleep(0.1)
        yield {**json.loads(info.read_text()), "admin_key": ADMIN_KEY, "data_dir": str(data)}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def save(name: str, result: dict[str, Any]) -> Path:
    """Write a result file under bench/results/ and return its path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
