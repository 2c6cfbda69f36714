"""The issue lifecycle, vendor scoping and every error status, over HTTP against running roles."""

from __future__ import annotations

import pytest

from tests.fixtures.api import command, create_vendor, open_issue
from tests.fixtures.stack import Stack

STEPS = [
    ("acknowledge", {"note": "looking"}, "acknowledged", 1),
    ("escalate", {"reason": "no fix in SLA"}, "open", 2),
    ("deescalate", {"reason": "workaround agreed"}, "open", 1),
    ("resolve", {"resolution": "patched"}, "resolved", 1),
    ("reopen", {"reason": "regressed"}, "open", 1),
    ("resolve", {"resolution": "patched again"}, "resolved", 1),
    ("close", {}, "closed", 1),
]


async def test_lifecycle_open_to_close(stack: Stack) -> None:
    async with stack.client() as http:
        await create_vendor(http)
        issue = await open_issue(http, priority="P1", external_ref="jira:OPS-1")
        assert issue["status"] == "open" and issue["tier"] == 1 and issue["version"] == 1
        assert {k["kind"] for k in issue["sla"]} == {"respond", "resolve"}
        for name, body, status, tier in STEPS:
            code, after, headers = await command(http, issue["id"], name, body)
            assert code == 200, after
            assert (after["status"], after["tier"]) == (status, tier), name
            assert headers["ETag"] == f'"{after["version"]}"'
        async with http.get(f"/v1/issues/{issue['id']}") as resp:
            final = await resp.json()
            assert resp.headers["ETag"] == f'"{len(STEPS) + 1}"'
        async with http.get(f"/v1/issues/{issue['id']}/events") as resp:
            history = (await resp.json())["items"]
    assert final["status"] == "closed" and final["version"] == len(STEPS) + 1
    assert [e["type"].split(".")[3] for e in history] == ["opened"] + [
        {
            "escalate": "escalated",
            "deescalate": "deescalated",
            "acknowledge": "acknowledged",
            "resolve": "resolved",
            "reopen": "reopened",
            "close": "closed",
        }[s[0]]
        for s in STEPS
    ]
    assert [int(e["sequence"]) for e in history] == list(range(1, len(STEPS) + 2))
    escalated = next(e for e in history if e["type"] == "io.tierline.issue.escalated.v1")
    assert escalated["data"]["from_tier"] == 1 and escalated["data"]["to_tier"] == 2
    assert escalated["data"]["automatic"] is False
    assert all(e["specversion"] == "1.0" and e["subject"] == issue["id"] for e in history)


async def test_vendor_keys_see_only_their_vendor(stack: Stack) -> None:
    async with stack.client() as http:
        await create_vendor(http)
        await create_vendor(http, id="globex", name="Globex")
        mine = await open_issue(http, "acme-it")
        theirs = await open_issue(http, "globex")
    acme_key = await stack.new_key("vendor", "acme-it")
    async with stack.client(acme_key) as http:
        async with http.get(f"/v1/issues/{mine['id']}") as resp:
            assert resp.status == 200
        for path in (
            f"/v1/issues/{theirs['id']}",
            f"/v1/issues/{theirs['id']}/events",
            "/v1/vendors/globex",
        ):
            async with http.get(path) as resp:
                assert resp.status == 404, path
                assert resp.content_type == "application/problem+json"
        code, body, _ = await command(http, theirs["id"], "acknowledge")
        assert code == 404 and body["type"].endswith("/not-found")
        code, body, _ = await command(http, mine["id"], "acknowledge")
        assert code == 200
        async with http.get("/v1/vendors") as resp:
            assert [v["id"] for v in (await resp.json())["items"]] == ["acme-it"]
        body = {"vendor_id": "globex", "title": "x", "category": "other", "priority": "P4"}
        async with http.post("/v1/issues", json=body) as resp:
            assert resp.status == 422
        async with http.post("/v1/vendors", json={"id": "x", "name": "x"}) as resp:
            assert resp.status == 403
    async with stack.client() as http, http.get(f"/v1/issues/{theirs['id']}") as resp:
        assert (await resp.json())["status"] == "open", "a refused command changed nothing"


async def problem(resp: object) -> dict[str, object]:
    r = resp  # aiohttp.ClientResponse
    assert r.content_type == "application/problem+json"  # type: ignore[attr-defined]
    body: dict[str, object] = await r.json(content_type=None)  # type: ignore[attr-defined]
    assert {"type", "title", "status"} <= body.keys()
    assert body["status"] == r.status  # type: ignore[attr-defined]
    return body


@pytest.mark.parametrize("limit", [1024])
async def test_every_error_status_is_a_problem(stack: Stack, limit: int) -> None:
    async with stack.client() as http:
        await create_vendor(http)
        issue = await open_issue(http)
        iid = issue["id"]
        async with http.post(
            "/v1/issues", data=b"{not json", headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 400
            assert (await problem(resp))["type"].endswith("/malformed-request")  # type: ignore[union-attr]
        async with http.post("/v1/issues", json={"vendor_id": "acme-it", "priority": "P9"}) as resp:
            assert resp.status == 422
            body = await problem(resp)
            fields = {e["field"] for e in body["errors"]}  # type: ignore[union-attr]
            assert {"priority", "title", "category"} <= fields
        async with http.get("/v1/issues/does-not-exist") as resp:
            assert resp.status == 404
            await problem(resp)
        code, body, _ = await command(http, iid, "reopen", {"reason": "x"})
        assert code == 409 and body["type"].endswith("/invalid-transition")
        code, body, _ = await command(http, iid, "assign", {"assignee": "a"}, {"If-Match": '"7"'})
        assert code == 412 and body["type"].endswith("/precondition-failed")
        async with http.post("/v1/vendors", json={"id": "acme-it", "name": "again"}) as resp:
            assert resp.status == 409
            assert (await problem(resp))["type"].endswith("/duplicate")  # type: ignore[union-attr]
        big = {"body": "x" * (300 * 1024)}
        async with http.post(f"/v1/issues/{iid}/comments", json=big) as resp:
            assert resp.status == 413
            await problem(resp)
        async with http.get(f"/v1/issues/{iid}") as resp:
            assert (await resp.json())["version"] == 1, "no error changed the issue"
    async with stack.client("tl_wrong") as http, http.get(f"/v1/issues/{iid}") as resp:
        assert resp.status == 401
        await problem(resp)
    viewer = await stack.new_key("viewer")
    async with stack.client(viewer) as http:
        code, body, _ = await command(http, iid, "acknowledge")
        assert code == 403 and body["type"].endswith("/forbidden")
        async with http.get(f"/v1/issues/{iid}") as resp:
            assert resp.status == 200


async def test_api_keys_lifecycle(stack: Stack) -> None:
    async with stack.client() as http:
        async with http.post("/v1/api-keys", json={"name": "jira", "role": "integration"}) as resp:
            assert resp.status == 201
            created = await resp.json()
        async with http.get("/v1/api-keys") as resp:
            listed = (await resp.json())["items"]
            assert all(k.get("key") is None for k in listed)
            assert created["id"] in {k["id"] for k in listed}
        async with http.post("/v1/api-keys", json={"name": "v", "role": "vendor"}) as resp:
            assert resp.status == 422
    async with stack.client(created["key"]) as http, http.get("/v1/vendors") as resp:
        assert resp.status == 200
    async with stack.client() as http, http.delete(f"/v1/api-keys/{created['id']}") as resp:
        assert resp.status == 204
    async with stack.client(created["key"]) as http, http.get("/v1/vendors") as resp:
        assert resp.status == 401, "a revoked key stops working at once"


async def test_governance_put_records_policy_change(stack: Stack) -> None:
    async with stack.client() as http:
        async with http.get("/v1/governance") as resp:
            current = await resp.json()
        assert [t["name"] for t in current["tiers"]] == ["Operational", "Tactical", "Strategic"]
        doc = {k: v for k, v in current.items() if k != "version"}
        doc["sla"] = [
            {
                "tier": 1,
                "priority": "P1",
                "respond_within": "PT2S",
                "resolve_within": "PT8H",
                "warn_at": [0.5],
                "auto_escalate": True,
            }
        ]
        async with http.put("/v1/governance", json=doc) as resp:
            assert resp.status == 200, await resp.text()
            updated = await resp.json()
        assert updated["version"] == current["version"] + 1
        assert updated["sla"][0]["respond_within"] == "PT2S"
        doc["tiers"] = [{"level": 2, "name": "gap"}]
        async with http.put("/v1/governance", json=doc) as resp:
            assert resp.status == 422
        viewer = await stack.new_key("viewer")
    async with stack.client(viewer) as http, http.put("/v1/governance", json=doc) as resp:
        assert resp.status == 403
