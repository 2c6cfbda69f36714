"""The governance ladder, SLA policy table and vendor calendars, as plain data."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from tierline.domain.calendar import MAX_HOLIDAYS, CalendarSpec, Holiday, known_zone

Priority = Literal["P1", "P2", "P3", "P4"]
PRIORITIES: tuple[Priority, ...] = ("P1", "P2", "P3", "P4")


class Tier(BaseModel):
    """One rung of the escalation ladder."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    level: int = Field(ge=1, le=10)
    name: str = Field(min_length=1, max_length=100)
    owner: str = Field(default="", max_length=200)


MAX_TARGET = timedelta(days=3650)


def rfc3339_duration(value: timedelta) -> str:
    """A non-negative timedelta as an RFC 3339 (ISO 8601) duration in days and time."""
    micros = value // timedelta(microseconds=1)
    days, rest = divmod(micros, 86_400_000_000)
    hours, rest = divmod(rest, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    seconds, fraction = divmod(rest, 1_000_000)
    clock = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M")) if n)
    if seconds or fraction:
        clock += f"{seconds}.{fraction:06d}".rstrip("0").rstrip(".") + "S"
    if not days and not clock:
        return "PT0S"
    return "P" + (f"{days}D" if days else "") + (f"T{clock}" if clock else "")


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
        """A target of zero or less would breach at once; one over ten years is a typo."""
        if value.total_seconds() <= 0:
            raise ValueError("must be a positive duration")
        if value > MAX_TARGET:
            raise ValueError("must be at most 3650 days")
        return value

    @field_serializer("respond_within", "resolve_within")
    def _rfc3339_duration(self, value: timedelta) -> str:
        """Days, hours, minutes, seconds (`P2DT3H`): RFC 3339 durations have no 365-day year."""
        return rfc3339_duration(value)

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
    """A supplier issues are raised against; its calendar drives business time.

    A calendar without a zone of its own (inline or named in the governance document) runs in
    the vendor's zone: Kolkata office hours are Kolkata hours unless the calendar says otherwise.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    name: str = Field(min_length=1, max_length=200)
    timezone: str = "UTC"
    calendar: str | CalendarSpec | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        """The zone must be an IANA name zoneinfo can load."""
        return known_zone(value)

    def calendar_spec(self, governance: Governance) -> CalendarSpec:
        """The calendar this vendor's clocks run on, zone resolved (24x7 when it has none)."""
        spec = governance.calendars.get(self.calendar) if isinstance(self.calendar, str) else None
        if isinstance(self.calendar, CalendarSpec):
            spec = self.calendar
        return (spec or CalendarSpec()).in_zone(self.timezone)

    def effective_timezone(self, governance: Governance) -> str:
        """The zone the vendor's business hours are counted in."""
        zone = self.calendar_spec(governance).timezone
        assert zone is not None, "calendar_spec always resolves the zone"
        return zone

    def changed(self, change: VendorChange) -> Vendor:
        """The vendor after a change; InvalidVendorChange when the change cannot apply."""
        update: dict[str, Any] = {
            field: getattr(change, field) for field in change.model_fields_set - {"holidays"}
        }
        if change.holidays is not None:
            update["calendar"] = self._with_holidays(change)
        return Vendor.model_validate({**self.model_dump(), **update})

    def _with_holidays(self, change: VendorChange) -> CalendarSpec:
        """The inline calendar with its holiday list replaced (a 24x7 one if there was none)."""
        assert change.holidays is not None
        if "calendar" in change.model_fields_set:
            raise InvalidVendorChange("holidays", "send holidays inside calendar when replacing it")
        if isinstance(self.calendar, str):
            raise InvalidVendorChange(
                "holidays",
                f"the vendor uses the governance calendar {self.calendar!r}; its holidays are"
                " changed in the governance document",
            )
        current = self.calendar or CalendarSpec()
        return current.model_copy(update={"holidays": sorted(set(change.holidays))})

    def check(self, governance: Governance) -> None:
        """InvalidVendorChange unless the calendar exists and has business hours to count."""
        if isinstance(self.calendar, str) and self.calendar not in governance.calendars:
            raise InvalidVendorChange(
                "calendar",
                f"calendar {self.calendar!r} is not defined in the governance document",
            )
        if not self.calendar_spec(governance).has_hours:
            raise InvalidVendorChange("calendar", "the calendar has no business hours")


class VendorChange(BaseModel):
    """`PATCH /v1/vendors/{id}`: the fields given replace the vendor's; the rest stay.

    `calendar: null` returns the vendor to 24x7. `holidays` replaces the holiday list of the
    vendor's inline calendar (making one that is 24x7 when it has none); it cannot be combined
    with `calendar`, and a vendor on a governance calendar changes holidays there instead.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    timezone: str | None = None
    calendar: str | CalendarSpec | None = None
    holidays: list[Holiday] | None = Field(default=None, max_length=MAX_HOLIDAYS)

    @field_validator("name", "timezone", "holidays", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        """Leave a field out to keep it; only `calendar` may be null."""
        if value is None:
            raise ValueError("may not be null")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        """The zone must be an IANA name zoneinfo can load."""
        return None if value is None else known_zone(value)


class InvalidVendorChange(ValueError):
    """A vendor (or a change to one) that is well-formed but cannot be used; names the field."""

    def __init__(self, field: str, detail: str) -> None:
        self.field = field
        self.detail = detail
        super().__init__(detail)
