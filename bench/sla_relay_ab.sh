#!/usr/bin/env bash
# Interleaved A/B of sustained SLA breaches on the topic: a baseline revision's services
# against the working tree's, both measured by the working tree's bench (bench/sla.py).
#
#   bash bench/sla_relay_ab.sh [BASE_REV] [PAIRS] [RATES]       (defaults: 14d5c01 3 620,1000)
#
# Each pair is `python -m bench.sla --only sustained --skip-peer --rate RATES` with the
# baseline's `services/` first on PYTHONPATH (the bench, the role processes it starts and the
# write path it drives all run the baseline's code), then the same with the working tree.
# Writes bench/results/sla_relay_ab_{base,current}_N.json and, from them,
# bench/results/sla_relay_ab.json: each pair's figures per rate and the paired ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-14d5c01}
PAIRS=${2:-3}
RATES=${3:-620,1000}
PY=${PYTHON:-.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# An exported tree, not a worktree: nothing is registered in the repository.
mkdir "$WORK/base" && git archive "$BASE" | tar -x -C "$WORK/base"
for i in $(seq "$PAIRS"); do
  PYTHONPATH="$WORK/base/services:$(pwd)" "$PY" -m bench.sla --only sustained --skip-peer \
    --rate "$RATES" --name "sla_relay_ab_base_$i" > "$WORK/base-$i.log" 2>&1
  "$PY" -m bench.sla --only sustained --skip-peer --rate "$RATES" \
    --name "sla_relay_ab_current_$i" > "$WORK/current-$i.log" 2>&1
done
"$PY" -m bench.sla_ab_summary "$BASE" "$PAIRS"
