"""The asyncpg connection pool every role shares."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from prometheus_client import Counter

CONNECT_TIMEOUT = 10.0

# What a lost or restarting PostgreSQL raises; a worker retries its loop after any of these.
# InternalClientError ("cannot switch to state N; another operation is in progress") comes
# from a connection whose server went away mid-operation, e.g. a fast restart: the fault
# drill (bench/drill.py) saw it stop the SLA and webhook roles before it was listed here.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


async def _reset_on_release(conn: asyncpg.Connection) -> None:
    """Nothing beyond what asyncpg always does on release (roll back an open transaction, drop
    listeners).

    asyncpg's default reset sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL` on every release: one more round trip per command, about as costly as the
    command's own statements. Pooled connections never hold session state: settings are
    `SET LOCAL`, advisory locks are `_xact_` or taken on dedicated connections (relay, gate),
    LISTEN runs on dedicated connections (tests/unit/test_pool_session_state.py keeps it so).
    """


class PoolBusy(TimeoutError):
    """No pooled connection became free within the pool's bound (the API answers 503)."""


ACQUIRE_TIMEOUTS = Counter(
    "tierline_db_acquire_timeouts_total",
    "Waits for a pooled PostgreSQL connection that gave up after the pool's bound",
)


class BoundedPool(asyncpg.Pool):
    """A pool whose callers wait at most `wait_bound` seconds for a free connection.

    asyncpg waits forever by default: a cycle between a lock and the pool (the API that stopped
    answering at 500 commands/s, service_layer/reference.py) or a stuck query holding every
    connection then stops every request for good. With a bound such a stop turns into 503s,
    and the waits that give up let go of whatever they held. Only a wait that would queue pays
    for the timer: a free connection is handed out as before.
    """

    wait_bound: float | None = None

    async def _acquire(self, timeout: float | None) -> PoolConnectionProxy[asyncpg.Record]:
        # Private to asyncpg (every acquire, `async with` or awaited, ends here); the
        # integration tests in tests/integration/test_pool_bound.py pin it.
        free = not self._queue.empty()  # type: ignore[attr-defined]
        if timeout is not None or self.wait_bound is None or free:
            return await super()._acquire(timeout)  # type: ignore[misc,no-any-return]
        try:
            return await super()._acquire(self.wait_bound)  # type: ignore[misc,no-any-return]
        except TimeoutError as exc:
            ACQUIRE_TIMEOUTS.inc()
            raise PoolBusy(
                f"no database connection became free within {self.wait_bound:g} s"
            ) from exc


async def create_pool(
    database_url: str,
    *,
    min_size: int = 2,
    max_size: int = 20,
    wait_bound: float | None = None,
) -> asyncpg.Pool:
    """A pool whose connections use UTC so timestamps round-trip unchanged.

    `wait_bound`: seconds a caller waits for a free connection before `PoolBusy` (None: no
    bound, asyncpg's default).
    """
    pool = BoundedPool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        reset=_reset_on_release,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        # A server that stopped answering must fail a request in seconds, not a minute.
        timeout=CONNECT_TIMEOUT,
        server_settings={"timezone": "UTC", "application_name": "tierline"},
    )
    pool.wait_bound = wait_bound
    await pool
    return pool


def taken_back(conn: PoolConnectionProxy[asyncpg.Record]) -> bool:
    """Whether the pool took this borrowed connection back on its own: its server closed it.

    asyncpg's pool detaches the proxy when the connection closes under it (a PostgreSQL restart
    or a terminated backend). A call on the proxy after that raises `InterfaceError`
    ("released back to the pool"), which reads like a bug in the caller, not a lost database.
    """
    # Private to asyncpg, without a public accessor; the integration test pins it.
    return getattr(conn, "_con", conn) is None


def raise_if_lost(conn: PoolConnectionProxy[asyncpg.Record], exc: BaseException) -> None:
    """Raise `exc`, met while holding `conn`, as the lost connection it is, if it is one.

    A unit of work never gives its connection back before it ends, so an `InterfaceError` while
    the pool has taken it back means the server went away under the command: it leaves as
    `ConnectionDoesNotExistError` (the API answers 503), not as a misuse of a released
    connection (a 500). Anything else returns, for the caller to raise as it is.
    """
    if isinstance(exc, asyncpg.InterfaceError) and taken_back(conn):
        raise asyncpg.ConnectionDoesNotExistError(
            "the connection to PostgreSQL closed during the command"
        ) from exc


# A connection as handlers see it: a plain one, or one borrowed from the pool.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
