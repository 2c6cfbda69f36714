"""A stuck pool turns into 503s on every route, not into requests that hang.

A class of fault, not one case: whatever holds every pooled connection of the API (a cycle
between a lock and the pool, as the reference reload had — tests/e2e/test_pool_starvation.py —,
or queries stuck behind a lock) used to stop every request that needed a connection, for good.
With the pool's bound (`TIERLINE_DB_ACQUIRE_TIMEOUT_SECONDS`, store/pool.py) each such request
answers 503 problem `unavailable` with Retry-After once the bound has passed.

Here an outside transaction locks the issue list's read model, two list requests take the API's
two pooled connections and wait behind that lock, and, while they are stuck, every route of the
route table is called: each must be answered, with a success or 4xx it would give anyway, or a
503 with Retry-After (the readiness probe answers its own 503 body); none with another 5xx.
Without the bound the requests that need a connection never answer while the lock is held, and
the test fails on its (generous, not timing) deadline. The stuck requests complete once the
lock goes.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client import REGISTRY

from tests.fixtures.api import create_vendor, open_issue
from tests.fixtures.stack import running_stack, stack_settings
from tierline.api.app import all_routes

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

PARAM = re.compile(r"{(\w+)}")

# Bodies that pass validation, so the request reaches the database (an empty body would stop
# at 422 before it needs a connection); other routes get `{}`.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/vendors"): {"id": "stuck-co", "name": "Stuck Co"},
    ("POST", "/v1/issues"): {
        "vendor_id": "acme-it",
        "title": "t",
        "category": "quality",
        "priority": "P3",
    },
    ("POST", "/v1/issues/{issue_id}/comments"): {"body": "c"},
    ("POST", "/v1/issues/{issue_id}/assign"): {"assignee": "a"},
    ("POST", "/v1/issues/{issue_id}/priority"): {"priority": "P2"},
    ("POST", "/v1/api-keys"): {"name": "k", "role": "viewer"},
}


@dataclass(frozen=True)
class Answer:
    method: str
    path: str
    status: int
    content_type: str
    retry_after: str | None
    body: Any


async def _call(http: aiohttp.ClientSession, method: str, path: str, body: Any) -> Answer:
    async with http.request(method, path, json=body if method != "GET" else None) as resp:
        data: Any = await resp.json() if "json" in resp.content_type else await resp.text()
        return Answer(
            method, path, resp.status, resp.content_type, resp.headers.get("Retry-After"), data
        )


async def asyncpg_fetchval(database_url: str, query: str) -> Any:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


def _timeouts() -> float:
    return REGISTRY.get_sample_value("tierline_db_acquire_timeouts_total") or 0.0


async def test_every_route_answers_while_the_pool_is_stuck(
    database_url: str, tansu: str, topic: str
) -> None:
    settings = stack_settings(
        database_url, tansu, topic, db_pool_min=1, db_pool_max=2, db_acquire_timeout_seconds=0.3
    )
    async with running_stack(settings, roles=["api"]) as api, api.client() as http:
        await create_vendor(http)
        ids = {
            "issue_id": (await open_issue(http))["id"],
            "vendor_id": "acme-it",
            "key_id": str(uuid.uuid4()),
            "webhook_id": str(uuid.uuid4()),
            "delivery_id": str(uuid.uuid4()),
            "source_id": str(uuid.uuid4()),
        }
        locker = await asyncpg.connect(database_url)
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE read.issues IN ACCESS EXCLUSIVE MODE")
        stuck: list[asyncio.Task[Answer]] = []
        try:
            stuck = [asyncio.create_task(_call(http, "GET", "/v1/issues", None)) for _ in range(2)]
            for _ in range(600):  # both pooled connections wait behind the lock
                # (Not through `locker`: inside a transaction pg_stat_activity is a snapshot.)
                waiting = await asyncpg_fetchval(
                    database_url,
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                if waiting >= 2:
                    break
                await asyncio.sleep(0.05)
            assert waiting >= 2, "the list requests never took the pool's connections"
            before = _timeouts()
            calls = [
                _call(
                    http,
                    op.method,
                    PARAM.sub(lambda m: ids[m.group(1)], op.path),
                    BODIES.get((op.method, op.path), {}),
                )
                for table in all_routes()
                for op in table.operations
            ]
            # Not a timing assertion: without the bound these never answer; 120 s is for CI.
            answers = await asyncio.wait_for(asyncio.gather(*calls), timeout=120)
            assert not any(task.done() for task in stuck), "the pool was not held throughout"
        finally:
            await lock.rollback()
            await locker.close()
        assert [(await task).status for task in stuck] == [200, 200]
        async with http.get("/v1/issues") as resp:
            assert resp.status == 200  # the pool recovered
    print(f"\n{len(answers)} routes called while the pool was stuck")
    wrong = [
        a
        for a in answers
        if a.status >= 500
        and not (
            a.status == 503
            and (
                a.path == "/readyz"
                or (
                    a.retry_after is not None
                    and a.content_type == "application/problem+json"
                    and a.body["type"].endswith("/unavailable")
                )
            )
        )
    ]
    assert not wrong, wrong
    busy = [a for a in answers if a.status == 503 and a.path != "/readyz"]
    assert all("busy" in a.body["detail"] for a in busy), busy
    assert _timeouts() >= before + len(busy)
    # The routes that must read PostgreSQL could not: the bound answered for them.
    for method, path in [
        ("GET", "/v1/issues"),
        ("GET", f"/v1/issues/{ids['issue_id']}/events"),
        ("GET", "/v1/webhooks"),
        ("GET", "/v1/api-keys"),
    ]:
        assert any(a.method == method and a.path == path for a in busy), (method, path, answers)
    health = next(a for a in answers if a.path == "/healthz")
    assert health.status == 200
