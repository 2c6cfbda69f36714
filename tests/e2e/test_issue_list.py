"""GET /v1/issues and the vendor scorecard over HTTP, with every role running (projector included).

The list reads the read models, which follow the log: each test polls, in a bounded loop, until
the projected state it expects appears, and never measures time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp
import pytest

from tests.fixtures import infra
from tests.fixtures.api import create_vendor, open_issue, run_command
from tests.fixtures.stack import Stack, running_stack, stack_settings
from tierline.domain import commands as c
from tierline.service_layer.issues import SYSTEM
from tierline.store.pool import create_pool
from tierline.store.unit_of_work import issue_service

T = TypeVar("T")
# One stack for the module: its tests use vendors of their own and filter by them.
LIST_STACK_SCOPE = "module"
POLL_ATTEMPTS = 300
POLL_DELAY = 0.05


@pytest.fixture(scope=LIST_STACK_SCOPE)
async def list_stack(pg_admin_dsn: str, tansu: str) -> AsyncIterator[Stack]:
    """Every role on a database and topic of this module's own (one projector group join)."""
    name = await infra.clone_database(pg_admin_dsn)
    settings = stack_settings(
        infra.with_database(pg_admin_dsn, name), tansu, f"test.{uuid.uuid4().hex[:12]}"
    )
    try:
        async with running_stack(settings) as running:
            yield running
    finally:
        await infra.drop_database(pg_admin_dsn, name)


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    """The first truthy result of `probe`, polled a bounded number of times."""
    for _ in range(POLL_ATTEMPTS):
        result = await probe()
        if result:
            return result
        await asyncio.sleep(POLL_DELAY)
    raise AssertionError(f"never happened: {what}")


async def open_quality_issue(
    http: aiohttp.ClientSession, vendor_id: str, **fields: Any
) -> dict[str, Any]:
    """An issue of category quality, priority P3, unless said otherwise."""
    return await open_issue(
        http, vendor_id, **{"title": "An issue", "category": "quality", "priority": "P3", **fields}
    )


async def get_page(http: aiohttp.ClientSession, **query: Any) -> dict[str, Any]:
    async with http.get("/v1/issues", params={k: str(v) for k, v in query.items()}) as resp:
        assert resp.status == 200, await resp.text()
        page: dict[str, Any] = await resp.json()
        return page


async def all_items(http: aiohttp.ClientSession, **query: Any) -> list[dict[str, Any]]:
    """Every item over all pages."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await get_page(http, **query, **({"cursor": cursor} if cursor else {}))
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def projected(http: aiohttp.ClientSession, versions: dict[str, int]) -> list[dict[str, Any]]:
    """Wait until the list shows every issue at (at least) the given version."""

    async def probe() -> list[dict[str, Any]] | None:
        items = await all_items(http, limit=500)
        seen = {item["id"]: item["version"] for item in items}
        done = all(seen.get(i, 0) >= v for i, v in versions.items())
        return items if done else None

    return await eventually(probe, f"{len(versions)} issues projected")


def ids(items: list[dict[str, Any]]) -> set[str]:
    return {item["id"] for item in items}


async def record_breach(stack: Stack, issue_id: str) -> int:
    """Record a breach of the issue's respond clock the way the SLA engine would, later on."""
    pool = await create_pool(stack.settings.database_url, min_size=1, max_size=2)
    later = datetime.now(UTC) + timedelta(days=3)
    try:
        service = issue_service(pool, clock=lambda: later)
        issue = await service.get(SYSTEM, issue_id)
        respond = next(k for k in issue.clocks if k.kind == "respond" and k.state == "running")
        outcome = await service.execute(SYSTEM, issue_id, c.RecordSlaBreach(clock_id=respond.id))
    finally:
        await pool.close()
    return outcome.issue.version


async def scorecard(http: aiohttp.ClientSession, vendor_id: str, **query: Any) -> dict[str, Any]:
    async with http.get(
        f"/v1/vendors/{vendor_id}/scorecard", params={k: str(v) for k, v in query.items()}
    ) as resp:
        assert resp.status == 200, await resp.text()
        card: dict[str, Any] = await resp.json()
        return card


async def test_filters_scorecards_and_vendor_scoping(list_stack: Stack) -> None:
    stack = list_stack
    # Before the writes it counts: they all happen on this day or later.
    today = datetime.now(UTC).date()
    async with stack.client() as admin:
        await create_vendor(admin, id="acme", name="Acme", timezone="UTC")
        await create_vendor(admin, id="globex", name="Globex", timezone="UTC")
        a1 = await open_quality_issue(admin, "acme", priority="P1", category="security_compliance")
        a2 = await open_quality_issue(admin, "acme", priority="P2", external_ref="jira:OPS-1")
        a3 = await open_quality_issue(admin, "acme", priority="P4", category="communication")
        g1 = await open_quality_issue(admin, "globex", priority="P1")
        g2 = await open_quality_issue(admin, "globex", priority="P3", category="communication")
        versions = {i["id"]: i["version"] for i in (a1, a2, a3, g1, g2)}
        versions[a2["id"]] = (await run_command(admin, a2["id"], "acknowledge"))["version"]
        versions[a3["id"]] = (await run_command(admin, a3["id"], "escalate", reason="stuck"))[
            "version"
        ]
        versions[g2["id"]] = (await run_command(admin, g2["id"], "resolve", resolution="done"))[
            "version"
        ]
        versions[g1["id"]] = await record_breach(stack, g1["id"])
        items = await projected(admin, versions)

        by_id = {item["id"]: item for item in items}
        assert by_id[a3["id"]]["tier"] == 2 and by_id[a3["id"]]["escalation_count"] == 1
        assert by_id[a2["id"]]["external_ref"] == "jira:OPS-1"
        # The P1 breach escalated automatically: new tier, new clocks, and the breach on record.
        assert by_id[g1["id"]]["breached"] is True and by_id[g1["id"]]["tier"] == 2
        clocks = {(k["tier"], k["kind"], k["state"]) for k in by_id[g1["id"]]["sla"]}
        assert {(1, "respond", "breached"), (2, "respond", "running")} <= clocks
        assert ids(await all_items(admin, vendor_id="acme")) == {a1["id"], a2["id"], a3["id"]}
        assert ids(await all_items(admin, vendor_id="acme,globex", status="acknowledged")) == {
            a2["id"]
        }
        assert ids(await all_items(admin, status="open,acknowledged", vendor_id="globex")) == {
            g1["id"]
        }
        assert ids(await all_items(admin, vendor_id="acme,globex", tier=2)) == {a3["id"], g1["id"]}
        assert ids(await all_items(admin, vendor_id="acme,globex", tier="1,3")) == {
            a1["id"],
            a2["id"],
            g2["id"],
        }
        assert ids(await all_items(admin, vendor_id="acme,globex", priority="P1")) == {
            a1["id"],
            g1["id"],
        }
        assert ids(await all_items(admin, vendor_id="acme,globex", category="communication")) == {
            a3["id"],
            g2["id"],
        }
        assert ids(await all_items(admin, vendor_id="acme,globex", breached="true")) == {g1["id"]}
        assert g1["id"] not in ids(
            await all_items(admin, vendor_id="acme,globex", breached="false")
        )

        acme = await scorecard(admin, "acme", **{"from": today, "to": today})
        assert (acme["opened"], acme["acknowledged"], acme["resolved"]) == (3, 1, 0)
        assert acme["open_now"] == 3 and acme["escalations_by_tier"] == {"2": 1}
        assert acme["mtta_seconds"] >= 0 and acme["mttr_seconds"] is None
        assert acme["sla_compliance"] == 1.0  # a2's respond clock met, nothing breached
        assert [(d["day"], d["open_at_end_of_day"]) for d in acme["daily"]] == [(str(today), 3)]
        # The breach was recorded three days ahead (as if the SLA engine ran then).
        globex = await scorecard(admin, "globex", **{"from": today, "to": today + timedelta(3)})
        assert (globex["opened"], globex["resolved"], globex["open_now"]) == (2, 1, 1)
        assert globex["breaches"] == {
            "total": 1, "by_tier": [{"tier": 1, "kind": "respond", "count": 1}],
        }  # fmt: skip
        assert globex["automatic_escalations"] == 1 and globex["escalations_by_tier"] == {"2": 1}
        assert globex["sla_compliance"] == 2 / 3  # g2's two clocks met, g1's respond breached
        assert len(globex["daily"]) == 2
        default = await scorecard(admin, "acme")
        assert (default["from_date"], default["to_date"]) == (
            str(today - timedelta(29)),
            str(today),
        )
        assert default["opened"] == 3
        before = await scorecard(
            admin, "acme", **{"from": today - timedelta(9), "to": today - timedelta(1)}
        )
        assert (before["opened"], before["daily"], before["mtta_seconds"]) == (0, [], None)
        for query in ({"from": str(today), "to": str(today - timedelta(1))}, {"to": "soon"}):
            async with admin.get("/v1/vendors/acme/scorecard", params=query) as resp:
                assert resp.status == 422, query
        async with admin.get("/v1/vendors/nobody/scorecard") as resp:
            assert resp.status == 404

    acme_key = await stack.new_key("vendor", "acme")
    async with stack.client(acme_key) as vendor:
        assert ids(await all_items(vendor)) == {a1["id"], a2["id"], a3["id"]}
        assert await all_items(vendor, vendor_id="globex") == []
        assert ids(await all_items(vendor, vendor_id="globex,acme", priority="P1")) == {a1["id"]}
        async with vendor.get("/v1/vendors/globex/scorecard") as resp:
            assert resp.status == 404
        assert (await scorecard(vendor, "acme"))["opened"] == 3

    viewer_key = await stack.new_key("viewer")
    async with stack.client(viewer_key) as viewer:
        assert ids(await all_items(viewer, vendor_id="acme,globex")) == set(versions)


async def test_pages_are_stable_and_bad_queries_are_problems(list_stack: Stack) -> None:
    stack = list_stack
    async with (
        aiohttp.ClientSession(stack.api_url) as anonymous,
        anonymous.get("/v1/issues") as resp,
    ):
        assert resp.status == 401
    async with stack.client() as admin:
        for query in (
            {"status": "pending"},
            {"priority": "P9"},
            {"tier": "top"},
            {"breached": "maybe"},
            {"limit": "0"},
            {"limit": "501"},
            {"cursor": "not-a-cursor"},
        ):
            async with admin.get("/v1/issues", params=query) as resp:
                assert resp.status == 422, query
                assert resp.content_type == "application/problem+json"
                body = await resp.json()
                assert body["type"].endswith("/validation-failed")
                assert body["errors"][0]["field"] in query

        await create_vendor(admin, id="initech", name="Initech", timezone="UTC")
        first = [await open_quality_issue(admin, "initech", title=f"first {n}") for n in range(12)]
        await projected(admin, {i["id"]: i["version"] for i in first})

        page = await get_page(admin, limit=1, vendor_id="initech")
        async with admin.get(
            "/v1/issues", params={"cursor": page["next_cursor"], "vendor_id": "globex"}
        ) as resp:
            assert resp.status == 422, "a cursor works only with the filters it was made for"

        seen: list[str] = []
        arrived: list[str] = []
        cursor = None
        while True:
            query: dict[str, Any] = {"limit": 5, "vendor_id": "initech"}
            query |= {"cursor": cursor} if cursor else {}
            page = await get_page(admin, **query)
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            # New issues (and changes to ones already listed) while a client is paging.
            arrived += [
                (await open_quality_issue(admin, "initech", title="late"))["id"] for _ in range(2)
            ]
            await run_command(admin, seen[0], "assign", assignee="ana")

        assert len(seen) == len(set(seen)), "an issue was listed twice"
        assert set(seen) >= ids(first), "an issue that existed before paging was skipped"
        # Issues that arrived during paging are never placed before one already listed.
        everything = [item["id"] for item in await all_items(admin, vendor_id="initech")]
        assert everything[: len(seen)] == seen
        await projected(admin, {i: 1 for i in arrived})
