"""The speed targets next to the figures of one `make bench` run, read from its results files.

    .venv/bin/python -m bench.targets [--prefix c_]

reads `bench/results/{prefix}write_path.json`, `{prefix}projector.json`,
`{prefix}projector_freshness_separate_kafka.json`, `{prefix}sla.json` and `{prefix}sla_kafka.json`
(what `make bench` writes, `--prefix` for a run saved under other names), prints the table of
bench/README.md's "Where the targets stand" as Markdown and writes it, with every figure it
used, to `bench/results/{prefix}targets.json`. Nothing is measured here and nothing typed by
hand: a figure missing from the files shows as "not in the run".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
MISSING = "not in the run"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _http(write: dict[str, Any] | None, scenario: str, clients: int) -> dict[str, Any] | None:
    """The default write path's row (one-statement with group commit) for a scenario."""
    if write is None:
        return None
    for row in write["http"]:
        if (
            row["write_path"].startswith("one-statement")
            and row["scenario"].startswith(scenario)
            and row["clients"] == clients
        ):
            return dict(row)
    return None


def _append_peer(write: dict[str, Any] | None, writers: int) -> dict[str, Any] | None:
    if write is None:
        return None
    for row in write.get("append", []):
        if row["writers"] == writers:
            return dict(row)
    return None


def _fresh(projector: dict[str, Any] | None, rate: int) -> dict[str, Any] | None:
    if projector is None or "freshness" not in projector:
        return None
    by_rate = projector["freshness"]["by_rate"].get(str(rate))
    return None if by_rate is None else dict(by_rate["median"])


def _sla_run(sla: dict[str, Any] | None, scenario: str, engine: str) -> dict[str, Any] | None:
    if sla is None:
        return None
    for run in sla["runs"]:
        if run["scenario"] == scenario and run["engine"] == engine:
            return dict(run)
    return None


def _cpu_per_command(cpu: dict[str, float]) -> float:
    """CPU per command over every process; `dev_process` is part of `tierline`."""
    return sum(ms for name, ms in cpu.items() if name != "dev_process")


def _met(ok: bool | None) -> str:
    return MISSING if ok is None else "yes" if ok else "no"


def rows(prefix: str) -> list[dict[str, str]]:
    """One row per target: measure, target, measured, peer in the same run, met."""
    write = _load(f"{prefix}write_path")
    projector = _load(f"{prefix}projector")
    separate = _load(f"{prefix}projector_freshness_separate_kafka")
    sla = {"tansu": _load(f"{prefix}sla"), "kafka": _load(f"{prefix}sla_kafka")}
    out: list[dict[str, str]] = []

    peer = _append_peer(write, 8)
    peer_text = (
        MISSING
        if peer is None
        else (
            "append alone, 8 writers: one-statement"
            f" {peer['tierline_one_statement_events_per_s']:,}"
            f" ev/s; eventsourcing aggregate recorder {peer['aggregate_recorder_events_per_s']:,}"
            f" (paired {peer['one_statement_paired_ratio_vs_aggregate']}), application recorder"
            f" {peer['application_recorder_events_per_s']:,}"
            f" (paired {peer['one_statement_paired_ratio_vs_application']})"
        )
    )
    for scenario, clients, goal_rate, goal_p99, label in (
        ("distinct", 32, 2000, 50.0, "HTTP commands/s, 32 clients, distinct issues"),
        ("hot", 32, 1200, 80.0, "hot issue (4 issues), 32 clients"),
    ):
        row = _http(write, scenario, clients)
        http = (
            MISSING
            if row is None
            else (
                f"{row['commands_per_s']:,}/s, p99 {row['p99_ms']} ms (median of"
                f" {row['runs']}: {row['commands_per_s_runs']}); CPU per command"
                f" {_cpu_per_command(row['cpu_ms_per_command']):.2f} ms across processes"
            )
        )
        fast = (
            None if row is None else row["commands_per_s"] >= goal_rate and row["p99_ms"] < goal_p99
        )
        out.append(
            {
                "measure": label,
                "target": f">= {goal_rate:,}/s, p99 < {goal_p99:g} ms",
                "measured": http,
                "peer": peer_text if scenario == "distinct" else "-",
                "met": _met(fast),
            }
        )

    for data, label in (
        (projector, "accepted -> visible in GET /v1/issues, `tierline dev` (Tansu)"),
        (separate, "same, production shape (processes, Apache Kafka)"),
    ):
        parts: list[str] = []
        ok: bool | None = None
        for rate in (50, 200, 500):
            median = _fresh(data, rate)
            if median is None:
                continue
            vis = median["visible_in_list"]
            parts.append(
                f"{rate}/s: p50 {vis['p50_ms']} / p99 {vis['p99_ms']} ms"
                f" ({median['achieved_rate']}/s achieved)"
            )
            if rate == 500:
                ok = vis["p50_ms"] < 30 and vis["p99_ms"] < 100
        out.append(
            {
                "measure": label,
                "target": "p50 < 30, p99 < 100 ms at 500/s",
                "measured": "; ".join(parts) or MISSING,
                "peer": "-",
                "met": _met(ok),
            }
        )

    for rate in (620, 1000):
        measured: list[str] = []
        peers: list[str] = []
        oks: list[bool] = []
        for broker, data in sla.items():
            run = _sla_run(data, f"sustained {rate}/s", "tierline")
            peer_run = _sla_run(data, f"sustained {rate}/s", "pgqueuer")
            if run is not None and run.get("acked_lateness"):
                p99 = run["acked_lateness"]["p99_ms"]
                measured.append(f"{broker}: acked p99 {p99} ms")
                oks.append(p99 <= 90)
            if peer_run is not None:
                peers.append(
                    f"pgqueuer job start p99 {peer_run['recorded_lateness']['p99_ms']} ms"
                    f" ({broker} run)"
                )
        out.append(
            {
                "measure": f"SLA breaches at {rate}/s, lateness until acked on the topic",
                "target": "p99 <= 90 ms in both shapes",
                "measured": "; ".join(measured) or MISSING,
                "peer": "; ".join(peers) or "-",
                "met": _met(all(oks) if oks else None),
            }
        )

    measured = []
    peers = []
    oks = []
    for broker, data in sla.items():
        run = _sla_run(data, "burst", "tierline")
        peer_run = _sla_run(data, "burst", "pgqueuer")
        if run is not None and run.get("all_acked_after_first_due_s") is not None:
            seconds = run["all_acked_after_first_due_s"]
            measured.append(
                f"{broker}: all {run['breaches_acked']:,} acked after {seconds} s,"
                f" {run['cpu_ms_per_breach']} ms CPU per breach"
            )
            oks.append(seconds <= 10)
            if peer_run is not None:
                done = peer_run["all_done_after_first_due_s"]
                peers.append(
                    f"pgqueuer no-op jobs started after {done} s ({broker} run;"
                    f" {seconds / done:.1f}x)"
                )
    out.append(
        {
            "measure": "100k clocks due within 1 s, until every breach is on the topic",
            "target": "<= 10 s",
            "measured": "; ".join(measured) or MISSING,
            "peer": "; ".join(peers) or "-",
            "met": _met(all(oks) if oks else None),
        }
    )

    replay = None if projector is None else projector.get("tierline_replay")
    peer_on = None if projector is None else projector.get("eventsourcing_synchronous_commit_on")
    peer_off = None if projector is None else projector.get("eventsourcing_synchronous_commit_off")
    out.append(
        {
            "measure": "`tierline replay`, all 5 projections",
            "target": ">= 40,000 events/s",
            "measured": (
                MISSING
                if replay is None
                else (
                    f"{replay['median_events_per_s']:,} events/s, median of"
                    f" {len(replay['runs'])} x {replay['runs'][0]['events']:,}"
                )
            ),
            "peer": (
                "-"
                if peer_on is None or peer_off is None
                else (
                    f"eventsourcing ProjectionRunner {peer_on['events_per_s']:,} /"
                    f" {peer_off['events_per_s']:,} events/s at synchronous_commit on / off"
                    f" ({projector['ratio_synchronous_commit_on']}x /"  # type: ignore[index]
                    f" {projector['ratio_synchronous_commit_off']}x)"  # type: ignore[index]
                )
            ),
            "met": _met(None if replay is None else replay["median_events_per_s"] >= 40_000),
        }
    )
    return out


def markdown(table: list[dict[str, str]]) -> str:
    lines = [
        "| measure | target | measured | peer, same run | met? |",
        "|---|---|---|---|---|",
    ]
    for row in table:
        cells = [row[k] for k in ("measure", "target", "measured", "peer", "met")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="", help="results files' name prefix")
    args = parser.parse_args()
    table = rows(args.prefix)
    machines = {}
    for name in ("write_path", "projector", "sla", "sla_kafka"):
        data = _load(f"{args.prefix}{name}")
        if data is not None:
            machines[name] = data.get("machine") or data.get("environment")
    (RESULTS / f"{args.prefix}targets.json").write_text(
        json.dumps({"targets": table, "machines": machines}, indent=1, ensure_ascii=False) + "\n"
    )
    print(markdown(table))


if __name__ == "__main__":
    main()
