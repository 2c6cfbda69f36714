"""Vendor calendars: zone inheritance, vendor changes, and deadlines inside the vendor's hours."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tierline.domain import commands as c
from tierline.domain.calendar import WEEKDAYS, BusinessCalendar, CalendarSpec
from tierline.domain.governance import (
    DEFAULT_GOVERNANCE,
    Governance,
    InvalidVendorChange,
    Vendor,
    VendorChange,
)
from tierline.domain.issue import Issue, Rules, decide, evolve

# No example database: the suite must not leave a .hypothesis directory in the work tree.
PROPERTY = settings(max_examples=80, deadline=None, database=None)

MICRO = timedelta(microseconds=1)
WORKWEEK = {day: ["09:00", "17:00"] for day in ("mon", "tue", "wed", "thu", "fri")}
KOLKATA_HOURS = {"hours": WORKWEEK}
# DST zones, half-hour and quarter-hour zones, and UTC.
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Kolkata",
    "Australia/Adelaide",
    "America/St_Johns",
    "Asia/Kathmandu",
]
# UTC instants of the 2026 offset changes of the DST zones above.
TRANSITIONS = [
    datetime(2026, 3, 29, 1, tzinfo=UTC),
    datetime(2026, 10, 25, 1, tzinfo=UTC),
    datetime(2026, 3, 8, 7, tzinfo=UTC),
    datetime(2026, 11, 1, 6, tzinfo=UTC),
    datetime(2026, 4, 4, 16, tzinfo=UTC),
    datetime(2026, 10, 3, 16, tzinfo=UTC),
    datetime(2026, 4, 4, 16, 30, tzinfo=UTC),
    datetime(2026, 10, 3, 16, 30, tzinfo=UTC),
    datetime(2026, 3, 8, 5, 30, tzinfo=UTC),
    datetime(2026, 11, 1, 4, 30, tzinfo=UTC),
]


def governance(**calendars: CalendarSpec) -> Governance:
    """The default ladder with named calendars."""
    return DEFAULT_GOVERNANCE.model_copy(update={"calendars": calendars})


def vendor(**fields: Any) -> Vendor:
    """A vendor in Asia/Kolkata unless overridden."""
    return Vendor.model_validate(
        {"id": "globex", "name": "Globex", "timezone": "Asia/Kolkata"} | fields
    )


# --- inheritance ------------------------------------------------------------------------------


def test_an_inline_calendar_without_a_zone_runs_in_the_vendors_zone() -> None:
    acme = vendor(calendar=KOLKATA_HOURS)
    assert isinstance(acme.calendar, CalendarSpec) and acme.calendar.timezone is None
    spec = acme.calendar_spec(DEFAULT_GOVERNANCE)
    assert spec.timezone == "Asia/Kolkata" and spec.hours == acme.calendar.hours
    assert acme.effective_timezone(DEFAULT_GOVERNANCE) == "Asia/Kolkata"
    # Monday 09:00 IST is 03:30 UTC; eight business hours end at 17:00 IST, 11:30 UTC.
    due = BusinessCalendar(spec).add(datetime(2026, 1, 5, 3, 30, tzinfo=UTC), 8 * 3600)
    assert due == datetime(2026, 1, 5, 11, 30, tzinfo=UTC)


def test_a_calendar_with_its_own_zone_keeps_it() -> None:
    acme = vendor(calendar={"timezone": "Europe/Berlin", "hours": WORKWEEK})
    assert acme.calendar_spec(DEFAULT_GOVERNANCE).timezone == "Europe/Berlin"
    assert acme.effective_timezone(DEFAULT_GOVERNANCE) == "Europe/Berlin"


def test_named_calendars_without_a_zone_take_each_vendors_zone() -> None:
    gov = governance(
        office=CalendarSpec(hours=WORKWEEK), berlin=CalendarSpec(timezone="Europe/Berlin")
    )
    kolkata = vendor(calendar="office")
    sydney = vendor(id="initech", timezone="Australia/Sydney", calendar="office")
    assert kolkata.calendar_spec(gov).timezone == "Asia/Kolkata"
    assert sydney.calendar_spec(gov).timezone == "Australia/Sydney"
    assert kolkata.calendar_spec(gov).hours == sydney.calendar_spec(gov).hours
    assert vendor(calendar="berlin").effective_timezone(gov) == "Europe/Berlin"


def test_no_calendar_or_an_unknown_name_is_24x7_in_the_vendors_zone() -> None:
    for acme in (vendor(), vendor(calendar="gone")):
        spec = acme.calendar_spec(DEFAULT_GOVERNANCE)
        assert spec == CalendarSpec(timezone="Asia/Kolkata")


def test_unknown_vendor_zones_are_rejected() -> None:
    with pytest.raises(ValidationError, match="unknown IANA time zone"):
        vendor(timezone="Mars/Olympus_Mons")
    with pytest.raises(ValidationError, match="unknown IANA time zone"):
        vendor(calendar={"timezone": "Asia/Calcutta_", "hours": WORKWEEK})


def test_a_stored_calendar_without_a_zone_round_trips_without_one() -> None:
    acme = vendor(calendar=KOLKATA_HOURS)
    dumped = acme.model_dump(mode="json")
    assert dumped["calendar"]["timezone"] is None
    assert Vendor.model_validate(dumped) == acme


# --- changes ----------------------------------------------------------------------------------


def test_a_change_replaces_only_the_fields_it_names() -> None:
    acme = vendor(calendar=KOLKATA_HOURS)
    renamed = acme.changed(VendorChange(name="Globex India"))
    assert renamed == acme.model_copy(update={"name": "Globex India"})
    moved = acme.changed(VendorChange.model_validate({"timezone": "Asia/Kathmandu"}))
    assert moved.effective_timezone(DEFAULT_GOVERNANCE) == "Asia/Kathmandu"
    assert moved.calendar == acme.calendar
    unscheduled = acme.changed(VendorChange.model_validate({"calendar": None}))
    assert unscheduled.calendar is None


def test_holidays_replace_the_inline_calendars_list() -> None:
    acme = vendor(calendar={"hours": WORKWEEK, "holidays": ["2026-01-26"]})
    change = VendorChange.model_validate({"holidays": ["2026-08-15", "2026-01-26", "2026-08-15"]})
    changed = acme.changed(change)
    assert isinstance(changed.calendar, CalendarSpec)
    assert changed.calendar.holidays == [date(2026, 1, 26), date(2026, 8, 15)]
    assert changed.calendar.hours == WORKWEEK_NORMALISED
    assert changed.calendar.timezone is None
    # Without a calendar, holidays make a 24x7 one.
    bare = vendor().changed(VendorChange.model_validate({"holidays": ["2026-08-15"]}))
    assert bare.calendar == CalendarSpec(holidays=[date(2026, 8, 15)])


WORKWEEK_NORMALISED = CalendarSpec(hours=WORKWEEK).hours


@pytest.mark.parametrize(
    ("current", "body", "field"),
    [
        ("office", {"holidays": ["2026-08-15"]}, "holidays"),
        (None, {"holidays": [], "calendar": KOLKATA_HOURS}, "holidays"),
    ],
)
def test_holidays_that_cannot_apply_name_the_field(
    current: Any, body: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidVendorChange) as caught:
        vendor(calendar=current).changed(VendorChange.model_validate(body))
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"name": None}, ("name",)),
        ({"timezone": None}, ("timezone",)),
        ({"timezone": "Nowhere/Atlantis"}, ("timezone",)),
        ({"holidays": ["not a date"]}, ("holidays", 0)),
        ({"calendar": {"hours": {"mon": ["17:00", "09:00"]}}}, ("calendar", "CalendarSpec")),
        ({"id": "renamed"}, ("id",)),
    ],
)
def test_malformed_changes_are_refused_by_field(body: dict[str, Any], location: tuple[Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        VendorChange.model_validate(body)
    assert any(err["loc"][: len(location)] == location for err in caught.value.errors())


def test_check_refuses_unknown_named_calendars_and_calendars_without_hours() -> None:
    gov = governance(office=CalendarSpec(hours=WORKWEEK))
    vendor(calendar="office").check(gov)
    with pytest.raises(InvalidVendorChange, match="not defined"):
        vendor(calendar="gone").check(gov)
    with pytest.raises(InvalidVendorChange, match="no business hours"):
        vendor(calendar={"hours": {"mon": []}}).check(gov)


# --- recompute after a calendar change ---------------------------------------------------------

OPENED_AT = datetime(2026, 1, 5, 4, tzinfo=UTC)  # Monday 09:30 IST


def opened(rules: Rules) -> Issue:
    """A P3 issue opened at OPENED_AT under `rules`."""
    command = c.OpenIssue(vendor_id="globex", title="t", category="quality", priority="P3")
    [event] = decide(None, command, OPENED_AT, rules)
    return evolve(None, event, issue_id="i-1", version=1, at=OPENED_AT)


def rules_of(acme: Vendor) -> Rules:
    """The rules the write path builds for a vendor."""
    return Rules(DEFAULT_GOVERNANCE, BusinessCalendar(acme.calendar_spec(DEFAULT_GOVERNANCE)))


def test_a_new_holiday_moves_a_running_deadline_by_that_business_day() -> None:
    acme = vendor(calendar=KOLKATA_HOURS)
    issue = opened(rules_of(acme))
    later = OPENED_AT + timedelta(hours=2)
    assert decide(issue, c.RecomputeSla(), later, rules_of(acme)) == [], "same calendar: nothing"

    resolve = next(k for k in issue.clocks if k.kind == "resolve")
    assert resolve.due_at is not None
    # 72 business hours are nine working days: due the Friday after next.
    due_local = resolve.due_at.astimezone(ZoneInfo("Asia/Kolkata"))
    assert due_local.date() == date(2026, 1, 16)
    holiday = date(2026, 1, 14)  # a Wednesday inside the window
    moved = acme.changed(VendorChange.model_validate({"holidays": [holiday.isoformat()]}))
    [event] = decide(issue, c.RecomputeSla(), later, rules_of(moved))
    after = evolve(issue, event, issue_id="i-1", version=2, at=later)

    before_by_id = {k.id: k for k in issue.clocks}
    for clock in after.clocks:
        old = before_by_id[clock.id]
        assert clock.elapsed_seconds == old.elapsed_seconds
        assert clock.running_since == old.running_since
        assert clock.target_seconds == old.target_seconds
    new_resolve = next(k for k in after.clocks if k.kind == "resolve")
    # Friday 16th moves to Monday 19th: one business day later, the same time of day.
    assert new_resolve.due_at == resolve.due_at + timedelta(days=3)
    respond = next(k for k in after.clocks if k.kind == "respond")
    assert respond == before_by_id[respond.id], "the respond deadline is before the holiday"
    assert (after.status, after.tier, after.priority) == (issue.status, issue.tier, issue.priority)


# --- property: deadlines lie inside the vendor's business hours --------------------------------


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


# Endpoints are quarter hours at 00:00 or from 04:00 on: no endpoint falls into a DST gap or
# fold (every zone above changes between 01:00 and 03:00), so "inside business hours" can be
# checked on the wall clock alone. How endpoints inside gaps and folds convert is covered by
# test_calendar.py; here the question is which zone the hours are read in.
_points = st.lists(
    st.sampled_from([0, *range(16 * 15, 97 * 15, 15)]), unique=True, min_size=2, max_size=6
)


@st.composite
def day_hours(draw: st.DrawFn) -> list[list[str]]:
    """One day's intervals, in the API's list shape."""
    points = sorted(draw(_points))
    return [[_clock(a), _clock(b)] for a, b in zip(points[::2], points[1::2], strict=False)]


week_hours = st.dictionaries(st.sampled_from(WEEKDAYS), day_hours(), min_size=1)
holiday_lists = st.lists(st.dates(date(2025, 12, 1), date(2027, 3, 1)), max_size=15)
starts = st.one_of(
    st.integers(0, 400 * 86_400).map(
        lambda s: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=s)
    ),
    st.tuples(st.sampled_from(TRANSITIONS), st.integers(-3 * 86_400, 86_400)).map(
        lambda t: t[0] + timedelta(seconds=t[1])
    ),
)
durations = st.one_of(
    st.integers(1, 3 * 86_400).map(float),
    st.floats(1e-3, 3 * 86_400, allow_nan=False, allow_infinity=False),
)


def _seconds(local: datetime) -> float:
    """Wall-clock seconds after local midnight."""
    return local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6


def inside(local: datetime, spec: CalendarSpec, *, closed: bool) -> bool:
    """Whether a wall-clock time lies in business hours of a working day.

    `closed` counts an interval's end as inside, so a deadline at closing time is; at 00:00 the
    day before may be closing at 24:00.
    """
    assert spec.hours is not None
    days = [(local.date(), _seconds(local))]
    if closed and days[0][1] == 0:
        days.append((local.date() - timedelta(days=1), 86_400.0))
    for day, at in days:
        if day in spec.holidays:
            continue
        hours = spec.hours.get(WEEKDAYS[day.weekday()], [])
        for start, end in [hours] if isinstance(hours, tuple) else hours:
            low, high = (int(t[:2]) * 3600 + int(t[3:]) * 60 for t in (start, end))
            if low <= at < high or (closed and at == high):
                return True
    return False


@PROPERTY
@given(st.sampled_from(ZONES), week_hours, holiday_lists, starts, durations)
def test_deadlines_lie_inside_the_vendors_business_hours(
    zone: str, hours: dict[str, Any], holidays: list[date], start: datetime, seconds: float
) -> None:
    acme = Vendor.model_validate(
        {
            "id": "v",
            "name": "V",
            "timezone": zone,
            "calendar": {"hours": hours, "holidays": holidays},
        }
    )
    spec = acme.calendar_spec(DEFAULT_GOVERNANCE)
    assert spec.timezone == zone
    assume(spec.has_hours)
    due = BusinessCalendar(spec).add(start, seconds)
    assert due > start
    local = due.astimezone(ZoneInfo(zone))
    assert inside(local, spec, closed=True), f"{local.isoformat()} is outside business hours"
    # And the deadline ends business time: the instant before it was business time too.
    just_before = (due - MICRO).astimezone(ZoneInfo(zone))
    assert inside(just_before, spec, closed=False), just_before.isoformat()
