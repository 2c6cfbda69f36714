"""Business-time arithmetic: worked examples around DST and holidays, plus properties."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tierline.domain.calendar import (
    TWENTY_FOUR_SEVEN,
    WEEKDAYS,
    BusinessCalendar,
    CalendarSpec,
)

# No example database: the suite must not leave a .hypothesis directory in the work tree.
PROPERTY = settings(max_examples=100, deadline=None, database=None)

HOUR = 3600.0
MICRO = timedelta(microseconds=1)
WORKWEEK = {day: ["09:00", "17:00"] for day in ("mon", "tue", "wed", "thu", "fri")}
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kolkata"]

# (zone, local date of the change, real length of that local day in hours); all are Sundays.
DST_DAYS = [
    ("Europe/Berlin", date(2026, 3, 29), 23),
    ("Europe/Berlin", date(2026, 10, 25), 25),
    ("America/New_York", date(2026, 3, 8), 23),
    ("America/New_York", date(2026, 11, 1), 25),
    ("Australia/Sydney", date(2026, 4, 5), 25),
    ("Australia/Sydney", date(2026, 10, 4), 23),
]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A UTC datetime."""
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def calendar(zone: str = "UTC", **kwargs: Any) -> BusinessCalendar:
    """A BusinessCalendar built from spec fields."""
    return BusinessCalendar(CalendarSpec(timezone=zone, **kwargs))


def around(day: date) -> tuple[datetime, datetime]:
    """A UTC window comfortably containing a local date in any zone."""
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    return start - timedelta(days=2), start + timedelta(days=2)


# --- spec validation and serialisation ------------------------------------------------------


def test_default_spec_is_24x7_in_the_vendors_zone() -> None:
    # No zone means "the vendor's"; TWENTY_FOUR_SEVEN is the resolved one for no vendor.
    assert CalendarSpec().timezone is None
    assert CalendarSpec().in_zone("UTC") == TWENTY_FOUR_SEVEN
    assert TWENTY_FOUR_SEVEN.timezone == "UTC"
    assert TWENTY_FOUR_SEVEN.hours is None
    assert TWENTY_FOUR_SEVEN.holidays == []


def test_unknown_zone_is_rejected_with_its_name() -> None:
    for zone in ("Mars/Olympus_Mons", "", "/etc/passwd", "../zoneinfo"):
        with pytest.raises(ValidationError, match="unknown IANA time zone"):
            CalendarSpec(timezone=zone)


@pytest.mark.parametrize(
    ("hours", "message"),
    [
        ({"mon": ["17:00", "09:00"]}, "must start before it ends"),
        ({"mon": ["09:00", "09:00"]}, "must start before it ends"),
        ({"mon": [["09:00", "13:00"], ["12:00", "17:00"]]}, "overlaps"),
        ({"mon": [["13:00", "17:00"], ["09:00", "12:00"]]}, "overlaps or precedes"),
        ({"mon": ["24:00", "24:00"]}, "must start before it ends"),
        ({"mon": ["9:00", "17:00"]}, "HH:MM"),
        ({"mon": ["09:00", "24:30"]}, "HH:MM"),
        ({"mon": ["09:00", "25:00"]}, "HH:MM"),
        ({"monday": ["09:00", "17:00"]}, "mon"),
        ({"mon": ["09:00"]}, None),
        ({"mon": ["09:00", "12:00", "17:00"]}, None),
    ],
)
def test_invalid_hours_are_rejected(hours: Any, message: str | None) -> None:
    with pytest.raises(ValidationError, match=message):
        CalendarSpec(hours=hours)


def test_extra_fields_are_forbidden() -> None:
    with pytest.raises(ValidationError):
        CalendarSpec.model_validate({"timezone": "UTC", "weekends": True})


def test_spec_is_frozen() -> None:
    with pytest.raises(ValidationError):
        TWENTY_FOUR_SEVEN.timezone = "Europe/Berlin"  # type: ignore[misc]


def test_both_hour_shapes_parse_and_serialise_back_as_json_lists() -> None:
    raw = {
        "timezone": "Europe/Berlin",
        "hours": {
            "tue": [["09:00", "12:00"], ["13:00", "24:00"]],
            "mon": ["09:00", "17:00"],
            "wed": [["08:00", "16:00"]],
            "sun": [],
        },
        "holidays": ["2026-12-25"],
    }
    spec = CalendarSpec.model_validate(raw)
    dumped = spec.model_dump(mode="json")
    assert dumped == {
        "timezone": "Europe/Berlin",
        "hours": {
            "mon": ["09:00", "17:00"],
            "tue": [["09:00", "12:00"], ["13:00", "24:00"]],
            "wed": ["08:00", "16:00"],
            "sun": [],
        },
        "holidays": ["2026-12-25"],
    }
    assert spec.model_dump()["hours"] == dumped["hours"]
    assert CalendarSpec.model_validate(dumped) == spec
    assert CalendarSpec.model_validate_json(spec.model_dump_json()) == spec
    assert json.loads(spec.model_dump_json()) == dumped


def test_one_interval_in_either_shape_is_the_same_calendar() -> None:
    assert CalendarSpec(hours={"mon": ["09:00", "17:00"]}) == CalendarSpec(
        hours={"mon": [["09:00", "17:00"]]}
    )


# --- inputs ---------------------------------------------------------------------------------


def test_naive_datetimes_are_rejected() -> None:
    naive = datetime(2026, 1, 5, 10)
    for cal in (BusinessCalendar(TWENTY_FOUR_SEVEN), calendar("Europe/Berlin", hours=WORKWEEK)):
        with pytest.raises(ValueError, match="timezone-aware"):
            cal.add(naive, 60)
        with pytest.raises(ValueError, match="timezone-aware"):
            cal.between(naive, utc(2026, 1, 6))
        with pytest.raises(ValueError, match="timezone-aware"):
            cal.between(utc(2026, 1, 4), naive)
        with pytest.raises(ValueError, match="timezone-aware"):
            cal.is_business_time(naive)


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
def test_bad_durations_are_rejected(seconds: float) -> None:
    with pytest.raises(ValueError, match="finite and >= 0"):
        calendar(hours=WORKWEEK).add(utc(2026, 1, 5), seconds)


# --- 24x7 -----------------------------------------------------------------------------------


def test_24x7_is_plain_utc_arithmetic() -> None:
    cal = BusinessCalendar(TWENTY_FOUR_SEVEN)
    start = datetime(2026, 3, 29, 0, 30, tzinfo=ZoneInfo("Europe/Berlin"))  # 23:30Z
    assert cal.add(start, 90 * 60) == utc(2026, 3, 29, 1, 0)
    assert cal.add(start, 90 * 60).tzinfo is UTC
    assert cal.between(start, utc(2026, 3, 30)) == 24.5 * HOUR
    assert cal.between(utc(2026, 3, 30), start) == 0.0
    assert cal.is_business_time(start)


def test_results_are_utc_whatever_the_input_zone() -> None:
    cal = calendar("Europe/Berlin", hours=WORKWEEK)
    start = datetime.fromisoformat("2026-01-05T10:00:00+01:00")
    due = cal.add(start, HOUR)
    assert due.tzinfo is UTC
    assert due == utc(2026, 1, 5, 10)


@pytest.mark.parametrize(("zone", "day", "hours"), DST_DAYS)
def test_24x7_local_calendars_count_real_elapsed_time(zone: str, day: date, hours: int) -> None:
    low, high = around(day)
    whole_days = {d: ["00:00", "24:00"] for d in WEEKDAYS}
    # A far-off holiday keeps the second calendar off the plain-UTC fast path.
    for cal in (calendar(zone), calendar(zone, hours=whole_days, holidays=[date(2030, 1, 1)])):
        assert cal.between(low, high) == (high - low).total_seconds()
        assert cal.add(low, 4 * 24 * HOUR) == high
        assert cal.is_business_time(low + timedelta(hours=50))


# --- DST ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("zone", "day", "hours"), DST_DAYS)
def test_a_whole_dst_day_has_23_or_25_business_hours(zone: str, day: date, hours: int) -> None:
    cal = calendar(zone, hours={"sun": ["00:00", "24:00"]})
    assert cal.between(*around(day)) == hours * HOUR


@pytest.mark.parametrize(("zone", "day", "hours"), DST_DAYS)
def test_one_to_four_am_spans_the_real_time(zone: str, day: date, hours: int) -> None:
    cal = calendar(zone, hours={"sun": ["01:00", "04:00"]})
    assert cal.between(*around(day)) == (2 if hours == 23 else 4) * HOUR


def test_nonexistent_times_map_to_the_transition() -> None:
    # Berlin 2026-03-29: 02:00 CET jumps to 03:00 CEST at 01:00Z.
    low, high = around(date(2026, 3, 29))
    assert calendar("Europe/Berlin", hours={"sun": ["02:30", "03:15"]}).between(low, high) == 900
    assert calendar("Europe/Berlin", hours={"sun": ["02:15", "02:45"]}).between(low, high) == 0
    before_gap = calendar("Europe/Berlin", hours={"sun": ["00:00", "02:30"]})
    assert before_gap.between(low, high) == 2 * HOUR
    assert before_gap.add(low, 2 * HOUR) == utc(2026, 3, 29, 1)
    assert not before_gap.is_business_time(utc(2026, 3, 29, 1))


def test_ambiguous_times_cover_both_occurrences_without_double_counting() -> None:
    # Berlin 2026-10-25: 03:00 CEST falls back to 02:00 CET at 01:00Z; 02:00-03:00 happens twice.
    low, high = around(date(2026, 10, 25))
    fold = calendar("Europe/Berlin", hours={"sun": ["02:30", "02:45"]})
    assert fold.between(low, high) == 1.25 * HOUR  # 00:30Z (CEST) to 01:45Z (CET)
    assert fold.add(low, 1.25 * HOUR) == utc(2026, 10, 25, 1, 45)
    split = calendar("Europe/Berlin", hours={"sun": [["00:00", "02:30"], ["02:30", "05:00"]]})
    assert split.between(low, high) == 6 * HOUR
    touching = calendar("Europe/Berlin", hours={"sun": [["00:00", "02:30"], ["02:40", "05:00"]]})
    assert touching.between(low, high) == 6 * HOUR  # the fold swallows the 10-minute break


@pytest.mark.parametrize(
    ("zone", "friday_4pm", "monday_4pm"),
    [
        ("Europe/Berlin", utc(2026, 3, 27, 15), utc(2026, 3, 30, 14)),
        ("Europe/Berlin", utc(2026, 10, 23, 14), utc(2026, 10, 26, 15)),
        ("America/New_York", utc(2026, 3, 6, 21), utc(2026, 3, 9, 20)),
        ("America/New_York", utc(2026, 10, 30, 20), utc(2026, 11, 2, 21)),
        ("Australia/Sydney", utc(2026, 4, 3, 5), utc(2026, 4, 6, 6)),
        ("Australia/Sydney", utc(2026, 10, 2, 6), utc(2026, 10, 5, 5)),
    ],
)
def test_office_hours_deadline_across_a_dst_weekend(
    zone: str, friday_4pm: datetime, monday_4pm: datetime
) -> None:
    cal = calendar(zone, hours=WORKWEEK)
    assert cal.add(friday_4pm, 8 * HOUR) == monday_4pm
    assert cal.between(friday_4pm, monday_4pm) == 8 * HOUR
    assert cal.is_business_time(friday_4pm)
    assert cal.is_business_time(monday_4pm)
    assert not cal.is_business_time(monday_4pm + timedelta(hours=1))  # 17:00 local, closed
    assert cal.is_business_time(monday_4pm + timedelta(hours=1) - MICRO)


# --- shapes of calendars --------------------------------------------------------------------


def test_holidays_skip_whole_days() -> None:
    cal = calendar("Europe/Berlin", hours=WORKWEEK, holidays=[date(2026, 3, 30)])
    assert cal.add(utc(2026, 3, 27, 15), 8 * HOUR) == utc(2026, 3, 31, 14)
    assert not cal.is_business_time(utc(2026, 3, 30, 10))
    assert cal.between(utc(2026, 3, 30), utc(2026, 3, 31)) == 0


def test_holidays_apply_to_24x7_calendars() -> None:
    cal = calendar("Asia/Kolkata", holidays=[date(2026, 1, 26)])
    # Republic Day runs 2026-01-25T18:30Z to 2026-01-26T18:30Z.
    assert cal.between(utc(2026, 1, 25), utc(2026, 1, 27)) == 24 * HOUR
    assert cal.add(utc(2026, 1, 25, 18), HOUR) == utc(2026, 1, 26, 19)


def test_days_missing_from_hours_have_none() -> None:
    cal = calendar(hours={"mon": ["09:00", "17:00"], "tue": []})
    assert cal.between(utc(2026, 1, 5), utc(2026, 1, 12)) == 8 * HOUR
    assert cal.add(utc(2026, 1, 5, 16), 2 * HOUR) == utc(2026, 1, 12, 10)


def test_several_intervals_a_day() -> None:
    cal = calendar(hours={"mon": [["09:00", "12:00"], ["13:00", "17:00"]]})
    assert cal.add(utc(2026, 1, 5, 11), 2 * HOUR) == utc(2026, 1, 5, 14)
    assert cal.add(utc(2026, 1, 5, 11), HOUR) == utc(2026, 1, 5, 12)
    assert not cal.is_business_time(utc(2026, 1, 5, 12, 30))
    assert cal.between(utc(2026, 1, 5), utc(2026, 1, 6)) == 7 * HOUR


def test_adjacent_intervals_and_midnight_wraps_are_continuous() -> None:
    cal = calendar(
        hours={"mon": [["20:00", "22:00"], ["22:00", "24:00"]], "tue": ["00:00", "02:00"]}
    )
    assert cal.add(utc(2026, 1, 5, 21), 4 * HOUR) == utc(2026, 1, 6, 1)
    assert cal.between(utc(2026, 1, 5), utc(2026, 1, 7)) == 6 * HOUR


def test_a_single_weekday_calendar() -> None:
    cal = calendar("UTC", hours={"wed": ["10:00", "11:00"]})
    assert cal.add(utc(2026, 1, 8), 2 * HOUR) == utc(2026, 1, 21, 11)
    assert cal.between(utc(2026, 1, 1), utc(2027, 1, 1)) == 52 * HOUR


@pytest.mark.parametrize("hours", [{}, {d: [] for d in WEEKDAYS}])
def test_a_calendar_without_hours_cannot_add(hours: dict[str, Any]) -> None:
    cal = calendar("Europe/Berlin", hours=hours)
    start = utc(2026, 1, 5)
    with pytest.raises(ValueError, match="calendar has no business hours"):
        cal.add(start, 1)
    assert cal.add(start, 0) == start
    assert cal.between(start, utc(2030, 1, 1)) == 0
    assert not cal.is_business_time(start)


def test_add_gives_up_when_holidays_blot_out_years() -> None:
    mondays = [date(2026, 1, 5) + timedelta(weeks=w) for w in range(60 * 52)]
    cal = calendar(hours={"mon": ["09:00", "10:00"]}, holidays=mondays[1:])
    assert cal.add(utc(2026, 1, 5), 1800) == utc(2026, 1, 5, 9, 30)
    with pytest.raises(ValueError, match="calendar has no business hours"):
        cal.add(utc(2026, 1, 5), 2 * HOUR)


def test_zero_seconds_returns_start_even_when_closed() -> None:
    cal = calendar("Europe/Berlin", hours=WORKWEEK)
    saturday = utc(2026, 1, 10, 12)
    assert cal.add(saturday, 0) == saturday
    assert cal.add(saturday, 1e-9) == saturday  # below the microsecond resolution


def test_sub_second_targets_round_up_to_the_microsecond() -> None:
    cal = calendar(hours=WORKWEEK)
    assert cal.add(utc(2026, 1, 5, 9), 0.3) == utc(2026, 1, 5, 9) + timedelta(microseconds=300_000)
    assert cal.add(utc(2026, 1, 5, 9), 1.5e-6) == utc(2026, 1, 5, 9) + 2 * MICRO


# --- properties over random calendars -------------------------------------------------------

WINDOW_START = utc(2026, 1, 1)
WINDOW_SECONDS = 400 * 86_400
TRANSITIONS = [
    utc(2026, 3, 29, 1),
    utc(2026, 10, 25, 1),
    utc(2026, 3, 8, 7),
    utc(2026, 11, 1, 6),
    utc(2026, 4, 4, 16),
    utc(2026, 10, 3, 16),
]


def _clock(minutes: int) -> str:
    """Minutes after midnight as HH:MM."""
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


# Strategies are built once: constructing them inside each draw dominated the run time.
_day_points = st.lists(st.integers(0, 96).map(lambda q: q * 15), unique=True, max_size=6)
_holiday_lists = st.lists(st.dates(date(2025, 12, 1), date(2027, 3, 1)), max_size=12)


@st.composite
def day_hours(draw: st.DrawFn) -> Any:
    """One day's hours in either API shape, with endpoints often inside DST gaps and folds."""
    points = sorted(draw(_day_points))
    pairs = [[_clock(a), _clock(b)] for a, b in zip(points[::2], points[1::2], strict=False)]
    if len(pairs) == 1 and draw(st.booleans()):
        return pairs[0]
    return pairs


_week_hours = st.dictionaries(st.sampled_from(WEEKDAYS), day_hours(), min_size=1)


@st.composite
def specs(draw: st.DrawFn) -> CalendarSpec:
    """A random calendar with some business hours."""
    zone = draw(st.sampled_from(ZONES))
    holidays = draw(_holiday_lists)
    if draw(st.integers(0, 5)) == 0:
        return CalendarSpec(timezone=zone, holidays=holidays)
    spec = CalendarSpec(timezone=zone, hours=draw(_week_hours), holidays=holidays)
    has_hours = any(h for h in spec.model_dump()["hours"].values())
    return spec if has_hours else CalendarSpec(timezone=zone, hours={"wed": ["02:00", "03:30"]})


instants = st.one_of(
    st.integers(0, WINDOW_SECONDS).map(lambda s: WINDOW_START + timedelta(seconds=s)),
    st.tuples(st.sampled_from(TRANSITIONS), st.integers(-4 * 3600, 4 * 3600)).map(
        lambda t: t[0] + timedelta(seconds=t[1])
    ),
    st.integers(0, WINDOW_SECONDS * 1_000_000).map(
        lambda us: WINDOW_START + timedelta(microseconds=us)
    ),
)
durations = st.one_of(
    st.integers(0, 21 * 86_400).map(float),
    st.floats(0, 21 * 86_400, allow_nan=False, allow_infinity=False),
)


@PROPERTY
@given(specs(), instants, durations, durations)
def test_add_is_monotonic(spec: CalendarSpec, start: datetime, a: float, b: float) -> None:
    cal = BusinessCalendar(spec)
    a, b = min(a, b), max(a, b)
    assert start <= cal.add(start, a) <= cal.add(start, b)


@PROPERTY
@given(specs(), instants, instants, instants)
def test_between_is_monotonic_and_additive(
    spec: CalendarSpec, x: datetime, y: datetime, z: datetime
) -> None:
    cal = BusinessCalendar(spec)
    start, middle, end = sorted((x, y, z))
    assert 0 <= cal.between(start, middle) <= cal.between(start, end)
    assert cal.between(start, end) <= (end - start).total_seconds()
    whole = cal.between(start, middle) + cal.between(middle, end)
    assert cal.between(start, end) == pytest.approx(whole, abs=1e-6)


@PROPERTY
@given(specs(), instants, durations)
def test_between_undoes_add(spec: CalendarSpec, start: datetime, seconds: float) -> None:
    cal = BusinessCalendar(spec)
    due = cal.add(start, seconds)
    assert due.tzinfo is UTC
    elapsed = cal.between(start, due)
    assert seconds - 1e-9 <= elapsed <= seconds + 1e-6
    if due > start:
        # The earliest instant: one microsecond before, the target was not yet reached.
        assert cal.between(start, due - MICRO) < seconds
        assert cal.is_business_time(due - MICRO)


@PROPERTY
@given(specs(), instants, instants)
def test_add_undoes_between(spec: CalendarSpec, x: datetime, y: datetime) -> None:
    cal = BusinessCalendar(spec)
    start, end = min(x, y), max(x, y)
    due = cal.add(start, cal.between(start, end))
    assert start <= due <= end
    if end > start and cal.is_business_time(end - MICRO):
        assert due == end
    assert cal.between(due, end) == 0


@PROPERTY
@given(specs(), instants)
def test_is_business_time_agrees_with_between(spec: CalendarSpec, at: datetime) -> None:
    cal = BusinessCalendar(spec)
    assert cal.is_business_time(at) == (cal.between(at, at + MICRO) > 0)


@PROPERTY
@given(st.sampled_from(ZONES), instants, instants)
def test_whole_day_hours_in_any_zone_are_real_time(zone: str, x: datetime, y: datetime) -> None:
    whole_days = {d: ["00:00", "24:00"] for d in WEEKDAYS}
    cal = calendar(zone, hours=whole_days, holidays=[date(2030, 1, 1)])
    start, end = min(x, y), max(x, y)
    assert cal.between(start, end) == (end - start).total_seconds()
