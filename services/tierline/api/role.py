"""`tierline api`: serve the HTTP API until stopped, in one process or in N worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from functools import partial

import structlog
from aiohttp import web

from tierline.api.app import create_app
from tierline.api.hardening import HANDLER_ARGS, ApiRunner
from tierline.config import Settings
from tierline.devstack.process import _die_with_parent
from tierline.gcpause import settled

log = structlog.get_logger(__name__)

# How long stopping workers get before SIGKILL, and how often the parent looks at them.
WORKER_STOP_SECONDS = 20.0
_WORKER_POLL_SECONDS = 0.2


async def run_api(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the HTTP API until stopped.

    The workers of `tierline api --workers N` open the port with SO_REUSEPORT, so the kernel
    spreads new connections over them; a lone API does not, so a second one started by mistake
    on the same port fails with "address in use" instead of silently sharing it.
    """
    runner = ApiRunner(create_app(settings), access_log=None, handle_signals=False, **HANDLER_ARGS)
    await runner.setup()
    site = web.TCPSite(
        runner,
        settings.api_host,
        settings.api_port,
        reuse_address=True,
        reuse_port=settings.api_reuse_port,
    )
    await site.start()
    log.info("api_listening", host=settings.api_host, port=settings.api_port, pid=os.getpid())
    settled()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _start_worker(number: int) -> subprocess.Popen[bytes]:
    """`tierline api --workers 1` sharing our stdout/stderr; the kernel kills it if we die."""
    env = {**os.environ, "TIERLINE_API_WORKERS": "1", "TIERLINE_API_REUSE_PORT": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierline.cli", "api", "--workers", "1"],
        stdin=subprocess.DEVNULL,
        env=env,
        preexec_fn=partial(_die_with_parent, os.getpid()),
    )
    log.info("api_worker_started", worker=number, pid=proc.pid)
    return proc


def _stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every live worker, wait for them, SIGKILL whoever outlives WORKER_STOP_SECONDS."""
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in workers:
        try:
            proc.wait(WORKER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            log.warning("api_worker_killed", pid=proc.pid, timeout=WORKER_STOP_SECONDS)
            proc.kill()
            proc.wait()


async def supervise_api_workers(settings: Settings, workers: int, stop: asyncio.Event) -> int:
    """Run `workers` API processes on one port until `stop` is set or one of them exits.

    The caller has migrated the database and checked the secret key, so a worker that cannot
    start fails on its own problem. A worker that exits is reported and stops the others: the
    command exits non-zero and whatever supervises it (systemd, Kubernetes) restarts it whole.
    Children get PR_SET_PDEATHSIG, so a parent killed with SIGKILL leaves none behind.
    """
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for number in range(1, workers + 1):
            procs.append(_start_worker(number))
        log.info(
            "api_workers_running", workers=workers, host=settings.api_host, port=settings.api_port
        )
        while not stop.is_set():
            exited = [proc for proc in procs if proc.poll() is not None]
            if exited:
                for proc in exited:
                    log.error("api_worker_exited", pid=proc.pid, code=proc.returncode)
                return 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _WORKER_POLL_SECONDS)
        return 0
    finally:
        await asyncio.to_thread(_stop_workers, procs)
        log.info("api_workers_stopped", codes=[proc.returncode for proc in procs])
