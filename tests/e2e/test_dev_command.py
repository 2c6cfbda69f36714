"""`tierline dev` as a user runs it: starts, answers, stops on Ctrl-C cleanly, keeps its data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tierline.devstack.process import free_port

KEY = "tl_dev_command_test_key"


def call(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Authorization": f"Bearer {KEY}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def descendants(pid: int) -> set[int]:
    """Live (non-zombie) processes whose ancestry includes pid."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def start_dev(data_dir: Path, port: int) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    env = {**os.environ, "TIERLINE_BOOTSTRAP_ADMIN_KEY": KEY, "TIERLINE_LOG_LEVEL": "WARNING"}
    (data_dir / "dev.json").unlink(missing_ok=True)
    log = open(data_dir.parent / f"dev-{port}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tierline.cli",
            "dev",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    for _ in range(600):
        if (data_dir / "dev.json").exists():
            return proc, json.loads((data_dir / "dev.json").read_text())
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    pytest.fail((data_dir.parent / f"dev-{port}.log").read_text()[-3000:])


def stop_dev(proc: subprocess.Popen[bytes]) -> None:
    children = descendants(proc.pid)
    assert children, "the dev stack should have PostgreSQL and the broker as children"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    time.sleep(0.5)
    left = [
        pid
        for pid in children
        if Path(f"/proc/{pid}").exists()
        and (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z")
    ]
    assert not left, f"processes left behind: {left}"


def test_dev_starts_stops_cleanly_and_keeps_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    proc, info = start_dev(data_dir, port)
    try:
        assert set(info) >= {"api_url", "database_url", "kafka_bootstrap"}
        api = info["api_url"]
        assert call(f"{api}/healthz")["status"] == "ok"
        assert call(f"{api}/readyz")["checks"] == {"postgres": "ok", "kafka": "ok"}
        call(f"{api}/v1/vendors", "POST", {"id": "acme", "name": "Acme"})
        issue = call(
            f"{api}/v1/issues",
            "POST",
            {"vendor_id": "acme", "title": "kept", "category": "quality", "priority": "P3"},
        )
        call(f"{api}/v1/issues/{issue['id']}/acknowledge", "POST", {})
    finally:
        stop_dev(proc)
    assert not (data_dir / "dev.json").exists()

    proc, info = start_dev(data_dir, port)
    try:
        again = call(f"{info['api_url']}/v1/issues/{issue['id']}")
        assert again["status"] == "acknowledged" and again["version"] == 2
        history = call(f"{info['api_url']}/v1/issues/{issue['id']}/events")["items"]
        assert [e["sequence"] for e in history] == ["1", "2"]
    finally:
        stop_dev(proc)
