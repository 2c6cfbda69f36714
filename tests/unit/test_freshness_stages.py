"""Quantiles of the freshness stage histograms, as the bench reads them from /metrics."""

from __future__ import annotations

import math

from tierline.eventlog.freshness import STAGE_BUCKETS, histogram_quantile


def test_quantile_interpolates_inside_the_bucket_holding_the_rank() -> None:
    # 10 events up to 10 ms, 10 more up to 20 ms: the median is the first bucket's bound.
    buckets = [(0.01, 10.0), (0.02, 20.0), (math.inf, 20.0)]
    assert histogram_quantile(buckets, 0.5) == 0.01
    assert math.isclose(histogram_quantile(buckets, 0.75), 0.015)
    assert math.isclose(histogram_quantile(buckets, 0.25), 0.005)


def test_quantile_skips_empty_buckets_and_ignores_their_order() -> None:
    buckets = [(math.inf, 4.0), (0.1, 4.0), (0.05, 0.0), (0.001, 0.0)]
    assert math.isclose(histogram_quantile(buckets, 0.5), 0.075)


def test_rank_beyond_the_last_finite_bound_answers_that_bound() -> None:
    buckets = [(0.5, 1.0), (1.0, 1.0), (math.inf, 10.0)]
    assert histogram_quantile(buckets, 0.99) == 1.0


def test_empty_histogram_has_no_quantile() -> None:
    assert math.isnan(histogram_quantile([], 0.5))
    assert math.isnan(histogram_quantile([(0.01, 0.0), (math.inf, 0.0)], 0.5))


def test_buckets_resolve_milliseconds_where_the_targets_are() -> None:
    assert STAGE_BUCKETS[0] == 0.001
    assert list(STAGE_BUCKETS) == sorted(STAGE_BUCKETS)
    assert {0.03, 0.1} <= set(STAGE_BUCKETS)
