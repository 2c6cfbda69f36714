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
        """Wait until no other command of this process runs on `issue_id`, then hold it."""
        if not self._enabled:
            yield
            return
        lock, users = self._turns.get(issue_id, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._turns[issue_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._turns[issue_id]
            if users == 1:
                del self._turns[issue_id]
            else:
                self._turns[issue_id] = (lock, users - 1)
