"""What one attempt's result means for its delivery: delivered, retry later, dead or disabled.

Pure: the caller passes the clock reading and the random jitter draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Literal

DeliveryStatus = Literal["pending", "failed", "delivered", "dead"]
Outcome = Literal["delivered", "retry", "dead", "disabled"]

# Delays are spread over ±20 % so endpoints recovering from an outage are not hit in lockstep.
JITTER = 0.2
# A Retry-After longer than a day is taken as a day: the delivery must stay alive.
MAX_RETRY_AFTER = 86_400.0
GONE = 410


@dataclass(frozen=True)
class Verdict:
    """The delivery's new status, the attempt's outcome and the delay before the next attempt."""

    status: DeliveryStatus
    outcome: Outcome
    delay: float | None = None


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP date), if valid."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(0.0, (when - now).total_seconds()), MAX_RETRY_AFTER)


def retry_delay(
    schedule: list[float], failures_before: int, retry_after: float | None, draw: float
) -> float | None:
    """Seconds until the next attempt after a failure, or None when the schedule is spent.

    `failures_before` counts the failed attempts before this one; `draw` is uniform in [0, 1).
    """
    if failures_before >= len(schedule):
        return None
    base = schedule[failures_before] * (1 - JITTER + 2 * JITTER * draw)
    return base if retry_after is None else max(base, retry_after)


def judge(
    status_code: int | None,
    failures_before: int,
    schedule: list[float],
    retry_after: float | None = None,
    draw: float = 0.5,
) -> Verdict:
    """The verdict on an attempt that got `status_code` (None: no answer, e.g. a timeout)."""
    if status_code is not None and 200 <= status_code < 300:
        return Verdict("delivered", "delivered")
    if status_code == GONE:
        return Verdict("dead", "disabled")
    delay = retry_delay(schedule, failures_before, retry_after, draw)
    if delay is None:
        return Verdict("dead", "dead")
    return Verdict("failed", "retry", delay)
