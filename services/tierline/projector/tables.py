"""Set-based reads and writes of the read-model tables, in `read` or in a replay's schema.

Every statement is a module-level template whose only substitution is the schema name, chosen
from the fixed names below (never from input); values always travel as parameters. Upserts go
through `unnest` of one array per column, insert-only tables through COPY.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import asyncpg

from tierline.projector.fold import (
    DAILY_FIELDS,
    BatchChanges,
    ClockChange,
    ClockRow,
    DailyCounts,
    EscalationRow,
    IssueRow,
    TimelineRow,
    clock_record,
    clock_row,
    encode_json,
    issue_clock_summary,
)
from tierline.sqlfile import load_queries

QUERIES = load_queries("tierline.projector")

LIVE_SCHEMA = "read"
REPLAY_SCHEMA = "read_replay"
RETIRED_SCHEMA = "read_retired"
SCHEMAS = (LIVE_SCHEMA, REPLAY_SCHEMA)

# Projection name -> its table; `tierline replay --projection NAME` takes these names.
PROJECTION_TABLES = {
    "issues": "issues",
    "timeline": "issue_timeline",
    "escalations": "escalations",
    "sla_clocks": "sla_clocks",
    "vendor_daily": "vendor_daily",
}
PROJECTIONS = tuple(PROJECTION_TABLES)

# (column, PostgreSQL array type of its unnest parameter); `clocks` travels as text.
ISSUE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("issue_id", "text"),
    ("vendor_id", "text"),
    ("title", "text"),
    ("category", "text"),
    ("priority", "text"),
    ("status", "text"),
    ("tier", "int"),
    ("assignee", "text"),
    ("external_ref", "text"),
    ("reported_by", "text"),
    ("version", "int"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
    ("tier_entered_at", "timestamptz"),
    ("cycle_started_at", "timestamptz"),
    ("acknowledged_at", "timestamptz"),
    ("resolved_at", "timestamptz"),
    ("closed_at", "timestamptz"),
    ("breach_count", "int"),
    ("escalation_count", "int"),
    ("reopen_count", "int"),
    ("comment_count", "int"),
    ("clocks", "text"),
    ("respond_state", "text"),
    ("respond_due_at", "timestamptz"),
    ("resolve_state", "text"),
    ("resolve_due_at", "timestamptz"),
    ("next_due_at", "timestamptz"),
    ("sla_breached", "bool"),
)
# The IssueRow fields, in table order: the first 23 columns.
ISSUE_ROW_FIELDS = tuple(name for name, _ in ISSUE_COLUMNS[:23])

CLOCK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("issue_id", "text"),
    ("clock_id", "text"),
    ("vendor_id", "text"),
    ("tier", "int"),
    ("kind", "text"),
    ("priority", "text"),
    ("state", "text"),
    ("outcome", "text"),
    ("started_at", "timestamptz"),
    ("due_at", "timestamptz"),
    ("target_seconds", "float8"),
    ("elapsed_seconds", "float8"),
    ("warned", "text"),
    ("breached_at", "timestamptz"),
    ("ended_at", "timestamptz"),
    ("outcome_at", "timestamptz"),
    ("updated_at", "timestamptz"),
)
CLOCK_WARNED = [name for name, _ in CLOCK_COLUMNS].index("warned")
DAILY_TYPES = {name: "numeric" if name.endswith("_total") else "int" for name in DAILY_FIELDS}

# Copied in as records: the row types' fields are the tables' columns, in order.
TIMELINE_COLUMNS = TimelineRow._fields
ESCALATION_COLUMNS = EscalationRow._fields


def _unnest(columns: Sequence[tuple[str, str]]) -> str:
    params = ", ".join(f"${n}::{kind}[]" for n, (_, kind) in enumerate(columns, start=1))
    names = ", ".join(name for name, _ in columns)
    return f"unnest({params}) AS t({names})"


def _select(columns: Sequence[tuple[str, str]], casts: dict[str, str]) -> str:
    return ", ".join(f"t.{name}{casts.get(name, '')}" for name, _ in columns)


_ISSUE_NAMES = ", ".join(name for name, _ in ISSUE_COLUMNS)
_CLOCK_NAMES = ", ".join(name for name, _ in CLOCK_COLUMNS)
_DAILY_COLUMNS = (("vendor_id", "text"), ("day", "date"), *DAILY_TYPES.items())

SELECT_ISSUES = (
    "SELECT "
    + ", ".join(f"{n}::text" if n == "clocks" else n for n in ISSUE_ROW_FIELDS)
    + " FROM {schema}.issues WHERE issue_id = ANY($1::text[])"
)
INSERT_ISSUES = (
    f"INSERT INTO {{schema}}.issues ({_ISSUE_NAMES}) "
    f"SELECT {_select(ISSUE_COLUMNS, {'clocks': '::jsonb'})} FROM {_unnest(ISSUE_COLUMNS)}"
)
UPDATE_ISSUES = (
    "UPDATE {schema}.issues AS i SET "
    + ", ".join(
        f"{name} = t.{name}{'::jsonb' if name == 'clocks' else ''}" for name, _ in ISSUE_COLUMNS[1:]
    )
    + f" FROM {_unnest(ISSUE_COLUMNS)} WHERE i.issue_id = t.issue_id"
)
UPSERT_CLOCKS = (
    f"INSERT INTO {{schema}}.sla_clocks ({_CLOCK_NAMES}) "
    f"SELECT {_select(CLOCK_COLUMNS, {'warned': '::float8[]'})} FROM {_unnest(CLOCK_COLUMNS)} "
    "ON CONFLICT (issue_id, clock_id) DO UPDATE SET "
    + ", ".join(f"{name} = EXCLUDED.{name}" for name, _ in CLOCK_COLUMNS[2:])
)
UPSERT_DAILY = (
    "INSERT INTO {schema}.vendor_daily AS d ("
    + ", ".join(name for name, _ in _DAILY_COLUMNS)
    + f") SELECT * FROM {_unnest(_DAILY_COLUMNS)} "
    "ON CONFLICT (vendor_id, day) DO UPDATE SET "
    + ", ".join(f"{name} = d.{name} + EXCLUDED.{name}" for name in DAILY_FIELDS)
)
# Batches that add issues take this lock until commit, so list_seq order is commit order.
LIST_SEQ_LOCK_ID = 7_311_529_010


@dataclass(frozen=True)
class ReadTables:
    """The statements for one schema holding a full set of read-model tables."""

    schema: str

    def __post_init__(self) -> None:
        if self.schema not in SCHEMAS:
            raise ValueError(f"not a read-model schema: {self.schema!r}")

    def sql(self, template: str) -> str:
        """A statement template bound to this schema."""
        return template.format(schema=self.schema)


def issue_from_record(record: asyncpg.Record) -> IssueRow:
    """An IssueRow from a SELECT_ISSUES row."""
    values = {name: record[name] for name in ISSUE_ROW_FIELDS}
    values["clocks"] = json.loads(values["clocks"])
    return IssueRow(**values)


async def load_issues(
    conn: asyncpg.Connection, tables: ReadTables, issue_ids: Iterable[str]
) -> dict[str, IssueRow]:
    """The stored rows of these issues (absent ones are missing from the result)."""
    rows = await conn.fetch(tables.sql(SELECT_ISSUES), list(issue_ids))
    return {row["issue_id"]: issue_from_record(row) for row in rows}


def issue_values(row: IssueRow) -> list[Any]:
    """One issue's values in ISSUE_COLUMNS order (clocks as JSON text)."""
    summary = issue_clock_summary(row)
    values = [getattr(row, name) for name in ISSUE_ROW_FIELDS[:-1]]
    return [
        *values,
        encode_json(row.clocks),
        summary.respond_state,
        summary.respond_due_at,
        summary.resolve_state,
        summary.resolve_due_at,
        summary.next_due_at,
        summary.sla_breached,
    ]


def clock_values(row: ClockRow, *, warned_literal: bool = True) -> list[Any]:
    """One clock's values in CLOCK_COLUMNS order (`warned` as an array literal for `unnest`)."""
    values = [getattr(row, name) for name, _ in CLOCK_COLUMNS]
    if warned_literal:
        values[CLOCK_WARNED] = "{" + ",".join(repr(w) for w in row.warned) + "}"
    return values


def daily_values(vendor_id: str, day: date, counts: DailyCounts) -> list[Any]:
    """One vendor day's increments in table column order."""
    return [vendor_id, day, *(getattr(counts, name) for name in DAILY_FIELDS)]


def _columns(rows: Iterable[list[Any]], width: int) -> list[list[Any]]:
    """Rows of values as one list per column, the shape `unnest` takes."""
    columns: list[list[Any]] = [[] for _ in range(width)]
    for values in rows:
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


def _issue_arrays(rows: Sequence[IssueRow]) -> list[list[Any]]:
    return _columns((issue_values(r) for r in rows), len(ISSUE_COLUMNS))


def _clock_arrays(changes: Iterable[ClockChange]) -> list[list[Any]]:
    return _columns((clock_values(clock_row(c)) for c in changes), len(CLOCK_COLUMNS))


def _daily_arrays(daily: dict[tuple[str, date], DailyCounts]) -> list[list[Any]]:
    rows = (daily_values(v, d, c) for (v, d), c in sorted(daily.items()))
    return _columns(rows, len(_DAILY_COLUMNS))


async def write_issues(
    conn: asyncpg.Connection, tables: ReadTables, changes: BatchChanges, ordered: bool
) -> int:
    """Insert new issues and update the others; `ordered` serialises list_seq with commits."""
    new = set(changes.new_issues)
    fresh = [changes.issues[i] for i in changes.new_issues if i in changes.issues]
    known = [row for issue_id, row in changes.issues.items() if issue_id not in new]
    if fresh:
        if ordered:
            await conn.execute(QUERIES["lock_list_seq"], LIST_SEQ_LOCK_ID)
        await conn.execute(tables.sql(INSERT_ISSUES), *_issue_arrays(fresh))
    if known:
        await conn.execute(tables.sql(UPDATE_ISSUES), *_issue_arrays(known))
    return len(fresh) + len(known)


async def write_timeline(
    conn: asyncpg.Connection, tables: ReadTables, changes: BatchChanges
) -> int:
    """Append the batch's events to the timeline."""
    if changes.timeline:
        await conn.copy_records_to_table(
            "issue_timeline",
            schema_name=tables.schema,
            columns=TIMELINE_COLUMNS,
            records=changes.timeline,
        )
    return len(changes.timeline)


async def write_escalations(
    conn: asyncpg.Connection, tables: ReadTables, changes: BatchChanges
) -> int:
    """Append the batch's tier changes."""
    if changes.escalations:
        await conn.copy_records_to_table(
            "escalations",
            schema_name=tables.schema,
            columns=ESCALATION_COLUMNS,
            records=changes.escalations,
        )
    return len(changes.escalations)


async def write_clocks(conn: asyncpg.Connection, tables: ReadTables, changes: BatchChanges) -> int:
    """Upsert every clock the batch changed."""
    if changes.clocks:
        await conn.execute(tables.sql(UPSERT_CLOCKS), *_clock_arrays(changes.clocks.values()))
    return len(changes.clocks)


async def write_daily(conn: asyncpg.Connection, tables: ReadTables, changes: BatchChanges) -> int:
    """Add the batch's increments to the vendor days."""
    if changes.daily:
        await conn.execute(tables.sql(UPSERT_DAILY), *_daily_arrays(changes.daily))
    return len(changes.daily)


async def copy_issues(
    conn: asyncpg.Connection, tables: ReadTables, rows: Sequence[IssueRow]
) -> int:
    """COPY issues into an empty table; list_seq numbers them in the order given."""
    if rows:
        await conn.copy_records_to_table(
            "issues",
            schema_name=tables.schema,
            columns=[name for name, _ in ISSUE_COLUMNS],
            records=[issue_values(row) for row in rows],
        )
    return len(rows)


async def copy_clocks(
    conn: asyncpg.Connection, tables: ReadTables, changes: Iterable[ClockChange]
) -> int:
    """COPY clocks into an empty table."""
    records = [clock_record(c) for c in changes]
    if records:
        await conn.copy_records_to_table(
            "sla_clocks",
            schema_name=tables.schema,
            columns=[name for name, _ in CLOCK_COLUMNS],
            records=records,
        )
    return len(records)
