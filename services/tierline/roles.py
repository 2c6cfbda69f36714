"""Run roles side by side in one process: migrate, install the secret box, then each role."""

from __future__ import annotations

import asyncio

import asyncpg
import structlog
from aiohttp import web

from tierline import secretbox
from tierline.bootstrap import ROLES, Role
from tierline.config import Settings
from tierline.gcpause import settle_later
from tierline.store.migrate import migrate_url

log = structlog.get_logger(__name__)

# Roles that write or read webhook signing secrets, which are encrypted at rest (ADR 0007).
NEEDS_SECRET_KEY = frozenset({"api", "webhooks"})


def available_roles() -> dict[str, Role]:
    """Every role this build can run, by name (see `tierline.bootstrap`)."""
    return dict(ROLES)


async def _run(role: Role, settings: Settings, stop: asyncio.Event) -> None:
    await role(settings, stop)


async def serve_metrics(settings: Settings, stop: asyncio.Event) -> None:
    """/metrics and /healthz for a process that does not run the API."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def metrics(_: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, settings.api_host, settings.metrics_port, reuse_address=True).start()
    log.info("metrics_listening", port=settings.metrics_port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def install_secret_box(settings: Settings, names: list[str]) -> secretbox.SecretBox | None:
    """Install the box of TIERLINE_SECRET_KEY when a role needs it.

    Raises SecretKeyError (reported in one line by the command line) when the key is missing or
    malformed, before anything starts.
    """
    if NEEDS_SECRET_KEY.isdisjoint(names):
        return None
    box = secretbox.SecretBox.from_setting(settings.secret_key)
    secretbox.install(box)
    return box


async def seal_plaintext_secrets(database_url: str, box: secretbox.SecretBox) -> int:
    """Encrypt webhook secrets stored before encryption at rest; how many rows changed."""
    from tierline.webhooks.subscriptions import seal_plaintext_secrets as seal

    conn = await asyncpg.connect(database_url)
    try:
        sealed = await seal(conn, box)
    finally:
        await conn.close()
    if sealed:
        log.info("webhook_secrets_sealed", count=sealed, reason="plaintext found at start")
    return sealed


async def run_roles(settings: Settings, names: list[str], stop: asyncio.Event) -> None:
    """Migrate, then run the named roles side by side; one failing stops them all."""
    box = install_secret_box(settings, names)
    await migrate_url(settings.database_url)
    if box is not None:
        await seal_plaintext_secrets(settings.database_url, box)
    tasks: list[asyncio.Task[None]] = [
        asyncio.create_task(_run(ROLES[name], settings, stop), name=name) for name in names
    ]
    if "api" not in names and settings.metrics_port:
        tasks.append(asyncio.create_task(serve_metrics(settings, stop), name="metrics"))
    # The API says when it listens; without it, the roles get a while to start.
    settle = None if "api" in names else settle_later()
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise task.exception()  # type: ignore[misc]
        await asyncio.gather(*tasks)
    finally:
        if settle is not None:
            settle.cancel()
