"""`tierline api`: serve the HTTP API until stopped."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from tierline.api.app import create_app
from tierline.api.hardening import HANDLER_ARGS, ApiRunner
from tierline.config import Settings

log = structlog.get_logger(__name__)


async def run_api(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the HTTP API until stopped."""
    runner = ApiRunner(create_app(settings), access_log=None, handle_signals=False, **HANDLER_ARGS)
    await runner.setup()
    site = web.TCPSite(runner, settings.api_host, settings.api_port, reuse_address=True)
    await site.start()
    log.info("api_listening", host=settings.api_host, port=settings.api_port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
