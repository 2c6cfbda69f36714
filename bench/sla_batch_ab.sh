#!/usr/bin/env bash
# A/B of the SLA burst on this machine: a baseline revision against the working tree.
#
#   bash bench/sla_batch_ab.sh [BASE_REV] [RUNS] [CLOCKS]      (OUT=bench/results/NAME.json)
#
# BASE_REV defaults to ca09461 (the scanner with one transaction per command, before the batch
# form of the write path). Each run is `python -m bench.sla --only burst --skip-peer` with
# CLOCKS clocks due within 1 s, alternating base and current so that machine noise falls on
# both. Writes OUT (default bench/results/sla_batch_ab.json) with every run, the medians and
# the ratio of each pair (current / the base run just before it).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-ca09461}
RUNS=${2:-3}
CLOCKS=${3:-20000}
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-bench/results/sla_batch_ab.json}
ROOT=$(pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# An exported tree, not a worktree: nothing is registered in the repository.
mkdir "$WORK/base" && git archive "$BASE" | tar -x -C "$WORK/base"
cp bench/results/sla.json "$WORK/sla.committed.json" 2>/dev/null || true
for i in $(seq "$RUNS"); do
  (cd "$WORK/base" && PYTHONPATH="$WORK/base/services:$WORK/base" "$ROOT/$PY" -m bench.sla \
     --only burst --skip-peer --clocks "$CLOCKS" > "$WORK/base-$i.log" 2>&1)
  cp "$WORK/base/bench/results/sla.json" "$WORK/base-$i.json"
  "$PY" -m bench.sla --only burst --skip-peer --clocks "$CLOCKS" > "$WORK/current-$i.log" 2>&1
  cp bench/results/sla.json "$WORK/current-$i.json"
done
[ -f "$WORK/sla.committed.json" ] && cp "$WORK/sla.committed.json" bench/results/sla.json
"$PY" - "$WORK" "$BASE" "$RUNS" "$OUT" <<'EOF'
import json, statistics, subprocess, sys
from pathlib import Path

work, base, runs, out = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
keys = ("all_done_s", "recorded_p50_ms", "recorded_p99_ms", "kafka_p99_ms", "cpu_ms_per_breach")

def figures(path: Path) -> dict[str, float]:
    data = json.loads(path.read_text())
    run = next(r for r in data["runs"] if r["engine"] == "tierline")
    return {
        "all_done_s": run["all_on_kafka_after_first_due_s"],
        "recorded_p50_ms": run["recorded_lateness"]["p50_ms"],
        "recorded_p99_ms": run["recorded_lateness"]["p99_ms"],
        "kafka_p99_ms": run["kafka_lateness"]["p99_ms"],
        "cpu_ms_per_breach": run["cpu_ms_per_breach"],
        "load_average_1m": run.get("load_average_1m"),
    }

sides = {}
for side in ("base", "current"):
    each = [figures(work / f"{side}-{i}.json") for i in range(1, runs + 1)]
    sides[side] = {"runs": each, "median": {k: statistics.median(r[k] for r in each) for k in keys}}
head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
result = {
    "base_rev": base,
    "current_rev": head.stdout.strip(),
    "scenario": json.loads((work / "current-1.json").read_text())["args"],
    "machine": json.loads((work / "current-1.json").read_text())["machine"],
    **sides,
    "ratio_current_over_base": {
        k: round(sides["current"]["median"][k] / sides["base"]["median"][k], 3) for k in keys
    },
    "paired_ratios": [
        {k: round(c[k] / b[k], 3) for k in keys}
        for b, c in zip(sides["base"]["runs"], sides["current"]["runs"])
    ],
}
out.write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps({"median": {s: sides[s]["median"] for s in sides}, "ratio": result["ratio_current_over_base"]}, indent=2))
EOF
