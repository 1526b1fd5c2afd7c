"""The operator console of issue #14 in headless Chromium: log in, filter, decide, watch it live; the role,
four-eyes and CSRF rules enforced by the server, not only by hidden buttons. Screenshots for the README."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import PATIENCE_MS, SCREENSHOTS, Console, Login, expect

Page = Any
#: The exchange's status reads (polls and listings) fail while this holds: a withdrawal cannot be seen to
#: settle, so the page is certainly not DONE until the test lifts it.
READS = ("GET /v1/withdraw", "GET /v1/withdraws")


async def needs_review(console: Console, **extra: Any) -> dict[str, Any]:
    """A withdrawal whose POST got a 500 (outcome unknown, nothing created): it escalates to needs_review."""
    await console.admin.fault(kind="error", endpoint="POST /v1/withdraws/coin", times=1)
    wf = await console.submit(**extra)
    return await console.state_becomes(wf["id"], {"needs_review"})


async def test_resubmit_from_the_console_reaches_done_live(console: Console, login: Login) -> None:
    """An approver logs in, filters the list to needs_review, opens the withdrawal, resubmits it with a note
    behind a confirmation that restates amount, currency and address, and sees it reach DONE on the same
    page, without a reload (the live update over /console/events). The event records who and why."""
    review = await needs_review(console, reference="payout-77")
    await console.submit(amount="0.02")  # another one, which the filter must leave out
    page = await login("ann")
    await page.get_by_role("link", name="Withdrawals").click()
    await page.locator("details.filters > summary").click()
    await page.locator("#filters input[name=state][value=needs_review]").check()
    await page.get_by_role("button", name="Apply").click()
    await expect(page.locator("#total")).to_have_text("1 match", timeout=PATIENCE_MS)
    rows = page.locator("table.withdrawals tbody tr")
    await expect(rows).to_have_count(1)
    await rows.first.get_by_role("link", name=review["id"]).click()

    await expect(page.locator("#attention")).to_be_visible()
    await expect(page.locator("svg.diagram .state.current")).to_have_attribute("data-state", "needs_review")
    for reads in READS:
        await console.admin.fault(kind="error", endpoint=reads)
    await page.locator("details.action-resubmit > summary").click()
    confirm = page.locator("details.action-resubmit form.confirm")
    await expect(confirm.locator(".restate")).to_contain_text(f"0.01 BTC to {review['request']['address']}")
    await confirm.locator("textarea[name=note]").fill("checked the exchange's history by hand: nothing sent\r\nretry")
    await confirm.get_by_role("button", name="Confirm resubmit").click()

    await expect(page.locator("#done")).to_contain_text("resubmit")
    await expect(page.locator("#live-status")).to_have_text("live")
    await page.evaluate("window.__sameDocument = true")
    await expect(page.locator("#state .badge")).not_to_have_text("DONE")
    await console.admin.clear_faults()
    await expect(page.locator("#state .badge")).to_have_text("DONE", timeout=PATIENCE_MS)
    assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    await expect(page.locator("svg.diagram .state.current")).to_have_attribute("data-state", "DONE")
    await expect(page.locator("svg.diagram path.edge.taken[data-from=needs_review][data-to=submitting]")).to_have_count(1)
    applied = page.locator("#timeline li[data-to=submitting]").last
    await expect(applied.locator(".by")).to_contain_text("ann")
    await expect(applied.locator("blockquote.note")).to_contain_text("nothing sent")

    status, events = await console.api("GET", f"/v1/withdrawals/{review['id']}/events")
    assert status == 200
    resubmitted = [e for e in events["events"] if e["trigger"] == "resubmit"]
    assert resubmitted[-1]["data"]["operator"] == "ann"
    assert resubmitted[-1]["data"]["note"] == "checked the exchange's history by hand: nothing sent\nretry"

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.locator("#timeline li").last.locator("details.evidence").evaluate("d => d.open = false")
    await page.screenshot(path=str(SCREENSHOTS / "withdrawal.png"), full_page=True)
    await page.get_by_role("link", name="Overview").click()
    await expect(page.locator("#counts-withdrawal [data-count=DONE]")).to_have_text("2")
    await page.screenshot(path=str(SCREENSHOTS / "overview.png"), full_page=True)
