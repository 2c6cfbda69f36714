"""Freshness of the log's consumers, stage by stage: commit → relay → broker → consumer → commit.

Each stage is a histogram with buckets from 1 ms, so `/metrics` says where the time between a
command's commit and its effect in a consumer goes. The stages are measured where they end,
against a timestamp that travels with the event:

- `commit → relay read`: the event's `time` (stamped inside the committing transaction, so a
  little before the commit) to when the relay read its row.
- `relay read → broker ack`: per batch, from reading the rows to the last ack.
- `relay send → consumer receive`: the record's Kafka timestamp (the producer stamps it when
  the relay hands it over; the broker's append time on topics with `LogAppendTime`) to when
  `getmany` handed it to the consumer. It includes the produce round trip and the fetch wait.
- `consumer receive → commit`: from `getmany` returning to the batch's transaction committing.

All clocks are wall clocks (`time.time()`): exact on one machine (`tierline dev`), as good as
the hosts' clock sync across machines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from prometheus_client import Histogram

# Fine where the targets are (p50 < 30 ms, p99 < 100 ms), coarse beyond.
STAGE_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

RELAY_READ_DELAY = Histogram(
    "tierline_relay_read_delay_seconds",
    "From an event's commit-side time to the relay reading its row",
    buckets=STAGE_BUCKETS,
)
RELAY_PUBLISH = Histogram(
    "tierline_relay_publish_seconds",
    "From the relay reading an event's row to the broker acknowledging it",
    buckets=STAGE_BUCKETS,
)
CONSUMER_TRANSIT = Histogram(
    "tierline_consumer_transit_seconds",
    "From a record's Kafka timestamp (the relay's send) to the consumer receiving it",
    ["consumer"],
    buckets=STAGE_BUCKETS,
)
CONSUMER_APPLY_DELAY = Histogram(
    "tierline_consumer_apply_delay_seconds",
    "From the consumer receiving an event to its batch's transaction committing",
    ["consumer"],
    buckets=STAGE_BUCKETS,
)
CONSUMER_END_TO_END = Histogram(
    "tierline_consumer_commit_to_applied_seconds",
    "From an event's commit-side time to its effects being committed by the consumer",
    ["consumer"],
    buckets=STAGE_BUCKETS,
)

# The chain in order: (metric name, labelled by consumer, what the stage is).
STAGES: tuple[tuple[str, bool, str], ...] = (
    ("tierline_relay_read_delay_seconds", False, "commit → relay read"),
    ("tierline_relay_publish_seconds", False, "relay read → broker ack"),
    ("tierline_consumer_transit_seconds", True, "relay send → consumer receive"),
    ("tierline_consumer_apply_delay_seconds", True, "consumer receive → commit"),
    ("tierline_consumer_commit_to_applied_seconds", True, "commit → consumer commit (all)"),
)


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float:
    """The q-quantile (0..1) of a histogram given as (upper bound, cumulative count) pairs.

    Interpolates linearly inside the bucket holding the rank, as Prometheus's
    `histogram_quantile` does; the first bucket starts at 0, and a rank in the `+Inf` bucket
    answers the highest finite bound. NaN when the histogram is empty.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return math.nan
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = (bound if not math.isinf(bound) else lower), count
    return lower
