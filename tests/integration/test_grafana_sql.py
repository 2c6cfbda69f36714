"""Every panel of the checked-in Grafana dashboards runs against the read models.

Each panel's SQL is expanded the way Grafana's PostgreSQL data source does it (template
variables first, then the `$__...` macros) and run against a database whose read schema was
filled by a replay of a randomised workload; the result must have the columns the panel shows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.fixtures.stack import running_stack, stack_settings
from tests.integration.test_projector import SEED, append_commands, published, seeded
from tierline.domain.governance import Vendor
from tierline.eventlog.kafka import ensure_topic
from tierline.projector.replay import Replay
from tierline.store.pool import create_pool
from tierline.store.vendors import insert_vendor

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE_UID = "tierline-postgres"
INTERVAL = "1h"

OPEN_ISSUE_COLUMNS = {
    "issue_id", "title", "priority", "status", "tier", "assignee", "created_at", "next_due_at",
    "sla_breached", "breach_count",
}  # fmt: skip
# What each panel shows, by dashboard uid and panel title.
EXPECTED_COLUMNS: dict[tuple[str, str], set[str]] = {
    ("tierline-governance-overview", "Open issues"): {"open_issues"},
    ("tierline-governance-overview", "Open issues in SLA breach"): {"breached_open_issues"},
    ("tierline-governance-overview", "Escalations in range"): {"escalations"},
    ("tierline-governance-overview", "SLA compliance in range"): {"sla_compliance"},
    ("tierline-governance-overview", "Open issues by tier and vendor"): {
        "vendor",
        "Tier 1",
        "Tier 2",
        "Tier 3+",
    },
    ("tierline-governance-overview", "Escalations over time"): {"time", "automatic", "manual"},
    ("tierline-governance-overview", "SLA breaches over time"): {"time", "metric", "breaches"},
    ("tierline-governance-overview", "SLA compliance by vendor"): {"vendor", "sla_compliance"},
    ("tierline-vendor-scorecard", "Opened / resolved in range"): {"opened", "resolved"},
    ("tierline-vendor-scorecard", "MTTA / MTTR in range (hours)"): {"mtta_hours", "mttr_hours"},
    ("tierline-vendor-scorecard", "SLA compliance in range"): {"sla_compliance"},
    ("tierline-vendor-scorecard", "MTTA and MTTR trend"): {"time", "MTTA (hours)", "MTTR (hours)"},
    ("tierline-vendor-scorecard", "Breaches by tier"): {"time", "metric", "breaches"},
    ("tierline-vendor-scorecard", "Open at end of day, opened and resolved"): {
        "time",
        "open_at_end_of_day",
        "opened",
        "resolved",
    },
    ("tierline-vendor-scorecard", "Open issues"): OPEN_ISSUE_COLUMNS,
    ("tierline-sla-at-risk", "Running clocks"): {"running_clocks"},
    ("tierline-sla-at-risk", "Already past due, not yet recorded"): {"past_due"},
    ("tierline-sla-at-risk", "Due in the next 24 hours"): {"due_soon"},
    ("tierline-sla-at-risk", "Running clocks closest to breach"): {
        "due_at",
        "seconds_left",
        "vendor",
        "title",
        "priority",
        "status",
        "tier",
        "kind",
        "assignee",
        "warnings",
        "issue_id",
    },
    ("tierline-sla-at-risk", "Clocks coming due"): {"time", "metric", "clocks"},
    ("tierline-sla-at-risk", "SLA warnings and breaches recorded"): {
        "time",
        "warnings",
        "breaches",
    },
}

_MACRO = re.compile(r"\$(__[A-Za-z]+)\(([^)]*)\)")
_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(interval: str) -> int:
    match = re.fullmatch(r"'?(\d+)([smhdw])'?", interval.strip())
    assert match, f"not a Grafana interval: {interval!r}"
    return int(match[1]) * _UNITS[match[2]]


def _quoted(values: list[str]) -> str:
    return ",".join("'" + v.replace("'", "''") + "'" for v in values)


def expand_variables(sql: str, variables: dict[str, tuple[list[str], bool]]) -> str:
    """Grafana's interpolation: multi-value variables and `:sqlstring` become quoted lists."""

    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[3]
        if name == "__interval":
            return INTERVAL
        if name.startswith("__"):
            return match[0]  # a macro, expanded next
        assert name in variables, f"unknown variable ${name}"
        values, multi = variables[name]
        if match[2] == "sqlstring" or multi:
            return _quoted(values)
        assert match[2] is None, f"unsupported format {match[2]}"
        return values[0]

    return _VARIABLE.sub(replace, sql)


def expand_macros(sql: str, start: datetime, end: datetime) -> str:
    """Grafana's PostgreSQL macros, as its macro engine writes them."""

    def replace(match: re.Match[str]) -> str:
        name, args = match[1], [a.strip() for a in match[2].split(",")] if match[2] else []
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{_rfc3339(start)}' AND '{_rfc3339(end)}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            step = _seconds(args[1])
            group = f"floor(extract(epoch from {args[0]})/{step})*{step}"
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        if name == "__timeFrom":
            return f"'{_rfc3339(start)}'"
        if name == "__timeTo":
            return f"'{_rfc3339(end)}'"
        raise AssertionError(f"macro ${name} is not expanded by this test")

    return _MACRO.sub(replace, sql)


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield from panels(panel) if panel.get("type") == "row" and "panels" in panel else [panel]


def test_dashboards_are_provisioned_and_templated_by_vendor() -> None:
    assert {p.stem for p in DASHBOARDS} == {
        "governance-overview",
        "vendor-scorecard",
        "sla-at-risk",
    }
    datasource = (GRAFANA / "provisioning" / "datasources" / "tierline.yaml").read_text()
    assert f"uid: {DATASOURCE_UID}" in datasource
    assert "type: grafana-postgresql-datasource" in datasource
    provider = (GRAFANA / "provisioning" / "dashboards" / "tierline.yaml").read_text()
    assert "path: /var/lib/grafana/dashboards" in provider
    for path in DASHBOARDS:
        dashboard = load(path)
        found = list(panels(dashboard))
        assert len(found) >= 3, path.name
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["vendor"]["datasource"]["uid"] == DATASOURCE_UID
        sql = "\n".join(t["rawSql"] for p in found for t in p["targets"])
        assert "$__timeFilter(" in sql and "$__timeGroupAlias(" in sql, path.name
        for panel in found:
            assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
            assert (dashboard["uid"], panel["title"]) in EXPECTED_COLUMNS, panel["title"]
            assert (
                "$vendor" in panel["targets"][0]["rawSql"]
                or "${vendor" in (panel["targets"][0]["rawSql"])
            ), f"{panel['title']} ignores the vendor variable"


def _check_result(
    key: tuple[str, str], panel: dict[str, Any], columns: list[str], rows: list[asyncpg.Record]
) -> None:
    assert set(columns) >= EXPECTED_COLUMNS[key], f"{key}: got columns {columns}"
    assert rows, f"{key}: no rows for the workload (seed {SEED})"
    if panel["targets"][0]["format"] == "time_series":
        assert "time" in columns, key
        values = [c for c in columns if c not in ("time", "metric")]
        for row in rows:
            assert isinstance(row["time"], int | float | Decimal | datetime), key
            assert all(row[c] is None or isinstance(row[c], int | float | Decimal) for c in values)
    for override in panel["fieldConfig"].get("overrides", []):
        if override["matcher"]["id"] == "byName":
            assert override["matcher"]["options"] in columns, key
    x_field = panel.get("options", {}).get("xField")
    assert x_field is None or x_field in columns, key


async def test_every_panel_runs_on_the_read_models(
    database_url: str, tansu: str, topic: str
) -> None:
    settings = stack_settings(database_url, tansu, topic)
    workload = seeded(5)
    await ensure_topic(tansu, topic, settings.kafka_partitions)
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        for vendor_id in workload.vendors:
            await insert_vendor(pool, Vendor(id=vendor_id, name=vendor_id.title()))
        async with running_stack(settings, roles=["relay"]):
            await append_commands(pool, workload.commands(600))
            await published(pool)
        await Replay(settings).run()
        busiest = await pool.fetchval(
            "SELECT vendor_id FROM read.issues GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
        )
        start, end = workload.start - timedelta(days=1), workload.now + timedelta(days=1)
        async with pool.acquire() as conn, conn.transaction():
            # As Grafana's read-only role, after a replay swapped every table: the grants hold.
            await conn.execute("SET LOCAL ROLE tierline_read")
            for path in DASHBOARDS:
                dashboard = load(path)
                vendor = dashboard["templating"]["list"][0]
                choice = list(workload.vendors) if vendor["multi"] else [busiest]
                variables = {"vendor": (choice, bool(vendor["multi"] or vendor["includeAll"]))}
                assert await conn.fetch(vendor["query"]), "the vendor variable lists nothing"
                for panel in panels(dashboard):
                    raw = panel["targets"][0]["rawSql"]
                    sql = expand_macros(expand_variables(raw, variables), start, end)
                    statement = await conn.prepare(sql)
                    columns = [a.name for a in statement.get_attributes()]
                    rows = await statement.fetch()
                    _check_result((dashboard["uid"], panel["title"]), panel, columns, rows)
    finally:
        await pool.close()


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM events",
        "SELECT * FROM api_keys",
        "SELECT * FROM webhook_subscriptions",
        "SELECT * FROM idempotency_keys",
        "INSERT INTO read.escalations SELECT * FROM read.escalations",
        "DELETE FROM read.issues",
        "UPDATE public.vendors SET name = name",
    ],
)
async def test_the_dashboard_role_reads_read_models_only(database_url: str, statement: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE tierline_read")
            assert await conn.fetchval("SELECT count(*) FROM read.issues") == 0
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()
