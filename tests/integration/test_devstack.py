"""The dev stack's real child processes: PostgreSQL, Tansu and the process manager under them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tierline.devstack import ManagedProcess, PostgresServer, TansuBroker, wait_for_tcp

# Tests trade durability for speed: with these, a crash of the OS loses data, and with
# synchronous_commit=off even a killed postmaster loses the last commits (still in WAL buffers).
FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
# fsync=off alone still survives a killed server: commits reach the kernel before returning.
CRASH_SAFE = {**FAST, "synchronous_commit": "on"}


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name, or None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def _gone(pid: int) -> bool:
    """True once the process no longer runs; zombies count as gone (our PID 1 may not reap)."""
    fields = _proc_stat(pid)
    return fields is None or fields[0] == "Z"


def _live(field: int, value: int) -> list[int]:
    """Live processes whose /proc/PID/stat `field` (1 = ppid, 2 = pgrp) equals `value`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[field]) == value:
                found.append(int(entry.name))
    return found


def _group(pgid: int) -> list[int]:
    """Live members of a process group."""
    return _live(2, pgid)


def _postmaster_family(postmaster: int) -> list[int]:
    """The postmaster and its children (each of which runs in a session of its own)."""
    return [postmaster, *_live(1, postmaster)]


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Poll until every pid is gone; return the ones still running at the deadline."""
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if not _gone(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def test_process_keeps_tail_logs_and_stops_its_whole_group(tmp_path: Path) -> None:
    log_file = tmp_path / "demo.log"
    script = "for i in $(seq 1 60); do echo line $i; done; sleep 300 & sleep 300"
    proc = ManagedProcess("demo", ["sh", "-c", script], log_file=log_file, forward=False)
    proc.start()
    assert proc.pid is not None
    deadline = time.monotonic() + 5
    while "line 60" not in proc.tail() and time.monotonic() < deadline:
        time.sleep(0.02)
    members = _group(proc.pid)
    assert len(members) >= 2, "the shell and its background sleep share one group"

    tail = proc.tail().splitlines()
    assert len(tail) == 50
    assert tail[0] == "line 11"
    assert proc.stop(timeout=5) == -signal.SIGTERM
    assert proc.stop() == -signal.SIGTERM, "stop is idempotent"
    assert not proc.alive()
    assert _wait_gone(members) == []
    assert "[demo] line 1\n" in log_file.read_text()


def test_child_outlives_its_spawning_thread_but_not_its_parent() -> None:
    helper = textwrap.dedent(
        """
        import threading, time
        from tierline.devstack import ManagedProcess
        proc = ManagedProcess("sleeper", ["sleep", "300"], forward=False)
        starter = threading.Thread(target=proc.start)
        starter.start()
        starter.join()
        time.sleep(0.3)
        print("PID", proc.pid, proc.alive(), flush=True)
        time.sleep(300)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", helper], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        # Anything else on stdout is structlog's default console output.
        line = next(line for line in parent.stdout if line.startswith("PID "))
        _, pid_text, alive = line.split()
    finally:
        parent.kill()
        parent.wait()
    assert alive == "True", "PDEATHSIG must not fire when the starting thread exits"
    assert _wait_gone([int(pid_text)], timeout=5) == []


def test_wait_for_tcp_reports_a_dead_process() -> None:
    proc = ManagedProcess("doomed", ["sh", "-c", "echo cannot bind; exit 3"], forward=False)
    proc.start()
    with pytest.raises(RuntimeError, match="cannot bind"):
        wait_for_tcp("127.0.0.1", 9, timeout=5, proc=proc)
    assert proc.stop() == 3


@pytest.mark.postgres
async def test_postgres_data_survives_restart(tmp_path: Path) -> None:
    first = PostgresServer(tmp_path / "pg", settings=FAST)
    await asyncio.to_thread(first.start)
    assert first.dsn == f"postgresql://tierline@127.0.0.1:{first.port}/postgres"
    conn = await asyncpg.connect(first.dsn)
    await conn.execute("CREATE TABLE survivors (name text PRIMARY KEY)")
    await conn.execute("INSERT INTO survivors VALUES ('row-1')")
    await conn.close()
    assert first.pid is not None
    members = _postmaster_family(first.pid)
    assert len(members) > 1, "postmaster plus its auxiliary processes"
    await asyncio.to_thread(first.stop)
    assert _wait_gone(members) == []

    second = PostgresServer(tmp_path / "pg", settings=FAST)
    await asyncio.to_thread(second.start)
    try:
        assert second.port == first.port, "the recorded port is reused while free"
        conn = await asyncpg.connect(second.dsn)
        assert await conn.fetchval("SELECT name FROM survivors") == "row-1"
        await conn.close()
    finally:
        await asyncio.to_thread(second.stop)


@pytest.mark.postgres
async def test_postgres_starts_after_its_postmaster_was_killed(tmp_path: Path) -> None:
    crashed = PostgresServer(tmp_path / "pg", settings=CRASH_SAFE)
    await asyncio.to_thread(crashed.start)
    conn = await asyncpg.connect(crashed.dsn)
    await conn.execute("CREATE TABLE survivors (name text)")
    await conn.execute("INSERT INTO survivors VALUES ('committed')")
    postmaster = crashed.pid
    assert postmaster is not None
    old_family = _postmaster_family(postmaster)
    assert len(old_family) > 1

    os.kill(postmaster, signal.SIGKILL)
    assert _wait_gone([postmaster]) == []
    assert (tmp_path / "pg" / "postmaster.pid").exists(), "a stale lock is left behind"

    recovered = PostgresServer(tmp_path / "pg", settings=CRASH_SAFE)
    try:
        await asyncio.to_thread(recovered.start)
        conn2 = await asyncpg.connect(recovered.dsn)
        assert await conn2.fetchval("SELECT name FROM survivors") == "committed"
        await conn2.close()
    finally:
        conn.terminate()
        await asyncio.to_thread(recovered.stop)
        await asyncio.to_thread(crashed.stop)
    assert _wait_gone(old_family) == []
    assert recovered.pid is not None
    assert _live(1, recovered.pid) == []
    assert _gone(recovered.pid)


@pytest.mark.kafka
async def test_tansu_round_trips_a_message() -> None:
    broker = TansuBroker(forward_logs=True)
    await asyncio.to_thread(broker.start)
    pid = broker.pid
    assert pid is not None
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic("devstack", num_partitions=1, replication_factor=1)])
        await admin.close()

        # Tansu does not implement idempotent producers.
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False)
        await producer.start()
        await producer.send_and_wait("devstack", b"hello", key=b"k")
        await producer.stop()

        consumer = AIOKafkaConsumer(
            "devstack", bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), timeout=10)
        finally:
            await consumer.stop()
        assert (record.key, record.value) == (b"k", b"hello")
    finally:
        await asyncio.to_thread(broker.stop)
    assert _wait_gone([pid]) == []
