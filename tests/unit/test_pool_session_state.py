"""Pooled connections carry no session state, so the pool's release skips asyncpg's reset query.

`store/pool.py` gives the pool a reset that sends nothing (asyncpg still rolls back an open
transaction and drops listeners). That is safe only while nothing leaves session state on a
pooled connection: a session `SET`, a session advisory lock, a `LISTEN`. This test finds every
place in the code that could, and each must be listed below with why it is safe.
"""

from __future__ import annotations

import re
from pathlib import Path

from tierline.sqlfile import parse_queries

SERVICES = Path(__file__).resolve().parents[2] / "services" / "tierline"


def _kinds(start: str) -> dict[str, re.Pattern[str]]:
    """The patterns, with statements starting where `start` matches."""
    return {
        "session advisory lock": re.compile(r"pg_(try_)?advisory_lock(_shared)?\s*\(", re.I),
        "LISTEN": re.compile(start + r"LISTEN\s", re.I),
        "add_listener": re.compile(r"\.add_listener\("),
        "session SET": re.compile(start + r"SET\s+(?!LOCAL\b)(SESSION\s+)?\w+\s*(=|TO\b)", re.I),
        "set_config(..., false)": re.compile(r"set_config\([^)]*false\s*\)", re.I),
    }


# A statement starts a query in a .sql file, or a string literal in Python.
SQL_KINDS, PY_KINDS = _kinds(r"^\s*"), _kinds(r"[\"']\s*")

# (file relative to services/tierline, kind) -> why the connection it runs on is not pooled, or
# why the state cannot outlive its use.
ALLOWED = {
    ("relay/queries.sql", "session advisory lock"): "relay leadership: its own connection",
    ("relay/relay.py", "add_listener"): "the relay's own LISTEN connection",
    ("projector/queries.sql", "session advisory lock"): (
        "the swap gate runs on its own connection (gate.py); the replay's run lock is released"
        " in `finally` and its pool is closed right after (replay.py)"
    ),
    ("api/key_cache.py", "add_listener"): "the key cache's own LISTEN connection",
    ("webhooks/sender.py", "add_listener"): "the senders' own LISTEN connection",
    ("sla/scanner.py", "add_listener"): "the scanner's own LISTEN connection",
}


def findings(text: str, *, sql: bool = False) -> set[str]:
    """Kinds of session state a source text may leave behind (`sql`: a queries.sql file)."""
    if sql:  # each query's text on one line, so START is where a statement starts
        chunks = [
            " ".join(ln for ln in q.splitlines() if not ln.strip().startswith("--"))
            for q in parse_queries(text).values()
        ]
    else:
        chunks = [ln for ln in text.splitlines() if not ln.strip().startswith("#")]
    found = set()
    for chunk in chunks:
        for kind, pattern in (SQL_KINDS if sql else PY_KINDS).items():
            if pattern.search(chunk):
                found.add(kind)
    return found


def test_every_session_state_in_the_code_is_on_a_dedicated_connection() -> None:
    unexplained = []
    for path in sorted([*SERVICES.rglob("*.py"), *SERVICES.rglob("*.sql")]):
        relative = path.relative_to(SERVICES).as_posix()
        if relative.startswith("store/migrations/"):
            continue  # DDL run once by the migrator on its own connection
        for kind in findings(path.read_text(), sql=path.suffix == ".sql"):
            if (relative, kind) not in ALLOWED:
                unexplained.append(f"{relative}: {kind}")
    assert not unexplained, (
        "session state on what may be a pooled connection (the pool does not reset it):"
        f" {unexplained}"
    )


def test_the_scan_finds_each_kind() -> None:
    samples = {
        "session advisory lock": "SELECT pg_advisory_lock($1)",
        "LISTEN": 'await conn.execute("LISTEN tierline_events")',
        "add_listener": "await conn.add_listener(CHANNEL, cb)",
        "session SET": 'await conn.execute("SET statement_timeout = 0")',
        "set_config(..., false)": "SELECT set_config('search_path', 'x', false)",
    }
    for kind, text in samples.items():
        assert kind in findings(text), kind
    assert "session SET" in findings("-- q --\n-- why\nSET search_path = x\n", sql=True)
    assert not findings("-- q --\n-- why\nUPDATE t\nSET a = 1\n", sql=True)
    assert not findings("SET LOCAL synchronous_commit = off")
    assert not findings("UPDATE vendors SET name = $2 WHERE id = $1")
    assert not findings("SELECT pg_advisory_xact_lock($1)")
