"""`tierline dev` as a user runs it: starts, answers, stops on Ctrl-C cleanly, keeps its data."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tierline.config import Settings
from tierline.devstack.process import free_port
from tierline.eventlog.kafka import TANSU_PARTITIONS
from tierline.projector.logreader import topic_partitions

KEY = "tl_dev_command_test_key"


def call(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
    """A call with the bootstrap key that must succeed; its JSON body."""
    status, answer = _call_with(KEY, url, method, body)
    assert 200 <= status < 300, (status, answer)
    return answer


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


def start_dev(
    data_dir: Path, port: int, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    env = {
        **os.environ,
        "TIERLINE_BOOTSTRAP_ADMIN_KEY": KEY,
        "TIERLINE_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
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


@pytest.mark.postgres
@pytest.mark.kafka
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
        # The roles' pooled connections use the Unix socket (cheaper round trips); dev.json
        # gives the TCP URL that psql, Grafana and other users can take.
        assert info["database_url"].startswith("postgresql://tierline@127.0.0.1:")
        assert _client_addresses(info["database_url"]) == {None}
        # Each role is one consumer here: the topic has Tansu's partition count (ADR 0016).
        topic = Settings.model_fields["kafka_topic"].default
        partitions = asyncio.run(topic_partitions(info["kafka_bootstrap"], topic))
        assert len(partitions) == TANSU_PARTITIONS
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


def _client_addresses(database_url: str) -> set[str | None]:
    """Client addresses of the roles' connections (None: over the Unix socket)."""

    async def fetch() -> set[str | None]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT host(client_addr) AS addr FROM pg_stat_activity"
                " WHERE application_name = 'tierline' AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        assert rows, "no role connection found"
        return {r["addr"] for r in rows}

    return asyncio.run(fetch())


def _run_dev(
    data_dir: Path, args: list[str], env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], dict[str, Any], Path, Path]:
    """Start `tierline dev` with stdout and stderr kept apart; wait for dev.json."""
    (data_dir / "dev.json").unlink(missing_ok=True)
    out, err = data_dir.parent / "dev.out", data_dir.parent / "dev.err"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierline.cli", "dev", "--data-dir", str(data_dir), *args],
        stdout=out.open("wb"),
        stderr=err.open("wb"),
        env=env,
    )
    for _ in range(600):
        if (data_dir / "dev.json").exists():
            return proc, json.loads((data_dir / "dev.json").read_text()), out, err
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    pytest.fail(err.read_text()[-3000:])


def _call_with(key: str, url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.mark.postgres
@pytest.mark.kafka
def test_dev_survives_a_revoked_bootstrap_key_and_keys_create_recovers(tmp_path: Path) -> None:
    """The trial's lockout: after the API revoked the bootstrap key, dev must still start."""
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERLINE_")}
    # --port 0 picks a free port; the banner goes to stdout, the JSON logs to files.
    proc, info, out, err = _run_dev(data_dir, ["--port", "0"], env)
    try:
        api = info["api_url"]
        assert not api.endswith(":0")
        bootstrap = (data_dir / "admin.key").read_text().strip()
        assert f"Admin key  {bootstrap}" in out.read_text()
        assert bootstrap not in err.read_text()
        assert '"level": "info"' not in err.read_text(), "info logs belong in the log file"
        assert '"level": "info"' in (data_dir / "logs" / "tierline.log").read_text()
        status, other = _call_with(
            bootstrap, f"{api}/v1/api-keys", "POST", {"name": "second", "role": "admin"}
        )
        assert status == 201
        status, keys = _call_with(other["key"], f"{api}/v1/api-keys")
        first_id = next(k["id"] for k in keys["items"] if k["name"] == "bootstrap-admin")
        assert _call_with(other["key"], f"{api}/v1/api-keys/{first_id}", "DELETE")[0] == 204
        assert _call_with(other["key"], f"{api}/v1/api-keys/{other['id']}", "DELETE")[0] == 409
    finally:
        stop_dev(proc)

    # Restart on the same data, port from the environment as `make run` passes it.
    port = free_port()
    proc, info, out, err = _run_dev(data_dir, [], {**env, "TIERLINE_API_PORT": str(port)})
    try:
        assert info["api_url"].endswith(f":{port}")
        revoked_lines = [line for line in err.read_text().splitlines() if "revoked" in line]
        assert len(revoked_lines) == 1, err.read_text()
        assert "tierline keys create --role admin" in revoked_lines[0]
        created = subprocess.run(
            [sys.executable, "-m", "tierline.cli", "keys", "create", "--role", "admin"],
            env={**env, "TIERLINE_DATA_DIR": str(data_dir)},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        new_key = created.stdout.strip()
        assert _call_with(new_key, f"{info['api_url']}/v1/vendors")[0] == 200
        assert _call_with(bootstrap, f"{info['api_url']}/v1/vendors")[0] == 401
    finally:
        stop_dev(proc)


def test_keys_create_without_a_database_says_so_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERLINE_")}
    done = subprocess.run(
        [sys.executable, "-m", "tierline.cli", "keys", "create", "--role", "admin"],
        env={
            **env,
            "TIERLINE_DATA_DIR": str(tmp_path),
            "TIERLINE_DATABASE_URL": f"postgresql://x:hunter2@127.0.0.1:{free_port()}/x",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "cannot reach PostgreSQL" in done.stderr and "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr


def _wait_for(probe: Any, what: str, seconds: float = 60.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.postgres
@pytest.mark.kafka
def test_dev_demo_prints_the_board_and_its_history_fills_every_chart(tmp_path: Path) -> None:
    """`make run`: the banner names the board; weeks of demo history feed each vendor's charts."""
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERLINE_")}
    env["TIERLINE_BOOTSTRAP_ADMIN_KEY"] = KEY
    proc, info, out, _ = _run_dev(data_dir, ["--demo", "--port", "0"], env)
    try:
        api = info["api_url"]
        banner = _wait_for(lambda: "Board" in out.read_text() and out.read_text(), "the banner")
        assert f"Board      {api}/board/" in banner
        with urllib.request.urlopen(f"{api}/board/signin", timeout=10) as resp:
            assert resp.status == 200 and b"API key" in resp.read()

        since = date.today() - timedelta(days=60)

        def figures() -> dict[str, Any] | None:
            cards = {}
            for vendor in ("acme-it", "globex", "initech"):
                card = call(f"{api}/v1/vendors/{vendor}/scorecard?from={since}")
                if card["opened"] < 15:  # the read models are still catching up
                    return None
                cards[vendor] = card
            return cards

        cards = _wait_for(figures, "the demo history in the read models")
        for vendor, card in cards.items():
            weeks = {date.fromisoformat(d["day"]).isocalendar()[:2] for d in card["daily"]}
            assert len(weeks) >= 4, f"{vendor}: history spans {len(weeks)} weeks"
            assert card["breaches"]["total"] > 0 and card["resolved"] > 0, vendor
            assert card["mtta_seconds"] and card["mttr_seconds"], vendor
            assert 0 < card["sla_compliance"] < 1, vendor
            assert {"2", "3"} <= set(card["escalations_by_tier"]), vendor
        issues = len(call(f"{api}/v1/issues?limit=500")["items"])
    finally:
        stop_dev(proc)
    proc, info, _, _ = _run_dev(data_dir, ["--demo", "--port", "0"], env)
    try:
        again = _wait_for(
            lambda: len(call(f"{info['api_url']}/v1/issues?limit=500")["items"]), "issues"
        )
        assert again == issues, "a second start seeded the history again"
    finally:
        stop_dev(proc)


def _metric(url: str, name: str, **labels: str) -> float:
    """The value of one sample in a /metrics page (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def _open_and_wait_listed(api: str) -> str:
    """Open an issue and wait until the projector lists it; its id."""
    call(f"{api}/v1/vendors", "POST", {"id": "acme", "name": "Acme"})
    issue = call(
        f"{api}/v1/issues",
        "POST",
        {"vendor_id": "acme", "title": "listed", "category": "quality", "priority": "P3"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(i["id"] == issue["id"] for i in call(f"{api}/v1/issues")["items"]):
            return str(issue["id"])
        time.sleep(0.2)
    pytest.fail("the opened issue never reached the list")


def _role_pids(dev_pid: int) -> dict[str, int]:
    """The dev stack's role processes by role name."""
    out = {}
    for pid in descendants(dev_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tierline.devstack.role_processes" in argv:
            out[argv[argv.index(b"tierline.devstack.role_processes") + 1].decode()] = pid
    return out


@pytest.mark.postgres
@pytest.mark.kafka
def test_dev_runs_each_background_role_in_its_own_process(tmp_path: Path) -> None:
    """Relay and projector really work from their own processes; a dead one stops the stack."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    proc, info = start_dev(data_dir, free_port(), {"TIERLINE_DEV_PROCESSES": "per-role"})
    try:
        assert set(info["metrics"]) == {"api", "relay", "projector", "sla", "webhooks"}
        assert len(set(info["metrics"].values())) == 5
        pids = _role_pids(proc.pid)
        assert set(pids) == {"relay", "projector", "sla", "webhooks"}
        _open_and_wait_listed(info["api_url"])
        metrics = info["metrics"]
        assert _metric(metrics["relay"], "tierline_relay_events_published_total") >= 1
        applied = "tierline_consumer_events_applied_total"
        assert _metric(metrics["projector"], applied, consumer="projector") >= 1
        # The API process did neither: the work happened in the children.
        assert _metric(metrics["api"], "tierline_relay_events_published_total") == 0
        everything = descendants(proc.pid)
        os.kill(pids["projector"], signal.SIGKILL)
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            stop_dev(proc)
    output = (tmp_path / f"dev-{info['api_url'].rsplit(':', 1)[1]}.log").read_text()
    assert "tierline dev: the projector role exited (code -9)" in output
    assert "Traceback" not in output, output[-3000:]
    time.sleep(0.5)
    left = [pid for pid in everything if Path(f"/proc/{pid}").exists() and _alive(pid)]
    assert not left, f"processes left behind: {left}"
    assert not (data_dir / "dev.json").exists()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.postgres
@pytest.mark.kafka
@pytest.mark.parametrize(
    ("mode", "children", "relay_metrics"),
    [
        ("one", set(), "api"),
        ("two", {"relay,projector,sla,webhooks"}, "relay+projector+sla+webhooks"),
        # Unset: the default is two (bench/README.md, "tierline dev's process layouts").
        (None, {"relay,projector,sla,webhooks"}, "relay+projector+sla+webhooks"),
    ],
)
def test_dev_with_the_roles_together(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str | None,
    children: set[str],
    relay_metrics: str,
) -> None:
    """TIERLINE_DEV_PROCESSES=one|two|unset: the roles share a process, read models follow."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.delenv("TIERLINE_DEV_PROCESSES", raising=False)
    proc, info = start_dev(
        data_dir, free_port(), {"TIERLINE_DEV_PROCESSES": mode} if mode else None
    )
    try:
        assert set(info["metrics"]) == {"api", relay_metrics}
        assert set(_role_pids(proc.pid)) == children
        _open_and_wait_listed(info["api_url"])
        published = _metric(info["metrics"][relay_metrics], "tierline_relay_events_published_total")
        assert published >= 1
    finally:
        stop_dev(proc)
