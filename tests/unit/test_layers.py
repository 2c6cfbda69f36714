"""The layering holds: the domain does no I/O, and the service layer knows no HTTP."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tierline

PACKAGE = Path(tierline.__file__).parent
# What each inner layer must never import (nor anything below these names).
FORBIDDEN = {
    "domain": ("aiohttp", "asyncpg", "aiokafka", "tierline.api", "tierline.store",
               "tierline.service_layer", "tierline.eventlog"),
    "service_layer": ("aiohttp", "tierline.api", "aiokafka", "tierline.eventlog"),
}  # fmt: skip


def imported_modules(source: str, package: str) -> set[str]:
    """Every module a file of `package` imports, absolute names (relative imports resolved)."""
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_inner_layers_import_nothing_of_the_outer_ones(layer: str) -> None:
    files = sorted((PACKAGE / layer).glob("*.py"))
    assert files
    broken = [
        f"{path.name} imports {module}"
        for path in files
        for module in sorted(imported_modules(path.read_text(), f"tierline.{layer}"))
        if any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN[layer])
    ]
    assert not broken, broken


def test_the_checker_sees_forbidden_imports_in_every_form() -> None:
    source = "import aiohttp\nfrom tierline.api import registry\nfrom ..store import pool\n"
    found = imported_modules(source, "tierline.service_layer")
    assert {"aiohttp", "tierline.api", "tierline.store"} <= found
