"""A reproducible synthetic workload: issue lifecycles driven through the pure domain.

Issues are opened against vendors, acknowledged, assigned, commented, escalated, put on hold,
resolved, reopened and closed over simulated days, and the SLA clocks are advanced the way the SLA
engine does (warnings, breaches, automatic escalations), all through `decide`/`evolve` with a
simulated clock. The result is the exact event sequence the write path would record, so tests and
benchmarks can store it and feed the log without waiting for real time to pass.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import get_args

from tierline.domain import commands as c
from tierline.domain.calendar import BusinessCalendar, CalendarSpec
from tierline.domain.events import Category
from tierline.domain.governance import PRIORITIES, Governance, SlaPolicy, Tier
from tierline.domain.issue import InvalidTransition, Issue, Rules, decide, evolve

CATEGORIES: tuple[str, ...] = get_args(Category)
START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def _policy(tier: int, priority: str, respond_hours: float, resolve_hours: float) -> SlaPolicy:
    return SlaPolicy.model_validate(
        {
            "tier": tier,
            "priority": priority,
            "respond_within": timedelta(hours=respond_hours),
            "resolve_within": timedelta(hours=resolve_hours),
            "auto_escalate": priority in ("P1", "P2"),
        }
    )


# Tight targets, so a simulated week has warnings, breaches and automatic escalations.
WORKLOAD_GOVERNANCE = Governance(
    tiers=[
        Tier(level=1, name="Operational"),
        Tier(level=2, name="Tactical"),
        Tier(level=3, name="Strategic"),
    ],
    sla=[
        _policy(tier, priority, respond, resolve)
        for tier in (1, 2, 3)
        for priority, respond, resolve in (
            ("P1", 1, 6),
            ("P2", 2, 12),
            ("P3", 4, 24),
            ("P4", 8, 48),
        )
    ],
)


@dataclass(frozen=True)
class GeneratedEvent:
    """One event as the write side would append it."""

    event_id: uuid.UUID
    stream_id: str
    vendor_id: str
    version: int
    type: str
    time: datetime
    data_json: str


@dataclass(frozen=True)
class GeneratedCommand:
    """The events one command produced (one transaction on the write side) and the state after."""

    issue: Issue
    events: list[GeneratedEvent]


@dataclass
class Workload:
    """Random lifecycles; the same seed gives the same events, ids included."""

    seed: int = 7
    vendors: tuple[str, ...] = ("acme-it", "globex", "initech")
    start: datetime = START
    open_share: float = 0.18
    mean_step_seconds: float = 240.0
    rules: Rules = field(
        default_factory=lambda: Rules(WORKLOAD_GOVERNANCE, BusinessCalendar(CalendarSpec()))
    )

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._now = self.start
        self._active: dict[str, Issue] = {}

    @property
    def now(self) -> datetime:
        """The simulated time of the last command."""
        return self._now

    def commands(self, count: int) -> Iterator[GeneratedCommand]:
        """The next `count` commands that recorded something."""
        produced = 0
        while produced < count:
            self._now += timedelta(seconds=self._random.expovariate(1 / self.mean_step_seconds))
            result = self._next()
            if result is not None:
                produced += 1
                yield result

    def events(self, count: int) -> Iterator[GeneratedEvent]:
        """At least `count` events, whole commands at a time."""
        produced = 0
        while produced < count:
            for command in self.commands(1):
                produced += len(command.events)
                yield from command.events

    def _next(self) -> GeneratedCommand | None:
        due = self._due_sla_command()
        if due is not None:
            return self._run(*due)
        if not self._active or self._random.random() < self.open_share:
            return self._open()
        issue_id = self._random.choice(list(self._active))
        return self._run(issue_id, self._pick_command(self._active[issue_id]))

    def _open(self) -> GeneratedCommand | None:
        issue_id = str(uuid.UUID(int=self._random.getrandbits(128), version=4))
        command = c.OpenIssue(
            vendor_id=self._random.choice(self.vendors),
            title=f"Generated issue {issue_id[:8]}",
            category=self._random.choice(CATEGORIES),
            priority=self._random.choice(PRIORITIES),
            reported_by="workload",
        )
        return self._apply(issue_id, None, command)

    def _run(self, issue_id: str, command: c.Command) -> GeneratedCommand | None:
        return self._apply(issue_id, self._active[issue_id], command)

    def _apply(
        self, issue_id: str, state: Issue | None, command: c.Command
    ) -> GeneratedCommand | None:
        now = self._now if state is None else max(self._now, state.updated_at)
        try:
            events = decide(state, command, now, self.rules)
        except InvalidTransition:
            return None
        if not events:
            return None
        generated = []
        version = 0 if state is None else state.version
        for event in events:
            version += 1
            state = evolve(state, event, issue_id=issue_id, version=version, at=now)
            generated.append(
                GeneratedEvent(
                    event_id=uuid.UUID(int=self._random.getrandbits(128), version=4),
                    stream_id=issue_id,
                    vendor_id=state.vendor_id,
                    version=version,
                    type=event.event_type(),
                    time=now,
                    data_json=event.model_dump_json(),
                )
            )
        assert state is not None
        if state.status == "closed":
            self._active.pop(issue_id, None)
        else:
            self._active[issue_id] = state
        return GeneratedCommand(state, generated)

    def _due_sla_command(self) -> tuple[str, c.Command] | None:
        """What the SLA engine would record now for a randomly chosen issue, if anything."""
        if not self._active:
            return None
        issue_id = self._random.choice(list(self._active))
        for clock in self._active[issue_id].clocks:
            if clock.state != "running" or clock.due_at is None:
                continue
            if clock.due_at <= self._now:
                return issue_id, c.RecordSlaBreach(clock_id=clock.id)
            elapsed = clock.elapsed_at(self._now, self.rules.calendar)
            for threshold in clock.warn_at:
                if threshold not in clock.warned and elapsed >= threshold * clock.target_seconds:
                    return issue_id, c.RecordSlaWarning(clock_id=clock.id, threshold=threshold)
        return None

    def _pick_command(self, issue: Issue) -> c.Command:
        pick = self._random.random()
        reason = "generated"
        if issue.status == "resolved":
            if pick < 0.5:
                return c.Close()
            return c.Reopen(reason=reason) if pick < 0.65 else c.AddComment(body="still fine?")
        if issue.status == "on_hold":
            return c.Resume() if pick < 0.7 else c.AddComment(body="waiting on the vendor")
        choices: list[tuple[float, c.Command]] = [
            (0.18, c.Acknowledge(note="looking")),
            (0.12, c.Assign(assignee=self._random.choice(("ana", "bo", "chen", "dee")))),
            (0.14, c.AddComment(body="progress update", author="workload")),
            (0.06, c.ChangePriority(priority=self._random.choice(PRIORITIES))),
            (0.10, c.Escalate(reason="no progress")),
            (0.04, c.Deescalate(reason="back on track")),
            (0.06, c.Hold(reason="waiting for the customer")),
            (0.30, c.Resolve(resolution="fixed")),
        ]
        for weight, command in choices:
            if pick < weight:
                return command
            pick -= weight
        return choices[-1][1]
