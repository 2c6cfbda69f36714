"""The per-key token bucket, on an injected clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tierline.api.ratelimit import RateLimiter


def test_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.take("k", now=0.0).allowed for _ in range(4)] == [True, True, True, False]
    refused = limiter.take("k", now=0.0)
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["RateLimit"] == '"per-key";r=0;t=1'
    assert refused.headers["RateLimit-Policy"] == '"per-key";q=3;w=2'
    assert limiter.take("k", now=0.5).allowed  # one token back after 1/rate seconds
    assert not limiter.take("k", now=0.5).allowed
    assert limiter.take("other", now=0.5).allowed  # keys do not share a bucket


@given(
    rate=st.floats(min_value=0.5, max_value=1000),
    burst=st.integers(min_value=1, max_value=500),
    gaps=st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=300),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    limiter = RateLimiter(rate=rate, burst=burst)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        decision = limiter.take("k", now=now)
        allowed += decision.allowed
        assert 0 <= decision.remaining <= burst
        assert allowed <= burst + rate * now + 1e-6


def test_rate_zero_is_off() -> None:
    assert not RateLimiter(rate=0, burst=10).enabled
