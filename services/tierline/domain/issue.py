"""The issue aggregate: `decide(state, command, now, rules) -> events`, `evolve(state, event)`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import singledispatch

from pydantic import BaseModel, ConfigDict

from tierline.domain import commands as c
from tierline.domain import events as e
from tierline.domain.calendar import BusinessCalendar
from tierline.domain.clocks import (
    Clock,
    ClockKind,
    end_clock,
    pause_clock,
    resume_clock,
    retarget_clock,
    start_clock,
)
from tierline.domain.events import Category, Status
from tierline.domain.governance import Governance, Priority

CLOCK_KINDS: tuple[ClockKind, ...] = ("respond", "resolve")


class InvalidTransition(Exception):
    """The issue's state forbids the command; nothing is recorded."""

    def __init__(self, command: str, status: str, detail: str | None = None) -> None:
        self.command = command
        self.status = status
        self.detail = detail or f"cannot {command} an issue that is {status}"
        super().__init__(self.detail)


class Issue(BaseModel):
    """The current state of one issue (the write side's snapshot)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    vendor_id: str
    title: str
    description: str | None = None
    category: Category
    priority: Priority
    status: Status
    tier: int
    assignee: str | None = None
    external_ref: str | None = None
    reported_by: str | None = None
    version: int
    created_at: datetime
    updated_at: datetime
    status_before_hold: Status | None = None
    clock_seq: int = 0
    clocks: list[Clock] = []


@dataclass(frozen=True)
class Rules:
    """What a decision needs besides the state: the governance table and the vendor's calendar."""

    governance: Governance
    calendar: BusinessCalendar


def decide(state: Issue | None, command: c.Command, now: datetime, rules: Rules) -> list[e.Event]:
    """The events a command produces against the current state, or InvalidTransition."""
    if isinstance(command, c.OpenIssue):
        if state is not None:
            raise InvalidTransition("open", state.status, "issue already exists")
        return [_open(command, now, rules)]
    if state is None:
        raise InvalidTransition(type(command).__name__, "absent", "issue does not exist")
    return _decide(command, state, now, rules)


@singledispatch
def _decide(command: c.Command, state: Issue, now: datetime, rules: Rules) -> list[e.Event]:
    raise TypeError(f"no decision for {type(command).__name__}")


def _require(state: Issue, command: str, *allowed: Status) -> None:
    if state.status not in allowed:
        raise InvalidTransition(command, state.status)


def _new_clocks(
    tier: int, priority: str, seq: int, now: datetime, rules: Rules
) -> tuple[list[Clock], int]:
    policy = rules.governance.policy_for(tier, priority)
    if policy is None:
        return [], seq
    seq += 1
    clocks = [
        start_clock(f"{kind}-{seq}", kind, policy, now, rules.calendar) for kind in CLOCK_KINDS
    ]
    return clocks, seq


def _open(command: c.OpenIssue, now: datetime, rules: Rules) -> e.Event:
    clocks, _ = _new_clocks(1, command.priority, 0, now, rules)
    return e.Opened(clocks=clocks, tier=1, **command.model_dump())


@_decide.register
def _(command: c.Acknowledge, state: Issue, now: datetime, rules: Rules) -> list[e.Event]:
    _require(state, "acknowledge", "open")
    clocks = [
        end_clock(k, now, rules.calendar, "met") if k.kind == "respond" else k for k in state.clocks
    ]
    return [e.Acknowledged(note=command.note, clocks=clocks)]


@_decide.register
def _(command: c.Assign, state: Issue, now: datetime, rules: Rules) -> list[e.Event]:
    _require(state, "assign", "open", "acknowledged", "on_hold", "resolved")
    return [e.Assigned(assignee=command.assignee)]


@_decide.register
def _(command: c.AddComment, state: Issue, now: datetime, rules: Rules) -> list[e.Event]:
    _require(state, "comment on", "open", "acknowledged", "on_hold", "resolved")
    return [e.Commented(body=command.body, author=command.author)]


@_decide.register
def _(command: c.ChangePriority, state: Issue, now: datetime, rules: Rules) -> list[e.Event]:
    _require(state, "change the priority of", "open", "acknowledged", "on_hold", "resolved")
    if command.priority == state.priority:
        return []
    policy = rules.governance.policy_for(state.tier, command.priority)
    clocks = state.clocks
    if policy is not None:
        clocks = [retarget_clock(k, policy, now, rules.calendar) for k in state.clocks]
    return [
        e.PriorityChanged(
            from_priority=state.priority,
            to_priority=command.priority,
            reason=command.reason,
            clocks=clocks,
        )
    ]


def _move_tier(state: Issue, to_tier: int, now: datetime, rules: Rules) -> list[Clock]:
    """The old tier's clocks stopped (a breached one stays breached), then the new tier's."""
    # The ended clocks stay in the list so the issue and the read models keep each tier's
    # outcome; dropping them would leave consumers with a clock that silently vanished.
    ended = [end_clock(k, now, rules.calendar, "stopped") for k in state.clocks]
    new, _ = _new_clocks(to_tier, state.priority, state.clock_seq, now, rules)
    return [*ended, *new]


def _escalation(
    state: Issue, to_tier: int, reason: str, now: datetime, rules: Rules, automatic: bool
) -> e.Escalated:
    clocks = _move_tier(state, to_tier, now, rules)
    return e.Escalated(
        from_tier=state.tier, to_tier=to_tier, reason=reason, automatic=automatic, clocks=clocks
    )


@_decide.register
def _(command: c.Escalate, state: Issue, now: datetime, rules: Rules) -> list[e.Event]:
    _require(state, "escalate", "open", "acknowledged")
    top = rules.governance.top_tier
    to_tier = command.to_tier if command.to_tier is not None else state.tier + 1
    if state.tier >= top:
        raise InvalidTransition("escalate", state.status, f"already at the top tier ({top})")
    if not state.tier < to_tier <= top:
        raise InvalidTransition(
            "escalate", state.status, f"to_tier must be above {state.tier} and at most {top}"
        )
    return [_escalation(state, to_tier, command.reason, now, rules, automatic=False)]


@_decide.register
def _(command: c.Deescalate, state: Issue, now: datetime, rules: Rules) -> list[e.Event]:
    _require(state, "deescalate", "open", "acknowledged")
    to_tier = command.to_tier if command.to_tier is not None else state.tier - 1
    if to_tier < 1:
        raise InvalidTransition("deescalate", state.status, "cannot deescalate below tier 1")
    if to_tier >= state.tier:
        raise InvalidTransition("deescalate", state.status, f"to_tier must be below {state.tier}")
    clocks = _move_tier(state, to_tier, now, rules)
    return [
        e.Deescalated(from_tier=state.tier, to_tier=to_tier, reason=command.reason, clocks=clocks)
    ]


@_decide.register
def _(command: c.Hold, state: Issue, now: datetime, rules: Rules) -> list[e.Event]:
    _require(state, "hold", "open", "acknowledged")
    clocks = [pause_clock(k, now, rules.calendar) for k in state.clocks]
    return [e.PutOnHold(reason=command.reason, clocks=clocks)]


@_decide.register
def _(command: c.Resume, state: Issue, now: datetime, rules: Rules) -> list[e.Event]:
    _require(state, "resume", "on_hold")
    clocks = [resume_clock(k, now, rules.calendar) for k in state.clocks]
    return [e.Resumed(status=state.status_before_hold or "open", clocks=clocks)]


@_decide.register
def _(command: c.Resolve, state: Issue, now: datetime, rules: Rules) -> list[e.Event]:
    _require(state, "resolve", "open", "acknowledged", "on_hold")
    clocks = [end_clock(k, now, rules.calendar, "met") for k in state.clocks]
    return [e.Resolved(resolution=command.resolution, clocks=clocks)]


@_decide.register
def _(command: c.Reopen, state: Issue, now: datetime, rules: Rules) -> list[e.Event]:
    _require(state, "reopen", "resolved")
    clocks, _ = _new_clocks(state.tier, state.priority, state.clock_seq, now, rules)
    return [e.Reopened(reason=command.reason, clocks=[*state.clocks, *clocks])]


@_decide.register
def _(command: c.Close, state: Issue, now: datetime, rules: Rules) -> list[e.Event]:
    _require(state, "close", "resolved")
    return [e.Closed()]


def _live_clock(state: Issue, clock_id: str) -> Clock | None:
    for clock in state.clocks:
        if clock.id == clock_id and clock.state == "running":
            return clock
    return None


@_decide.register
def _(command: c.RecordSlaWarning, state: Issue, now: datetime, rules: Rules) -> list[e.Event]:
    clock = _live_clock(state, command.clock_id)
    # A stale or repeated warning is not an error: the engine may race a state change.
    if clock is None or clock.due_at is None:
        return []
    if command.threshold not in clock.warn_at or command.threshold in clock.warned:
        return []
    if clock.elapsed_at(now, rules.calendar) < command.threshold * clock.target_seconds - 1e-3:
        return []
    warned = clock.model_copy(update={"warned": sorted([*clock.warned, command.threshold])})
    clocks = [warned if k.id == clock.id else k for k in state.clocks]
    return [
        e.SlaWarning(
            clock_id=clock.id,
            tier=clock.tier,
            kind=clock.kind,
            threshold=command.threshold,
            due_at=clock.due_at,
            clocks=clocks,
        )
    ]


@_decide.register
def _(command: c.RecordSlaBreach, state: Issue, now: datetime, rules: Rules) -> list[e.Event]:
    clock = _live_clock(state, command.clock_id)
    if clock is None or clock.due_at is None or now < clock.due_at:
        return []
    breached = clock.model_copy(
        update={
            "state": "breached",
            "breached_at": now,
            "elapsed_seconds": clock.elapsed_at(now, rules.calendar),
            "running_since": None,
        }
    )
    clocks = [breached if k.id == clock.id else k for k in state.clocks]
    recorded: list[e.Event] = [
        e.SlaBreached(
            clock_id=clock.id,
            tier=clock.tier,
            kind=clock.kind,
            due_at=clock.due_at,
            breached_at=now,
            clocks=clocks,
        )
    ]
    top = rules.governance.top_tier
    if clock.auto_escalate and state.tier < top and state.status in ("open", "acknowledged"):
        after = state.model_copy(update={"clocks": clocks})
        reason = f"{clock.kind} SLA breached at tier {clock.tier}"
        recorded.append(_escalation(after, state.tier + 1, reason, now, rules, automatic=True))
    return recorded


@_decide.register
def _(command: c.RecomputeSla, state: Issue, now: datetime, rules: Rules) -> list[e.Event]:
    policy = rules.governance.policy_for(state.tier, state.priority)
    if policy is None or not any(k.is_live for k in state.clocks):
        return []
    clocks = [retarget_clock(k, policy, now, rules.calendar) for k in state.clocks]
    if clocks == state.clocks:
        return []
    return [
        e.PriorityChanged(
            from_priority=state.priority,
            to_priority=state.priority,
            reason="SLA policy changed",
            clocks=clocks,
        )
    ]


def evolve(
    state: Issue | None, event: e.Event, *, issue_id: str, version: int, at: datetime
) -> Issue:
    """The state after one recorded event."""
    if isinstance(event, e.Opened):
        return Issue(
            id=issue_id,
            vendor_id=event.vendor_id,
            title=event.title,
            description=event.description,
            category=event.category,
            priority=event.priority,
            status="open",
            tier=event.tier,
            external_ref=event.external_ref,
            reported_by=event.reported_by,
            version=version,
            created_at=at,
            updated_at=at,
            clock_seq=1 if event.clocks else 0,
            clocks=event.clocks or [],
        )
    if state is None:
        raise ValueError(f"{event.name} before opened")
    update = _apply(event, state)
    if event.clocks is not None:
        update["clocks"] = event.clocks
        update["clock_seq"] = max([state.clock_seq, *(_clock_seq(k) for k in event.clocks)])
    update |= {"version": version, "updated_at": at}
    return state.model_copy(update=update)


def _clock_seq(clock: Clock) -> int:
    return int(clock.id.rsplit("-", 1)[1])


@singledispatch
def _apply(event: e.Event, state: Issue) -> dict[str, object]:
    return {}


@_apply.register
def _(event: e.Acknowledged, state: Issue) -> dict[str, object]:
    return {"status": "acknowledged"}


@_apply.register
def _(event: e.Assigned, state: Issue) -> dict[str, object]:
    return {"assignee": event.assignee}


@_apply.register
def _(event: e.PriorityChanged, state: Issue) -> dict[str, object]:
    return {"priority": event.to_priority}


@_apply.register
def _(event: e.Escalated, state: Issue) -> dict[str, object]:
    return {"tier": event.to_tier, "status": "open"}


@_apply.register
def _(event: e.Deescalated, state: Issue) -> dict[str, object]:
    return {"tier": event.to_tier, "status": "open"}


@_apply.register
def _(event: e.PutOnHold, state: Issue) -> dict[str, object]:
    return {"status": "on_hold", "status_before_hold": state.status}


@_apply.register
def _(event: e.Resumed, state: Issue) -> dict[str, object]:
    return {"status": event.status, "status_before_hold": None}


@_apply.register
def _(event: e.Resolved, state: Issue) -> dict[str, object]:
    return {"status": "resolved"}


@_apply.register
def _(event: e.Reopened, state: Issue) -> dict[str, object]:
    return {"status": "open"}


@_apply.register
def _(event: e.Closed, state: Issue) -> dict[str, object]:
    return {"status": "closed"}
