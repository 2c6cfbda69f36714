"""Composition root: every role of the `tierline` command, wired by plain imports.

A role is `run_<name>(settings, stop)`: it opens its own resources and runs until `stop` is
set. The API's routes are wired the same way, in `tierline.api.app.all_routes`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tierline.api.role import run_api
from tierline.config import Settings
from tierline.projector.role import run_projector
from tierline.relay.role import run_relay
from tierline.sla.role import run_sla
from tierline.webhooks.role import run_webhooks

Role = Callable[[Settings, asyncio.Event], Awaitable[None]]

ROLES: dict[str, Role] = {
    "api": run_api,
    "relay": run_relay,
    "projector": run_projector,
    "sla": run_sla,
    "webhooks": run_webhooks,
}
