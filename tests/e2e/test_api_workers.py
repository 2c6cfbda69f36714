"""`tierline api --workers 2`: two processes answer on one port; SIGTERM or Ctrl-C stops all."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_dev_command import descendants
from tests.fixtures.stack import TEST_SECRET_KEY
from tierline.devstack.process import free_port


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _server_socket_inodes(port: int, client_port: int) -> set[str]:
    """Inodes of the server-side sockets of the connection from client_port to port."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == client_port:
            inodes.add(fields[9])
    return inodes


def _owner(pids: set[int], inodes: set[str]) -> int | None:
    """Which of pids holds one of these sockets open."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                try:
                    if os.readlink(fd) in wanted:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


def _answering_worker(port: int, workers: set[int]) -> int | None:
    """Make one request on a fresh connection; the worker process whose socket served it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        # Kept alive: the server side of this connection is still open in the worker.
        client_port = conn.sock.getsockname()[1]
        return _owner(workers, _server_socket_inodes(port, client_port))
    finally:
        conn.close()


def api_env(database_url: str, port: int, **extra: str) -> dict[str, str]:
    """The environment of a `tierline api` subprocess on the test database."""
    return {
        **os.environ,
        "TIERLINE_DATABASE_URL": database_url,
        "TIERLINE_API_PORT": str(port),
        "TIERLINE_SECRET_KEY": TEST_SECRET_KEY,
        "PYTHONPATH": os.pathsep.join(sys.path),
        **extra,
    }


@pytest.mark.postgres
@pytest.mark.parametrize(
    "how", ["sigterm to the parent", "ctrl-c to the process group", "sigkill to the parent"]
)
def test_two_workers_share_the_port_and_stop_cleanly(
    database_url: str, tmp_path: Path, how: str
) -> None:
    port = free_port()
    env = api_env(database_url, port, TIERLINE_LOG_LEVEL="INFO")
    log = tmp_path / "api.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tierline.cli", "api", "--workers", "2"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        workers: set[int] = set()
        while len(workers) < 2 or log.read_text().count('"api_listening"') < 2:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            workers = descendants(proc.pid)
            time.sleep(0.1)
        assert len(workers) == 2, workers

        answered: set[int] = set()
        for _ in range(200):
            owner = _answering_worker(port, workers)
            assert owner is not None, "no worker holds the connection"
            answered.add(owner)
            if answered == workers:
                break
        assert answered == workers
    finally:
        if proc.poll() is None and how.startswith("sigterm"):
            proc.send_signal(signal.SIGTERM)
        elif proc.poll() is None and how.startswith("sigkill"):
            proc.kill()  # no clean-up in the parent: the kernel kills the workers (PDEATHSIG)
        elif proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        code = proc.wait(timeout=40)
    time.sleep(0.5)
    assert not [pid for pid in workers if _alive(pid)], "workers left behind"
    if how.startswith("sigkill"):
        return
    assert code == 0, log.read_text()[-3000:]
    assert '"api_workers_stopped"' in log.read_text()


@pytest.mark.postgres
def test_a_worker_that_exits_is_reported_and_stops_the_rest(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = api_env(database_url, port, TIERLINE_API_WORKERS="2")
    log = tmp_path / "api.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tierline.cli", "api"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while log.read_text().count('"api_listening"') < 2:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        workers = descendants(proc.pid)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        code = proc.wait(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 1
    text = log.read_text()
    assert '"api_worker_exited"' in text and str(victim) in text
    time.sleep(0.5)
    assert not [pid for pid in workers if _alive(pid)], "workers left behind"
