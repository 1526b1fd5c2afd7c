"""The operator console of issue #14 in headless Chromium: log in, filter, decide, watch it live; the role,
four-eyes and CSRF rules enforced by the server, not only by hidden buttons. Screenshots for the README."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import BTC_ADDRESS, PATIENCE_MS, SCREENSHOTS, Console, Login, expect

Page = Any
#: The exchange's status reads (polls and listings) fail while this holds: a withdrawal cannot be seen to
#: settle, so the page is certainly not DONE until the test lifts it.
READS = ("GET /v1/withdraw", "GET /v1/withdraws")


async def needs_review(console: Console, **extra: Any) -> dict[str, Any]:
    """A withdrawal whose POST got a 500 (outcome unknown, nothing created): it escalates to needs_review."""
    await console.admin.fault(kind="error", endpoint="POST /v1/withdraws/coin", times=1)
    wf = await console.submit(token=console.tokens["sam"], **extra)
    return await console.state_becomes(wf["id"], {"needs_review"})


async def test_resubmit_from_the_console_reaches_done_live(console: Console, login: Login) -> None:
    """An approver logs in, filters the list to needs_review, opens the withdrawal, resubmits it with a note
    behind a confirmation that restates amount, currency and address, and sees it reach DONE on the same
    page, without a reload (the live update over /console/events). The event records who and why."""
    review = await needs_review(console, reference="payout-77")
    other = await console.submit(amount="0.02", reference="payout-78")  # one the filter must leave out
    await console.state_becomes(other["id"], {"DONE"})
    page = await login("ann")
    await expect(page.locator("#waiting-count")).to_have_text("1")  # the overview: what waits comes first
    await expect(page.locator("#waiting")).to_contain_text(review["id"])
    await expect(page.locator("#counts-withdrawal [data-count=DONE]")).to_have_text("1")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "overview.png"), full_page=True)
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
    await expect(page.locator("svg.diagram path.edge.taken[data-from=needs_review][data-to=submitting]")).to_have_count(
        1
    )
    applied = page.locator("#timeline li[data-to=submitting]").last
    await expect(applied.locator(".by")).to_contain_text("ann")
    await expect(applied.locator("blockquote.note")).to_contain_text("nothing sent")

    status, events = await console.api("GET", f"/v1/withdrawals/{review['id']}/events")
    assert status == 200
    resubmitted = [e for e in events["events"] if e["trigger"] == "resubmit"]
    assert resubmitted[-1]["data"]["operator"] == "ann"
    assert resubmitted[-1]["data"]["note"] == "checked the exchange's history by hand: nothing sent\nretry"

    await page.locator("#timeline li").last.locator("details.evidence").evaluate("d => d.open = false")
    await page.screenshot(path=str(SCREENSHOTS / "withdrawal.png"), full_page=True)
    await page.get_by_role("link", name="Overview").click()
    await expect(page.locator("#counts-withdrawal [data-count=DONE]")).to_have_text("2")
    await expect(page.locator("#waiting-count")).to_have_text("0")


async def test_phone_width(console: Console, login: Login) -> None:
    """At a phone's width (390 px) every page fits without sideways scrolling and keeps its content; the
    withdrawal page's actions are still there (stacked)."""
    review = await needs_review(console)
    page = await login("ann", width=390, height=844)
    for path in ("/console/", "/console/withdrawals", "/console/batches", f"/console/withdrawals/{review['id']}"):
        await page.goto(f"{console.url}{path}")
        await expect(page.locator("main")).to_be_visible()
        overflow = await page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow} px at 390 px"
    await expect(page.locator("details.action-resubmit > summary")).to_be_visible()
    await page.screenshot(path=str(SCREENSHOTS / "withdrawal-phone.png"), full_page=False)


async def post_form(page: Page, action: str, fields: dict[str, str]) -> int:
    """Submit a form built in the page (as a script or a forged page could) to ``action``; the answer's
    status. The browser sends its cookies with it: only the server's checks stand in the way."""
    async with page.expect_response(lambda r: r.request.method == "POST" and action in r.url) as answer:
        await page.evaluate(
            """([action, fields]) => {
                const form = document.createElement("form");
                form.method = "post";
                form.action = action;
                for (const [name, value] of Object.entries(fields)) {
                    const input = document.createElement("input");
                    input.type = "hidden"; input.name = name; input.value = value;
                    form.appendChild(input);
                }
                document.body.appendChild(form);
                form.submit();
            }""",
            [action, fields],
        )
    return int((await answer.value).status)


async def test_a_viewer_sees_no_actions_and_the_server_refuses_their_post(console: Console, login: Login) -> None:
    """A viewer reads a needs_review withdrawal in full but is offered no action; a resubmit posted anyway,
    with the viewer's own valid CSRF token, is refused by the server (403) and changes nothing."""
    review = await needs_review(console)
    page = await login("val")
    await page.goto(f"{console.url}/console/withdrawals/{review['id']}")
    await expect(page.locator("#attention")).to_be_visible()
    review_events = len(await events_of(console, review["id"]))
    await expect(page.locator("#timeline li")).to_have_count(review_events)
    await expect(page.locator("#actions details.action")).to_have_count(0)
    await expect(page.locator("#actions button")).to_have_count(0)
    await expect(page.locator("#actions [data-refused=resubmit]")).to_contain_text("viewer")
    csrf = await page.locator("form[action='/console/logout'] input[name=csrf]").input_value()
    status = await post_form(
        page, f"/console/withdrawals/{review['id']}/resolve", {"csrf": csrf, "action": "resubmit", "note": "let me"}
    )
    assert status == 403
    await expect(page.locator("#error-message")).to_contain_text("viewer")
    after = await console.state_becomes(review["id"], {"needs_review"})
    assert after["resolution"] is None
    assert len(await events_of(console, review["id"])) == review_events


async def test_a_forged_form_without_the_csrf_token_is_refused(console: Console, login: Login) -> None:
    """An approver's browser posting a resolve without the session's CSRF token (or with a made-up one), as a
    forged page would make it do, is refused (403); the withdrawal still waits for a decision."""
    review = await needs_review(console)
    page = await login("ann")
    await page.goto(f"{console.url}/console/withdrawals/{review['id']}")
    await expect(page.locator("details.action-abandon")).to_have_count(1)
    target = f"/console/withdrawals/{review['id']}/resolve"
    assert await post_form(page, target, {"action": "abandon", "note": "forged"}) == 403
    await expect(page.locator("#error-message")).to_contain_text("CSRF")
    assert await post_form(page, target, {"csrf": "A" * 43, "action": "abandon", "note": "forged"}) == 403
    after = await console.state_becomes(review["id"], {"needs_review"})
    assert after["resolution"] is None


async def events_of(console: Console, workflow_id: str) -> list[dict[str, Any]]:
    """The withdrawal's audit events."""
    status, body = await console.api("GET", f"/v1/withdrawals/{workflow_id}/events")
    assert status == 200
    return list(body["events"])


async def test_a_batch_page_shows_progress_and_report_and_cancels(console: Console, login: Login) -> None:
    """A batch whose two POSTs failed (both children in needs_review): the batches page lists it, its page
    shows the progress by state and the report, and cancel (behind a confirmation restating count, totals and
    addresses) records the operator and the note."""
    await console.admin.fault(kind="error", endpoint="POST /v1/withdraws/coin", times=2)
    items = [
        {"reference": f"item-{n}", "currency": "BTC", "net_type": "BTC", "amount": amount, "address": BTC_ADDRESS}
        for n, amount in enumerate(("0.011", "0.012"))
    ]
    status, created = await console.api("POST", "/v1/batches", body=items)
    assert status == 201, created
    batch_id = created["id"]
    page = await login("ann")
    await page.get_by_role("link", name="Batches").click()
    await page.get_by_role("link", name=batch_id).click()
    await expect(page.locator("#state .badge")).to_have_text("needs_attention")
    await expect(page.locator("table.report tbody tr")).to_have_count(2)
    await expect(page.locator("table.counts")).to_contain_text("needs_review")
    await page.locator("details.action-cancel > summary").click()
    confirm = page.locator("details.action-cancel form.confirm")
    await expect(confirm.locator(".restate")).to_contain_text("2 withdrawals totalling 0.023 BTC to 1 address")
    await confirm.locator("textarea[name=note]").fill("payroll run postponed")
    await confirm.get_by_role("button", name="Confirm cancel").click()
    await expect(page.locator("#done")).to_contain_text("cancel")
    status, view = await console.api("GET", f"/v1/batches/{batch_id}")
    assert status == 200 and view["cancel_requested"] is True


async def test_four_eyes_the_submitter_cannot_approve_and_another_approver_can(console: Console, login: Login) -> None:
    """A withdrawal above BTC's approval_above, submitted by an admin (who could approve anything else),
    waits in awaiting_approval at the top of the overview. Its submitter is offered no approve button and
    is refused (403) when posting one anyway; a second operator, an approver, approves it with a note and
    sees it reach DONE live. The events record who approved and why."""
    wf = await console.submit(token=console.tokens["abe"], amount="0.75", reference="big-payout")
    await console.state_becomes(wf["id"], {"awaiting_approval"})
    assert (await events_of(console, wf["id"]))[0]["data"]["created_by"] == "abe"

    submitter = await login("abe")
    await expect(submitter.locator("#waiting")).to_contain_text(wf["id"])
    await expect(submitter.locator("#waiting")).to_contain_text("awaiting_approval")
    await submitter.goto(f"{console.url}/console/withdrawals/{wf['id']}")
    await expect(submitter.locator("#created-by")).to_have_text("abe")
    await expect(submitter.locator("#approval")).to_contain_text("0.5")  # the threshold it is above
    await expect(submitter.locator("details.action-approve")).to_have_count(0)
    await expect(submitter.locator("details.action-reject")).to_have_count(0)
    await expect(submitter.locator("[data-refused=approve]")).to_contain_text("you submitted this")
    await expect(submitter.locator("details.action-cancel")).to_have_count(1)  # their own mistake: cancel is fine
    csrf = await submitter.locator("form[action='/console/logout'] input[name=csrf]").input_value()
    status = await post_form(
        submitter, f"/console/withdrawals/{wf['id']}/resolve", {"csrf": csrf, "action": "approve", "note": "mine"}
    )
    assert status == 403
    still = await console.state_becomes(wf["id"], {"awaiting_approval"})
    assert still["resolution"] is None

    approver = await login("ann")
    await approver.goto(f"{console.url}/console/withdrawals/{wf['id']}")
    for reads in READS:
        await console.admin.fault(kind="error", endpoint=reads)
    await approver.locator("details.action-approve > summary").click()
    confirm = approver.locator("details.action-approve form.confirm")
    await expect(confirm.locator(".restate")).to_contain_text(f"0.75 BTC to {BTC_ADDRESS}")
    await confirm.get_by_role("button", name="Confirm approve").click()  # the note is required: nothing sent
    await expect(approver.locator("#done")).to_have_count(0)
    await confirm.locator("textarea[name=note]").fill("matches invoice 2026-117, called the payee")
    await confirm.get_by_role("button", name="Confirm approve").click()
    await expect(approver.locator("#done")).to_contain_text("approve")
    await approver.evaluate("window.__sameDocument = true")
    await expect(approver.locator("#state .badge")).not_to_have_text("DONE")
    await console.admin.clear_faults()
    await expect(approver.locator("#state .badge")).to_have_text("DONE")
    assert await approver.evaluate("window.__sameDocument === true"), "the page was reloaded"
    await approver.screenshot(path=str(SCREENSHOTS / "withdrawal-approved.png"), full_page=True)

    approved = [e for e in await events_of(console, wf["id"]) if e["from"] == "awaiting_approval"]
    assert approved and approved[0]["data"]["operator"] == "ann"
    assert approved[0]["data"]["note"] == "matches invoice 2026-117, called the payee"


async def test_a_batch_above_its_approval_total_is_approved_from_its_page(console: Console, login: Login) -> None:
    """A batch whose BTC total is above [batches] approval_above waits in awaiting_approval; a second operator
    approves it from the batch page (with a note) and its withdrawals are dispatched and settle."""
    items = [
        {"reference": f"big-{n}", "currency": "BTC", "net_type": "BTC", "amount": "0.4", "address": BTC_ADDRESS}
        for n in range(3)
    ]  # 1.2 BTC in all, each below the withdrawal threshold
    status, created = await console.api("POST", "/v1/batches", token=console.tokens["abe"], body=items)
    assert status == 201, created
    page = await login("ann")
    await expect(page.locator("#waiting")).to_contain_text(created["id"])
    await page.goto(f"{console.url}/console/batches/{created['id']}")
    await expect(page.locator("#state .badge")).to_have_text("awaiting_approval")
    await page.locator("details.action-approve > summary").click()
    confirm = page.locator("details.action-approve form.confirm")
    await expect(confirm.locator(".restate")).to_contain_text("3 withdrawals totalling 1.2 BTC to 1 address")
    await confirm.locator("textarea[name=note]").fill("monthly payroll, signed off")
    await confirm.get_by_role("button", name="Confirm approve").click()
    await expect(page.locator("#done")).to_contain_text("approve")
    await expect(page.locator("#state .badge")).to_have_text("settled")
    await expect(page.locator("table.report tbody tr")).to_have_count(3)
    await expect(page.locator("table.report")).not_to_contain_text("not_created")
