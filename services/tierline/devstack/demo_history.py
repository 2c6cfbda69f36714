"""A few weeks of governance history for `tierline dev --demo`, so the board's charts say something.

History cannot be made through the HTTP API, which always acts at the present moment. This
module runs the same service layer (`IssueService`, the API's write path) with a clock it sets
to moments in the past, so every event is decided by the real domain and stored with its
backdated time: issues opened day by day, acknowledged, commented, escalated, resolved, and
the SLA breaches (with the automatic escalations the policy causes) that the SLA engine would
have recorded at each clock's due time. It runs before the roles start, so the SLA engine
never races it; the relay and consumers then read it like any other history.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import get_args

import structlog

from tierline.domain import commands as c
from tierline.domain.events import Category
from tierline.domain.governance import DEFAULT_GOVERNANCE, Vendor
from tierline.domain.issue import InvalidTransition, Issue
from tierline.service_layer.issues import SYSTEM, IssueService
from tierline.service_layer.reference import ReferenceData
from tierline.store.pool import create_pool
from tierline.store.unit_of_work import PostgresUnitOfWorkFactory
from tierline.store.vendors import DuplicateVendor, insert_vendor

log = structlog.get_logger(__name__)

DAYS = 35
REF_PREFIX = "demo-history"
TITLES = {
    "communication": "Weekly governance call skipped",
    "cultural": "Escalations raised too late by the offshore team",
    "security_compliance": "Access review overdue for shared accounts",
    "quality": "Defect leakage above the agreed rate",
    "change_management": "Change deployed outside the approved window",
    "vendor_management": "Invoice does not match the service credits",
    "knowledge_transfer": "Runbook missing for the batch platform",
    "service_delivery": "Ticket backlog above the contractual limit",
    "other": "Contract clarification needed",
}
PRIORITIES = ("P1", "P2", "P3", "P4")
PRIORITY_WEIGHTS = (1, 3, 4, 2)


@dataclass
class Clock:
    """The moment the service believes it is; the seeder moves it forward."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Plan:
    """What happens to one issue, in hours after it was opened."""

    priority: str
    category: str
    steps: list[tuple[float, c.Command]] = field(default_factory=list)


def plan_issue(rng: random.Random) -> Plan:
    """A believable life: acknowledged late or early, sometimes escalated, mostly resolved."""
    priority = rng.choices(PRIORITIES, PRIORITY_WEIGHTS)[0]
    category = rng.choice(get_args(Category))
    policy = DEFAULT_GOVERNANCE.policy_for(1, priority)
    assert policy is not None
    respond = policy.respond_within.total_seconds() / 3600
    resolve = policy.resolve_within.total_seconds() / 3600
    plan = Plan(priority, category)
    ack = respond * rng.uniform(0.2, 1.7)
    plan.steps.append((ack, c.Acknowledge(note="looking into it")))
    if rng.random() < 0.4:
        plan.steps.append(
            (ack + 1, c.AddComment(body="Root cause analysis requested", author="sdm"))
        )
    if rng.random() < 0.25:
        plan.steps.append((ack + 2, c.Escalate(reason="no credible recovery plan")))
    if rng.random() < 0.85:
        plan.steps.append((resolve * rng.uniform(0.3, 1.6), c.Resolve(resolution="fixed")))
    return plan


async def seed_history(
    database_url: str, vendors: list[dict[str, str]], now: datetime | None = None, seed: int = 7
) -> int:
    """Seed the history once (a later start finds it and does nothing); how many issues."""
    now = now or datetime.now(UTC)
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        for vendor in vendors:
            with contextlib.suppress(DuplicateVendor):
                await insert_vendor(pool, Vendor.model_validate(vendor))
        clock = Clock(now - timedelta(days=DAYS))
        service = IssueService(PostgresUnitOfWorkFactory(pool, ReferenceData(pool)), clock=clock)
        seeder = _Seeder(service, clock, now)
        made = 0
        for v, vendor in enumerate(vendors):
            made += await seeder.vendor(vendor["id"], random.Random(seed + v))
    finally:
        await pool.close()
    if made:
        log.info("demo_history_seeded", issues=made, days=DAYS)
    return made


@dataclass
class _Seeder:
    service: IssueService
    clock: Clock
    end: datetime

    async def vendor(self, vendor_id: str, rng: random.Random) -> int:
        made = 0
        for days_ago in range(DAYS, 0, -1):
            day = (self.end - timedelta(days=days_ago)).replace(hour=8, minute=0, second=0)
            for n in range(rng.choice((0, 1, 1, 2))):
                opened_at = day + timedelta(hours=rng.uniform(0, 9))
                ref = f"{REF_PREFIX}:{vendor_id}-{days_ago}-{n}"
                if await self.issue(vendor_id, ref, opened_at, plan_issue(rng)):
                    made += 1
        return made

    async def issue(self, vendor_id: str, ref: str, opened_at: datetime, plan: Plan) -> bool:
        self.clock.now = opened_at
        outcome = await self.service.open(
            SYSTEM,
            c.OpenIssue(
                vendor_id=vendor_id,
                title=TITLES[plan.category],
                category=plan.category,
                priority=plan.priority,
                external_ref=ref,
                reported_by="demo",
            ),
        )
        if not outcome.created:
            return False  # seeded on an earlier start
        issue_id = outcome.issue.id
        for hours, command in sorted(plan.steps, key=lambda step: step[0]):
            at = opened_at + timedelta(hours=hours)
            if at >= self.end:
                break
            await self.breaches_until(issue_id, at)
            self.clock.now = at
            try:
                await self.service.execute(SYSTEM, issue_id, command)
            except InvalidTransition:
                continue  # e.g. escalating at the top tier after automatic escalations
        await self.breaches_until(issue_id, self.end - timedelta(minutes=1))
        return True

    async def breaches_until(self, issue_id: str, until: datetime) -> None:
        """Record what the SLA engine would have: each breach at its clock's due time."""
        for _ in range(12):
            issue: Issue = await self.service.get(SYSTEM, issue_id)
            due = sorted(
                (k.due_at, k.id)
                for k in issue.clocks
                if k.state == "running" and k.due_at is not None and k.due_at < until
            )
            if not due:
                return
            due_at, clock_id = due[0]
            self.clock.now = max(self.clock.now, due_at + timedelta(minutes=1))
            await self.service.execute(SYSTEM, issue_id, c.RecordSlaBreach(clock_id=clock_id))
