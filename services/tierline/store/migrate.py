"""Numbered SQL migrations, applied in one transaction under an advisory lock and recorded."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

from tierline.sqlfile import load_queries

log = structlog.get_logger(__name__)

# An arbitrary constant shared by every role, so only one applies migrations at a time.
MIGRATION_LOCK_ID = 7_311_529_001
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

QUERIES = load_queries("tierline.store")


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """Every migration shipped with the package, in order."""
    found = []
    for entry in resources.files("tierline.store.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply pending migrations; returns the versions applied now."""
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute(QUERIES["lock_migrations"], MIGRATION_LOCK_ID)
        await conn.execute(QUERIES["create_schema_migrations"])
        applied = await conn.fetch(QUERIES["applied_migrations"])
        done = {r["version"] for r in applied}
        for migration in load_migrations():
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(QUERIES["record_migration"], migration.version, migration.name)
            applied_now.append(migration.version)
    if applied_now:
        log.info("migrations_applied", versions=applied_now)
    return applied_now


async def migrate_url(database_url: str) -> list[int]:
    """Connect, migrate, disconnect."""
    conn = await asyncpg.connect(database_url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
