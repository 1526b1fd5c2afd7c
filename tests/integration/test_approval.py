"""Four-eyes approval end to end: the engine over real HTTP to the sandbox on 127.0.0.1, a real SQLite file.

A withdrawal above its currency's ``approval_above`` waits in ``awaiting_approval`` once its pre-flight
checks passed (nothing sent); an approver approves it (the checks run again, then one POST), rejects it
or lets it expire (aborted, nothing sent). A batch above ``[batches] approval_above`` waits likewise before
it creates any child. Time is moved with a shifted clock (no sleeping through an expiry)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine import CurrencyPolicy, Engine, Policy, WithdrawalRequest, Workflow
from engine.audit import verify_store
from engine.clock import SystemClock
from engine.errors import Forbidden, InvalidRequest, InvalidTransition
from engine.models import State
from engine.store.base import Store
from engine.store.sqlite import SQLiteStore
from tests.conftest import FAST, SandboxAdmin, make_gateway
from tests.integration.test_store_contract import add, at
from workflows.withdrawal import KIND

pytestmark = pytest.mark.asyncio

BTC_ADDRESS = "bc1qsandbox0demo0wallet0000000000000000000"
#: A BTC withdrawal above 0.01 needs an approver; 4 hours to decide.
POLICY = Policy(currencies={"BTC": CurrencyPolicy(approval_above=Decimal("0.01"))})


class ShiftedClock(SystemClock):
    """The real clock, moved ahead on demand: an expiry passes without the test sleeping through it."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        """Real time plus the offset."""
        return super().now() + self.offset

    def shift(self, seconds: float) -> None:
        """Move ahead by ``seconds``."""
        self.offset += timedelta(seconds=seconds)


def btc(amount: str, **kw: Any) -> WithdrawalRequest:
    """A BTC withdrawal to the sandbox's registered address."""
    return WithdrawalRequest(currency="BTC", net_type="BTC", amount=Decimal(amount), address=BTC_ADDRESS, **kw)


async def until(engine: Engine, wf_id: str, check: Callable[[Workflow], bool], timeout: float = 30.0) -> Workflow:
    """The workflow once ``check`` holds for it (polled from the store; fails after ``timeout``)."""
    async with asyncio.timeout(timeout):
        while not check(wf := await engine.get(wf_id)):
            await asyncio.sleep(0.05)
    return wf


async def awaiting(engine: Engine, wf_id: str) -> Workflow:
    """The workflow once it waits for an approver."""
    return await until(engine, wf_id, lambda wf: wf.state == "awaiting_approval")


async def triggers_of(engine: Engine, wf_id: str) -> list[str]:
    return [e.trigger async for e in engine.events(wf_id, follow=False)]


async def event(engine: Engine, wf_id: str, trigger: str) -> dict[str, Any]:
    """The data of the workflow's (last) event with ``trigger``."""
    found = [e async for e in engine.events(wf_id, follow=False) if e.trigger == trigger]
    assert found, f"no {trigger} event"
    return dict(found[-1].data)


class TestFourEyes:
    async def test_the_submitter_never_decides_and_a_decision_is_named_and_explained(
        self, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """alice submits: alice may neither approve nor reject it (Forbidden), nobody unnamed may, a
        decision without a note is refused; bob approves with a note; the events name both and the
        approval is recorded in the data and the view."""
        async with engine_factory(policy=POLICY) as engine:
            wf = await engine.submit(btc("0.02"), operator="alice")
            await awaiting(engine, wf.id)
            for action in ("approve", "reject"):
                with pytest.raises(Forbidden, match="alice submitted"):
                    await engine.resolve(wf.id, action, operator="alice", note="mine, looks fine")
                with pytest.raises(Forbidden, match="named operator"):
                    await engine.resolve(wf.id, action, note="who am I")
                with pytest.raises(InvalidRequest, match="note"):
                    await engine.resolve(wf.id, action, operator="bob")
            untouched = await engine.get(wf.id)
            assert untouched.resolution is None and untouched.state == "awaiting_approval"
            await engine.resolve(wf.id, "approve", operator="bob", note="invoice 7 checked")
            done = await until(engine, wf.id, lambda w: w.state == "DONE")
            created = await event(engine, wf.id, "create")
            approved = await event(engine, wf.id, "approve")
        assert created["created_by"] == "alice" and done.created_by == "alice"
        assert approved == {"operator": "bob", "note": "invoice 7 checked"}
        assert done.data["approved"]["by"] == "bob" and done.data["approved"]["note"] == "invoice 7 checked"
        assert KIND.view(done)["approval"]["approved_by"] == "bob"
        assert await admin.posts() == 1

    async def test_a_rejection_records_who_and_why(self, engine_factory: Any, admin: SandboxAdmin) -> None:
        """carol rejects alice's withdrawal: the event names carol and her note; nothing sent."""
        async with engine_factory(policy=POLICY) as engine:
            wf = await engine.submit(btc("0.02"), operator="alice")
            await awaiting(engine, wf.id)
            await engine.resolve(wf.id, "reject", operator="carol", note="unknown beneficiary")
            ended = await engine.wait(wf.id, timeout=30)
            rejected = await event(engine, wf.id, "reject")
        assert ended.reason == "approval_rejected"
        assert rejected == {"operator": "carol", "note": "unknown beneficiary", "reason": "approval_rejected"}
        assert await admin.posts() == 0

    async def test_the_batch_submitter_never_approves_the_batch(self, engine_factory: Any) -> None:
        """The same rule holds for a batch."""
        async with engine_factory(policy=BATCH_POLICY) as engine:
            batch = await engine.submit_batch(items("0.03", "0.03"), operator="alice")
            await until(engine, batch.id, lambda w: w.state == "awaiting_approval")
            with pytest.raises(Forbidden, match="alice submitted"):
                await engine.resolve(batch.id, "approve", operator="alice", note="ok")
            await engine.resolve(batch.id, "approve", operator="bob", note="payroll run 12")
            settled = await until(engine, batch.id, lambda w: w.state == "settled", timeout=60)
            view = await engine.get_batch(batch.id)
        assert settled.data["approved"]["by"] == "bob"
        assert view["approval"]["approved_by"] == "bob" and view["approval"]["note"] == "payroll run 12"


class TestWithdrawal:
    async def test_above_the_threshold_waits_and_nothing_is_sent(
        self, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """After every pre-flight check passed it waits for an approver: settled for ``wait``, no POST, an
        event with the amount, the threshold and the expiry; the deadline is the approval's expiry."""
        async with engine_factory(policy=POLICY) as engine:
            wf = await engine.submit(btc("0.02"))
            held = await engine.wait(wf.id, timeout=30)
            assert held.state == "awaiting_approval" and held.resolution is None
            asked = await event(engine, wf.id, "await_approval")
        assert await admin.posts() == 0
        assert asked["amount"] == "0.02" and asked["threshold"] == "0.01"
        expires = datetime.fromisoformat(asked["expires_at"])
        assert held.deadline_at == expires and held.next_run_at == expires
        assert (expires - datetime.fromisoformat(asked["at"])).total_seconds() == 4 * 3600
        assert held.data["approval_request"]["expires_at"] == asked["expires_at"]

    async def test_at_or_below_the_threshold_goes_through(self, engine_factory: Any, admin: SandboxAdmin) -> None:
        """The threshold is strict: exactly 0.01 needs no approval."""
        async with engine_factory(policy=POLICY) as engine:
            wf = await engine.submit(btc("0.01"))
            done = await engine.wait(wf.id, timeout=30)
            assert done.state == "DONE"
            assert "await_approval" not in await triggers_of(engine, wf.id)
        assert await admin.posts() == 1

    async def test_approve_runs_the_checks_again_then_sends_once(
        self, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """An approval sends it back to checking_wallet: a wallet paused meanwhile is waited for, then it is
        sent once and never held again; the approval stays in its data."""
        async with engine_factory(policy=POLICY) as engine:
            wf = await engine.submit(btc("0.02"))
            await awaiting(engine, wf.id)
            await admin.wallet("BTC", "BTC", wallet_state="paused")
            flagged = await engine.resolve(wf.id, "approve", operator="bob", note="checked with the desk")
            assert flagged.resolution == "approve"
            waiting = await until(engine, wf.id, lambda w: bool(w.data.get("wallet_wait")))
            assert waiting.state == "checking_wallet" and await admin.posts() == 0
            await admin.wallet("BTC", "BTC", wallet_state="working")
            done = await until(engine, wf.id, lambda w: w.state == "DONE")
            seen = await triggers_of(engine, wf.id)
        assert seen[:6] == ["create", "start", "verify", "await_approval", "approve", "note"]
        assert seen.count("await_approval") == 1 and seen.count("submit") == 1
        assert "approved" in done.data and done.resolution is None
        assert await admin.posts() == 1

    async def test_the_approval_gets_a_fresh_preflight_deadline(self, sandbox: Any, db_path: Path) -> None:
        """Approved hours after submission (far past the pre-flight deadline), it is still sent: waiting for
        an approver never runs into the pre-flight deadline, and the approval restarts it."""
        clock = ShiftedClock()
        async with _engine(sandbox, db_path, clock=clock) as engine:
            wf = await engine.submit(btc("0.02"))
            await awaiting(engine, wf.id)
            clock.shift(3 * 3600)  # FAST's pre-flight deadline is 20 s; the approval expires after 4 h
            await engine.resolve(wf.id, "approve", operator="bob", note="checked with the desk")
            done = await until(engine, wf.id, lambda w: w.state == "DONE")
            approved = await event(engine, wf.id, "approve")
        assert done.submit_count == 1 and "at" not in approved  # the event names who and why, not a copy

    async def test_reject_aborts_and_sends_nothing(self, engine_factory: Any, admin: SandboxAdmin) -> None:
        """A rejection ends it aborted (approval_rejected), nothing sent, the lane free."""
        async with engine_factory(policy=POLICY) as engine:
            wf = await engine.submit(btc("0.02"))
            await awaiting(engine, wf.id)
            await engine.resolve(wf.id, "reject", operator="bob", note="checked with the desk")
            ended = await engine.wait(wf.id, timeout=30)
            seen = await triggers_of(engine, wf.id)
        assert ended.state == "aborted" and ended.reason == "approval_rejected" and not ended.lane_held
        assert seen[-1] == "reject" and await admin.posts() == 0

    async def test_expiry_aborts_and_a_late_decision_is_refused(
        self, sandbox: Any, db_path: Path, admin: SandboxAdmin
    ) -> None:
        """No decision before the expiry: aborted (approval_expired), nothing sent; an approval asked for
        after the expiry (before the runner got to it) is refused."""
        clock = ShiftedClock()
        async with _engine(sandbox, db_path, clock=clock) as engine:
            wf = await engine.submit(btc("0.02"))
            await awaiting(engine, wf.id)
            engine.runner.stop()  # the runner must not get there first: the refusal is the engine's own
            await engine.stop()
            clock.shift(4 * 3600 + 1)
            with pytest.raises(InvalidTransition, match="past its deadline"):
                await engine.resolve(wf.id, "approve", operator="bob", note="checked with the desk")
            assert (await engine.get(wf.id)).resolution is None
        async with _engine(sandbox, db_path, clock=clock) as engine:
            ended = await until(engine, wf.id, lambda w: w.state == "aborted")
            expired = await event(engine, wf.id, "expire_approval")
        assert ended.reason == "approval_expired" and expired["expires_at"]
        assert await admin.posts() == 0

    async def test_cancel_while_awaiting_approval(self, engine_factory: Any, admin: SandboxAdmin) -> None:
        """A cancel ends it CANCELLED locally: nothing was sent."""
        async with engine_factory(policy=POLICY) as engine:
            wf = await engine.submit(btc("0.02"))
            await awaiting(engine, wf.id)
            await engine.cancel(wf.id)
            ended = await until(engine, wf.id, lambda w: w.state == "CANCELLED")
        assert ended.exchange_uuid is None and await admin.posts() == 0

    async def test_only_the_actions_of_the_state(self, engine_factory: Any, admin: SandboxAdmin) -> None:
        """awaiting_approval takes approve/reject only; resubmit there is refused naming them; approve is
        refused on a workflow that is not awaiting approval."""
        async with engine_factory(policy=POLICY) as engine:
            held = await engine.submit(btc("0.02"))
            await awaiting(engine, held.id)
            for action in ("resubmit", "abandon"):
                with pytest.raises(InvalidTransition, match="accepts approve or reject, not " + action):
                    await engine.resolve(held.id, action, note="n")
            sent = await engine.submit(btc("0.005"))
            assert (await engine.wait(sent.id, timeout=30)).state == "DONE"
            with pytest.raises(InvalidTransition, match="is DONE, not awaiting_approval"):
                await engine.resolve(sent.id, "approve", operator="bob", note="checked with the desk")
            assert (await engine.get(held.id)).resolution is None

    async def test_a_restart_keeps_the_wait_and_the_decision(
        self, sandbox: Any, db_path: Path, admin: SandboxAdmin
    ) -> None:
        """Held, stopped; an approval recorded by a store-only engine (the CLI's path) while no runner runs
        (a second decision may not replace it); a new engine carries it out: one POST."""
        async with _engine(sandbox, db_path) as engine:
            wf = await engine.submit(btc("0.02"))
            await awaiting(engine, wf.id)
        async with Engine(
            store=SQLiteStore(db_path), gateways={}, run_runner=False, accounts=["default"], policy=POLICY,
            settings=FAST,
        ) as offline:  # fmt: skip
            assert (await offline.get(wf.id)).state == "awaiting_approval"
            await offline.resolve(wf.id, "approve", operator="bob", note="checked with the desk")
            with pytest.raises(InvalidTransition, match="already has a decision: approve by bob"):
                await offline.resolve(wf.id, "reject", operator="carol", note="no")  # the first decision stands
        async with _engine(sandbox, db_path) as engine:
            done = await until(engine, wf.id, lambda w: w.state == "DONE")
        assert done.submit_count == 1 and await admin.posts() == 1

    async def test_account_threshold_wins_and_dry_run_still_asks(
        self, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """An account's own approval_above replaces the global one; a dry run asks for approval too (it runs
        everything but the POST) and then ends dry_run."""
        policy = replace(
            POLICY, accounts={"default": {"BTC": CurrencyPolicy(approval_above=Decimal("0.001"))}}, dry_run=True
        )
        async with engine_factory(policy=policy) as engine:
            wf = await engine.submit(btc("0.005"))
            await awaiting(engine, wf.id)
            await engine.resolve(wf.id, "approve", operator="bob", note="checked with the desk")
            ended = await until(engine, wf.id, lambda w: w.state == "aborted")
        assert ended.reason == "dry_run" and await admin.posts() == 0


def _engine(sandbox: Any, db_path: Path, *, policy: Policy = POLICY, **kw: Any) -> Engine:
    return Engine(
        store=SQLiteStore(db_path, group_window=0.001), gateways={"default": make_gateway(sandbox.url)},
        settings=FAST, policy=policy, **kw,
    )  # fmt: skip


BATCH_POLICY = replace(POLICY, batch_approval_above={"BTC": Decimal("0.05")})


def items(*amounts: str) -> list[dict[str, Any]]:
    return [
        {"reference": f"r{i}", "currency": "BTC", "net_type": "BTC", "amount": a, "address": BTC_ADDRESS}
        for i, a in enumerate(amounts)
    ]


class TestBatch:
    async def test_a_batch_above_its_total_waits_then_dispatches_once_approved(
        self, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """Above [batches] approval_above: no child until approved; then every child is sent without being
        held again (each is above the withdrawal threshold too) and carries the batch's approval."""
        async with engine_factory(policy=BATCH_POLICY) as engine:
            batch = await engine.submit_batch(items("0.02", "0.02", "0.02"))
            held = await engine.wait(batch.id, timeout=30)
            assert held.state == "awaiting_approval"
            view = await engine.get_batch(batch.id)
            assert view["children"] == {} and view["approval"]["over"] == {
                "BTC": {"total": "0.06", "threshold": "0.05"}
            }
            await engine.resolve(batch.id, "approve", operator="bob", note="checked with the desk")
            settled = await until(engine, batch.id, lambda w: w.state == "settled", timeout=60)
            children = [c async for c in engine.batch_children(batch.id)]
            inherited = [await event(engine, c.id, "note") for c in children]
        assert settled.data["approved"]["at"]
        assert [c.state for c in children] == ["DONE"] * 3
        assert all(c.data["approved"]["batch_id"] == batch.id for c in children)
        assert all(n["note"] == "approval_inherited" and n["batch_id"] == batch.id for n in inherited)
        assert await admin.posts() == 3

    async def test_a_batch_under_its_total_dispatches_and_children_ask_on_their_own(
        self, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """Under the batch threshold the batch dispatches at once; a child above its own threshold waits for
        its own approver (the batch shows needs_attention meanwhile), the others are sent."""
        async with engine_factory(policy=BATCH_POLICY) as engine:
            batch = await engine.submit_batch(items("0.005", "0.02"))
            attention = await until(engine, batch.id, lambda w: w.state == "needs_attention", timeout=60)
            children = {c.request.amount: c async for c in engine.batch_children(batch.id)}
            held = children[Decimal("0.02")]
            assert (await engine.get(held.id)).state == "awaiting_approval"
            await engine.resolve(held.id, "approve", operator="bob", note="checked with the desk")
            settled = await until(engine, batch.id, lambda w: w.state == "settled", timeout=60)
        assert attention.data.get("approved") is None and settled.state == "settled"
        assert await admin.posts() == 2

    async def test_a_rejected_batch_creates_no_child(self, engine_factory: Any, admin: SandboxAdmin) -> None:
        """A rejection ends the batch aborted (approval_rejected) with no child; its report says not_created."""
        async with engine_factory(policy=BATCH_POLICY) as engine:
            batch = await engine.submit_batch(items("0.03", "0.03"))
            await until(engine, batch.id, lambda w: w.state == "awaiting_approval")
            with pytest.raises(InvalidRequest, match="must be one of approve, reject"):
                await engine.resolve(batch.id, "resubmit", note="n")  # a batch knows no resubmit
            await engine.resolve(batch.id, "reject", operator="bob", note="checked with the desk")
            ended = await engine.wait(batch.id, timeout=30)
            report = await engine.batch_report(batch.id)
            count = sum((await engine.store.count_by_state()).values())
        assert ended.state == "aborted" and ended.reason == "approval_rejected"
        assert report["totals"]["by_state"] == {"not_created": 2}
        assert count == 1 and await admin.posts() == 0

    async def test_a_batch_approval_expires(self, sandbox: Any, db_path: Path, admin: SandboxAdmin) -> None:
        """No decision in time: aborted (approval_expired), no child."""
        clock = ShiftedClock()
        async with _engine(sandbox, db_path, clock=clock, policy=BATCH_POLICY) as engine:
            batch = await engine.submit_batch(items("0.03", "0.03"))
            await until(engine, batch.id, lambda w: w.state == "awaiting_approval")
            clock.shift(4 * 3600 + 1)
            engine.runner.wake()
            ended = await until(engine, batch.id, lambda w: w.state == "aborted")
        assert ended.reason == "approval_expired" and await admin.posts() == 0

    async def test_cancel_a_batch_awaiting_approval(self, engine_factory: Any, admin: SandboxAdmin) -> None:
        """Cancelled before approval: it ends cancelled, no child."""
        async with engine_factory(policy=BATCH_POLICY) as engine:
            batch = await engine.submit_batch(items("0.03", "0.03"))
            await until(engine, batch.id, lambda w: w.state == "awaiting_approval")
            await engine.cancel_batch(batch.id)
            ended = await until(engine, batch.id, lambda w: w.state == "cancelled")
            assert (await engine.get_batch(batch.id))["children"] == {}
        assert ended.state == "cancelled" and await admin.posts() == 0


ROOT = Path(__file__).resolve().parents[2]


def _state(db: Path, workflow_id: str) -> str | None:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        row = conn.execute("SELECT state FROM workflows WHERE id = ?", (workflow_id,)).fetchone()
    return None if row is None else str(row[0])


async def _run_until(db: Path, url: str, workflow_id: str, state: str) -> None:
    """A runner process (SIGKILLed, never stopped gracefully) until the workflow is in ``state``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.approval_proc", str(db), url,
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            while _state(db, workflow_id) != state:
                await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()


@pytest.mark.skipif(os.name != "posix", reason="signals")
class TestCrash:
    async def test_a_killed_runner_loses_neither_the_wait_nor_the_decision(
        self, sandbox: Any, admin: SandboxAdmin, db_path: Path
    ) -> None:
        """SIGKILL while it waits; the approval recorded from the store (no runner); SIGKILL again once it is
        DONE: the wait, its expiry and the decision were all in the store, and it was sent exactly once."""
        offline = {"gateways": {}, "run_runner": False, "accounts": ["default"], "policy": POLICY, "settings": FAST}
        async with Engine(store=SQLiteStore(db_path), **offline) as engine:
            wf = await engine.submit(btc("0.02"), operator="alice")
        await _run_until(db_path, sandbox.url, wf.id, "awaiting_approval")
        async with Engine(store=SQLiteStore(db_path), **offline) as engine:
            held = await engine.get(wf.id)
            assert held.deadline_at is not None and held.next_run_at == held.deadline_at
            await engine.resolve(wf.id, "approve", operator="bob", note="after the crash")
        assert await admin.posts() == 0
        await _run_until(db_path, sandbox.url, wf.id, "DONE")
        async with Engine(store=SQLiteStore(db_path), **offline) as engine:
            triggers = await triggers_of(engine, wf.id)
            approved = await event(engine, wf.id, "approve")
            checked, broken = await verify_store(engine.store)
        assert (checked, broken) == (1, [])  # the wait and the decision are links of the audit chain
        assert triggers.count("await_approval") == 1 and triggers.count("submit") == 1
        assert approved == {"operator": "bob", "note": "after the crash"}
        assert await admin.posts() == 1


class TestRace:
    async def test_two_approvers_at_once_one_decision(self, db_path: Path) -> None:
        """bob approves and carol rejects at the same moment: exactly one is recorded, the other is told so
        (InvalidTransition), never a silent overwrite."""
        from datetime import UTC

        async with Engine(
            store=SQLiteStore(db_path, group_window=0.001), gateways={}, run_runner=False, accounts=["default"],
        ) as engine:  # fmt: skip
            wf = await engine.submit(btc("0.02"), operator="alice")
            now = datetime.now(UTC)
            held = replace(
                wf, state="awaiting_approval", updated_at=now, deadline_at=now + timedelta(hours=1),
                next_run_at=now + timedelta(hours=1),
            )  # fmt: skip
            await engine.store.commit(held, None, owner=None)
            results = await asyncio.gather(
                engine.resolve(wf.id, "approve", operator="bob", note="ok"),
                engine.resolve(wf.id, "reject", operator="carol", note="no"),
                return_exceptions=True,
            )
            stored = await engine.get(wf.id)
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(refused) == 1 and isinstance(refused[0], InvalidTransition), results
        winner = next(r for r in results if not isinstance(r, BaseException))
        assert isinstance(winner, Workflow)
        assert (stored.resolution, stored.resolution_by) == (winner.resolution, winner.resolution_by)


class TestStore:
    async def test_a_resolution_lands_only_where_its_action_is_taken(self, store: Store) -> None:
        """Both stores record approve/reject only in awaiting_approval and resubmit/abandon only in
        needs_review (a decision racing a state change is never left on a state that ignores it)."""
        review = await add(store, state=State.NEEDS_REVIEW, next_run_at=None)
        waiting = await add(store, state=State.AWAITING_APPROVAL, next_run_at=at(3600))
        assert await store.request_resolution(review.id, "approve", at=at(5), operator="bob", note="n") == review
        assert await store.request_resolution(waiting.id, "resubmit", at=at(5)) == waiting
        approved = await store.request_resolution(waiting.id, "approve", at=at(5), operator="bob", note="ok")
        assert (approved.resolution, approved.resolution_by, approved.resolution_note) == ("approve", "bob", "ok")
        assert approved.next_run_at == at(5)
        resolved = await store.request_resolution(review.id, "abandon", at=at(6))
        assert resolved.resolution == "abandon"

    async def test_an_approvers_decision_is_never_replaced(self, store: Store) -> None:
        """Two approvers racing: the first decision recorded stays until it is carried out (a review's
        decision may still be changed, as before)."""
        waiting = await add(store, state=State.AWAITING_APPROVAL, next_run_at=at(3600))
        first = await store.request_resolution(waiting.id, "approve", at=at(5), operator="bob", note="ok")
        second = await store.request_resolution(waiting.id, "reject", at=at(6), operator="carol", note="no")
        assert second == first and (second.resolution, second.resolution_by) == ("approve", "bob")
        review = await add(store, state=State.NEEDS_REVIEW, next_run_at=None)
        await store.request_resolution(review.id, "resubmit", at=at(5))
        assert (await store.request_resolution(review.id, "abandon", at=at(6))).resolution == "abandon"


@pytest.mark.postgres
class TestOnPostgres:
    async def test_withdrawal_and_batch_approval_on_postgresql(
        self, sandbox: Any, postgres_dsn: str, admin: SandboxAdmin
    ) -> None:
        """The same flows on the PostgreSQL store: a withdrawal held, refused to its submitter, approved by
        another and sent once; a batch held, then rejected with no child."""
        from engine.store.postgres import PostgresStore

        store = PostgresStore(postgres_dsn, pool_max=8)
        gateways = {"default": make_gateway(sandbox.url)}
        async with Engine(store=store, gateways=gateways, settings=FAST, policy=BATCH_POLICY) as engine:
            wf = await engine.submit(btc("0.02"), operator="alice")
            await awaiting(engine, wf.id)
            with pytest.raises(Forbidden):
                await engine.resolve(wf.id, "approve", operator="alice", note="mine")
            await engine.resolve(wf.id, "approve", operator="bob", note="ok")
            done = await until(engine, wf.id, lambda w: w.state == "DONE")
            batch = await engine.submit_batch(items("0.03", "0.03"), operator="alice")
            await until(engine, batch.id, lambda w: w.state == "awaiting_approval")
            await engine.resolve(batch.id, "reject", operator="bob", note="not this week")
            ended = await until(engine, batch.id, lambda w: w.state == "aborted")
            children = [c async for c in engine.batch_children(batch.id)]
        assert done.data["approved"]["by"] == "bob" and done.submit_count == 1
        assert ended.reason == "approval_rejected" and children == []
        assert await admin.posts() == 1
