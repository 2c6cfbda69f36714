"""The governance ladder, SLA policy table and vendor calendars, as plain data."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tierline.domain.calendar import CalendarSpec

Priority = Literal["P1", "P2", "P3", "P4"]
PRIORITIES: tuple[Priority, ...] = ("P1", "P2", "P3", "P4")


class Tier(BaseModel):
    """One rung of the escalation ladder."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    level: int = Field(ge=1, le=10)
    name: str = Field(min_length=1, max_length=100)
    owner: str = Field(default="", max_length=200)


class SlaPolicy(BaseModel):
    """Targets for one (tier, priority): respond and resolve within, warnings, escalation."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    tier: int = Field(ge=1, le=10)
    priority: Priority
    respond_within: timedelta
    resolve_within: timedelta
    warn_at: list[float] = Field(default_factory=lambda: [0.75, 0.9])
    auto_escalate: bool = False

    @field_validator("respond_within", "resolve_within")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        """A target of zero or less would breach at once."""
        if value.total_seconds() <= 0:
            raise ValueError("must be a positive duration")
        return value

    @field_validator("warn_at")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        """Warnings are fractions of the target, strictly between 0 and 1."""
        if any(not 0 < f < 1 for f in value):
            raise ValueError("each warning threshold must be between 0 and 1 (exclusive)")
        return sorted(set(value))


class Governance(BaseModel):
    """The whole governance document as `GET /v1/governance` shows it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    tiers: list[Tier] = Field(min_length=1)
    sla: list[SlaPolicy] = Field(default_factory=list)
    calendars: dict[str, CalendarSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Governance:
        """Tiers are 1..n without gaps; each policy names a tier once per priority."""
        levels = [t.level for t in self.tiers]
        if sorted(levels) != list(range(1, len(levels) + 1)):
            raise ValueError("tier levels must be 1..n without gaps or repeats")
        seen: set[tuple[int, str]] = set()
        for policy in self.sla:
            if policy.tier not in levels:
                raise ValueError(f"sla policy names unknown tier {policy.tier}")
            if (policy.tier, policy.priority) in seen:
                raise ValueError(f"duplicate sla policy for tier {policy.tier} {policy.priority}")
            seen.add((policy.tier, policy.priority))
        return self

    @property
    def top_tier(self) -> int:
        """The highest level of the ladder."""
        return max(t.level for t in self.tiers)

    def policy_for(self, tier: int, priority: str) -> SlaPolicy | None:
        """The SLA policy for a tier and priority, if the table has one."""
        for policy in self.sla:
            if policy.tier == tier and policy.priority == priority:
                return policy
        return None


def _policy(tier: int, priority: str, respond: float, resolve: float) -> SlaPolicy:
    return SlaPolicy(
        tier=tier,
        priority=cast(Priority, priority),
        respond_within=timedelta(hours=respond),
        resolve_within=timedelta(hours=resolve),
        auto_escalate=priority in ("P1", "P2"),
    )


DEFAULT_GOVERNANCE = Governance(
    tiers=[
        Tier(level=1, name="Operational", owner="Service delivery managers"),
        Tier(level=2, name="Tactical", owner="Vendor management office"),
        Tier(level=3, name="Strategic", owner="Executive steering committee"),
    ],
    sla=[
        _policy(tier, prio, respond, resolve)
        for tier in (1, 2, 3)
        for prio, respond, resolve in (
            ("P1", 1, 8),
            ("P2", 4, 24),
            ("P3", 8, 72),
            ("P4", 24, 160),
        )
    ],
)


class Vendor(BaseModel):
    """A supplier issues are raised against; its calendar drives business time."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    name: str = Field(min_length=1, max_length=200)
    timezone: str = "UTC"
    calendar: str | CalendarSpec | None = None

    def calendar_spec(self, governance: Governance) -> CalendarSpec:
        """The calendar this vendor's clocks run on (24x7 when it has none)."""
        if self.calendar is None:
            return CalendarSpec(timezone=self.timezone)
        if isinstance(self.calendar, CalendarSpec):
            return self.calendar
        spec = governance.calendars.get(self.calendar)
        return spec if spec is not None else CalendarSpec(timezone=self.timezone)
