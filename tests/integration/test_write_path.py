"""The write side under concurrency: versions without gaps, If-Match, idempotent retries."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from tests.fixtures.api import command, create_vendor, open_issue
from tests.fixtures.stack import Stack, running_stack, stack_settings

pytestmark = pytest.mark.postgres


@pytest.fixture(params=["one-statement", "locking"])
async def api(database_url: str, tansu: str, topic: str, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """The API on each write path (TIERLINE_WRITE_PATH): every test here runs on both."""
    settings = stack_settings(database_url, tansu, topic, write_path=request.param)
    async with running_stack(settings, roles=["api"]) as s:
        yield s


async def test_concurrent_commands_get_consecutive_versions(api: Stack) -> None:
    async with api.client() as http:
        await create_vendor(http)
        issue = await open_issue(http)
        results = await asyncio.gather(
            *(command(http, issue["id"], "comments", {"body": f"c{i}"}) for i in range(50))
        )
    assert [r[0] for r in results] == [200] * 50
    conn = await asyncpg.connect(api.settings.database_url)
    try:
        versions = [
            r[0]
            for r in await conn.fetch(
                "SELECT version FROM events WHERE stream_id = $1 ORDER BY version", issue["id"]
            )
        ]
        head = await conn.fetchval("SELECT version FROM streams WHERE stream_id = $1", issue["id"])
    finally:
        await conn.close()
    assert versions == list(range(1, 52))
    assert head == 51
    assert sorted(r[1]["version"] for r in results) == list(range(2, 52))


async def test_only_one_of_twenty_with_the_same_if_match_wins(api: Stack) -> None:
    async with api.client() as http:
        await create_vendor(http)
        issue = await open_issue(http)
        etag = f'"{issue["version"]}"'
        results = await asyncio.gather(
            *(
                command(http, issue["id"], "assign", {"assignee": f"a{i}"}, {"If-Match": etag})
                for i in range(20)
            )
        )
    statuses = sorted(r[0] for r in results)
    assert statuses == [200] + [412] * 19
    for status, body, _ in results:
        if status == 412:
            assert body["type"].endswith("/precondition-failed")
            assert body["current_version"] == 2


async def test_idempotent_retry_returns_the_stored_response(api: Stack) -> None:
    async with api.client() as http:
        await create_vendor(http)
        issue = await open_issue(http)
        key = {"Idempotency-Key": "retry-1"}
        first = await command(http, issue["id"], "escalate", {"reason": "slow"}, key)
        again = await asyncio.gather(
            *(command(http, issue["id"], "escalate", {"reason": "slow"}, key) for _ in range(5))
        )
        other = await command(http, issue["id"], "escalate", {"reason": "other"}, key)
        async with http.get(f"/v1/issues/{issue['id']}/events") as resp:
            history = (await resp.json())["items"]
    assert first[0] == 200 and first[1]["tier"] == 2
    assert all(r[0] == 200 and r[1] == first[1] for r in again)
    assert other[0] == 422 and other[1]["type"].endswith("/idempotency-key-reused")
    assert [e["type"] for e in history].count("io.tierline.issue.escalated.v1") == 1


async def test_idempotent_open_and_external_ref(api: Stack) -> None:
    async with api.client() as http:
        await create_vendor(http)
        body = {
            "vendor_id": "acme-it",
            "title": "t",
            "category": "quality",
            "priority": "P2",
            "external_ref": "jira:OPS-123",
        }
        results = []
        for _ in range(3):
            async with http.post("/v1/issues", json=body) as resp:
                results.append((resp.status, await resp.json()))
        concurrent = []
        body2 = {**body, "external_ref": "jira:OPS-124"}

        async def post() -> tuple[int, str]:
            async with http.post("/v1/issues", json=body2) as resp:
                return resp.status, (await resp.json())["id"]

        concurrent = await asyncio.gather(*(post() for _ in range(8)))
    assert [s for s, _ in results] == [201, 200, 200]
    assert len({r["id"] for _, r in results}) == 1
    assert sorted(s for s, _ in concurrent) == [200] * 7 + [201]
    assert len({i for _, i in concurrent}) == 1


async def test_folding_stored_events_gives_the_stored_snapshot(api: Stack) -> None:
    """fold(evolve, events) over what the store holds equals the snapshot it serves."""
    from tierline.domain.events import event_from_json
    from tierline.domain.issue import Issue, evolve

    async with api.client() as http:
        await create_vendor(http)
        issue = await open_issue(http, priority="P2")
        script = [
            ("acknowledge", {}),
            ("assign", {"assignee": "dana"}),
            ("escalate", {"reason": "r"}),
            ("hold", {"reason": "r"}),
            ("priority", {"priority": "P1"}),
            ("resume", {}),
            ("comments", {"body": "b"}),
            ("deescalate", {"reason": "r"}),
            ("resolve", {"resolution": "r"}),
            ("reopen", {"reason": "r"}),
        ]
        for name, body in script:
            code, _, _ = await command(http, issue["id"], name, body)
            assert code == 200, name
    conn = await asyncpg.connect(api.settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT version, type, time, data::text FROM events WHERE stream_id = $1 "
            "ORDER BY version",
            issue["id"],
        )
        snapshot = await conn.fetchval(
            "SELECT snapshot::text FROM streams WHERE stream_id = $1", issue["id"]
        )
    finally:
        await conn.close()
    folded: Issue | None = None
    for version, event_type, time, data in rows:
        event = event_from_json(event_type, json.loads(data))
        folded = evolve(folded, event, issue_id=issue["id"], version=version, at=time)
    assert folded == Issue.model_validate_json(snapshot)
    assert folded is not None and folded.version == len(script) + 1
