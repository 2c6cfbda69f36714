"""Inbound webhooks end to end through the API app on a real PostgreSQL: each tool's fixtures,
signed with its own scheme, drive issues; redeliveries, tampering, stale timestamps, forbidden
transitions, mapping overrides and vendor scoping are checked on what the API then shows."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.fixtures import inbound as tools
from tests.fixtures.stack import TEST_SECRET_KEY
from tierline import secretbox
from tierline.api.app import create_app
from tierline.config import Settings
from tierline.inbound import sources as source_store
from tierline.secrets_command import rotate_secrets
from tierline.store.api_keys import create_api_key
from tierline.store.pool import create_pool

pytestmark = pytest.mark.postgres

Client = TestClient[Any, Any]


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[Client]:
    """The API app with an admin key, two vendors (acme-it, globex) and no broker."""
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        _, key = await create_api_key(pool, name="admin", role="admin")
    finally:
        await pool.close()
    settings = Settings(database_url=database_url, secret_key=TEST_SECRET_KEY)
    secretbox.install(secretbox.SecretBox.from_setting(settings.secret_key))
    app = create_app(settings)
    async with TestClient(TestServer(app)) as test_client:
        test_client.session.headers["Authorization"] = f"Bearer {key}"
        for vendor in ("acme-it", "globex"):
            resp = await test_client.post(
                "/v1/vendors", json={"id": vendor, "name": vendor.title(), "timezone": "UTC"}
            )
            assert resp.status == 201, await resp.text()
        yield test_client


async def new_source(client: Client, kind: str, **fields: Any) -> dict[str, Any]:
    body = {"name": f"{kind} source", "type": kind, "vendor_id": "acme-it", **fields}
    resp = await client.post("/v1/inbound-sources", json=body)
    assert resp.status == 201, await resp.text()
    source: dict[str, Any] = await resp.json()
    return source


async def deliver(
    client: Client, source: dict[str, Any], body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    """POST a delivery as the tool would: no API key, only its signature."""
    path = f"/v1/inbound/{source['id']}"
    resp = await client.session.post(
        client.make_url(path), data=body, headers={**headers, "Authorization": ""}
    )
    return resp.status, await resp.json(content_type=None)


async def issue_by_ref(client: Client, ref: str) -> dict[str, Any]:
    """The issue an external ref names (opening it again answers the existing one)."""
    resp = await client.post(
        "/v1/issues",
        json={
            "vendor_id": "acme-it",
            "title": "probe",
            "category": "other",
            "priority": "P4",
            "external_ref": ref,
        },
    )
    assert resp.status == 200, f"{ref} should name an existing issue: {await resp.text()}"
    issue: dict[str, Any] = await resp.json()
    return issue


async def events_of(client: Client, issue_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/v1/issues/{issue_id}/events")
    assert resp.status == 200
    items: list[dict[str, Any]] = (await resp.json())["items"]
    return items


async def deliveries_of(client: Client, source: dict[str, Any]) -> list[dict[str, Any]]:
    resp = await client.get(f"/v1/inbound-sources/{source['id']}/deliveries")
    assert resp.status == 200, await resp.text()
    items: list[dict[str, Any]] = (await resp.json())["items"]
    return items


def names(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"].split(".")[-2] for e in events]


# --- Jira ---------------------------------------------------------------------------------------


async def test_jira_created_updated_and_commented_drive_the_issue(client: Client) -> None:
    source = await new_source(client, "jira")
    secret = source["secret"]
    assert source["url"].endswith(f"/v1/inbound/{source['id']}")

    body = tools.body_of(tools.jira_created("GOV-1"))
    status, answer = await deliver(client, source, body, tools.jira_headers(secret, body, "d-1"))
    assert (status, answer["outcome"], answer["duplicate"]) == (200, "applied", False), answer
    issue = await issue_by_ref(client, "jira:GOV-1")
    assert answer["issue_id"] == issue["id"]
    assert (issue["priority"], issue["category"], issue["status"]) == (
        "P2",
        "communication",
        "open",
    )
    assert issue["title"] == "Vendor missed the GOV-1 report"

    steps = [
        tools.jira_updated("GOV-1", ("status", "To Do", "In Progress")),
        tools.jira_updated("GOV-1", ("priority", "High", "Highest")),
        tools.jira_comment(
            "GOV-1",
            {
                "type": "doc",
                "version": 1,
                "content": [
                    {"type": "paragraph", "content": [{"type": "text", "text": "Chased."}]}
                ],
            },
        ),
    ]
    for number, payload in enumerate(steps, 2):
        body = tools.body_of(payload)
        headers = tools.jira_headers(secret, body, f"d-{number}")
        status, answer = await deliver(client, source, body, headers)
        assert (status, answer["outcome"]) == (200, "applied"), answer

    events = await events_of(client, issue["id"])
    assert names(events) == ["opened", "acknowledged", "priority_changed", "commented"]
    assert events[3]["data"]["body"] == "Chased."
    assert events[3]["data"]["author"] == "Ada Lovelace"
    assert events[2]["data"]["to_priority"] == "P1"
    # Provenance: every event names the source and the Jira delivery that caused it.
    assert [(e["inboundsource"], e["inbounddelivery"]) for e in events] == [
        (source["id"], f"d-{n}") for n in range(1, 5)
    ]
    assert events[0]["data"]["external_ref"] == "jira:GOV-1"


async def test_a_redelivery_changes_nothing_and_answers_as_the_first_time(client: Client) -> None:
    source = await new_source(client, "jira")
    body = tools.body_of(tools.jira_created("GOV-2"))
    headers = tools.jira_headers(source["secret"], body, "same-id")
    first = await deliver(client, source, body, headers)
    again = await deliver(client, source, body, headers)
    assert first[0] == again[0] == 200
    assert again[1]["duplicate"] is True
    assert {k: v for k, v in again[1].items() if k != "duplicate"} == {
        k: v for k, v in first[1].items() if k != "duplicate"
    }
    comment = tools.body_of(tools.jira_comment("GOV-2", "once"))
    comment_headers = tools.jira_headers(source["secret"], comment, "comment-id")
    for _ in range(3):
        assert (await deliver(client, source, comment, comment_headers))[0] == 200
    issue = await issue_by_ref(client, "jira:GOV-2")
    assert names(await events_of(client, issue["id"])) == ["opened", "commented"]
    assert len(await deliveries_of(client, source)) == 2


async def test_tampering_unknown_sources_and_wrong_secrets_answer_the_same_401(
    client: Client,
) -> None:
    source = await new_source(client, "jira")
    body = tools.body_of(tools.jira_created("GOV-3"))
    headers = tools.jira_headers(source["secret"], body, "t-1")
    before = await unverified_count(client)
    tampered = body.replace(b"GOV-3 report", b"GOV-3 rePort")
    answers = [
        await deliver(client, source, tampered, headers),
        await deliver(client, {"id": str(uuid.uuid4())}, body, headers),
        await deliver(client, {"id": "not-a-uuid"}, body, headers),
        await deliver(client, source, body, tools.jira_headers("wrong-secret", body, "t-1")),
        await deliver(client, source, body, {"Content-Type": "application/json"}),
    ]
    for status, problem in answers:
        assert status == 401
        assert problem == {**answers[0][1], "instance": problem["instance"]}
        assert problem["type"].endswith("/unauthenticated")
    assert await unverified_count(client) == before + len(answers)
    # Nothing happened: no issue, and the real delivery id was not claimed by the forgeries.
    resp = await client.get("/v1/issues", params={"vendor_id": "acme-it"})
    assert (await resp.json())["items"] == []
    log = await deliveries_of(client, source)
    assert [d["outcome"] for d in log] == ["rejected"] * 3
    assert all(d["verified"] is False and d["error"] for d in log)
    status, answer = await deliver(client, source, body, headers)
    assert (status, answer["outcome"]) == (200, "applied")


async def unverified_count(client: Client) -> float:
    resp = await client.get("/metrics")
    for line in (await resp.text()).splitlines():
        if line.startswith("tierline_inbound_unverified_total "):
            return float(line.split()[1])
    return 0.0


async def test_forbidden_transitions_and_unknown_tickets_are_recorded_as_ignored(
    client: Client,
) -> None:
    source = await new_source(client, "jira")
    secret = source["secret"]

    async def send(payload: dict[str, Any], delivery: str) -> dict[str, Any]:
        body = tools.body_of(payload)
        status, answer = await deliver(
            client, source, body, tools.jira_headers(secret, body, delivery)
        )
        assert status == 200, answer
        return answer

    unknown = await send(tools.jira_comment("GOV-404", "hello?"), "u-1")
    assert unknown["outcome"] == "ignored"
    assert "unknown ticket" in unknown["commands"][0]["reason"]
    await send(tools.jira_created("GOV-4"), "f-1")
    await send(tools.jira_updated("GOV-4", ("status", "In Progress", "Done")), "f-2")
    held = await send(tools.jira_updated("GOV-4", ("status", "Done", "On Hold")), "f-3")
    assert held["outcome"] == "ignored"
    assert held["commands"][0]["command"] == "hold"
    assert held["commands"][0]["reason"].startswith("forbidden transition")
    issue = await issue_by_ref(client, "jira:GOV-4")
    assert issue["status"] == "resolved"
    assert names(await events_of(client, issue["id"])) == ["opened", "resolved"]
    log = {d["delivery_id"]: d for d in await deliveries_of(client, source)}
    assert log["f-3"]["outcome"] == "ignored" and "forbidden" in log["f-3"]["reason"]
    assert log["u-1"]["outcome"] == "ignored" and log["u-1"]["issue_id"] is None
    unmapped = await send({"webhookEvent": "jira:worklog_updated", "issue": {"key": "GOV-4"}}, "w")
    assert unmapped["outcome"] == "ignored" and "not mapped" in unmapped["reason"]


# --- Zendesk ------------------------------------------------------------------------------------


async def test_zendesk_ticket_events_and_a_stale_timestamp(client: Client) -> None:
    source = await new_source(client, "zendesk")
    secret = source["secret"]

    async def send(payload: dict[str, Any], at: float | None = None) -> tuple[int, dict[str, Any]]:
        body = tools.body_of(payload)
        return await deliver(client, source, body, tools.zendesk_headers(secret, body, at))

    created = tools.zendesk_event("created", 35436)
    assert (await send(created))[0] == 200
    issue = await issue_by_ref(client, "zendesk:35436")
    assert (issue["priority"], issue["category"]) == ("P1", "service_delivery")
    pending = tools.zendesk_event(
        "status_changed", 35436, {"previous": "NEW", "current": "PENDING"}
    )
    comment = tools.zendesk_event(
        "comment_added",
        35436,
        {"comment": {"id": 7, "body": "Bridge staffed now.", "author": {"name": "Priya"}}},
    )
    solved = tools.zendesk_event(
        "status_changed", 35436, {"previous": "PENDING", "current": "SOLVED"}
    )
    for payload in (pending, comment, solved):
        status, answer = await send(payload)
        assert (status, answer["outcome"]) == (200, "applied"), answer
    events = await events_of(client, issue["id"])
    assert names(events) == ["opened", "put_on_hold", "commented", "resolved"]

    late = tools.zendesk_event("comment_added", 35436, {"comment": {"body": "late"}})
    status, problem = await send(late, at=time.time() - 3600)
    assert status == 401 and problem["type"].endswith("/unauthenticated")
    status, _ = await send(late, at=time.time() + 3600)
    assert status == 401
    # The event id in the body is Zendesk's delivery id: a new invocation of it is a redelivery.
    status, answer = await send(comment)
    assert (status, answer["duplicate"]) == (200, True)
    assert len(await events_of(client, issue["id"])) == 4


# --- GitHub -------------------------------------------------------------------------------------


async def test_github_issues_and_comments(client: Client) -> None:
    source = await new_source(client, "github")
    secret = source["secret"]

    async def send(event: str, payload: dict[str, Any]) -> dict[str, Any]:
        body = tools.body_of(payload)
        status, answer = await deliver(
            client, source, body, tools.github_headers(secret, body, event)
        )
        assert status == 200, answer
        return answer

    await send("issues", tools.github_issues("opened", 42, ["p2", "quality"]))
    issue = await issue_by_ref(client, "github:acme/governance#42")
    assert (issue["priority"], issue["category"]) == ("P2", "quality")
    await send("issue_comment", tools.github_comment(42, "KT rescheduled for Friday"))
    label = {"label": {"id": 9, "name": "in progress"}}
    await send("issues", tools.github_issues("labeled", 42, ["p2", "in progress"], **label))
    await send("issues", tools.github_issues("labeled", 42, ["p1"], label={"name": "P1"}))
    await send("issues", tools.github_issues("closed", 42, []))
    await send("issues", tools.github_issues("reopened", 42, []))
    ping = await send("ping", {"zen": "Keep it logically awesome.", "hook_id": 1})
    assert ping["outcome"] == "ignored"
    events = await events_of(client, issue["id"])
    assert names(events) == [
        "opened",
        "commented",
        "acknowledged",
        "priority_changed",
        "resolved",
        "reopened",
    ]


# --- generic (Standard Webhooks) ----------------------------------------------------------------


async def test_generic_standard_webhooks_sender(client: Client) -> None:
    source = await new_source(client, "generic")
    secret = source["secret"]
    assert secret.startswith("whsec_")
    created = tools.body_of(
        tools.generic_event("ticket.created", "INC0012345", labels=["security"])
    )
    status, answer = await deliver(client, source, created, tools.generic_headers(secret, created))
    assert (status, answer["outcome"]) == (200, "applied"), answer
    issue = await issue_by_ref(client, "generic:INC0012345")
    assert (issue["priority"], issue["category"]) == ("P2", "security_compliance")
    resolved = tools.body_of(
        tools.generic_event("ticket.status_changed", "INC0012345", status="resolved")
    )
    headers = tools.generic_headers(secret, resolved)
    status, answer = await deliver(client, source, resolved, headers)
    assert (status, answer["outcome"]) == (200, "applied"), answer
    stale = {**headers, "webhook-timestamp": str(int(time.time()) - 3600)}
    assert (await deliver(client, source, resolved, stale))[0] == 401
    other = tools.body_of(tools.generic_event("ticket.created", "INC1", vendor="globex"))
    status, problem = await deliver(client, source, other, tools.generic_headers(secret, other))
    assert status == 422 and problem["type"].endswith("/inbound-unmappable")
    assert "not the source's vendor" in problem["detail"]


# --- mapping overrides --------------------------------------------------------------------------


async def test_mapping_overrides_apply(client: Client) -> None:
    mapping = {
        "priorities": {"High": "P4"},
        "categories": {"vendor management": "vendor_management"},
        "default_priority": "P1",
        "statuses": {"resolve": ["Shipped"], "acknowledge": ["Triaged"]},
        "fields": {"title": "join(' / ', [issue.fields.project.name, issue.fields.summary])"},
    }
    source = await new_source(client, "jira", mapping=mapping)
    assert source["mapping"]["statuses"] == {"resolve": ["Shipped"], "acknowledge": ["Triaged"]}
    secret = source["secret"]
    payload = tools.jira_created("OPS-1", labels=[])
    body = tools.body_of(payload)
    assert (await deliver(client, source, body, tools.jira_headers(secret, body)))[0] == 200
    issue = await issue_by_ref(client, "jira:OPS-1")
    assert issue["priority"] == "P4"
    assert issue["category"] == "vendor_management"
    assert issue["title"] == "Governance / Vendor missed the OPS-1 report"
    for before, after, expected in (
        ("To Do", "In Progress", "ignored"),  # no longer an acknowledge status
        ("To Do", "Triaged", "applied"),
        ("Triaged", "Done", "ignored"),  # no longer a resolve status
        ("Done", "Shipped", "applied"),
    ):
        body = tools.body_of(tools.jira_updated("OPS-1", ("status", before, after)))
        status, answer = await deliver(client, source, body, tools.jira_headers(secret, body))
        assert (status, answer["outcome"]) == (200, expected), (after, answer)
    issue = await issue_by_ref(client, "jira:OPS-1")
    assert issue["status"] == "resolved"

    # A fixed mapping applies to a redelivery of a delivery that failed.
    broken = await new_source(client, "jira", mapping={"fields": {"key": "issue.nokey"}})
    body = tools.body_of(tools.jira_created("OPS-2"))
    headers = tools.jira_headers(broken["secret"], body, "retry-me")
    status, problem = await deliver(client, broken, body, headers)
    assert status == 422 and "no ticket key" in problem["detail"]
    resp = await client.patch(
        f"/v1/inbound-sources/{broken['id']}", json={"mapping": {"fields": {"key": "issue.key"}}}
    )
    assert resp.status == 200, await resp.text()
    status, answer = await deliver(client, broken, body, headers)
    assert (status, answer["outcome"], answer["duplicate"]) == (200, "applied", False)


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "type": "jira", "mapping": {"fields": {"key": "issue.[key"}}},
        {"name": "x", "type": "jira", "mapping": {"priorities": {"High": "P9"}}},
        {"name": "x", "type": "jira", "mapping": {"categories": {"a": "nonsense"}}},
        {"name": "x", "type": "jira", "mapping": {"unknown": 1}},
        {"name": "x", "type": "servicenow"},
        {"name": "x", "type": "jira", "vendor_id": "nobody"},
        {"name": "x", "type": "jira", "secret": "short"},
    ],
)
async def test_invalid_sources_are_refused_with_422(client: Client, body: dict[str, Any]) -> None:
    resp = await client.post("/v1/inbound-sources", json=body)
    assert resp.status == 422, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert (await (await client.get("/v1/inbound-sources")).json())["items"] == []


# --- secrets ------------------------------------------------------------------------------------


async def test_secrets_are_sealed_at_rest_and_rotation_keeps_the_old_one_for_a_while(
    client: Client, database_url: str
) -> None:
    source = await new_source(client, "github")
    old = source["secret"]
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval(
            "SELECT secret FROM inbound_sources WHERE id = $1", uuid.UUID(source["id"])
        )
    finally:
        await conn.close()
    assert old not in stored
    resp = await client.get(f"/v1/inbound-sources/{source['id']}")
    assert "secret" not in json.dumps({k: v for k, v in (await resp.json()).items() if v})
    resp = await client.post(f"/v1/inbound-sources/{source['id']}/rotate-secret", json={})
    assert resp.status == 200
    rotated = await resp.json()
    assert rotated["secret"] != old and rotated["previous_secret_expires_at"]
    for secret, number in ((old, 1), (rotated["secret"], 2)):
        body = tools.body_of(tools.github_issues("opened", number, []))
        status, _ = await deliver(
            client, source, body, tools.github_headers(secret, body, "issues")
        )
        assert status == 200
    chosen = "zendesk-made-this-secret-0123456789"
    resp = await client.post(
        f"/v1/inbound-sources/{source['id']}/rotate-secret", json={"secret": chosen}
    )
    assert (await resp.json())["secret"] == chosen
    body = tools.body_of(tools.github_issues("opened", 3, []))
    status, _ = await deliver(client, source, body, tools.github_headers(chosen, body, "issues"))
    assert status == 200


# --- vendor scoping -----------------------------------------------------------------------------


async def test_vendor_keys_see_only_their_sources_and_a_bound_source_only_its_vendor(
    client: Client, database_url: str
) -> None:
    acme = await new_source(client, "jira")
    globex = await new_source(client, "jira", vendor_id="globex")
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        _, acme_key = await create_api_key(pool, name="acme", role="vendor", vendor_id="acme-it")
    finally:
        await pool.close()
    as_acme = {"Authorization": f"Bearer {acme_key}"}
    for path in (
        f"/v1/inbound-sources/{globex['id']}",
        f"/v1/inbound-sources/{globex['id']}/deliveries",
    ):
        resp = await client.get(path, headers=as_acme)
        assert resp.status == 404, path
    page = await (await client.get("/v1/inbound-sources", headers=as_acme)).json()
    assert [s["id"] for s in page["items"]] == [acme["id"]]
    page = await (
        await client.get("/v1/inbound-sources", params={"vendor_id": "globex"}, headers=as_acme)
    ).json()
    assert [s["id"] for s in page["items"]] == [acme["id"]]
    resp = await client.get(f"/v1/inbound-sources/{acme['id']}/deliveries", headers=as_acme)
    assert resp.status == 200
    resp = await client.post(
        "/v1/inbound-sources", json={"name": "x", "type": "jira"}, headers=as_acme
    )
    assert resp.status == 403

    # Globex's issue with a Jira ref: Acme's source cannot touch it, whatever the payload says.
    resp = await client.post(
        "/v1/issues",
        json={
            "vendor_id": "globex",
            "title": "Globex's own",
            "category": "quality",
            "priority": "P3",
            "external_ref": "jira:GLX-1",
        },
    )
    assert resp.status == 201
    theirs = await resp.json()
    body = tools.body_of(tools.jira_updated("GLX-1", ("status", "To Do", "Done")))
    status, answer = await deliver(client, acme, body, tools.jira_headers(acme["secret"], body))
    assert (status, answer["outcome"], answer["issue_id"]) == (200, "ignored", None)
    assert "Globex" not in json.dumps(answer)
    body = tools.body_of(tools.jira_created("GLX-1"))
    status, answer = await deliver(client, acme, body, tools.jira_headers(acme["secret"], body))
    assert (status, answer["outcome"], answer["issue_id"]) == (200, "ignored", None)
    resp = await client.get(f"/v1/issues/{theirs['id']}")
    assert (await resp.json())["version"] == 1


async def test_secrets_rotate_reseals_inbound_secrets_under_the_newest_key(
    database_url: str,
) -> None:
    old_key, new_key = secretbox.generate_key(), secretbox.generate_key()
    old_box = secretbox.SecretBox([old_key])
    conn = await asyncpg.connect(database_url)
    try:
        made = []
        for n in range(3):
            source = await source_store.insert_source(
                conn,
                name=f"s{n}",
                kind="jira",
                vendor_id=None,
                mapping={},
                secret=f"secret-number-{n}-0123456789",
                box=old_box,
            )
            made.append(source.id)
        await source_store.rotate_secret(conn, made[0], "rotated-secret-0123456789", box=old_box)
        settings = Settings(database_url=database_url, secret_key=f"{new_key},{old_key}")
        assert await rotate_secrets(settings, page=2) == 0
        only_new = secretbox.SecretBox([new_key])
        opened = [await source_store.for_receiving(conn, i, only_new) for i in made]
        assert [o.secrets for o in opened if o is not None] == [
            ("rotated-secret-0123456789", "secret-number-0-0123456789"),
            ("secret-number-1-0123456789",),
            ("secret-number-2-0123456789",),
        ]
    finally:
        await conn.close()


async def test_hostile_bodies_get_problems_never_a_server_error(client: Client) -> None:
    source = await new_source(client, "jira")
    secret = source["secret"]
    path = client.make_url(f"/v1/inbound/{source['id']}")

    async def signed(body: bytes, delivery: str, **extra: str) -> tuple[int, Any]:
        headers = {**tools.jira_headers(secret, body, delivery), "Authorization": "", **extra}
        resp = await client.session.post(path, data=body, headers=headers)
        return resp.status, await resp.json(content_type=None)

    assert (await signed(b"{not json", "h-1"))[0] == 400
    assert (await signed(b'{"a": "\\u0000"}', "h-2"))[0] == 422
    assert (await signed(b"[" * 100 + b"]" * 100, "h-3"))[0] == 400
    status, answer = await signed(b"[1, 2, 3]", "h-4")
    assert (status, answer["outcome"]) == (200, "ignored")
    status, answer = await signed(b'{"webhookEvent": 5, "issue": {"key": {"x": 1}}}', "h-5")
    assert (status, answer["outcome"]) == (200, "ignored")
    body = tools.body_of(tools.jira_created("GOV-9", summary=None, priority="weird"))
    status, answer = await signed(body, "h-6")
    assert (status, answer["outcome"]) == (200, "applied"), answer
    issue = await issue_by_ref(client, "jira:GOV-9")
    assert issue["title"] == "Jira ticket GOV-9" and issue["priority"] == "P3"
    status, _ = await signed(b'{"a": 1}', "h-7", **{"Content-Type": "text/plain"})
    assert status == 415
    huge = b'{"pad": "' + b"x" * 300_000 + b'"}'
    assert (await signed(huge, "h-8"))[0] == 413
    log = {d["delivery_id"]: d for d in await deliveries_of(client, source)}
    assert log["h-1"]["outcome"] == "failed" and "not valid JSON" in log["h-1"]["error"]
    assert log["h-4"]["outcome"] == "ignored"


async def test_concurrent_deliveries_apply_once(client: Client) -> None:
    """The same delivery sent five times at once applies once; five deliveries (different ids)
    creating the same ticket at once open one issue, the others find it."""
    source = await new_source(client, "jira")
    body = tools.body_of(tools.jira_created("RACE-1"))
    headers = tools.jira_headers(source["secret"], body, "same")
    answers = await asyncio.gather(*(deliver(client, source, body, headers) for _ in range(5)))
    assert [s for s, _ in answers] == [200] * 5
    assert sorted(a["duplicate"] for _, a in answers) == [False, True, True, True, True]
    body = tools.body_of(tools.jira_created("RACE-2"))
    answers = await asyncio.gather(
        *(
            deliver(client, source, body, tools.jira_headers(source["secret"], body, f"r-{n}"))
            for n in range(5)
        )
    )
    outcomes = sorted(a["outcome"] for _, a in answers)
    assert outcomes == ["applied", "ignored", "ignored", "ignored", "ignored"], answers
    assert len({a["issue_id"] for _, a in answers}) == 1
    for ref in ("jira:RACE-1", "jira:RACE-2"):
        issue = await issue_by_ref(client, ref)
        assert names(await events_of(client, issue["id"])) == ["opened"]
