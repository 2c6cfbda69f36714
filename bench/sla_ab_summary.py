"""Paired figures of `bench/sla_relay_ab.sh`: per rate, base and current side by side, ratios.

`python -m bench.sla_ab_summary BASE_REV PAIRS` reads
bench/results/sla_relay_ab_{base,current}_N.json and writes bench/results/sla_relay_ab.json.
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any

from bench.common import RESULTS, save

# (name, path into a run's result); stages come from the relay's own histograms.
FIGURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("topic_p50_ms", ("kafka_lateness", "p50_ms")),
    ("topic_p99_ms", ("kafka_lateness", "p99_ms")),
    ("decided_p99_ms", ("recorded_lateness", "p99_ms")),
    ("decided_to_sent_p99_ms", ("decided_to_sent", "p99_ms")),
    ("sent_to_read_p99_ms", ("sent_to_read", "p99_ms")),
)


def figures(run: dict[str, Any]) -> dict[str, float]:
    """The compared figures of one scenario run, with the relay's stages and the load."""
    out: dict[str, float] = {}
    for name, path in FIGURES:
        value: Any = run
        for key in path:
            value = value[key]
        out[name] = float(value)
    for stage in run.get("relay_stages", []):
        short = stage["metric"].removeprefix("tierline_relay_").removesuffix("_seconds")
        out[f"relay_{short}_p50_ms"] = stage["p50_ms"]
        out[f"relay_{short}_p99_ms"] = stage["p99_ms"]
    out["cpu_ms_per_breach"] = run["cpu_ms_per_breach"]
    out["load_average_1m"] = round(run["load_average_1m"], 2)
    out["breaches_on_topic"] = run["breaches_on_kafka"]
    return out


def by_scenario(name: str) -> dict[str, dict[str, float]]:
    """Scenario name -> figures, from one saved bench run."""
    data = json.loads((RESULTS / f"{name}.json").read_text())
    return {run["scenario"]: figures(run) for run in data["runs"]}


def main(base_rev: str, pairs: int) -> dict[str, Any]:
    """Pairs side by side per scenario; paired ratios current / base and their median."""
    result: dict[str, Any] = {"base_rev": base_rev, "pairs": pairs, "scenarios": {}}
    for i in range(1, pairs + 1):
        base, current = (
            by_scenario(f"sla_relay_ab_base_{i}"),
            by_scenario(f"sla_relay_ab_current_{i}"),
        )
        for scenario, b in base.items():
            c = current[scenario]
            ratios = {k: round(c[k] / b[k], 3) for k in b if b[k] and k != "breaches_on_topic"}
            entry = result["scenarios"].setdefault(scenario, {"pairs": []})
            entry["pairs"].append({"base": b, "current": c, "ratio": ratios})
    for entry in result["scenarios"].values():
        keys = entry["pairs"][0]["ratio"].keys()
        entry["median_ratio"] = {
            k: round(statistics.median(p["ratio"][k] for p in entry["pairs"]), 3) for k in keys
        }
    print(json.dumps({s: e["median_ratio"] for s, e in result["scenarios"].items()}, indent=2))
    save("sla_relay_ab", result)
    return result


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
