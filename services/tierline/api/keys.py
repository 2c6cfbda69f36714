"""Typed application keys for what the app holds."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from tierline.api.issue_queue import IssueQueue
from tierline.api.key_cache import ApiKeyCache
from tierline.api.ratelimit import RateLimiter
from tierline.config import Settings
from tierline.inbound.receive import InboundReceiver
from tierline.service_layer.issues import IssueService
from tierline.service_layer.reference import ReferenceData
from tierline.service_layer.unit_of_work import UnitOfWorkFactory
from tierline.store.unit_of_work import PostgresUnitOfWorkFactory

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
REFERENCE = web.AppKey("reference", ReferenceData)
ISSUES = web.AppKey("issues", IssueService)
UNITS = web.AppKey("units", PostgresUnitOfWorkFactory)
# Issue commands: the one-statement units of work (or the locking ones), queued per issue.
COMMAND_UNITS: web.AppKey[UnitOfWorkFactory] = web.AppKey("command_units")
ISSUE_QUEUE = web.AppKey("issue_queue", IssueQueue)
OPENAPI = web.AppKey("openapi", dict[str, Any])
KAFKA_BOOTSTRAP = web.AppKey("kafka_bootstrap", str)
KEY_CACHE = web.AppKey("key_cache", ApiKeyCache)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
INBOUND = web.AppKey("inbound", InboundReceiver)
