"""SLA clock values and the pure operations on them (start, pause, resume, stop, retarget)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from tierline.domain.calendar import BusinessCalendar
from tierline.domain.governance import SlaPolicy

ClockKind = Literal["respond", "resolve"]
ClockState = Literal["running", "paused", "met", "breached", "stopped"]


class Clock(BaseModel):
    """One SLA clock of an issue: a kind at a tier, measured in business seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    kind: ClockKind
    tier: int
    state: ClockState
    started_at: datetime
    target_seconds: float
    # Business seconds consumed before `running_since`; kept across pauses and retargets.
    elapsed_seconds: float = 0.0
    running_since: datetime | None = None
    due_at: datetime | None = None
    warn_at: list[float] = []
    warned: list[float] = []
    auto_escalate: bool = False
    breached_at: datetime | None = None
    ended_at: datetime | None = None

    def elapsed_at(self, now: datetime, calendar: BusinessCalendar) -> float:
        """Business seconds consumed by `now`."""
        if self.running_since is None:
            return self.elapsed_seconds
        return self.elapsed_seconds + calendar.between(self.running_since, now)

    @property
    def is_live(self) -> bool:
        """Still counting or paused (not met, breached or stopped)."""
        return self.state in ("running", "paused")


def start_clock(
    clock_id: str, kind: ClockKind, policy: SlaPolicy, now: datetime, calendar: BusinessCalendar
) -> Clock:
    """A new running clock for a kind under a policy."""
    within = policy.respond_within if kind == "respond" else policy.resolve_within
    target = within.total_seconds()
    return Clock(
        id=clock_id,
        kind=kind,
        tier=policy.tier,
        state="running",
        started_at=now,
        target_seconds=target,
        running_since=now,
        due_at=calendar.add(now, target),
        warn_at=list(policy.warn_at),
        auto_escalate=policy.auto_escalate,
    )


def pause_clock(clock: Clock, now: datetime, calendar: BusinessCalendar) -> Clock:
    """Stop counting, keeping the elapsed business time."""
    if clock.state != "running":
        return clock
    return clock.model_copy(
        update={
            "state": "paused",
            "elapsed_seconds": clock.elapsed_at(now, calendar),
            "running_since": None,
            "due_at": None,
        }
    )


def resume_clock(clock: Clock, now: datetime, calendar: BusinessCalendar) -> Clock:
    """Count again from `now`; the due time moves by the paused span."""
    if clock.state != "paused":
        return clock
    remaining = max(0.0, clock.target_seconds - clock.elapsed_seconds)
    return clock.model_copy(
        update={"state": "running", "running_since": now, "due_at": calendar.add(now, remaining)}
    )


def end_clock(clock: Clock, now: datetime, calendar: BusinessCalendar, state: ClockState) -> Clock:
    """Stop a live clock as met or stopped; a breached clock stays breached."""
    if not clock.is_live:
        return clock
    return clock.model_copy(
        update={
            "state": state,
            "elapsed_seconds": clock.elapsed_at(now, calendar),
            "running_since": None,
            "ended_at": now,
        }
    )


def retarget_clock(
    clock: Clock, policy: SlaPolicy, now: datetime, calendar: BusinessCalendar
) -> Clock:
    """Apply a new policy's target to a live clock, keeping the elapsed business time."""
    if not clock.is_live:
        return clock
    within = policy.respond_within if clock.kind == "respond" else policy.resolve_within
    target = within.total_seconds()
    unchanged = (
        target == clock.target_seconds
        and list(policy.warn_at) == clock.warn_at
        and policy.auto_escalate == clock.auto_escalate
    )
    if unchanged:
        # Re-basing running_since would change the clock without changing its deadline and
        # turn every policy change into an event on every open issue. The calendar may have
        # changed, though (a vendor's zone, hours or holidays): the deadline is then where the
        # remaining business time ends on it, the same computation as when it was set.
        if clock.state != "running" or clock.running_since is None:
            return clock
        try:
            due_at = calendar.add(clock.running_since, max(0.0, target - clock.elapsed_seconds))
        except ValueError:
            return clock  # no business hours to count: keep the deadline it has
        return clock if due_at == clock.due_at else clock.model_copy(update={"due_at": due_at})
    update: dict[str, object] = {
        "target_seconds": target,
        "warn_at": list(policy.warn_at),
        "auto_escalate": policy.auto_escalate,
    }
    if clock.state == "running":
        elapsed = clock.elapsed_at(now, calendar)
        update |= {
            "elapsed_seconds": elapsed,
            "running_since": now,
            "due_at": calendar.add(now, max(0.0, target - elapsed)),
        }
    return clock.model_copy(update=update)


def next_fire_at(clock: Clock, calendar: BusinessCalendar) -> tuple[datetime, float | None] | None:
    """When this clock next needs attention, and the warning threshold due then (None = breach)."""
    if clock.state != "running" or clock.running_since is None or clock.due_at is None:
        return None
    for threshold in clock.warn_at:
        if threshold in clock.warned:
            continue
        remaining = threshold * clock.target_seconds - clock.elapsed_seconds
        return calendar.add(clock.running_since, max(0.0, remaining)), threshold
    return clock.due_at, None
