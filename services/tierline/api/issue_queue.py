"""Commands on the same issue take turns inside one API process.

With the one-statement write path (store/one_statement.py) two commands on one issue that run
side by side both read the same head, and the second one's write finds the head moved and runs
again. Queuing them here first means such conflicts come only from other processes; commands
on different issues still run side by side. An entry lives only while commands wait for or
hold it, so an issue id in a URL cannot grow this map beyond the requests in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tierline.store.group_commit import WRITE_QUEUED


class IssueQueue:
    """One asyncio lock per issue with commands in flight (none when not `enabled`: the locking
    write path queues commands on the issue's row lock in PostgreSQL instead)."""

    def __init__(self, enabled: bool = True) -> None:
        self._enabled = enabled
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._turns)

    @asynccontextmanager
    async def turn(self, issue_id: str) -> AsyncIterator[None]:
        """Wait until no other command of this process runs on `issue_id`, then hold it.

        The turn passes on early once the command's write is queued for group commit
        (`write_queued`): the next command is decided on the issue as that write leaves it, and
        its own write goes out only after it, or with it, and only if it moved the head.
        """
        if not self._enabled:
            yield
            return
        known, users = self._turns.get(issue_id, (None, 0))
        lock = known if known is not None else asyncio.Lock()
        self._turns[issue_id] = (lock, users + 1)
        held = False

        def pass_on() -> None:
            nonlocal held
            if held:
                held = False
                lock.release()

        try:
            await lock.acquire()
            held = True
            token = WRITE_QUEUED.set(pass_on)
            try:
                yield
            finally:
                WRITE_QUEUED.reset(token)
                pass_on()
        finally:
            lock, users = self._turns[issue_id]
            if users == 1:
                del self._turns[issue_id]
            else:
                self._turns[issue_id] = (lock, users - 1)
