"""Fault drill of the production shape: every role in its own processes (two of each) on a
three-node Apache Kafka cluster (replication 3, min ISR 2, idempotent acks=all producer) and
PostgreSQL, under a fixed command load, with faults injected while it runs.

    python -m bench.drill                     # the full drill (`make drill`): each fault on
                                              # its own run, then all in one run
    python -m bench.drill --profile short     # the CI drill (tests/e2e/test_drill_short.py)
    python -m bench.drill --runs broker-kill,pg-restart --rate 20

Each run starts a fresh shape, sets up vendors, a second-scale P1 SLA policy and two webhook
subscriptions (the drill's receiver), runs the load, injects its faults one after another,
stops the load, waits until the shape has settled, and checks the invariants
(bench/drill_checks.py). The drill prints them as a table, writes the figures to a JSON file
(bench/results/drill.json for the full drill), and exits 1 when any invariant fails.

Time to recover, per fault: from the moment the fault ends (the killed process restarted, the
frozen broker thawed, the database back) until a newly opened issue is both listed by the read
models and delivered by webhook. `write gap` is the longest stretch during the fault with no
command answered 2xx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.common import machine
from bench.drill_checks import Check, rss_by_role, run_checks
from bench.drill_cluster import (
    MIN_INSYNC_REPLICAS,
    PARTITIONS,
    REPLICATION_FACTOR,
    Service,
    Shape,
    rss_kib,
)
from bench.drill_load import SETTLE_SECONDS, Load, WebhookReceiver
from tierline.logs import configure_logging
from tierline.store.api_keys import create_api_key

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "drill.json"
FAULTS = ("broker-kill", "role-kills", "pg-restart", "broker-freeze", "rebalance")
RECOVERY_TIMEOUT = 120.0


@dataclass
class Profile:
    """How long and how hard a drill runs."""

    rate: float
    warmup: float
    gap: float
    tail: float
    broker_down: float
    freeze: float
    settle_timeout: float
    runs: list[list[str]]
    # role-kills: which processes, in order (None: every role process).
    kill_only: list[str] | None = None


PROFILES = {
    # In `make test`: one run, a few faults, tens of seconds of load.
    "short": Profile(
        rate=15,
        warmup=3,
        gap=1,
        tail=2,
        broker_down=3,
        freeze=0,
        settle_timeout=90,
        runs=[["broker-kill", "role-kills", "pg-restart"]],
        kill_only=["relay-leader", "projector-1"],
    ),
    # `make drill`: each fault on its own run, then all of them in one run.
    # 15 commands/s (about 30 events/s, each to the "all" webhook subscription): at 30/s the
    # webhook senders fell behind on this shared 2-core machine over the ten minutes of the
    # all-faults run (bench/README.md, Fault drill).
    "full": Profile(
        rate=15,
        warmup=10,
        gap=5,
        tail=10,
        broker_down=10,
        # Longer than the consumer session timeout (10 s) and the broker session (5 s).
        freeze=14,
        settle_timeout=180,
        runs=[[f] for f in FAULTS] + [list(FAULTS)],
    ),
}


@dataclass
class FaultResult:
    """One injected fault and how the shape came back."""

    fault: str
    target: str
    started: float
    healed: float
    recovered_s: float | None = None
    write_gap_s: float = 0.0
    error: str | None = None
    # Seconds from the fault until a canary went end to end while the fault still lasted
    # (None: none did, or not measured for this fault).
    served_during_s: float | None = None
    # Seconds a restarted broker took to register with the cluster again.
    rejoin_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """For drill.json."""
        return {
            "fault": self.fault,
            "target": self.target,
            "duration_s": round(self.healed - self.started, 2),
            "recovered_s": None if self.recovered_s is None else round(self.recovered_s, 2),
            "write_gap_s": round(self.write_gap_s, 2),
            "served_during_s": _round(self.served_during_s),
            "rejoin_s": _round(self.rejoin_s),
            "error": self.error,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


@dataclass
class Run:
    """One drill run: a fresh shape, the load, its faults, and the invariants after."""

    faults: list[str]
    profile: Profile
    root: Path
    results: list[FaultResult] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every invariant held and every fault recovered."""
        return (
            bool(self.checks)
            and all(c.passed for c in self.checks)
            and all(r.error is None for r in self.results)
        )


class Drill:
    """Runs one `Run` against a fresh shape."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.shape = Shape(run.root)
        self.receiver = WebhookReceiver()
        self.load: Load | None = None
        self._pool: asyncpg.Pool | None = None

    async def listed(self, issue_id: str) -> bool:
        """Whether read.issues holds the issue."""
        assert self._pool is not None
        return bool(
            await self._pool.fetchval("SELECT 1 FROM read.issues WHERE issue_id = $1", issue_id)
        )

    async def execute(self) -> Run:
        """Start the shape, run the load and the faults, check, stop."""
        run, profile = self.run, self.run.profile
        started = time.monotonic()
        try:
            await self.shape.start()
            run.summary["start_s"] = round(time.monotonic() - started, 1)
            self._pool = await asyncpg.create_pool(self.shape.postgres.url, min_size=1, max_size=2)
            _, admin_key = await create_api_key(self._pool, name="drill", role="admin")
            await self.receiver.start()
            async with Load(self.shape.api_urls, admin_key) as load:
                self.load = load
                await load.setup(self.receiver)
                stop = asyncio.Event()
                load_started = time.time()
                traffic = asyncio.create_task(load.run(profile.rate, stop))
                await asyncio.sleep(profile.warmup)
                for fault in run.faults:
                    await INJECT[fault](self)
                    await asyncio.sleep(profile.gap)
                await asyncio.sleep(profile.tail)
                stop.set()
                await traffic
                load_seconds = time.time() - load_started
                # P1 clocks opened at the end still fall due, escalate and breach.
                await asyncio.sleep(SETTLE_SECONDS)
                run.checks, _ = await run_checks(
                    self.shape, load, self.receiver, profile.settle_timeout
                )
                run.summary.update(self._summary(load, load_seconds))
        except Exception as exc:
            run.checks.append(Check("the drill ran to the end", False, repr(exc)))
            raise
        finally:
            if self._pool is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._pool.close(), 5)
            await self.receiver.stop()
            await asyncio.to_thread(self.shape.stop)
        return run

    def _summary(self, load: Load, seconds: float) -> dict[str, Any]:
        stats = load.stats
        return {
            "load_seconds": round(seconds, 1),
            "rate_target": self.run.profile.rate,
            "commands_sent": stats.sent,
            "rate_achieved": round(stats.sent / seconds, 1) if seconds else 0.0,
            "accepted_2xx": len(stats.accepted),
            "final_answers": dict(sorted(stats.final.items())),
            "attempt_answers": dict(sorted(stats.attempts.items())),
            "late_ticks": stats.late_ticks,
            "issues_opened": len(load.issues),
            "webhook_requests": self.receiver.requests,
            "rss_mib": rss_by_role(self.shape),
            "kafka_rss_mib": {
                s.name: (None if (k := rss_kib(s.pid)) is None else round(k / 1024))
                for s in self.shape.kafka.services.values()
            },
        }

    # -- faults -------------------------------------------------------------------------

    async def _recover(self, result: FaultResult) -> None:
        """Wait for the end-to-end canary after a fault, and record the write gap."""
        assert self.load is not None
        try:
            result.recovered_s = await self.load.canary(
                self.receiver, self.listed, result.healed, RECOVERY_TIMEOUT
            )
        except TimeoutError as exc:
            result.error = str(exc)
        result.write_gap_s = self.load.stats.longest_gap(result.started, time.time())
        self.run.results.append(result)
        recovered = "-" if result.recovered_s is None else f"{result.recovered_s:.1f}s"
        print(
            f"  {result.fault:<14} {result.target:<18} fault {result.healed - result.started:5.1f}s"
            f"  recovered {recovered:>6}  write gap {result.write_gap_s:.1f}s",
            file=sys.stderr,
        )

    async def _served_during(self, started: float, seconds: float) -> float | None:
        """Seconds until a canary went end to end within `seconds` of the fault, or None."""
        assert self.load is not None
        canary = asyncio.create_task(
            self.load.canary(self.receiver, self.listed, started, RECOVERY_TIMEOUT)
        )
        done, _ = await asyncio.wait({canary}, timeout=max(0.0, started + seconds - time.time()))
        if not done:
            canary.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await canary
            return None
        with contextlib.suppress(TimeoutError):
            return canary.result()
        return None

    async def broker_kill(self) -> None:
        """SIGKILL the broker leading partition 0, then start it again on the same data."""
        kafka = self.shape.kafka
        node = await kafka.leader_of(0)
        service = kafka.services[node]
        started = time.time()
        service.kill()
        during = await self._served_during(started, self.run.profile.broker_down)
        await asyncio.sleep(max(0.0, started + self.run.profile.broker_down - time.time()))
        restarted = time.monotonic()
        service.start()
        service.drill_restarts += 1
        await kafka.wait_brokers(kafka.nodes)
        result = FaultResult("broker-kill", f"kafka-{node} (leader)", started, time.time())
        result.served_during_s = during
        result.rejoin_s = time.monotonic() - restarted
        await self._recover(result)

    async def broker_freeze(self) -> None:
        """SIGSTOP the broker leading partition 0 for longer than the session timeouts."""
        kafka = self.shape.kafka
        node = await kafka.leader_of(0)
        service = kafka.services[node]
        started = time.time()
        service.signal(signal.SIGSTOP)
        service.frozen = True
        during = await self._served_during(started, self.run.profile.freeze)
        await asyncio.sleep(max(0.0, started + self.run.profile.freeze - time.time()))
        service.signal(signal.SIGCONT)
        service.frozen = False
        result = FaultResult("broker-freeze", f"kafka-{node} (leader)", started, time.time())
        result.served_during_s = during
        await self._recover(result)

    async def pg_restart(self) -> None:
        """PostgreSQL fast shutdown and start (pg_ctl restart -m fast)."""
        started = time.time()
        await self.shape.postgres.fast_restart()
        await self._recover(FaultResult("pg-restart", "postgres", started, time.time()))

    async def _active_relay(self) -> str:
        """The relay process holding the leadership (its tierline_relay_leader gauge is 1)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
            for name, service in self.shape.roles.items():
                if not name.startswith("relay-"):
                    continue
                port = service.env["TIERLINE_METRICS_PORT"]
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        if "tierline_relay_leader 1.0" in await resp.text():
                            return name
        return "relay-1"

    async def role_kills(self) -> None:
        """SIGKILL each role process in turn and start it again, as a supervisor would."""
        order = self.run.profile.kill_only or [
            "relay-leader",
            *(n for n in self.shape.roles if not n.startswith("relay-")),
            "relay-standby",
        ]
        for target in order:
            name = target
            if target == "relay-leader":
                name = await self._active_relay()
            elif target == "relay-standby":
                leader = await self._active_relay()
                name = next(n for n in self.shape.roles if n.startswith("relay-") and n != leader)
            service = self.shape.roles[name]
            started = time.time()
            service.kill()
            await asyncio.sleep(1.0)
            service.start()
            service.drill_restarts += 1
            await self.shape.wait_ready(60)
            label = f"{name} (active)" if target == "relay-leader" else name
            await self._recover(FaultResult("role-kill", label, started, time.time()))

    async def rebalance(self) -> None:
        """A third member joins each consumer group under load, then leaves again."""
        started = time.time()
        extra: list[Service] = []
        for role in ("projector", "sla", "webhooks"):
            service = self.shape.role_service(role, 3)
            self.shape.extra[service.name] = service
            service.start()
            extra.append(service)
        await asyncio.sleep(8)
        for service in extra:
            service.stop()
            del self.shape.extra[service.name]
        result = FaultResult("rebalance", "3rd consumers", started, time.time())
        await self._recover(result)


INJECT: dict[str, Callable[[Drill], Awaitable[None]]] = {
    "broker-kill": Drill.broker_kill,
    "role-kills": Drill.role_kills,
    "pg-restart": Drill.pg_restart,
    "broker-freeze": Drill.broker_freeze,
    "rebalance": Drill.rebalance,
}


def table(run: Run) -> str:
    """The invariant table of one run."""
    lines = [f"run: {' + '.join(run.faults)}", f"{'':2}{'invariant':<74} result  detail"]
    for check in run.checks:
        mark = "PASS" if check.passed else "FAIL"
        lines.append(f"  {check.name:<74} {mark:<6}  {check.detail}")
    for result in run.results:
        rec = "-" if result.recovered_s is None else f"{result.recovered_s:.1f}s"
        extra = ""
        if result.served_during_s is not None:
            extra += f", served end to end {result.served_during_s:.1f}s into it"
        if result.rejoin_s is not None:
            extra += f", rejoined {result.rejoin_s:.1f}s after its restart"
        lines.append(
            f"  fault {result.fault:<12} {result.target:<22} lasted "
            f"{result.healed - result.started:.1f}s, recovered {rec} after, "
            f"longest write gap {result.write_gap_s:.1f}s{extra}"
            + (f"  [{result.error}]" if result.error else "")
        )
    return "\n".join(lines)


def report(runs: list[Run], profile_name: str) -> dict[str, Any]:
    """drill.json."""
    return {
        "profile": profile_name,
        "machine": machine(),
        "shape": {
            "kafka_nodes": 3,
            "replication_factor": REPLICATION_FACTOR,
            "min_insync_replicas": MIN_INSYNC_REPLICAS,
            "partitions": PARTITIONS,
            "producer": "acks=all, idempotent",
            "role_processes": {"api": 2, "relay": 2, "projector": 2, "sla": 2, "webhooks": 2},
        },
        "passed": all(r.passed for r in runs),
        "runs": [
            {
                "faults": r.faults,
                "passed": r.passed,
                "summary": r.summary,
                "fault_results": [f.as_dict() for f in r.results],
                "invariants": [c.as_dict() for c in r.checks],
            }
            for r in runs
        ],
    }


async def drill(
    profile_name: str, runs: list[list[str]], rate: float | None, keep: Path
) -> list[Run]:
    """Every run, one after another, each on a fresh shape."""
    profile = PROFILES[profile_name]
    if rate is not None:
        profile.rate = rate
    done: list[Run] = []
    for index, faults in enumerate(runs, start=1):
        print(
            f"drill run {index}/{len(runs)}: {' + '.join(faults)} at {profile.rate:g} commands/s",
            file=sys.stderr,
        )
        run = Run(faults, profile, keep / f"run-{index}")
        try:
            await Drill(run).execute()
        except Exception as exc:
            print(f"drill run {index} aborted: {exc!r}", file=sys.stderr)
            traceback.print_exc()
        print(table(run), file=sys.stderr)
        done.append(run)
    return done


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.drill`."""
    parser = argparse.ArgumentParser(prog="bench.drill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--runs", default=None, help="comma-separated faults for ONE run")
    parser.add_argument("--rate", type=float, default=None, help="commands per second")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON result")
    parser.add_argument("--keep", type=Path, default=None, help="directory for data and logs")
    args = parser.parse_args(argv)
    configure_logging("WARNING", "console")
    # The drill's own clients see every fault too; the roles' logs are what matter.
    for noisy in ("aiokafka", "asyncpg"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    profile = PROFILES[args.profile]
    runs = profile.runs
    if args.runs:
        chosen = [f.strip() for f in args.runs.split(",") if f.strip()]
        unknown = set(chosen) - set(FAULTS)
        if unknown:
            parser.error(f"unknown fault(s) {sorted(unknown)}; known: {', '.join(FAULTS)}")
        runs = [chosen]
    keep = args.keep or Path(tempfile.mkdtemp(prefix="tierline-drill-"))
    print(f"drill data and logs in {keep}", file=sys.stderr)
    done = asyncio.run(drill(args.profile, runs, args.rate, keep))
    out = args.out or (RESULTS if args.profile == "full" and not args.runs else keep / "drill.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report(done, args.profile), indent=2) + "\n")
    passed = all(r.passed for r in done)
    print(f"drill {'PASSED' if passed else 'FAILED'}; figures in {out}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
