"""Per-key rate limits: a token bucket per API key, in this process.

Headers follow the IETF draft "RateLimit header fields for HTTP" (draft-ietf-httpapi-
ratelimit-headers): `RateLimit-Policy: "per-key";q=<burst>;w=<window>` names the policy and
`RateLimit: "per-key";r=<remaining>;t=<seconds until a token is back>` reports the state. Over
the limit the API answers 429 with `Retry-After`. With several API processes each has its own
buckets (ADR 0008).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from tierline.api.problems import Problem

POLICY = "per-key"
# Buckets of keys idle this long are full again anyway; forgetting them bounds memory.
MAX_BUCKETS = 100_000


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass(frozen=True)
class Decision:
    """Whether a request may go on, and the header values that say why."""

    allowed: bool
    remaining: int
    reset_seconds: int
    headers: dict[str, str]


class RateLimiter:
    """Token buckets: `rate` tokens per second up to `burst`, one token per request."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        window = math.ceil(self.burst / rate) if rate > 0 else 0
        self._policy = f'"{POLICY}";q={self.burst};w={window}'

    @property
    def enabled(self) -> bool:
        """A rate of 0 turns limiting off."""
        return self.rate > 0

    def take(self, key: str, now: float | None = None) -> Decision:
        """Spend a token of `key`'s bucket if there is one."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        allowed = bucket.tokens >= 1.0
        if allowed:
            bucket.tokens -= 1.0
        self._buckets[key] = bucket
        if len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        remaining = int(bucket.tokens)
        reset = 0 if bucket.tokens >= 1.0 else math.ceil((1.0 - bucket.tokens) / self.rate)
        headers = {
            "RateLimit-Policy": self._policy,
            "RateLimit": f'"{POLICY}";r={remaining};t={reset}',
        }
        if not allowed:
            headers["Retry-After"] = str(max(1, reset))
        return Decision(allowed, remaining, reset, headers)


async def within_limit(
    limiter: RateLimiter, key_id: str, proceed: Callable[[], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Run `proceed` if the key has a token, else a 429 problem; the headers go on either answer.

    The one place a key's requests are counted: the JSON API and the board (a session counts
    against the key it signed in with) both come through here.
    """
    if not limiter.enabled:
        return await proceed()
    decision = limiter.take(key_id)
    if not decision.allowed:
        raise Problem(
            429,
            "rate-limited",
            f"this key may make {limiter.rate:g} requests per second "
            f"(bursts of {limiter.burst}); retry after {decision.reset_seconds}s",
            headers=decision.headers,
        )
    try:
        response = await proceed()
    except Problem as problem:
        problem.headers = {**decision.headers, **problem.headers}
        raise
    response.headers.update(decision.headers)
    return response
