"""Commands on one issue take turns in the API process; other issues do not wait."""

from __future__ import annotations

import asyncio

from tierline.api.issue_queue import IssueQueue
from tierline.store.group_commit import write_queued


async def test_commands_on_one_issue_take_turns_and_others_do_not_wait() -> None:
    queue = IssueQueue()
    inside: dict[str, int] = {}
    most: dict[str, int] = {}
    order: list[str] = []

    async def command(issue: str, n: int) -> None:
        async with queue.turn(issue):
            inside[issue] = inside.get(issue, 0) + 1
            most[issue] = max(most.get(issue, 0), inside[issue])
            order.append(f"{issue}{n}")
            await asyncio.sleep(0.001)
            inside[issue] -= 1

    await asyncio.gather(*(command(issue, n) for n in range(5) for issue in "ab"))
    assert most == {"a": 1, "b": 1}
    assert order[:2] == ["a0", "b0"]  # b did not wait behind a
    assert len(queue) == 0  # nothing kept once no command is in flight


async def test_an_entry_is_dropped_when_its_command_fails() -> None:
    queue = IssueQueue()
    try:
        async with queue.turn("x"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert len(queue) == 0


async def test_a_disabled_queue_lets_commands_run_side_by_side() -> None:
    queue = IssueQueue(enabled=False)
    inside, most = 0, 0

    async def command() -> None:
        nonlocal inside, most
        async with queue.turn("a"):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.001)
            inside -= 1

    await asyncio.gather(*(command() for _ in range(4)))
    assert most == 4


async def test_the_turn_passes_on_once_the_write_is_queued_and_only_once() -> None:
    """Group commit: the next command on the issue starts once this one's write is queued;
    the end of the turn does not release it a second time (a third would run beside it)."""
    queue = IssueQueue()
    events: list[str] = []
    queued = asyncio.Event()
    finish = asyncio.Event()

    async def first() -> None:
        async with queue.turn("a"):
            events.append("first decides")
            write_queued()
            write_queued()  # a second call changes nothing
            queued.set()
            await finish.wait()  # waiting for its write
            events.append("first answered")

    async def later(name: str) -> None:
        await queued.wait()
        async with queue.turn("a"):
            events.append(f"{name} starts")
            await asyncio.sleep(0.01)
            events.append(f"{name} ends")

    task = asyncio.create_task(first())
    others = [asyncio.create_task(later("second")), asyncio.create_task(later("third"))]
    await asyncio.sleep(0.005)
    assert events == ["first decides", "second starts"]  # before the first was answered
    finish.set()
    await asyncio.gather(task, *others)
    # The third waited for the second: the first's end did not release the lock again.
    assert events.index("third starts") > events.index("second ends")
    assert len(queue) == 0
