"""A whole ticket life driven by Jira-shaped deliveries, on every role over a real broker: the
Tierline issue opens, is acknowledged, commented, raised in priority and resolved with its SLA
clocks met; the read models and a vendor's webhook receive the same history, each event naming
the inbound source and the Jira delivery that caused it."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from tests.fixtures import inbound as jira
from tests.fixtures.api import call, create_vendor
from tests.fixtures.stack import running_stack, stack_settings
from tests.fixtures.tenants import eventually, receiver_running

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]


async def test_a_jira_ticket_life_ends_in_a_resolved_issue_with_met_clocks(
    database_url: str, tansu: str, topic: str
) -> None:
    settings = stack_settings(database_url, tansu, topic, webhooks_allow_private_targets=True)
    async with receiver_running() as receiver, running_stack(settings) as stack:
        async with stack.client() as admin:
            await create_vendor(admin)
            hook = {"url": receiver.url("acme"), "event_types": ["*"], "vendor_id": "acme-it"}
            await call(admin, "POST", "/v1/webhooks", 201, hook)
            source = await call(
                admin,
                "POST",
                "/v1/inbound-sources",
                201,
                {"name": "Jira Cloud", "type": "jira", "vendor_id": "acme-it"},
            )
        # Jira sends what the README tells an admin to tick, to the URL the API gave.
        life = [
            jira.jira_created("GOV-77"),
            jira.jira_updated("GOV-77", ("status", "To Do", "In Progress")),
            jira.jira_comment("GOV-77", "Vendor confirmed the root cause."),
            jira.jira_updated("GOV-77", ("priority", "High", "Highest")),
            jira.jira_updated("GOV-77", ("status", "In Progress", "Done")),
        ]
        async with aiohttp.ClientSession() as tool:
            for number, payload in enumerate(life, 1):
                body = jira.body_of(payload)
                headers = jira.jira_headers(source["secret"], body, f"jira-{number}")
                for _ in range(2):  # Jira retries: the second send changes nothing
                    async with tool.post(source["url"], data=body, headers=headers) as resp:
                        assert resp.status == 200, await resp.text()
                        answer = await resp.json()
                assert answer["duplicate"] is True and answer["outcome"] == "applied", answer
        issue_id = answer["issue_id"]
        async with stack.client() as admin:
            issue = await call(admin, "GET", f"/v1/issues/{issue_id}", 200)
            history = (await call(admin, "GET", f"/v1/issues/{issue_id}/events", 200))["items"]

            async def listed() -> dict[str, Any] | None:
                page = await call(admin, "GET", "/v1/issues", 200, params={"status": "resolved"})
                return next((i for i in page["items"] if i["id"] == issue_id), None)

            row = await eventually(listed, "the read model shows the resolved issue")
    assert (issue["status"], issue["priority"], issue["external_ref"]) == (
        "resolved",
        "P1",
        "jira:GOV-77",
    )
    assert {(c["kind"], c["state"]) for c in issue["sla"]} == {
        ("respond", "met"),
        ("resolve", "met"),
    }
    assert row["priority"] == "P1"
    kinds = [e["type"].split(".")[3] for e in history]
    assert kinds == ["opened", "acknowledged", "commented", "priority_changed", "resolved"]
    assert [e["inbounddelivery"] for e in history] == [f"jira-{n}" for n in range(1, 6)]
    assert {e["inboundsource"] for e in history} == {source["id"]}

    async def delivered() -> list[dict[str, Any]] | None:
        bodies = [json.loads(b) for b in receiver.received.get("acme", [])]
        return bodies if len(bodies) >= len(history) else None

    sent = await eventually(delivered, "the vendor's webhook received the whole history")
    # Through the relay, the broker and the dispatcher, the provenance stays on every event.
    assert sorted(b["inbounddelivery"] for b in sent) == [f"jira-{n}" for n in range(1, 6)]
    assert {b["inboundsource"] for b in sent} == {source["id"]}
