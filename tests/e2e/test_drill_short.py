"""The short fault drill of the production shape, in CI (`make drill` runs the full one).

A three-node Apache Kafka cluster (replication 3, min ISR 2), PostgreSQL, and two processes of
each role, under a fixed command load; the partition leader broker is SIGKILLed and restarted,
the active relay and a projector are SIGKILLed and restarted, PostgreSQL restarts fast. The
drill then checks every invariant (bench/drill_checks.py) and exits non-zero if one fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.apache_kafka import java_and_maven_available

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.drill, pytest.mark.kafka, pytest.mark.postgres]


@pytest.mark.timeout(600)
def test_short_drill_keeps_every_invariant(tmp_path: Path) -> None:
    reason = java_and_maven_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the drill needs Apache Kafka in CI: {reason}")
        pytest.skip(reason)
    out = tmp_path / "drill.json"
    command = ["--profile", "short", "--out", str(out), "--keep", str(tmp_path / "drill")]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.drill", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    tail = proc.stderr[-6000:]
    assert out.is_file(), f"the drill wrote no result (exit {proc.returncode}):\n{tail}"
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    failed = [c for c in run["invariants"] if not c["passed"]]
    assert not failed, f"invariants failed: {failed}\n{tail}"
    names = " ".join(c["name"] for c in run["invariants"])
    for invariant in ("event store", "GET /v1/issues", "read models", "replay", "breach"):
        assert invariant in names, f"the drill did not check {invariant!r}"
    faults = [f["fault"] for f in run["fault_results"]]
    assert faults == ["broker-kill", "role-kill", "role-kill", "pg-restart"], faults
    assert all(f["recovered_s"] is not None for f in run["fault_results"]), run["fault_results"]
    assert run["summary"]["accepted_2xx"] > 0
    assert proc.returncode == 0, tail
