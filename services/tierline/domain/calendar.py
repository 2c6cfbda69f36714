"""Business-time arithmetic for SLA clocks: calendars of weekly hours, holidays and a time zone.

A calendar may leave its zone out: it then runs in the zone of the vendor that uses it, and
`CalendarSpec.in_zone` fills that in (`Vendor.calendar_spec` does, for inline and for named
governance calendars alike). Arithmetic always needs a zone, since the same hours are different
instants in Kolkata and in UTC. `BusinessCalendar` reads an unresolved calendar in UTC, which is
only right where no vendor is involved (checking that a governance calendar has any hours at
all); every vendor clock runs on `Vendor.calendar_spec`, which is always resolved.

A calendar says, per weekday, which local wall-clock intervals are business time; holidays are
whole local days without any. Every instant is then either business time or not, and the two
operations are `add` (when will N business seconds have elapsed?) and `between` (how many
business seconds lie in a span?). Both work on real elapsed time: each local interval of a date
is converted to a pair of UTC instants and business time is the union of those UTC spans.

Converting local wall-clock times around DST (and any other UTC-offset change):

* An unambiguous local time has exactly one UTC instant.
* An ambiguous local time (clocks fall back, so it occurs twice) maps to its first occurrence
  (fold=0) when it starts an interval and to its second occurrence (fold=1) when it ends one,
  so the interval covers the whole real span: 01:00-04:00 on a fall-back day is 4 real hours.
* A nonexistent local time (clocks spring forward over it) maps to the transition instant, the
  first real instant whose wall clock reads later than it: 01:00-04:00 on a spring-forward day
  is 2 real hours and 02:30-03:15 in Berlin on 2026-03-29 is the 15 minutes from 03:00 CEST.
  (zoneinfo's fold=0 would put 02:30 at 03:30 CEST, after 03:15, giving a negative interval.)
* "24:00" is the next day's 00:00 under the same rules, so 00:00-24:00 is 23 or 25 real hours
  on a DST day; spans that overlap after conversion are merged, never counted twice.

Both mappings are monotone in wall-clock time, which keeps the UTC spans ordered by start.

Resolution is one microsecond, like `datetime`. The module is pure: no I/O, no clock reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    field_serializer,
    field_validator,
)

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

Interval = tuple[str, str]
DayHours = list[Interval] | Interval

_CLOCK = re.compile(r"(?:[01]\d|2[0-3]):[0-5]\d|24:00")
_DAY_SECONDS = 86_400
_MICROS = 1_000_000
_ONE_MICRO = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
# Consecutive days without business time after which `add` gives up: a calendar whose holidays
# blot out three years is as good as empty, and the search must terminate.
_HORIZON_DAYS = 3 * 366
# Converted days kept per calendar; clocks cluster around "now", so a few years is plenty.
_CACHE_DAYS = 4096


def _clock_seconds(text: str) -> int:
    """Seconds after local midnight of an "HH:MM" wall-clock time ("24:00" allowed)."""
    if not _CLOCK.fullmatch(text):
        raise ValueError(f"time {text!r} must be HH:MM between 00:00 and 24:00")
    hours, minutes = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60


def _check_day(day: str, intervals: list[Interval]) -> None:
    """Intervals of one day must be well-formed, ordered and non-overlapping."""
    previous_end = 0
    for start, end in intervals:
        low, high = _clock_seconds(start), _clock_seconds(end)
        if low >= high:
            raise ValueError(f"{day}: interval {start}-{end} must start before it ends")
        if low < previous_end:
            raise ValueError(f"{day}: interval {start}-{end} overlaps or precedes the one before")
        previous_end = high


def known_zone(value: str) -> str:
    """The name itself when zoneinfo can load it as an IANA zone, else ValueError."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA time zone {value!r}") from None
    return value


def _calendar_date(value: Any) -> date:
    """A holiday is a calendar date ("2026-12-25"), never a number read as a timestamp.

    A plain validator, so it means the same in strict and lax mode and for JSON and Python
    input: the API validates bodies in strict JSON mode, stored documents in Python mode.
    """
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        return date.fromisoformat(value)
    raise ValueError("a holiday is a date as YYYY-MM-DD")


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
Holiday = Annotated[
    date,
    PlainValidator(_calendar_date),
    PlainSerializer(date.isoformat, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date"}),
]
# Ten years of every day: far more than any contract lists, small enough to bound a request.
MAX_HOLIDAYS = 3660


class CalendarSpec(BaseModel, frozen=True, extra="forbid"):
    """A business calendar as the API shows it; `hours=None` means 24x7.

    `timezone=None` means "the zone of the vendor using it"; see `in_zone`.
    """

    timezone: str | None = Field(
        default=None, description="IANA zone; leave it out to use the zone of the vendor"
    )
    # {"mon": ["09:00", "17:00"]} for one interval, {"mon": [["09:00", "12:00"], ...]} for several;
    # a weekday that is missing has no business hours.
    hours: dict[Weekday, DayHours] | None = None
    holidays: list[Holiday] = Field(default=[], max_length=MAX_HOLIDAYS)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        """The zone, when given, must be an IANA name zoneinfo can load."""
        return None if value is None else known_zone(value)

    def in_zone(self, zone: str) -> CalendarSpec:
        """This calendar, running in `zone` unless it names a zone of its own."""
        if self.timezone is not None:
            return self
        return self.model_copy(update={"timezone": known_zone(zone)})

    @property
    def has_hours(self) -> bool:
        """Whether any weekday has business hours (24x7 has all of them)."""
        return self.hours is None or any(_intervals_of(h) for h in self.hours.values())

    @field_validator("hours")
    @classmethod
    def _valid_hours(cls, value: dict[Weekday, DayHours] | None) -> dict[Weekday, DayHours] | None:
        """Validate each day and normalise: one interval as a pair, several as a list, mon..sun."""
        if value is None:
            return None
        normalised: dict[Weekday, DayHours] = {}
        for day in WEEKDAYS:
            if day not in value:
                continue
            intervals = _intervals_of(value[day])
            _check_day(day, intervals)
            # One canonical form per meaning, so equal calendars compare equal.
            normalised[day] = intervals[0] if len(intervals) == 1 else intervals
        return normalised

    @field_serializer("hours")
    def _hours_as_lists(self, value: dict[Weekday, DayHours] | None) -> dict[str, Any] | None:
        """Intervals as JSON-friendly lists, in the shape the API accepts."""
        if value is None:
            return None
        return {
            day: list(hours) if isinstance(hours, tuple) else [list(i) for i in hours]
            for day, hours in value.items()
        }


def _intervals_of(hours: DayHours) -> list[Interval]:
    """A day's hours as a list of intervals, whichever shape they were given in."""
    return [hours] if isinstance(hours, tuple) else list(hours)


# Resolved, so it can be used where no vendor is involved.
TWENTY_FOUR_SEVEN = CalendarSpec(timezone="UTC")


def _micros(at: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"datetime {at.isoformat()} must be timezone-aware")
    return (at - _EPOCH) // _ONE_MICRO


def _instant(micros: int) -> datetime:
    """The UTC datetime `micros` microseconds after the epoch."""
    return _EPOCH + timedelta(microseconds=micros)


def _duration_micros(seconds: float) -> int:
    """A non-negative duration in whole microseconds, rounded up so deadlines are never early."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"business seconds must be finite and >= 0, got {seconds!r}")
    # The small slack keeps float noise (0.3 * 1e6 = 300000.00000000006) from adding a microsecond.
    return max(0, math.ceil(seconds * _MICROS - 1e-3))


def _weekly_template(spec: CalendarSpec) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Per weekday (Monday first), the merged local intervals in seconds after midnight."""
    if spec.hours is None:
        return tuple(((0, _DAY_SECONDS),) for _ in WEEKDAYS)
    week: list[tuple[tuple[int, int], ...]] = []
    for day in WEEKDAYS:
        merged: list[tuple[int, int]] = []
        for start, end in _intervals_of(spec.hours.get(day, [])):
            low, high = _clock_seconds(start), _clock_seconds(end)
            if merged and merged[-1][1] == low:
                merged[-1] = (merged[-1][0], high)  # adjacent intervals are one span
            else:
                merged.append((low, high))
        week.append(tuple(merged))
    return tuple(week)


class BusinessCalendar:
    """Business-time arithmetic over a `CalendarSpec`; all results are UTC datetimes."""

    def __init__(self, spec: CalendarSpec) -> None:
        self.spec = spec
        self._holidays = frozenset(spec.holidays)
        # 24x7 without holidays is plain UTC arithmetic; the zone then cannot matter.
        self._always = spec.hours is None and not self._holidays
        self._zone = ZoneInfo(spec.timezone or "UTC")
        self._week = _weekly_template(spec)
        self._never = not any(self._week)
        self._days: dict[int, tuple[tuple[int, int], ...]] = {}

    def add(self, start: datetime, seconds: float) -> datetime:
        """The instant at which `seconds` of business time have elapsed after `start` (UTC).

        It is the earliest such instant, so it never falls in a closed period unless
        `seconds` is 0: zero business time needs no waiting and gives `start` itself (in UTC)
        even outside business hours. Raises ValueError on a naive `start`, on negative or
        non-finite `seconds`, and when the calendar has no business hours to spend.
        """
        at = _micros(start)
        need = _duration_micros(seconds)
        if need == 0:
            return _instant(at)
        if self._always:
            return _instant(at + need)
        if self._never:
            raise ValueError("calendar has no business hours")
        for low, high in self._spans(self._local_ordinal(at) - 1, None):
            if high <= at:
                continue
            available = high - max(low, at)
            if available >= need:
                return _instant(max(low, at) + need)
            need -= available
        raise AssertionError("unreachable: _spans is endless or raises")  # pragma: no cover

    def between(self, start: datetime, end: datetime) -> float:
        """Business seconds in [start, end); 0 if end <= start."""
        low_at, high_at = _micros(start), _micros(end)
        if high_at <= low_at:
            return 0.0
        if self._always:
            return (high_at - low_at) / _MICROS
        total = 0
        first, last = self._local_ordinal(low_at) - 1, self._local_ordinal(high_at) + 1
        for low, high in self._spans(first, last):
            if low >= high_at:
                break
            total += max(0, min(high, high_at) - max(low, low_at))
        return total / _MICROS

    def is_business_time(self, at: datetime) -> bool:
        """Whether the instant `at` lies inside business hours."""
        moment = _micros(at)
        if self._always:
            return True
        day = self._local_ordinal(moment)
        for low, high in self._spans(day - 1, day + 1):
            if low > moment:
                break
            if moment < high:
                return True
        return False

    def _local_ordinal(self, micros: int) -> int:
        """The proleptic ordinal of the local date containing an instant."""
        return _instant(micros).astimezone(self._zone).toordinal()

    def _spans(self, first: int, last: int | None) -> Iterator[tuple[int, int]]:
        """Disjoint, ordered UTC business spans of local days first..last (endless if None)."""
        covered = -(2**63)
        empty_run = 0
        day = first
        while last is None or day <= last:
            spans = self._day_spans(day)
            empty_run = 0 if spans else empty_run + 1
            if last is None and empty_run > _HORIZON_DAYS:
                raise ValueError("calendar has no business hours")
            for low, high in spans:
                # Starts never decrease, but fall-back folds (and ambiguous midnights) make a
                # span overlap the one before; trimming counts that time once, lazily.
                low = max(low, covered)
                if high > low:
                    yield low, high
                    covered = high
            day += 1

    def _day_spans(self, ordinal: int) -> tuple[tuple[int, int], ...]:
        """The UTC spans (microseconds) of one local date's business intervals, cached."""
        cached = self._days.get(ordinal)
        if cached is not None:
            return cached
        local = date.fromordinal(ordinal)
        spans: tuple[tuple[int, int], ...] = ()
        template = self._week[local.weekday()]
        if template and local not in self._holidays:
            midnight = datetime.combine(local, time())
            converted = (
                (self._wall_micros(midnight, low, False), self._wall_micros(midnight, high, True))
                for low, high in template
            )
            # A span may vanish entirely inside a spring-forward gap.
            spans = tuple((low, high) for low, high in converted if high > low)
        if len(self._days) >= _CACHE_DAYS:
            self._days.clear()
        self._days[ordinal] = spans
        return spans

    def _wall_micros(self, midnight: datetime, seconds: int, is_end: bool) -> int:
        """The UTC instant (microseconds) of a local wall-clock time, by the module's DST rules."""
        naive = midnight + timedelta(seconds=seconds)
        local = naive.replace(tzinfo=self._zone)
        first = naive - _offset(local)
        second = naive - _offset(local.replace(fold=1))
        if first <= second:
            # Equal: unambiguous. Otherwise ambiguous, and an end takes the later occurrence.
            chosen = second if is_end else first
            return (chosen - _NAIVE_EPOCH) // _ONE_MICRO
        # Nonexistent: fold=1 lands before the transition and fold=0 after; find the transition.
        return self._transition(
            (second - _NAIVE_EPOCH) // _ONE_MICRO, (first - _NAIVE_EPOCH) // _ONE_MICRO
        )

    def _transition(self, before: int, after: int) -> int:
        """The first instant in (before, after] whose UTC offset differs from that at `before`."""
        old = _offset(_instant(before).astimezone(self._zone))
        while after - before > 1:
            middle = (before + after) // 2
            if _offset(_instant(middle).astimezone(self._zone)) == old:
                before = middle
            else:
                after = middle
        return after


def _offset(local: datetime) -> timedelta:
    """The UTC offset of an aware datetime (zoneinfo always has one)."""
    offset = local.utcoffset()
    assert offset is not None
    return offset
