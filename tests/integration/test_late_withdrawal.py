"""One exchange withdrawal, one payout: a late or foreign withdrawal is never adopted by another workflow.

Real HTTP to the sandbox on 127.0.0.1, a real SQLite file, the real runner. "A POST executes late" is
played by sending that workflow's exact body to the exchange ourselves after it was abandoned: to the
exchange that is the same request arriving late (the sandbox's ``hang``/``drop`` faults execute at once,
so they cannot show a creation that comes after the workflow gave up).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from engine import Engine, State, WithdrawalRequest, Workflow
from engine.policy import AutoResolve, Policy
from engine.upbit.auth import Credentials
from engine.upbit.client import UpbitClient, WithdrawBody
from engine.upbit.types import Withdrawal
from tests.conftest import FAST, SandboxAdmin
from tests.integration.test_engine import request_for

pytestmark = pytest.mark.asyncio

#: The configuration's defaults for what matters here (the issue's setting): 120 s of clock skew, a lane
#: watched for 600 s after its workflow gave a POST up.
DEFAULT_SKEW = replace(FAST, clock_skew=120.0, lane_watch=600.0)


async def until(engine: Engine, wf_id: str, check: Callable[[Workflow], bool], timeout: float = 30.0) -> Workflow:
    """The workflow once ``check`` holds (polled from the store; fails after ``timeout``)."""
    async with asyncio.timeout(timeout):
        while not check(wf := await engine.get(wf_id)):
            await asyncio.sleep(0.05)
    return wf


async def send_by_hand(url: str, request: WithdrawalRequest, body_json: str | None = None) -> Withdrawal:
    """POST this body to the exchange outside the engine (a late execution, or a person's withdrawal)."""
    params = dict(json.loads(body_json)) if body_json else {}
    body = WithdrawBody(
        currency=request.currency, net_type=request.net_type, amount=request.amount, address=request.address,
        secondary_address=params.get("secondary_address"), transaction_type=request.transaction_type.value,
    )  # fmt: skip
    async with UpbitClient(Credentials.demo(), base_url=url) as client:
        return await client.withdraw_coin(body)


async def post_fails_once(admin: SandboxAdmin) -> None:
    """The next POST gets a 503 before the exchange handles it: nothing is created."""
    await admin.fault(endpoint="POST /v1/withdraws/coin", kind="error", probability=1.0, times=1, status=503)


async def events(engine: Engine, wf_id: str) -> list[Any]:
    return [e async for e in engine.events(wf_id, follow=False)]


class TestLateWithdrawalOfAnAbandonedWorkflow:
    async def test_abandoned_workflows_late_withdrawal_is_never_adopted_by_the_next_payout(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """Issue #11: A's POST executes after A was abandoned; B (same lane) gets a 503 (not executed).
        Before the fix B adopted A's withdrawal and was DONE with A's txid (two payouts, one withdrawal).
        Now A's watch attributes the withdrawal to A (alert), and B, which sent nothing, needs review."""
        await post_fails_once(admin)
        async with engine_factory(settings=DEFAULT_SKEW) as engine:  # the defaults: 120 s skew, 600 s watch
            request = await request_for(sandbox.url)
            a = await engine.wait((await engine.submit(request)).id, timeout=20)
            assert a.state is State.NEEDS_REVIEW
            await engine.resolve(a.id, "abandon")
            a = await engine.wait(a.id, timeout=20)
            assert (a.state, a.reason) == (State.ABORTED, "abandoned")
            late = await send_by_hand(sandbox.url, request, a.submit_body)  # A's POST, executed late
            await post_fails_once(admin)
            b = await engine.wait((await engine.submit(request)).id, timeout=30)
            a = await until(engine, a.id, lambda w: not w.lane_held)
            a_events, b_events = await events(engine, a.id), await events(engine, b.id)
        assert b.state is State.NEEDS_REVIEW and b.exchange_uuid is None and b.txid is None
        assert (a.state, a.exchange_uuid) == (State.ABORTED, late.uuid)
        assert a.error is not None and a.error["error"] == "late_withdrawal"
        assert a.error["exchange_uuids"] == [late.uuid]
        alert = next(e for e in a_events if e.trigger == "watch" and e.data["note"] == "late_withdrawal")
        assert alert.data["exchange_uuids"] == [late.uuid] and alert.data["evidence"]["searched"] >= 1
        ended = a_events[-1]
        assert ended.trigger == "watch" and (ended.data["why"], ended.data["found"]) == ("accounted", [late.uuid])
        escalation = next(e for e in b_events if e.trigger == "escalate")
        assert escalation.data["evidence"]["matches"] == []  # A's withdrawal is A's: not a candidate of B's
        assert list((await admin.creations()).values()) == [1]

    async def test_a_late_withdrawal_after_restart_is_still_attributed(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """The watch is stored, not held in memory: a restart between the abandon and the late creation
        still attributes it, and the lane stays reserved meanwhile."""
        await post_fails_once(admin)
        settings = DEFAULT_SKEW
        async with engine_factory(settings=settings) as engine:
            request = await request_for(sandbox.url)
            a = await engine.wait((await engine.submit(request)).id, timeout=20)
            await engine.resolve(a.id, "abandon")
            a = await engine.wait(a.id, timeout=20)
        assert a.lane_held and a.next_run_at is not None
        late = await send_by_hand(sandbox.url, request, a.submit_body)
        async with engine_factory(settings=settings) as engine:
            a = await until(engine, a.id, lambda w: not w.lane_held)
        assert a.exchange_uuid == late.uuid and a.error is not None and a.error["error"] == "late_withdrawal"


class TestLateWithdrawalOfAResubmittedWorkflow:
    async def test_the_first_posts_late_withdrawal_is_attributed_and_not_adopted(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """A's first POST: 503, needs_review; the operator resubmits; the second POST goes through (DONE).
        Then the first POST executes late. Without the watch, B (same lane, its POST a 503) would adopt it.
        Now A, though DONE, kept its lane watched: the late one is attributed to A (an alert), and B needs
        review."""
        await post_fails_once(admin)
        async with engine_factory(settings=DEFAULT_SKEW) as engine:
            request = await request_for(sandbox.url, amount="0.04")
            a = await engine.wait((await engine.submit(request)).id, timeout=20)
            assert a.state is State.NEEDS_REVIEW
            await engine.resolve(a.id, "resubmit")
            a = await until(engine, a.id, lambda w: w.state is State.DONE)
            assert a.lane_held and a.data["watch"]["uncertain_posts"] == 1
            late = await send_by_hand(sandbox.url, request, a.submit_body)  # A's first POST, executed late
            await post_fails_once(admin)
            b = await engine.wait((await engine.submit(request)).id, timeout=30)
            a = await until(engine, a.id, lambda w: not w.lane_held)
            a_events = await events(engine, a.id)
            owners = await engine.store.owners_of([late.uuid, a.exchange_uuid or ""])
        assert b.state is State.NEEDS_REVIEW and b.exchange_uuid is None
        assert a.state is State.DONE and a.exchange_uuid != late.uuid
        assert a.error is not None and a.error["exchange_uuids"] == [late.uuid]
        assert owners == {late.uuid: a.id, a.exchange_uuid: a.id}
        assert [e.data.get("note") for e in a_events if e.trigger == "watch"] == ["late_withdrawal", "watch_ended"]


class TestMeasuredSkew:
    async def test_reconciliation_ignores_a_withdrawal_older_than_its_intent_minus_the_measured_skew(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """A same-lane withdrawal made by hand 6 s before B's intent: with a fixed 120 s allowance B adopted
        it (DONE, paid by nobody); with the skew measured from the exchange's ``Date`` B needs review."""
        request = await request_for(sandbox.url)
        manual = await send_by_hand(sandbox.url, request)
        await asyncio.sleep(6.0)  # a minimum age, not a wait for anything: a slow machine only adds to it
        await post_fails_once(admin)
        async with engine_factory(settings=DEFAULT_SKEW) as engine:
            b = await engine.wait((await engine.submit(request)).id, timeout=30)
            b_events = await events(engine, b.id)
        assert b.state is State.NEEDS_REVIEW and b.exchange_uuid is None
        evidence = next(e for e in b_events if e.trigger == "escalate").data["evidence"]
        assert evidence["skew"]["samples"] >= 1 and evidence["matches"] == []
        since = datetime.fromisoformat(evidence["since"])
        assert b.submitted_at is not None and manual.created_at < since <= b.submitted_at
        assert b.submitted_at - since < timedelta(seconds=5)  # was 120 s

    async def test_a_hanging_post_is_still_adopted(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """The narrower window still finds our own withdrawal (created after our intent)."""
        await admin.fault(endpoint="POST /v1/withdraws/coin", kind="hang", probability=1.0, times=1, seconds=1.5)
        async with engine_factory(settings=DEFAULT_SKEW, timeout=0.5) as engine:
            wf = await engine.wait((await engine.submit(await request_for(sandbox.url))).id, timeout=20)
            adopted = [e for e in await events(engine, wf.id) if e.data.get("how") == "adopted"]
        assert wf.state is State.DONE and wf.submit_count == 1 and adopted
        assert adopted[0].data["evidence"]["skew"]["samples"] >= 1


def auto_policy(listings: int = 3, minutes: float = 0.01) -> Policy:
    return Policy(auto_resolve={"default": AutoResolve(enabled=True, listings=listings, minutes=minutes)})


class TestAutoResolution:
    async def test_proven_absence_resubmits_once_with_its_evidence(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """A 503 that created nothing: after the grace window, 3 empty listings over 0.6 s, then one
        automatic resubmit (an event with the listings), then DONE with one withdrawal at the exchange."""
        await post_fails_once(admin)
        async with engine_factory(policy=auto_policy()) as engine:
            wf = await engine.submit(await request_for(sandbox.url, amount="0.02"))
            wf = await until(engine, wf.id, lambda w: w.state.is_terminal)
            evs = await events(engine, wf.id)
        assert wf.state is State.DONE and wf.submit_count == 2
        assert [e.trigger for e in evs].count("auto_resubmit") == 1
        auto = next(e for e in evs if e.trigger == "auto_resubmit")
        listings = auto.data["evidence"]["listings"]
        assert len(listings) == 3 and all(x["complete"] and x["candidates"] == [] for x in listings)
        first, last = (datetime.fromisoformat(listings[i]["at"]) for i in (0, -1))
        assert last - first >= timedelta(seconds=0.6)
        assert auto.data["evidence"]["rule"] == {"listings": 3, "minutes": 0.01}
        assert await admin.posts() == 2 and list((await admin.creations()).values()) == [1]

    async def test_off_by_default(self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin) -> None:
        """Without the account's policy the workflow waits for an operator; nothing is listed for it."""
        await post_fails_once(admin)
        async with engine_factory() as engine:
            wf = await engine.wait((await engine.submit(await request_for(sandbox.url))).id, timeout=20)
        assert wf.state is State.NEEDS_REVIEW and wf.next_run_at is None and "absence" not in wf.data

    async def test_a_listing_with_a_candidate_stops_it_for_good(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """A same-lane withdrawal older than the adoption window but within the wide absence window: the
        listing shows it, so no automatic resubmit; the stop is an event with the listing."""
        request = await request_for(sandbox.url, amount="0.03")
        manual = await send_by_hand(sandbox.url, request)
        await asyncio.sleep(6.0)  # older than B's adoption window (see TestMeasuredSkew)
        await post_fails_once(admin)
        async with engine_factory(settings=DEFAULT_SKEW, policy=auto_policy()) as engine:
            wf = await engine.submit(request)
            wf = await until(engine, wf.id, lambda w: bool(w.data.get("absence", {}).get("stopped")))
            evs = await events(engine, wf.id)
        assert wf.state is State.NEEDS_REVIEW and wf.next_run_at is None and wf.submit_count == 1
        assert "auto_resubmit" not in [e.trigger for e in evs]
        stop = next(e for e in evs if e.data.get("note") == "auto_resolve_stopped")
        assert stop.data["why"] == "a listing showed a candidate"
        assert stop.data["evidence"]["listings"][-1]["candidates"] == [manual.uuid]
        assert await admin.posts() == 2 and request.amount == Decimal("0.03")


class TestWatchAccounting:
    async def test_an_older_foreign_withdrawal_is_attributed_but_does_not_end_the_watch(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """Found in review: the watch lists as wide as reconciliation may (back to creation minus the
        configured skew), so a same-lane withdrawal made by hand BEFORE the workflow existed is attributed
        (an alert), but it cannot be the workflow's own lost POST: the lane stays reserved for the real one
        instead of being released as "accounted"."""
        async with engine_factory(settings=DEFAULT_SKEW) as engine:
            request = await request_for(sandbox.url)
            foreign = await send_by_hand(sandbox.url, request)
            # Comfortably past the adoption window's margin (1 s + skew_margin): only a lower bound on time.
            await asyncio.sleep(3.0)
            await post_fails_once(admin)
            a = await engine.wait((await engine.submit(request)).id, timeout=30)
            assert a.state is State.NEEDS_REVIEW  # the foreign one is older than A's intent: not adopted
            await engine.resolve(a.id, "abandon")
            a = await until(engine, a.id, lambda w: w.exchange_uuid == foreign.uuid)
            assert a.state is State.ABORTED and a.lane_held  # attributed, and still watching
            a_events = await events(engine, a.id)
        assert not any(e.data.get("note") == "watch_ended" for e in a_events)
