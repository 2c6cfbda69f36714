"""The relay's pipeline: batches are marked in send order, each only after its every ack."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from tierline.relay.relay import InFlight, Pipeline

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def batch(positions: list[int]) -> tuple[InFlight, list[asyncio.Future[Any]]]:
    """A batch of rows at those positions, one pending ack each."""
    loop = asyncio.get_running_loop()
    rows: list[Any] = [{"position": p, "time": T0 + timedelta(seconds=p)} for p in positions]
    acks: list[asyncio.Future[Any]] = [loop.create_future() for _ in positions]
    return InFlight(rows, acks, read_at=0.0), acks


async def settle() -> None:
    """Let the gathered ack futures see their children's results."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_batch_is_marked_only_after_every_earlier_batch_and_all_its_own_acks() -> None:
    pipeline = Pipeline(max_in_flight=3)
    first, first_acks = batch([1, 2, 3])
    second, second_acks = batch([4, 5])
    pipeline.add(first)
    pipeline.add(second)
    assert pipeline.positions() == [1, 2, 3, 4, 5]
    for ack in second_acks:
        ack.set_result(None)
    first_acks[0].set_result(None)
    await settle()
    assert pipeline.pop_acked() == [], "a later batch acked first must wait for the earlier one"
    for ack in first_acks[1:]:
        ack.set_result(None)
    await settle()
    assert pipeline.pop_acked() == [1, 2, 3, 4, 5]
    assert pipeline.positions() == [] and pipeline.head_acked() is None


async def test_a_failed_ack_raises_and_leaves_its_batch_and_later_ones_unmarked() -> None:
    pipeline = Pipeline(max_in_flight=2)
    first, first_acks = batch([7, 8])
    second, second_acks = batch([9])
    pipeline.add(first)
    pipeline.add(second)
    first_acks[0].set_result(None)
    first_acks[1].set_exception(KafkaTimeoutError())
    second_acks[0].set_result(None)
    await settle()
    for _ in range(2):
        with pytest.raises(KafkaTimeoutError):
            pipeline.pop_acked()
    assert pipeline.positions() == [7, 8, 9], "nothing after a failed ack may be marked"


async def test_full_at_the_limit_and_the_lag_is_the_oldest_event_in_flight() -> None:
    pipeline = Pipeline(max_in_flight=2)
    assert not pipeline.full and pipeline.oldest_time() is None
    first, first_acks = batch([5, 6])
    second, _ = batch([3])  # committed late: a lower position read after a higher one
    pipeline.add(first)
    assert not pipeline.full
    pipeline.add(second)
    assert pipeline.full
    assert pipeline.oldest_time() == T0 + timedelta(seconds=3)
    for ack in first_acks:
        ack.set_result(None)
    await settle()
    assert pipeline.pop_acked() == [5, 6]
    assert not pipeline.full
