"""Route tables contributed by later capabilities (read models, webhooks), in one place."""

from __future__ import annotations

from tierline.api.registry import RouteTable


def route_tables() -> list[RouteTable]:
    """Additional route tables to install."""
    return []
