"""Keyset pages for the lists of webhooks, inbound sources and their delivery logs.

A cursor is opaque to clients: the (time, id) of the last item, base64 of JSON. Lists are read
one item beyond the limit, which tells whether another page exists.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web

from tierline.api.problems import Problem
from tierline.api.registry import Query, principal, query_int

T = TypeVar("T")
MAX_LIMIT = 500
LIMIT_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100}
PAGE_QUERY: dict[str, str | Query] = {
    "limit": Query("page size", LIMIT_SCHEMA),
    "cursor": "next_cursor of the previous page",
}
# Lists a vendor key sees only its own part of; others may filter by vendor.
VENDOR_PAGE_QUERY: dict[str, str | Query] = {"vendor_id": "only this vendor's", **PAGE_QUERY}


def encode_cursor(created_at: datetime, item_id: uuid.UUID) -> str:
    """An opaque keyset cursor."""
    raw = json.dumps([created_at.isoformat(), str(item_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(request: web.Request) -> tuple[datetime, uuid.UUID] | None:
    """The `cursor` query parameter, or a 422 problem when it is not one of ours."""
    raw = request.query.get("cursor")
    if not raw:
        return None
    try:
        created, item = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        return datetime.fromisoformat(created), uuid.UUID(item)
    except (ValueError, TypeError):
        raise Problem(
            422,
            "validation-failed",
            "cursor is not valid",
            errors=[{"pointer": "#/query/cursor", "field": "cursor", "detail": "invalid"}],
        ) from None


def page_limit(request: web.Request) -> int:
    """The `limit` query parameter (1 to MAX_LIMIT, default 100)."""
    return query_int(request, "limit", 100, 1, MAX_LIMIT)


def listed_vendor(request: web.Request) -> str | None:
    """The vendor a list is narrowed to: a vendor key's own, whatever `vendor_id` asks."""
    who = principal(request)
    return who.vendor_id if who.role == "vendor" else request.query.get("vendor_id")


async def vendor_page(
    request: web.Request,
    conn: Any,
    lister: Callable[..., Awaitable[list[T]]],
    position: Callable[[T], tuple[datetime, uuid.UUID]],
) -> tuple[list[T], str | None]:
    """One page of a list a vendor key sees only its own part of, and the next page's cursor.

    `lister(conn, vendor_id=..., after=..., limit=...)` is the store's keyset query.
    """
    limit = page_limit(request)
    found = await lister(
        conn, vendor_id=listed_vendor(request), after=decode_cursor(request), limit=limit + 1
    )
    return cut_page(found, limit, position)


def cut_page(
    found: list[T], limit: int, position: Callable[[T], tuple[datetime, uuid.UUID]]
) -> tuple[list[T], str | None]:
    """The first `limit` items of a list read one beyond it, and the next page's cursor."""
    if len(found) <= limit:
        return found, None
    page = found[:limit]
    return page, encode_cursor(*position(page[-1]))
