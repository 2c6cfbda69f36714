"""Route tables contributed by the read-model and webhook capabilities, in one place."""

from __future__ import annotations

import importlib
import importlib.util

from tierline.api.registry import RouteTable

EXTENSION_MODULES = ("tierline.projector.api", "tierline.webhooks.api")


def route_tables() -> list[RouteTable]:
    """The `routes` table of every extension module present in this build."""
    tables = []
    for name in EXTENSION_MODULES:
        if importlib.util.find_spec(name.rsplit(".", 1)[0]) is None:
            continue
        if importlib.util.find_spec(name) is not None:
            routes = importlib.import_module(name).routes
            assert isinstance(routes, RouteTable)
            tables.append(routes)
    return tables
