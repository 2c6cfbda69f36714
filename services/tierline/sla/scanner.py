"""The due-clock scanner: claims clocks whose time has come and records it through the write path.

Any number of scanners may run. A claim is one short statement: the due rows are locked with
`FOR UPDATE SKIP LOCKED` and their `next_fire_at` moves past a lease, so no other worker takes
them while this one sends the commands. The commands (`RecordSlaWarning`, `RecordSlaBreach`,
`RecomputeSla`) go through the write path like any API call (a claimed batch through its
set-based form, `IssueService.execute_many`, in `groups` units of work), and `decide` refuses a
warning or breach that is already recorded: two workers racing, a lease running out, or a
worker killed between its command and its bookkeeping can delay an outcome, never repeat it.
A killed worker's claims come back to every worker when their lease ends.

Between scans a worker sleeps until the nearest `next_fire_at` (at most `max_sleep`, 1 s), and
a NOTIFY from the clock table wakes it early when a clock due within that second appears; two
scans are at least `min_interval` (20 ms) apart unless the first claimed a full batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from prometheus_client import Counter, Histogram

from tierline.domain import commands as c
from tierline.domain.issue import Issue
from tierline.service_layer.issues import SYSTEM, IssueNotFound, IssueService
from tierline.service_layer.reference import ReferenceData
from tierline.sla.clock_table import NOTIFY_CHANNEL, NOTIFY_HORIZON, ClockTable, IssueClocks
from tierline.sqlfile import load_queries
from tierline.store.pool import DATABASE_ERRORS
from tierline.supervise import sleep_or_stop, supervise

log = structlog.get_logger(__name__)

COMMANDS = Counter(
    "tierline_sla_commands_total",
    "Commands the scanner sent; result=done when the clock is in the state asked for",
    ["command", "result"],
)
LATENESS = Histogram(
    "tierline_sla_fire_lateness_seconds",
    "Time from a clock's fire time to the scanner sending its command",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CLAIMED = Histogram(
    "tierline_sla_claimed_per_scan",
    "Due clocks claimed by one scan",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000),
)
RECOMPUTED = Counter("tierline_sla_recomputes_total", "RecomputeSla commands sent")

QUERIES = load_queries("tierline.sla")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class DueClock:
    """A claimed clock and the action it was due for."""

    issue_id: str
    clock_id: str
    fire_at: datetime
    threshold: float | None
    due_at: datetime | None
    attempts: int


def command_for(due: DueClock, now: datetime) -> c.RecordSlaWarning | c.RecordSlaBreach:
    """The command a due clock needs; a clock already past its deadline skips to the breach."""
    if due.threshold is None or (due.due_at is not None and due.due_at <= now):
        return c.RecordSlaBreach(clock_id=due.clock_id)
    return c.RecordSlaWarning(clock_id=due.clock_id, threshold=due.threshold)


def _result(issue: Issue, command: c.RecordSlaWarning | c.RecordSlaBreach) -> str:
    """`done` when the clock is now in the state the command asked for, else `refused`."""
    for clock in issue.clocks:
        if clock.id != command.clock_id:
            continue
        if isinstance(command, c.RecordSlaBreach):
            return "done" if clock.state == "breached" else "refused"
        return "done" if command.threshold in clock.warned else "refused"
    return "refused"


class SlaScanner:
    """Claims due clocks and sends their commands; safe to run in any number of processes."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        service: IssueService,
        reference: ReferenceData,
        clock_table: ClockTable,
        batch_size: int = 500,
        concurrency: int = 8,
        groups: int | None = None,
        lease_seconds: float = 5.0,
        max_lease_seconds: float = 300.0,
        max_sleep: float = NOTIFY_HORIZON,
        min_interval: float = 0.02,
        listen_url: str | None = None,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._pool = pool
        self._listen_url = listen_url
        self._service = service
        self._reference = reference
        self._clock_table = clock_table
        self._batch_size = batch_size
        self._concurrency = concurrency
        # Set-based units of work per claimed batch (default: one per connection it may use).
        self._groups = max(1, min(groups or concurrency, concurrency))
        self._lease = lease_seconds
        self._max_lease = max_lease_seconds
        # Longer sleeps would miss clocks written without a NOTIFY (see NOTIFY_HORIZON).
        self._max_sleep = min(max_sleep, NOTIFY_HORIZON)
        self._min_interval = min_interval
        self._now = now
        self._wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Scan until `stop`; reconnect after database failures."""
        await supervise(
            "sla_scanner",
            self._run_listening,
            stop,
            retry_on=DATABASE_ERRORS,
        )

    async def _run_listening(self, stop: asyncio.Event) -> None:
        """The scan loop, with a LISTEN connection when a URL was given (else it just polls)."""
        listener = None
        if self._listen_url is not None:
            listener = await asyncpg.connect(self._listen_url)
        try:
            if listener is not None:
                await listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
            log.info("sla_scanner_started", batch_size=self._batch_size, lease=self._lease)
            while not stop.is_set():
                # Cleared before the scan, so a NOTIFY that arrives during it is not lost.
                self._wake.clear()
                scanned_at = time.monotonic()
                if await self.scan_once() >= self._batch_size:
                    continue  # a full batch: more may be due already
                await self._sleep(stop, scanned_at)
        finally:
            if listener is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(listener.close())

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    async def _sleep(self, stop: asyncio.Event, scanned_at: float) -> None:
        """Until the nearest fire time (at most `max_sleep`), a NOTIFY, or `stop`."""
        nearest: datetime | None = await self._pool.fetchval(QUERIES["nearest_fire_time"])
        delay = self._max_sleep
        if nearest is not None:
            delay = min(delay, max(0.0, (nearest - self._now()).total_seconds()))
        if delay > 0:
            waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())}
            try:
                await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        # Under a steady flow of clocks, scanning again for each one costs a few queries per
        # clock; a floor between scans batches them, for at most `min_interval` of lateness.
        floor = scanned_at + self._min_interval - time.monotonic()
        if floor > 0:
            await sleep_or_stop(stop, floor)

    async def scan_once(self) -> int:
        """Fire one batch of due clocks, then one batch of recomputes; returns the work done."""
        due = await self.claim_due(self._now())
        if due:
            await self.fire_all(due)
        return len(due) + await self._recompute_batch()

    async def claim_due(self, now: datetime) -> list[DueClock]:
        """Take up to a batch of clocks due by `now`, leasing them to this worker."""
        rows = await self._pool.fetch(
            QUERIES["claim_due_clocks"], now, self._batch_size, self._lease, self._max_lease
        )
        due = sorted((DueClock(**dict(row)) for row in rows), key=lambda d: d.fire_at)
        if due:
            CLAIMED.observe(len(due))
            stuck = [d for d in due if d.attempts >= 3]
            if stuck:
                log.warning(
                    "sla_clocks_retried",
                    count=len(stuck),
                    issue_id=stuck[0].issue_id,
                    clock_id=stuck[0].clock_id,
                    attempts=stuck[0].attempts,
                )
        return due

    async def fire_all(self, due: Sequence[DueClock]) -> None:
        """Fire claimed clocks in a few transactions, then store all their answers at once.

        The batch is split by issue into at most `groups` groups; each group's commands
        are decided and appended in one unit of work (`IssueService.execute_many`), in claim
        order per issue. Only the grouping differs from one command per transaction: `decide`
        still refuses a second breach of a clock, and a group that fails leaves its clocks
        leased, to be claimed again.
        """
        groups: list[list[DueClock]] = [[] for _ in range(self._groups)]
        issues = {item.issue_id for item in due}
        for item in due:
            groups[hash(item.issue_id) % len(groups)].append(item)
        answered = await asyncio.gather(*(self._fire_group(g) for g in groups if g))
        latest = {issue.id: issue for group in answered for issue in group}
        await self._store(list(latest.values()))
        late = max((self._now() - d.fire_at).total_seconds() for d in due)
        log.info("sla_clocks_fired", count=len(due), issues=len(issues), max_late=round(late, 3))

    async def _fire_group(self, group: list[DueClock]) -> list[Issue]:
        """One unit of work for a group of due clocks; the issues as the commands left them."""
        now = self._now()
        commands = [command_for(item, now) for item in group]
        for item in group:
            LATENESS.observe(max(0.0, (now - item.fire_at).total_seconds()))
        try:
            answers = await self._service.execute_many(
                [(item.issue_id, command) for item, command in zip(group, commands, strict=True)]
            )
        except Exception as exc:
            # The leases bring the clocks back; this group's failure must not stop the others.
            for command in commands:
                COMMANDS.labels(type(command).__name__, "failed").inc()
            log.error("sla_commands_failed", count=len(group), error=repr(exc))
            return []
        issues = []
        # (command, result) counted here and added to the metric once per batch
        results: collections.Counter[tuple[str, str]] = collections.Counter()
        for item, command, answer in zip(group, commands, answers, strict=True):
            name = type(command).__name__
            if isinstance(answer, IssueNotFound):
                await self._pool.execute(QUERIES["forget_issue_clocks"], item.issue_id)
            elif isinstance(answer, Exception):
                results[name, "failed"] += 1
                log.error(
                    "sla_command_failed",
                    issue_id=item.issue_id,
                    clock_id=item.clock_id,
                    command=name,
                    error=repr(answer),
                )
            else:
                results[name, _result(answer.issue, command)] += 1
                issues.append(answer.issue)
        for labels, count in results.items():
            COMMANDS.labels(*labels).inc(count)
        return issues

    async def _store(self, issues: Sequence[Issue]) -> None:
        """Schedule the issues' next fire times now, without waiting for the log."""
        if not issues:
            return
        states = [IssueClocks(i.id, i.vendor_id, i.version, i.clocks) for i in issues]
        async with self._pool.acquire() as conn:
            await self._clock_table.store(conn, states)

    async def _recompute_batch(self) -> int:
        """Send RecomputeSla to a batch of issues queued by a policy or vendor change."""
        rows = await self._pool.fetch(
            QUERIES["claim_recompute"], self._now(), self._batch_size, self._lease, self._max_lease
        )
        if not rows:
            return 0
        wanted = max(r["policy_version"] for r in rows)
        if self._reference.governance_version < wanted:
            await self._reference.refresh()
        for row in rows:
            # Calendars must be at least as new as the vendor change that queued the row.
            if row["vendor_version"] > 0 and row["vendor_id"] is not None:
                await self._reference.ensure_vendor_version(row["vendor_id"], row["vendor_version"])
        gate = asyncio.Semaphore(self._concurrency)

        async def recompute(issue_id: str) -> tuple[str, Issue | None]:
            async with gate:
                return issue_id, await self.recompute(issue_id)

        answered = await asyncio.gather(*(recompute(r["issue_id"]) for r in rows))
        await self._store([issue for _, issue in answered if issue is not None])
        versions = {r["issue_id"]: (r["policy_version"], r["vendor_version"]) for r in rows}
        finished = [issue_id for issue_id, issue in answered if issue is not None]
        await self._pool.execute(
            QUERIES["finish_recompute"],
            finished,
            [versions[issue_id][0] for issue_id in finished],
            [versions[issue_id][1] for issue_id in finished],
        )
        log.info("sla_recomputed", count=len(finished), policy_version=wanted)
        return len(rows)

    async def recompute(self, issue_id: str) -> Issue | None:
        """Retarget an issue's live clocks to the policy and calendar in force, keeping elapsed."""
        try:
            issue = (await self._service.execute(SYSTEM, issue_id, c.RecomputeSla())).issue
        except IssueNotFound:
            await self._pool.execute(
                QUERIES["finish_recompute"], [issue_id], [2**31 - 1], [2**31 - 1]
            )
            return None
        except Exception as exc:
            # Left queued: the lease brings it back.
            log.error("sla_recompute_failed", issue_id=issue_id, error=repr(exc))
            return None
        RECOMPUTED.inc()
        return issue
