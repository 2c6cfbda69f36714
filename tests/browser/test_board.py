"""The governance board in a real browser (Chromium driven by Playwright), on the whole stack.

The stack runs every role on its own database and topic, seeded with the `--demo` history
(weeks of issues, breaches and escalations across three vendors). The flows are the ones people
follow: sign in, act on an issue, watch a second page update live, see only one's own vendor,
hit a stale page's 412, sign out, read the report. axe-core checks every page (no serious or
critical violation), and every page is saved as a screenshot under a temporary directory
(printed; `TIERLINE_BOARD_SCREENSHOTS=DIR` keeps them somewhere chosen).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.conftest import CI
from tests.fixtures.browser import axe_violations, launch_chromium, new_context, sign_in
from tests.fixtures.stack import Stack, stack_on_own_database
from tierline.devstack.demo import VENDORS
from tierline.devstack.demo_history import seed_history

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]
WAIT_MS = 15_000
# What reaches the page through the log (relay, broker, projector): on the shared test broker a
# new projector's first consumer-group join can take tens of seconds, seen in CI runs.
LOG_WAIT_MS = 60_000


@pytest.fixture(scope="module")
async def board_stack(pg_admin_dsn: str, tansu: str) -> AsyncIterator[Stack]:
    """All roles on a database seeded with the demo history; the overview refreshes fast."""

    async def demo_history(database_url: str) -> int:
        return await seed_history(database_url, VENDORS)

    async with stack_on_own_database(
        pg_admin_dsn, tansu, seed=demo_history, board_refresh_seconds=0.5
    ) as stack:
        await projected_history(stack)
        yield stack


async def log_path_report(stack: Stack, issue_id: str) -> str:
    """Where an issue's events stand on the log path: published by the relay, applied by each
    consumer, projected into the read model."""
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        events = await conn.fetch(
            "SELECT version, type, time, published_at FROM events WHERE stream_id = $1"
            " ORDER BY version",
            issue_id,
        )
        applied = await conn.fetch(
            "SELECT consumer, version FROM consumer_stream_versions WHERE stream_id = $1",
            issue_id,
        )
        projected = await conn.fetchval(
            "SELECT version FROM read.issues WHERE issue_id = $1", issue_id
        )
        unpublished = await conn.fetchval("SELECT count(*) FROM events WHERE published_at IS NULL")
        offsets = await conn.fetch("SELECT * FROM consumer_offsets ORDER BY 1, 2, 3")
    finally:
        await conn.close()
    return (
        f"now {datetime.now(UTC).isoformat()}; events {[tuple(r) for r in events]};"
        f" applied per consumer {[tuple(r) for r in applied]}; read model version {projected};"
        f" unpublished events {unpublished}; offsets {[tuple(r) for r in offsets]}"
    )


async def projected_history(stack: Stack) -> None:
    """Wait until the projector has read the seeded history from the log (the relay publishes
    it at start; on a busy machine that takes tens of seconds), so the tests' own waits are on
    the pages, not on the log."""
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        deadline = time.monotonic() + LOG_WAIT_MS / 1000 * 2
        while time.monotonic() < deadline:
            behind = await conn.fetchval(
                "SELECT count(*) FROM streams s WHERE s.stream_type = 'issue' AND NOT EXISTS"
                " (SELECT 1 FROM read.issues r WHERE r.issue_id = s.stream_id"
                " AND r.version = s.version)"
            )
            if behind == 0:
                return
            await asyncio.sleep(0.2)
        pytest.fail(f"{behind} seeded issues not projected after {LOG_WAIT_MS * 2 / 1000:.0f}s")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async for launched in launch_chromium(CI):
        yield launched


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go (kept as test artifacts)."""
    chosen = os.environ.get("TIERLINE_BOARD_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("board-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"board screenshots: {folder}")
    return folder


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await new_context(browser)
    yield ctx
    await ctx.close()


async def check_page(page: Page, shots: Path, name: str) -> None:
    """No serious or critical axe violation; a full-page screenshot."""
    await page.screenshot(path=shots / f"{name}.png", full_page=True)
    violations = await axe_violations(page)
    assert not violations, f"{name}: " + "\n".join(violations)


async def open_issue(stack: Stack, vendor_id: str, title: str, priority: str = "P3") -> str:
    body = {"vendor_id": vendor_id, "title": title, "category": "quality", "priority": priority}
    async with stack.client() as admin, admin.post("/v1/issues", json=body) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["id"])


async def api(stack: Stack, method: str, path: str, **kwargs: Any) -> Any:
    async with stack.client() as admin, admin.request(method, path, **kwargs) as resp:
        assert resp.status < 300, await resp.text()
        return await resp.json()


async def test_a_change_before_the_first_refresh_still_appears(
    board_stack: Stack, context: BrowserContext
) -> None:
    """An escalation made right after the overview was rendered, before its first refresh tick
    (1 s at the earliest), still shows up: the first refresh's answer is not just a baseline."""
    base = board_stack.api_url
    title = f"Early change {uuid.uuid4().hex[:6]}"
    issue_id = await open_issue(board_stack, "acme-it", title)
    page = await context.new_page()
    await page.goto(f"{base}/board/")
    await sign_in(page, base, board_stack.admin_key)
    await page.goto(f"{base}/board/?vendor=acme-it")
    await page.evaluate("window.boardTestMarker = 'not reloaded'")
    body = {"to_tier": 2, "reason": "before the first tick"}
    await api(board_stack, "POST", f"/v1/issues/{issue_id}/escalate", json=body)
    live = page.locator("#h-escalations ~ ul li", has_text=title)
    try:
        await expect(live).to_contain_text("tier 1 → 2", timeout=LOG_WAIT_MS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await log_path_report(board_stack, issue_id)}") from None
    assert await page.evaluate("window.boardTestMarker") == "not reloaded"


async def test_admin_acts_on_an_issue_and_a_second_page_sees_it_live(
    board_stack: Stack, context: BrowserContext, shots: Path
) -> None:
    base = board_stack.api_url
    page = await context.new_page()
    await page.goto(f"{base}/board/")
    await expect(page).to_have_url(f"{base}/board/signin?next=%2Fboard%2F")
    await check_page(page, shots, "signin")
    await sign_in(page, base, board_stack.admin_key)
    # The demo history is there: clocks at risk, breaches and escalations of three vendors.
    await expect(page.locator("#h-risk + div tbody tr").first).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#h-breaches ~ ul li").first).to_be_visible(timeout=WAIT_MS)
    await check_page(page, shots, "overview")

    title = f"Board flow {uuid.uuid4().hex[:6]}"
    issue_id = await open_issue(board_stack, "acme-it", title)
    watcher = await context.new_page()
    await watcher.goto(f"{base}/board/?vendor=acme-it")
    await watcher.evaluate("window.boardTestMarker = 'not reloaded'")

    await page.goto(f"{base}/board/issues/{issue_id}")
    await expect(page.locator("#status")).to_have_text("open")
    await expect(page.locator("#tier")).to_contain_text("1")
    await check_page(page, shots, "issue")
    await page.locator("form[data-action=acknowledge] button").click()
    await expect(page.locator(".flash")).to_have_text("Acknowledged.")
    await expect(page.locator("#status")).to_have_text("acknowledged")
    await expect(page.locator("#timeline li[data-event=acknowledged]")).to_have_count(1)
    await page.get_by_label("Reason for escalating").fill("recovery date missed twice")
    await page.locator("form[data-action=escalate] button").click()
    await expect(page.locator(".flash")).to_have_text("Escalated.")
    await expect(page.locator("#tier")).to_contain_text("2")
    await expect(page.locator("#timeline li[data-event=escalated]")).to_contain_text(
        "recovery date missed twice"
    )
    await check_page(page, shots, "issue-after-escalation")

    # The second page shows the escalation without being reloaded.
    live = watcher.locator("#h-escalations ~ ul li", has_text=title)
    try:
        await expect(live).to_contain_text("tier 1 → 2", timeout=LOG_WAIT_MS)
    except AssertionError as exc:  # say which stage of the log path held the event
        raise AssertionError(f"{exc}\n{await log_path_report(board_stack, issue_id)}") from None
    assert await watcher.evaluate("window.boardTestMarker") == "not reloaded"

    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(f"{base}/board/signin?signed_out=1")
    await expect(page.locator(".flash")).to_have_text("You are signed out.")
    await page.goto(f"{base}/board/issues/{issue_id}")
    await expect(page).to_have_url(f"{base}/board/signin?next=%2Fboard%2Fissues%2F{issue_id}")


async def test_a_stale_page_gets_the_412_message_and_changes_nothing(
    board_stack: Stack, context: BrowserContext, shots: Path
) -> None:
    base = board_stack.api_url
    issue_id = await open_issue(board_stack, "globex", f"Stale page {uuid.uuid4().hex[:6]}")
    stale = await context.new_page()
    await sign_in(stale, base, board_stack.admin_key)
    await stale.goto(f"{base}/board/issues/{issue_id}")
    fresh = await context.new_page()
    await fresh.goto(f"{base}/board/issues/{issue_id}")
    await fresh.get_by_label("Comment").fill("seen from the other tab")
    await fresh.locator("form[data-action=comments] button").click()
    await expect(fresh.locator(".flash")).to_have_text("Comment added.")

    async with stale.expect_response(f"{base}/board/issues/{issue_id}/acknowledge") as answer:
        await stale.locator("form[data-action=acknowledge] button").click()
    assert (await answer.value).status == 412
    await expect(stale.locator("#problem")).to_contain_text("changed while your page was open")
    await expect(stale.locator("#status")).to_have_text("open")
    await check_page(stale, shots, "issue-412")
    issue = await api(board_stack, "GET", f"/v1/issues/{issue_id}")
    assert issue["status"] == "open" and issue["version"] == 2


async def test_a_vendor_key_sees_its_vendor_only_and_no_button_it_may_not_use(
    board_stack: Stack, context: BrowserContext, shots: Path
) -> None:
    base = board_stack.api_url
    mine = await open_issue(board_stack, "acme-it", f"Vendor view {uuid.uuid4().hex[:6]}")
    await api(board_stack, "POST", f"/v1/issues/{mine}/acknowledge", json={})
    theirs = await open_issue(board_stack, "globex", f"Not for acme {uuid.uuid4().hex[:6]}")
    page = await context.new_page()
    await sign_in(page, base, await board_stack.new_key("vendor", "acme-it"))

    options = await page.locator("#f-vendor option").evaluate_all("os => os.map(o => o.value)")
    assert options == ["", "acme-it"]
    await expect(page.locator("#h-risk + div tbody tr").first).to_be_visible(timeout=WAIT_MS)
    text = await page.locator("main").inner_text()
    assert "globex" not in text and "initech" not in text
    await check_page(page, shots, "overview-vendor")
    for path in (
        f"/board/issues/{theirs}",
        "/board/vendors/globex",
        "/board/vendors/globex/report",
    ):
        answer = await page.goto(base + path)
        assert answer is not None and answer.status == 404, path
    await check_page(page, shots, "not-found")

    await page.goto(f"{base}/board/issues/{mine}")
    shown = await page.locator("form[data-action]").evaluate_all(
        "fs => fs.map(f => f.dataset.action)"
    )
    # Acknowledged: acknowledging again or resuming is not possible, so not offered.
    assert sorted(shown) == ["comments", "escalate", "hold", "resolve"]

    viewer = await context.browser.new_context(bypass_csp=True)  # type: ignore[union-attr]
    try:
        seen = await viewer.new_page()
        await sign_in(seen, base, await board_stack.new_key("viewer"))
        await seen.goto(f"{base}/board/issues/{mine}")
        await expect(seen.locator("#status")).to_have_text("acknowledged")
        await expect(seen.locator("form[data-action]")).to_have_count(0)
    finally:
        await viewer.close()


async def test_vendor_pages_and_the_report_draw_every_chart(
    board_stack: Stack, context: BrowserContext, shots: Path
) -> None:
    base = board_stack.api_url
    page = await context.new_page()
    await sign_in(page, base, board_stack.admin_key)
    await page.goto(f"{base}/board/vendors")
    await check_page(page, shots, "vendors")
    await page.get_by_role("link", name="Acme IT Services", exact=True).click()
    await expect(page.locator("h1")).to_have_text("Acme IT Services")
    charts = page.locator("svg.chart")
    await expect(charts).to_have_count(4)
    # The demo history fills every chart (the read models may still be catching up).
    for n in range(4):
        await expect(charts.nth(n)).not_to_contain_text("No data", timeout=WAIT_MS)
    await check_page(page, shots, "vendor")

    month = (datetime.now(UTC) - timedelta(days=20)).strftime("%Y-%m")
    answer = await page.goto(f"{base}/board/vendors/acme-it/report?month={month}")
    assert answer is not None and answer.status == 200
    await expect(page.locator("h1")).to_contain_text("steering-committee report")
    await expect(page.locator("svg.chart")).to_have_count(4)
    await expect(page.locator("svg.chart circle").first).to_be_attached()
    await expect(
        page.get_by_role("heading", name="Escalations that reached tier 3")
    ).to_be_visible()
    await expect(page.get_by_role("heading", name="Open breaches")).to_be_visible()
    await check_page(page, shots, "report")
    await page.emulate_media(media="print")
    await expect(page.locator("header.top")).to_be_hidden()
    answer = await page.goto(f"{base}/board/vendors/acme-it/report?month=2026-13")
    assert answer is not None and answer.status == 422


async def test_keyboard_and_phone_width(board_stack: Stack, browser: Browser, shots: Path) -> None:
    base = board_stack.api_url
    phone = await new_context(browser)
    try:
        page = await phone.new_page()
        await page.set_viewport_size({"width": 390, "height": 844})
        await sign_in(page, base, board_stack.admin_key)
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.className") == "skip"
        await page.keyboard.press("Enter")
        assert await page.evaluate("document.activeElement.id") == "main"
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"the overview is {overflow}px wider than a phone"
        await check_page(page, shots, "overview-phone")
        await page.goto(f"{base}/board/vendors/initech")
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"the vendor page is {overflow}px wider than a phone"
        icon = await page.request.get(f"{base}/board/static/favicon.svg")
        assert icon.status == 200 and icon.headers["content-type"] == "image/svg+xml"
    finally:
        await phone.close()
