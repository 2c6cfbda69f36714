"""Shared fixtures: real PostgreSQL (fresh database per test) and real Kafka-protocol brokers."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.fixtures import infra

CI = os.environ.get("CI", "").lower() == "true"
UNIT = Path(__file__).parent / "unit"
# The marker a test needs, by the fixtures it uses directly or through other fixtures. Tests
# that start servers of their own (tests/integration/test_devstack.py, `tierline dev`) say so.
MARKERS_BY_FIXTURE = {
    "postgres": frozenset({"pg_admin_dsn", "database_url", "stack"}),
    "kafka": frozenset({"tansu", "apache_kafka", "broker", "stack"}),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by the servers their fixtures start; tests/unit may need none."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in MARKERS_BY_FIXTURE.items():
            if used & fixtures and item.get_closest_marker(marker) is None:
                item.add_marker(marker)
        needs = [m for m in MARKERS_BY_FIXTURE if item.get_closest_marker(m) is not None]
        if needs and item.path.is_relative_to(UNIT):
            raise pytest.UsageError(f"{item.nodeid} needs {needs}: it belongs in tests/integration")


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """Superuser DSN of the test PostgreSQL, with a migrated template database."""
    with infra.postgres_admin_dsn() as dsn:
        asyncio.run(infra.create_template(dsn))
        yield dsn


@pytest.fixture
async def database_url(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    name = await infra.clone_database(pg_admin_dsn)
    yield infra.with_database(pg_admin_dsn, name)
    await infra.drop_database(pg_admin_dsn, name)


@pytest.fixture(scope="session")
def tansu() -> Iterator[str]:
    """Bootstrap address of the embedded broker (Tansu) the dev stack uses."""
    with infra.tansu_bootstrap() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def apache_kafka() -> Iterator[str]:
    """Bootstrap address of a real Apache Kafka (KRaft) assembled from Maven Central jars."""
    from tests.fixtures.apache_kafka import ApacheKafkaBroker, java_and_maven_available

    env = os.environ.get("TIERLINE_TEST_APACHE_KAFKA")
    if env:
        yield env
        return
    missing = java_and_maven_available()
    if missing is not None:
        if CI:
            pytest.fail(f"Apache Kafka tests are required in CI: {missing}")
        pytest.skip(f"Apache Kafka unavailable: {missing}")
    tmp = Path(tempfile.mkdtemp(prefix="tierline-test-kafka-"))
    broker = ApacheKafkaBroker(tmp)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(params=["tansu", "apache"])
def broker(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(kind, bootstrap) of each real broker; test ids say which: `[tansu]`, `[apache]`."""
    kind = str(request.param)
    return kind, request.getfixturevalue("tansu" if kind == "tansu" else "apache_kafka")


@pytest.fixture
def topic() -> str:
    """A topic name no other test uses."""
    return f"test.{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def stack(database_url: str, tansu: str, topic: str) -> AsyncIterator[object]:
    """Every available role running in-process on a fresh database and topic (Tansu)."""
    from tests.fixtures.stack import running_stack, stack_settings

    async with running_stack(stack_settings(database_url, tansu, topic)) as running:
        yield running
