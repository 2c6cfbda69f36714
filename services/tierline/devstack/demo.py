"""Demo data for `tierline dev --demo`, seeded through the public API like any integration."""

from __future__ import annotations

import aiohttp
import structlog

log = structlog.get_logger(__name__)

VENDORS = [
    {"id": "acme-it", "name": "Acme IT Services", "timezone": "Europe/Berlin"},
    {"id": "globex", "name": "Globex Outsourcing", "timezone": "Asia/Kolkata"},
    {"id": "initech", "name": "Initech Managed Services", "timezone": "America/New_York"},
]
ISSUES = [
    (
        "acme-it",
        "Weekly status report missing for three weeks",
        "communication",
        "P3",
        "jira:GOV-101",
    ),
    ("acme-it", "Unpatched CVE on shared jump host", "security_compliance", "P1", "jira:SEC-7"),
    ("globex", "Release 4.2 regression rate above contract", "quality", "P2", "snow:INC0042"),
    ("globex", "Runbooks not handed over before team rotation", "knowledge_transfer", "P3", None),
    ("initech", "Change freeze ignored during quarter close", "change_management", "P2", None),
    ("initech", "Escalation contact unreachable out of hours", "service_delivery", "P1", None),
]


async def seed_demo(api_url: str, key: str) -> None:
    """Create demo vendors and issues unless they exist; walk a few through the lifecycle."""
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(api_url, headers=headers) as http:
        for vendor in VENDORS:
            async with http.post("/v1/vendors", json=vendor) as resp:
                if resp.status not in (201, 409):
                    raise RuntimeError(f"demo vendor: {resp.status} {await resp.text()}")
        for n, (vendor_id, title, category, priority, ref) in enumerate(ISSUES):
            body = {
                "vendor_id": vendor_id,
                "title": title,
                "category": category,
                "priority": priority,
                "external_ref": ref or f"demo:{n}",
                "reported_by": "demo",
            }
            async with http.post("/v1/issues", json=body) as resp:
                if resp.status == 200:
                    continue  # seeded on an earlier start
                issue = await resp.json()
            if n % 3 == 1:
                await http.post(f"/v1/issues/{issue['id']}/acknowledge", json={"note": "on it"})
            if n % 3 == 2:
                await http.post(
                    f"/v1/issues/{issue['id']}/escalate", json={"reason": "no progress in a week"}
                )
    log.info("demo_seeded", vendors=len(VENDORS), issues=len(ISSUES))
