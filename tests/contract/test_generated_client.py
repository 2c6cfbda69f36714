"""A client generated from schemas/openapi.json by openapi-python-client drives the whole API.

The client is generated into a temporary directory during the test (the generator's version
is pinned in the test extras), so what integrations get is what is tested: every operation of
the spec must be present in it, and every answer of the lifecycle must parse into its models.
`raise_on_unexpected_status` makes any status the spec does not document an error.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.fixtures.stack import Stack

SPEC = Path(__file__).resolve().parents[2] / "schemas" / "openapi.json"
PACKAGE = "tierline_generated_client"
GENERATOR = Path(sys.executable).with_name("openapi-python-client")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Generate the client once per module and make it importable."""
    import subprocess

    root = tmp_path_factory.mktemp("client")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(SPEC),
            "--meta",
            "none",
            "--output-path",
            str(root / PACKAGE),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    sys.path.insert(0, str(root))
    try:
        yield root / PACKAGE
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.startswith(PACKAGE)]:
            del sys.modules[name]


def operation(tag: str, name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.api.{tag.replace('-', '_')}.{name}")


def model(name: str) -> Any:
    return getattr(importlib.import_module(f"{PACKAGE}.models"), name)


def test_every_operation_of_the_spec_is_in_the_client(generated: Path) -> None:
    spec = json.loads(SPEC.read_text())
    in_spec = {
        (op["tags"][0].replace("-", "_"), op["operationId"])
        for methods in spec["paths"].values()
        for op in methods.values()
    }
    in_client = {
        (module.parent.name, module.stem)
        for module in (generated / "api").glob("*/*.py")
        if module.stem != "__init__"
    }
    assert in_client == in_spec
    assert len(in_client) == sum(len(m) for m in spec["paths"].values())
    for tag, name in in_spec:  # and each one imports, with its async form
        assert callable(operation(tag, name).asyncio_detailed)


async def call(tag: str, name: str, *args: Any, **kwargs: Any) -> Any:
    response = await operation(tag, name).asyncio_detailed(*args, **kwargs)
    assert response.parsed is not None, (name, response.status_code, response.content[:500])
    return response


async def test_a_lifecycle_through_the_generated_client(generated: Path, stack: Stack) -> None:
    client_module = importlib.import_module(f"{PACKAGE}.client")
    client = client_module.AuthenticatedClient(
        base_url=stack.api_url, token=stack.admin_key, raise_on_unexpected_status=True
    )
    vendor = await call(
        "vendors",
        "create_vendor",
        client=client,
        body=model("Vendor").from_dict(
            {"id": "acme-it", "name": "Acme IT", "timezone": "Asia/Kolkata"}
        ),
    )
    assert vendor.status_code == 201 and vendor.parsed.effective_timezone == "Asia/Kolkata"
    listed = await call("vendors", "list_vendors", client=client)
    assert [v.id for v in listed.parsed.items] == ["acme-it"]
    body = model("OpenIssue").from_dict(
        {
            "vendor_id": "acme-it",
            "title": "Weekly report missing",
            "category": "communication",
            "priority": "P2",
            "external_ref": "jira:GOV-7",
        }
    )
    opened = await call("issues", "open_issue", client=client, body=body)
    assert opened.status_code == 201
    again = await call("issues", "open_issue", client=client, body=body)
    assert again.status_code == 200 and again.parsed.id == opened.parsed.id
    issue_id = opened.parsed.id
    await call(
        "commands", "command_acknowledge", issue_id, client=client, body=model("Acknowledge")()
    )
    escalated = await call(
        "commands",
        "command_escalate",
        issue_id,
        client=client,
        body=model("Escalate").from_dict({"reason": "no report for 3 weeks"}),
    )
    assert escalated.parsed.tier == 2
    stale = await operation("commands", "command_resolve").asyncio_detailed(
        issue_id,
        client=client,
        body=model("Resolve").from_dict({"resolution": "resumed"}),
        if_match='"1"',
    )
    assert stale.status_code == 412 and stale.parsed.status == 412
    resolved = await call(
        "commands",
        "command_resolve",
        issue_id,
        client=client,
        body=model("Resolve").from_dict({"resolution": "resumed"}),
        if_match=escalated.headers["ETag"],
    )
    assert resolved.parsed.status == "resolved"
    fetched = await call("issues", "get_issue", issue_id, client=client)
    assert fetched.parsed.version == resolved.parsed.version
    events = await call("issues", "issue_events", issue_id, client=client)
    assert len(events.parsed.items) == resolved.parsed.version
    for _ in range(100):  # the read model catches up
        page = await call("issues", "list_issues", client=client, vendor_id=["acme-it"])
        if page.parsed.items and page.parsed.items[0].status == "resolved":
            break
        await asyncio.sleep(0.1)
    assert [i.id for i in page.parsed.items] == [issue_id]
    card = await call("vendors", "vendor_scorecard", "acme-it", client=client)
    assert card.parsed.opened == 1 and card.parsed.resolved == 1
    hook = await call(
        "webhooks",
        "create_webhook",
        client=client,
        body=model("CreateWebhook").from_dict(
            {"url": "https://93.184.216.34/hooks", "event_types": ["*"]}
        ),
    )
    assert hook.parsed.secret.startswith("whsec_")
    hooks = await call("webhooks", "list_webhooks", client=client)
    assert [h.id for h in hooks.parsed.items] == [hook.parsed.id]
    await call("webhooks", "list_webhook_deliveries", str(hook.parsed.id), client=client)
    # The read-modify-write of governance: PUT takes what GET gave, and guards against races.
    current = await call("governance", "get_governance", client=client)
    update = model("GovernanceUpdate").from_dict(current.parsed.to_dict())
    put = await call("governance", "put_governance", client=client, body=update)
    assert put.parsed.version == current.parsed.version + 1
    lost = await operation("governance", "put_governance").asyncio_detailed(
        client=client, body=update
    )
    assert lost.status_code == 412
