"""A lost PostgreSQL is an outage, never a crash: workers retry, the API answers 503.

A fast restart of PostgreSQL left asyncpg connections "in progress" and raising
InternalClientError; before it was a database error, the SLA scanner and the webhook sender
let it escape their supervised loops and the whole role process exited (the fault drill,
bench/drill.py, caught it). Every worker loop that talks to PostgreSQL retries the same set.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import asyncpg
import pytest

import tierline
from tierline.api.app import _dependency_down
from tierline.store.pool import DATABASE_ERRORS
from tierline.supervise import supervise

PACKAGE = Path(tierline.__file__).parent
# What asyncpg raises on a connection whose server went away, in the forms the drill saw.
LOST_SERVER = [
    asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.InterfaceError("connection is closed"),
    ConnectionRefusedError(111, "Connect call failed"),
]


@pytest.mark.parametrize("error", LOST_SERVER, ids=lambda e: type(e).__name__)
async def test_a_supervised_worker_retries_after_a_lost_server(error: Exception) -> None:
    stop = asyncio.Event()
    runs = 0

    async def work(_: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise error
        stop.set()

    async def no_sleep(stop: asyncio.Event, _: float) -> bool:
        return stop.is_set()

    await supervise("test-db-errors", work, stop, retry_on=DATABASE_ERRORS, sleep=no_sleep)
    assert runs == 2


@pytest.mark.parametrize("error", LOST_SERVER, ids=lambda e: type(e).__name__)
def test_the_api_answers_a_lost_server_with_503(error: Exception) -> None:
    assert _dependency_down(error)


def test_a_bug_is_still_a_bug() -> None:
    assert not _dependency_down(ValueError("bad"))
    assert not _dependency_down(asyncpg.exceptions.UndefinedColumnError("no such column"))


def _supervised_retry_sets() -> dict[str, str]:
    """Each `supervise(..., retry_on=X)` call in the package: file -> source of X."""
    found: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "supervise":
                for keyword in node.keywords:
                    if keyword.arg == "retry_on":
                        found[str(path.relative_to(PACKAGE))] = ast.unparse(keyword.value)
    return found


def test_every_worker_loop_on_postgresql_retries_every_database_error() -> None:
    retry_sets = _supervised_retry_sets()
    assert len(retry_sets) >= 4, retry_sets
    for path, source in retry_sets.items():
        assert "DATABASE_ERRORS" in source or source == "(Exception,)", (path, source)
