"""Migration parity: upgrading step by step yields the same schema as a fresh install."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from tests.fixtures import infra
from tierline.store.migrate import load_migrations, migrate

pytestmark = pytest.mark.postgres

SCHEMA_QUERY = """
SELECT table_schema, table_name, column_name, data_type, is_nullable, column_default
FROM information_schema.columns
WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2, 3
"""
INDEX_QUERY = """
SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3
"""
CONSTRAINT_QUERY = """
SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE connamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2
"""


async def schema_of(url: str) -> tuple[list[tuple[object, ...]], ...]:
    conn = await asyncpg.connect(url)
    try:
        parts = []
        for query in (SCHEMA_QUERY, INDEX_QUERY, CONSTRAINT_QUERY):
            parts.append([tuple(r) for r in await conn.fetch(query)])
        return tuple(parts)
    finally:
        await conn.close()


async def empty_database(pg_admin_dsn: str) -> str:
    conn = await asyncpg.connect(pg_admin_dsn)
    name = f"m_{uuid.uuid4().hex[:12]}"
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return name


async def test_stepwise_upgrade_equals_fresh_install(pg_admin_dsn: str) -> None:
    fresh = await empty_database(pg_admin_dsn)
    stepwise = await empty_database(pg_admin_dsn)
    fresh_url = infra.with_database(pg_admin_dsn, fresh)
    step_url = infra.with_database(pg_admin_dsn, stepwise)
    try:
        conn = await asyncpg.connect(fresh_url)
        try:
            assert await migrate(conn) == [m.version for m in load_migrations()]
            assert await migrate(conn) == [], "a second run must apply nothing"
        finally:
            await conn.close()
        conn = await asyncpg.connect(step_url)
        try:
            # Simulate a deployment that had only the first migration, then upgrades.
            first = load_migrations()[0]
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await conn.execute(first.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                first.version,
                first.name,
            )
            assert await migrate(conn) == [m.version for m in load_migrations()[1:]]
        finally:
            await conn.close()
        assert await schema_of(fresh_url) == await schema_of(step_url)
    finally:
        for name in (fresh, stepwise):
            await infra.drop_database(pg_admin_dsn, name)


async def test_concurrent_migrations_apply_once(pg_admin_dsn: str) -> None:
    name = await empty_database(pg_admin_dsn)
    url = infra.with_database(pg_admin_dsn, name)
    try:
        conns = [await asyncpg.connect(url) for _ in range(3)]
        try:
            results = await asyncio.gather(*(migrate(c) for c in conns))
        finally:
            for c in conns:
                await c.close()
        applied = sorted(v for r in results for v in r)
        assert applied == [m.version for m in load_migrations()]
    finally:
        await infra.drop_database(pg_admin_dsn, name)
