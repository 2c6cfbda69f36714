"""`tierline dev`: PostgreSQL and a broker as child processes, then the roles.

The API runs in this process; relay, projector, sla and webhooks run in one child process
(TIERLINE_DEV_PROCESSES=two, the default), each in its own (per-role), or in this process too
(one); devstack/role_processes.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import asyncpg
import structlog

from tierline.config import Settings
from tierline.devstack.postgres import PostgresServer
from tierline.devstack.process import free_port
from tierline.devstack.role_processes import (
    BACKGROUND_ROLES,
    GROUPS,
    RoleExited,
    RoleProcesses,
)
from tierline.devstack.secret_key import dev_secret_key
from tierline.devstack.tansu import TansuBroker
from tierline.eventlog.kafka import TANSU_FETCH_MAX_WAIT_MS, TANSU_PARTITIONS, ensure_topic
from tierline.logs import configure_logging
from tierline.store.api_keys import create_api_key, find_api_key, key_was_revoked, new_key
from tierline.store.migrate import migrate_url
from tierline.store.pool import create_pool

log = structlog.get_logger(__name__)

DATABASE = "tierline"


async def _ensure_database(admin_dsn: str) -> str:
    """Create the application database once; returns its URL."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()
    return admin_dsn.rsplit("/", 1)[0] + f"/{DATABASE}"


async def _admin_key(settings: Settings, data_dir: Path) -> str | None:
    """The bootstrap admin key: from the environment, or made once and kept in the data dir.

    None when that key was revoked through the API: the stack still starts, and says how to
    make a new one, because a data directory must never become unusable.
    """
    key_file = data_dir / "admin.key"
    key = settings.bootstrap_admin_key
    if key is None and key_file.exists():
        key = key_file.read_text().strip() or None
    if key is None:
        key = new_key()
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        if await find_api_key(pool, key) is not None:
            return key
        if await key_was_revoked(pool, key):
            print(
                f"  The bootstrap admin key ({key_file}) was revoked through the API; "
                "make a new one with: tierline keys create --role admin",
                file=sys.stderr,
            )
            return None
        await create_api_key(pool, name="bootstrap-admin", role="admin", key=key)
    finally:
        await pool.close()
    return key


def _banner(settings: Settings, key: str | None, started: float, data_dir: Path) -> None:
    """What a newcomer needs, on stdout, apart from the logs (which go to stderr and files)."""
    url = f"http://{settings.api_host}:{settings.api_port}"
    shown = key if key is not None else "(revoked: tierline keys create --role admin)"
    example = key if key is not None else "<admin key>"
    print(
        "\n"
        f"  Tierline is running ({time.monotonic() - started:.1f}s)\n"
        f"  API        {url}   (OpenAPI: {url}/openapi.json)\n"
        f"  Board      {url}/board/   (sign in with the admin key)\n"
        f"  Admin key  {shown}\n"
        f"  Try        curl -H 'Authorization: Bearer {example}' {url}/v1/vendors\n"
        f"  Data       {data_dir}  (kept across restarts)\n"
        f"  Logs       {data_dir / 'logs'}  (warnings and errors also here)\n"
        "  Stop       Ctrl-C\n",
        file=sys.stdout,
        flush=True,
    )


async def run_dev(settings: Settings, *, demo: bool) -> int:
    """Run the embedded stack until Ctrl-C or SIGTERM; every child is stopped on the way out."""
    started = time.monotonic()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    configure_logging(settings.log_level, settings.log_format, file=logs / "tierline.log")
    # Child output goes to files: the terminal is for the banner and for what needs a look.
    postgres = PostgresServer(data_dir / "pg", forward_logs=False, log_file=logs / "postgres.log")
    # A fresh cluster id per start tells the relay and consumers that the in-memory log is new.
    broker = TansuBroker(
        cluster_id=f"tierline-dev-{uuid.uuid4().hex[:12]}",
        forward_logs=False,
        log_file=logs / "tansu.log",
    )
    try:
        await asyncio.gather(asyncio.to_thread(postgres.start), asyncio.to_thread(broker.start))
        database_url = await _ensure_database(postgres.dsn)
        update: dict[str, object] = {
            # The roles talk over the Unix socket when there is one; dev.json and the banner
            # give the TCP URL (psql, Grafana, tests on another user).
            "database_url": postgres.socket_url(database_url) or database_url,
            "kafka_bootstrap": broker.bootstrap,
        }
        update |= tansu_settings(os.environ)
        if settings.api_port == 0:
            update["api_port"] = free_port()
        if "TIERLINE_WEBHOOKS_ALLOW_PRIVATE_TARGETS" not in os.environ:
            # A laptop's receivers live on loopback; production keeps the SSRF guard on.
            update["webhooks_allow_private_targets"] = True
        update["secret_key"] = dev_secret_key(settings, data_dir)
        settings = settings.model_copy(update=update)
        await migrate_url(database_url)
        await ensure_topic(broker.bootstrap, settings.kafka_topic, settings.kafka_partitions)
        key = await _admin_key(settings, data_dir)
        if demo:
            from tierline.devstack.demo import VENDORS
            from tierline.devstack.demo_history import seed_history

            # Before the roles start: the SLA engine must not race the backdated breaches.
            await seed_history(database_url, VENDORS)
        try:
            return await _serve(settings, key, demo, stop, started, data_dir, database_url)
        except RoleExited as exc:
            print(f"tierline dev: {exc}", file=sys.stderr)
            return 1
    finally:
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(postgres.stop)
        (data_dir / "dev.json").unlink(missing_ok=True)


def tansu_settings(environ: Mapping[str, str]) -> dict[str, object]:
    """The settings `tierline dev` changes for Tansu, unless the environment sets them."""
    update: dict[str, object] = {}
    if "TIERLINE_KAFKA_IDEMPOTENCE" not in environ:
        # Tansu refuses producer ids; probing it logs a harmless but alarming ERROR.
        update["kafka_idempotence"] = "false"
    if "TIERLINE_CONSUMER_FETCH_MAX_WAIT_MS" not in environ:
        # Tansu answers a waiting fetch only after about half of this, however soon a
        # record arrives (eventlog/kafka.py): the default 500 ms made every event late.
        update["consumer_fetch_max_wait_ms"] = TANSU_FETCH_MAX_WAIT_MS
    if "TIERLINE_KAFKA_PARTITIONS" not in environ:
        # One consumer per role: partitions add Tansu work, not parallelism (ADR 0016).
        update["kafka_partitions"] = TANSU_PARTITIONS
    return update


async def _serve(
    settings: Settings,
    key: str | None,
    demo: bool,
    stop: asyncio.Event,
    started: float,
    data_dir: Path,
    database_url: str,
) -> int:
    from tierline.api.app import create_app  # noqa: F401  (fail early on import errors)
    from tierline.roles import available_roles, run_roles

    children: RoleProcesses | None = None
    roles: asyncio.Task[None] | None = None
    names = list(available_roles())
    groups = GROUPS[settings.dev_processes]
    if groups:
        children = RoleProcesses(settings, data_dir / "logs" / "tierline.log", groups)
        names = [name for name in names if name not in BACKGROUND_ROLES]
    try:
        if children is not None:
            children.start()
        roles = asyncio.create_task(run_roles(settings, names, stop))
        if children is not None:
            roles = asyncio.create_task(_with_children(roles, children, stop))
        api_url = f"http://{settings.api_host}:{settings.api_port}"
        if not await _wait_http(f"{api_url}/readyz", roles, stop):
            print("  Stopped before the stack was ready.", file=sys.stderr)
            return 0
        if children is not None and not await children.wait_ready(stop):
            print("  Stopped before the stack was ready.", file=sys.stderr)
            await roles
            return 0
        if demo and key is not None:
            from tierline.devstack.demo import seed_demo

            await seed_demo(api_url, key)
        write_atomically(
            data_dir / "dev.json",
            json.dumps(
                {
                    "api_url": api_url,
                    "database_url": database_url,
                    "kafka_bootstrap": settings.kafka_bootstrap,
                    "pid": os.getpid(),
                    # Where each process serves its metrics (the API's include its own only).
                    "metrics": {
                        "api": f"{api_url}/metrics",
                        **(children.metrics if children is not None else {}),
                    },
                },
                indent=2,
            ),
        )
        _banner(settings, key, started, data_dir)
        await roles
        return 0
    finally:
        if roles is not None and not roles.done():
            stop.set()
            await asyncio.gather(roles, return_exceptions=True)
        if children is not None:
            await asyncio.to_thread(children.stop)


async def _with_children(
    roles: asyncio.Task[None], children: RoleProcesses, stop: asyncio.Event
) -> None:
    """The in-process roles and the children as one task: either failing stops both."""
    watch = asyncio.create_task(children.watch(stop))
    try:
        done, _ = await asyncio.wait({roles, watch}, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                stop.set()
                await asyncio.gather(roles, watch, return_exceptions=True)
                raise task.exception()  # type: ignore[misc]
        await asyncio.gather(roles, watch)
    finally:
        watch.cancel()


async def _wait_http(
    url: str, roles: asyncio.Task[None], stop: asyncio.Event, timeout: float = 60.0
) -> bool:
    """True once `url` answers 200; False when Ctrl-C stopped the roles while starting."""
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if roles.done():
                roles.result()  # a role that failed says why
                if stop.is_set():
                    return False
                raise RuntimeError("roles stopped before the API was ready")
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def write_atomically(path: Path, text: str) -> None:
    """Write `path` so that readers see the old file or the whole new one, never a part.

    Tests and `tierline` commands poll for dev.json while `tierline dev` starts; a plain write
    let one of them read the file empty (a CI run saw it).
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
