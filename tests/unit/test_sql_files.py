"""Every adapter's SQL lives in its queries.sql: no dead blocks, no unknown names, no stray SQL."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tierline.projector.tables import LIVE_SCHEMA, REPLAY_SCHEMA
from tierline.sqlfile import FILE_NAME, QueryFileError, UnknownQuery, load_queries, parse_queries

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "services" / "tierline"
SQL_CONSTANT = re.compile(r'= f?r?"""\s*(SELECT|INSERT|UPDATE|DELETE|WITH)', re.IGNORECASE)


def _sql_packages() -> dict[str, Path]:
    return {
        "tierline." + ".".join(path.parent.relative_to(PACKAGE_ROOT).parts): path
        for path in sorted(PACKAGE_ROOT.rglob(FILE_NAME))
    }


def _modules() -> list[Path]:
    return sorted(PACKAGE_ROOT.rglob("*.py"))


def _query_uses(path: Path) -> list[tuple[str, ast.expr]]:
    """(package, key expression) of every `NAME[...]` where NAME = load_queries("package")."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    loaders: dict[str, str] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id == "load_queries"
        ):
            (package,) = node.value.args
            assert isinstance(package, ast.Constant), f"{path}: load_queries needs a literal"
            for target in node.targets:
                assert isinstance(target, ast.Name)
                loaders[target.id] = str(package.value)
    return [
        (loaders[node.value.id], node.slice)
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id in loaders
    ]


def test_every_block_is_used_and_every_used_name_exists() -> None:
    packages = _sql_packages()
    assert set(packages) >= {
        "tierline.store",
        "tierline.projector",
        "tierline.sla",
        "tierline.webhooks",
        "tierline.relay",
        "tierline.eventlog",
    }
    used: dict[str, set[str]] = {package: set() for package in packages}
    for module in _modules():
        for package, key in _query_uses(module):
            assert isinstance(key, ast.Constant) and isinstance(key.value, str), (
                f"{module}: queries are looked up by a literal name"
            )
            assert package in packages, f"{module}: {package} has no {FILE_NAME}"
            used[package].add(key.value)
    for package in packages:
        defined = set(load_queries(package))
        assert used[package] - defined == set(), f"unknown queries of {package}"
        assert defined - used[package] == set(), f"dead queries in {package}/{FILE_NAME}"


def test_no_module_keeps_a_multi_line_sql_constant() -> None:
    # The templates formatted with schema or table names (projector/tables.py, replay.py) are
    # built from one-line strings; any triple-quoted statement belongs in a queries.sql.
    offenders = [
        str(module.relative_to(PACKAGE_ROOT))
        for module in _modules()
        if SQL_CONSTANT.search(module.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_replay_blocks_name_the_schemas_tables_py_defines() -> None:
    queries = load_queries("tierline.projector")
    for name in ("carry_list_seq", "number_new_issues"):
        assert f"{REPLAY_SCHEMA}.issues" in queries[name]
        assert f"FROM {LIVE_SCHEMA}.issues" in queries[name]


def test_blocks_parse_with_their_descriptions_left_out() -> None:
    text = "-- header\n\n-- one --\n-- The first\nSELECT 1\n\n-- two --\n-- The second\nSELECT 2\n"
    assert parse_queries(text) == {"one": "SELECT 1", "two": "SELECT 2"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("-- one --\n-- A\nSELECT 1\n-- one --\n-- B\nSELECT 2\n", "duplicate query name 'one'"),
        ("-- one --\nSELECT 1\n", "needs a '-- description' line"),
        ("-- one --\n-- A\n\n-- two --\n-- B\nSELECT 2\n", "blocks without SQL: one"),
        ("SELECT 0\n-- one --\n-- A\nSELECT 1\n", "SQL before the first named block"),
    ],
)
def test_a_malformed_file_fails_loudly(text: str, problem: str) -> None:
    with pytest.raises(QueryFileError, match=re.escape(problem)):
        parse_queries(text)


def test_an_unknown_name_fails_loudly() -> None:
    with pytest.raises(UnknownQuery, match="no query named 'no_such_query'"):
        load_queries("tierline.store")["no_such_query"]
