"""What an attempt's answer means: delivered, retried per schedule with jitter, dead, disabled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from hypothesis import given
from hypothesis import strategies as st

from tierline.webhooks.retry import JITTER, judge, parse_retry_after, retry_delay

SCHEDULE = [5.0, 300.0, 1800.0]
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_2xx_is_delivered_whatever_came_before() -> None:
    for code in (200, 201, 202, 204, 299):
        assert judge(code, 2, SCHEDULE).status == "delivered"


def test_410_disables_at_once() -> None:
    verdict = judge(410, 0, SCHEDULE)
    assert (verdict.status, verdict.outcome, verdict.delay) == ("dead", "disabled", None)


def test_failures_follow_the_schedule_then_the_delivery_is_dead() -> None:
    verdicts = [judge(503, failures, SCHEDULE, draw=0.5) for failures in range(4)]
    assert [v.outcome for v in verdicts] == ["retry", "retry", "retry", "dead"]
    assert [v.delay for v in verdicts[:3]] == SCHEDULE
    assert verdicts[3].status == "dead"


def test_no_answer_and_other_errors_are_retried() -> None:
    assert judge(None, 0, SCHEDULE).outcome == "retry"
    assert judge(429, 0, SCHEDULE).outcome == "retry"
    assert judge(500, 0, SCHEDULE).outcome == "retry"
    assert judge(404, 0, SCHEDULE).outcome == "retry"


def test_retry_after_extends_the_wait_but_never_shortens_it() -> None:
    assert judge(429, 0, SCHEDULE, retry_after=120.0, draw=0.5).delay == 120.0
    assert judge(503, 1, SCHEDULE, retry_after=1.0, draw=0.5).delay == 300.0


def test_retry_after_does_not_revive_a_spent_schedule() -> None:
    assert judge(503, 3, SCHEDULE, retry_after=10.0).status == "dead"


def test_retry_after_forms() -> None:
    assert parse_retry_after("120", NOW) == 120.0
    assert parse_retry_after(format_datetime(NOW + timedelta(minutes=2), usegmt=True), NOW) == 120
    assert parse_retry_after(format_datetime(NOW - timedelta(minutes=2), usegmt=True), NOW) == 0
    assert parse_retry_after("9999999", NOW) == 86_400.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


@given(
    schedule=st.lists(st.floats(0.01, 1e5), min_size=1, max_size=12),
    failures=st.integers(0, 15),
    draw=st.floats(0, 1, exclude_max=True),
)
def test_jitter_stays_within_bounds(schedule: list[float], failures: int, draw: float) -> None:
    delay = retry_delay(schedule, failures, None, draw)
    if failures >= len(schedule):
        assert delay is None
    else:
        assert delay is not None
        base = schedule[failures]
        assert base * (1 - JITTER) - 1e-9 <= delay <= base * (1 + JITTER) + 1e-9
