"""The engine end to end: real HTTP to the sandbox on 127.0.0.1, a real SQLite file, the real runner."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from engine import AbortReason, Engine, IdempotencyConflict, State, WithdrawalRequest, Workflow
from engine.upbit.auth import Credentials
from engine.upbit.client import UpbitClient
from engine.upbit.types import AllowedAddress
from tests.conftest import FAST, SandboxAdmin

pytestmark = pytest.mark.asyncio


async def allowed(url: str, currency: str, net_type: str) -> AllowedAddress:
    """The sandbox's registered address for (currency, net_type)."""
    async with UpbitClient(Credentials.demo(), base_url=url) as client:
        rows = await client.coin_addresses()
    return next(a for a in rows if a.currency == currency and a.net_type == net_type)


async def request_for(
    url: str, currency: str = "BTC", net_type: str = "BTC", amount: str = "0.01", **kw: Any
) -> WithdrawalRequest:
    """A valid request to the registered address."""
    addr = await allowed(url, currency, net_type)
    return WithdrawalRequest(
        currency=currency, net_type=net_type, amount=Decimal(amount), address=addr.withdraw_address, **kw
    )


async def until(engine: Engine, wf_id: str, check: Callable[[Workflow], bool], timeout: float = 30.0) -> Workflow:
    """The workflow once ``check`` holds for it (polled from the store; fails after ``timeout``)."""
    async with asyncio.timeout(timeout):
        while not check(wf := await engine.get(wf_id)):
            await asyncio.sleep(0.05)
    return wf


async def events_of(engine: Engine, wf_id: str) -> list[str]:
    """The workflow's trigger names in order."""
    return [e.trigger async for e in engine.events(wf_id, follow=False)]


class TestHappyPath:
    async def test_withdrawal_reaches_done_through_every_state(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """A valid withdrawal walks pending -> ... -> WAITING -> PROCESSING -> DONE with one POST."""
        await admin.configure(waiting_seconds=0.3, processing_seconds=0.4)
        async with engine_factory() as engine:
            wf = await engine.submit(await request_for(sandbox.url))
            done = await engine.wait(wf.id, timeout=10)
            assert done.state is State.DONE
            assert done.exchange_uuid and done.txid
            states = [e.to_state async for e in engine.events(wf.id, follow=False)]
        assert states[:5] == ["pending", "verifying_address", "checking_wallet", "submitting", "WAITING"]
        assert states[-1] == "DONE" and "PROCESSING" in states
        assert await admin.posts() == 1

    async def test_event_chain_is_gap_free_and_linked(self, sandbox: Any, engine_factory: Any) -> None:
        """Events are numbered 1..n and each carries the previous one's hash."""
        async with engine_factory() as engine:
            wf = await engine.submit(await request_for(sandbox.url))
            await engine.wait(wf.id, timeout=10)
            events = [e async for e in engine.events(wf.id, follow=False)]
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        prev = ""
        for event in events:
            assert event.prev_hash == prev and event.sealed(prev).hash == event.hash
            prev = event.hash

    @pytest.mark.parametrize("outcome", ["FAILED", "CANCELLED", "REJECTED"])
    async def test_each_exchange_terminal_state_is_recorded(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin, outcome: str
    ) -> None:
        """Whatever terminal state the exchange reports, the workflow ends in it."""
        await admin.configure(outcome_weights={outcome: 1.0})
        async with engine_factory() as engine:
            wf = await engine.submit(await request_for(sandbox.url))
            assert (await engine.wait(wf.id, timeout=10)).state.value == outcome


class TestPreflight:
    async def test_address_not_allowlisted_aborts_without_post(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """An unregistered destination ends aborted/address_not_allowed and nothing is sent."""
        async with engine_factory() as engine:
            req = WithdrawalRequest(
                currency="BTC", net_type="BTC", amount=Decimal("0.01"), address="bc1qnotregistered000"
            )
            wf = await engine.wait((await engine.submit(req)).id, timeout=10)
        assert (wf.state, wf.reason) == (State.ABORTED, AbortReason.ADDRESS_NOT_ALLOWED.value)
        assert await admin.posts() == 0

    async def test_wrong_secondary_address_aborts(self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin) -> None:
        """A tag that differs from the registered one is refused before any POST."""
        async with engine_factory() as engine:
            req = await request_for(sandbox.url, "XRP", "XRP", "25", secondary_address="999999999")
            wf = await engine.wait((await engine.submit(req)).id, timeout=10)
        assert (wf.state, wf.reason) == (State.ABORTED, AbortReason.ADDRESS_NOT_ALLOWED.value)
        assert await admin.posts() == 0

    async def test_omitted_secondary_address_uses_the_registered_one(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """An XRP request without a tag is sent with the registered destination tag."""
        registered = (await allowed(sandbox.url, "XRP", "XRP")).secondary_address
        assert registered
        async with engine_factory() as engine:
            wf = await engine.wait(
                (await engine.submit(await request_for(sandbox.url, "XRP", "XRP", "25"))).id, timeout=10
            )
        assert wf.state is State.DONE
        sent = [w for w in await admin.withdrawals() if w["uuid"] == wf.exchange_uuid]
        assert sent[0]["secondary_address"] == registered

    async def test_wallet_paused_then_working_completes(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """A paused wallet is re-checked with backoff; once working, the withdrawal goes through."""
        await admin.wallet("ETH", "ETH", wallet_state="paused")
        async with engine_factory() as engine:
            wf = await engine.submit(await request_for(sandbox.url, "ETH", "ETH", "0.5"))
            await asyncio.sleep(0.4)
            assert (await engine.get(wf.id)).state is State.CHECKING_WALLET
            assert await admin.posts() == 0
            await admin.wallet("ETH", "ETH", wallet_state="working")
            assert (await engine.wait(wf.id, timeout=10)).state is State.DONE
            assert "note" in await events_of(engine, wf.id)

    async def test_wallet_never_working_aborts_at_deadline(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """Past the pre-flight deadline a paused wallet ends aborted/wallet_unavailable, nothing sent."""
        await admin.wallet("ETH", "ETH", wallet_state="paused")
        from dataclasses import replace

        async with engine_factory(settings=replace(FAST, preflight_deadline=0.5)) as engine:
            wf = await engine.wait(
                (await engine.submit(await request_for(sandbox.url, "ETH", "ETH", "0.5"))).id, timeout=10
            )
        assert wf.state is State.ABORTED
        assert wf.reason in (AbortReason.WALLET_UNAVAILABLE.value, AbortReason.DEADLINE_EXCEEDED.value)
        assert await admin.posts() == 0

    @pytest.mark.parametrize(
        ("amount", "reason"),
        [
            ("0.000001", AbortReason.BELOW_MINIMUM),
            ("0.123456789", AbortReason.TOO_MANY_DECIMALS),
            ("10", AbortReason.INSUFFICIENT_BALANCE),
        ],
    )
    async def test_chance_limits_abort_without_post(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin, amount: str, reason: AbortReason
    ) -> None:
        """Below minimum, too many decimals and insufficient balance are caught before the POST."""
        async with engine_factory() as engine:
            wf = await engine.wait((await engine.submit(await request_for(sandbox.url, amount=amount))).id, timeout=10)
        assert (wf.state, wf.reason) == (State.ABORTED, reason.value)
        assert await admin.posts() == 0


class TestExactlyOnce:
    async def test_accept_then_drop_is_reconciled_without_second_post(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """The POST created a withdrawal but the answer was lost: the engine adopts it, no resend."""
        await admin.fault(endpoint="POST /v1/withdraws/coin", kind="drop", probability=1.0, times=1)
        async with engine_factory() as engine:
            wf = await engine.wait((await engine.submit(await request_for(sandbox.url))).id, timeout=15)
            triggers = await events_of(engine, wf.id)
        assert wf.state is State.DONE and "lose_track" in triggers
        assert await admin.posts() == 1
        assert list((await admin.creations()).values()) == [1]

    async def test_hanging_post_is_reconciled(self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin) -> None:
        """A POST that answers after our timeout is found by reconciliation and adopted."""
        await admin.fault(endpoint="POST /v1/withdraws/coin", kind="hang", probability=1.0, times=1, seconds=1.5)
        async with engine_factory(timeout=0.5) as engine:
            wf = await engine.wait((await engine.submit(await request_for(sandbox.url))).id, timeout=15)
        assert wf.state is State.DONE and wf.submit_count == 1
        assert list((await admin.creations()).values()) == [1]

    async def test_nothing_to_reconcile_needs_review_then_resubmit(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """A 500 that created nothing: no candidate within grace -> needs_review; resubmit -> DONE."""
        await admin.fault(endpoint="POST /v1/withdraws/coin", kind="error", probability=1.0, times=1, status=500)
        async with engine_factory() as engine:
            wf = await engine.wait((await engine.submit(await request_for(sandbox.url))).id, timeout=15)
            assert wf.state is State.NEEDS_REVIEW
            review = [e async for e in engine.events(wf.id, follow=False) if e.trigger == "escalate"]
            assert review and "evidence" in review[0].data
            await engine.resolve(wf.id, "resubmit")
            wf = await engine.wait(wf.id, timeout=15)
        assert wf.state is State.DONE and wf.submit_count == 2
        assert await admin.posts() == 2
        assert list((await admin.creations()).values()) == [1]

    async def test_needs_review_abandon_aborts(self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin) -> None:
        """An operator may abandon a needs_review workflow: aborted/abandoned; its lane stays reserved while
        it watches for a late creation (``lane_watch``), then is released."""
        await admin.fault(endpoint="POST /v1/withdraws/coin", kind="error", probability=1.0, times=1, status=503)
        async with engine_factory(settings=replace(FAST, lane_watch=0.5)) as engine:
            wf = await engine.wait((await engine.submit(await request_for(sandbox.url))).id, timeout=15)
            await engine.resolve(wf.id, "abandon")
            wf = await engine.wait(wf.id, timeout=15)
            assert (wf.state, wf.reason) == (State.ABORTED, "abandoned")
            wf = await until(engine, wf.id, lambda w: not w.lane_held)
            events = [e async for e in engine.events(wf.id, follow=False)]
        assert (wf.state, wf.exchange_uuid) == (State.ABORTED, None)
        assert (wf.error or {}).get("error") != "late_withdrawal"
        abandon = next(e for e in events if e.trigger == "abandon")
        assert "watch_until" in abandon.data
        assert events[-1].trigger == "watch" and events[-1].data["why"] == "deadline"

    async def test_same_lane_requests_serialize(self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin) -> None:
        """Two identical requests: the second POST leaves only after the first has its uuid."""
        async with engine_factory() as engine:
            req = await request_for(sandbox.url)
            a, b = await engine.submit(req), await engine.submit(req)
            wa, wb = await engine.wait(a.id, timeout=15), await engine.wait(b.id, timeout=15)
            ea = [e async for e in engine.events(a.id, follow=False)]
            eb = [e async for e in engine.events(b.id, follow=False)]
        assert wa.state is State.DONE and wb.state is State.DONE and wa.exchange_uuid != wb.exchange_uuid
        sub_a = next(e.at for e in ea if e.trigger == "submit")
        sub_b = next(e.at for e in eb if e.trigger == "submit")
        first, second = (ea, eb) if sub_a < sub_b else (eb, ea)
        first_accepted = next(e.at for e in first if e.to_state == "WAITING" or e.trigger.startswith("mark_"))
        second_submit = next(e.at for e in second if e.trigger == "submit")
        assert first_accepted <= second_submit
        assert await admin.posts() == 2

    async def test_throttled_post_is_resent_after_checking(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """A 429 on the POST is not executed: after a reconcile finds nothing, it is sent again."""
        await admin.fault(endpoint="POST /v1/withdraws/coin", kind="burst_429", probability=1.0, times=1, count=1)
        async with engine_factory() as engine:
            wf = await engine.wait((await engine.submit(await request_for(sandbox.url))).id, timeout=15)
        assert wf.state is State.DONE and wf.submit_count == 2
        assert list((await admin.creations()).values()) == [1]


class TestIntake:
    async def test_same_key_same_body_returns_same_workflow(self, sandbox: Any, engine_factory: Any) -> None:
        """Replaying a submission with its idempotency key returns the first workflow."""
        async with engine_factory() as engine:
            req = await request_for(sandbox.url)
            a = await engine.submit(req, idempotency_key="k-1")
            b = await engine.submit(req, idempotency_key="k-1")
            assert a.id == b.id
            assert len(await engine.list()) == 1

    async def test_same_key_other_body_is_a_conflict(self, sandbox: Any, engine_factory: Any) -> None:
        """The same key with another request is refused with IdempotencyConflict."""
        async with engine_factory() as engine:
            await engine.submit(await request_for(sandbox.url), idempotency_key="k-2")
            with pytest.raises(IdempotencyConflict):
                await engine.submit(await request_for(sandbox.url, amount="0.02"), idempotency_key="k-2")


class TestCancel:
    async def test_cancel_before_submit_is_local(self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin) -> None:
        """Cancelling while the wallet is paused ends CANCELLED locally; nothing is sent."""
        await admin.wallet("ETH", "ETH", wallet_state="paused")
        async with engine_factory() as engine:
            wf = await engine.submit(await request_for(sandbox.url, "ETH", "ETH", "0.5"))
            await asyncio.sleep(0.2)
            await engine.cancel(wf.id)
            wf = await engine.wait(wf.id, timeout=10)
        assert wf.state is State.CANCELLED and wf.exchange_uuid is None
        assert await admin.posts() == 0

    async def test_cancel_after_submit_goes_to_the_exchange(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """Cancelling a WAITING withdrawal sends DELETE and ends in the exchange's CANCELLED."""
        await admin.configure(waiting_seconds=30.0)
        async with engine_factory() as engine:
            wf = await engine.submit(await request_for(sandbox.url))
            for _ in range(200):
                if (await engine.get(wf.id)).state is State.WAITING:
                    break
                await asyncio.sleep(0.02)
            await engine.cancel(wf.id)
            wf = await engine.wait(wf.id, timeout=10)
            notes = [e.data.get("note") async for e in engine.events(wf.id, follow=False)]
        assert wf.state is State.CANCELLED and wf.exchange_uuid
        assert "cancel_sent" in notes
        stats = await admin.stats()
        assert stats["by_endpoint"].get("DELETE /v1/withdraws/coin") == 1


class TestPoliteness:
    async def test_429_and_418_storms_fail_no_workflow(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """Bursts of 429 (and the 418 they provoke) delay workflows but fail none.

        The requests are built (one allowlist read each, outside the engine) *before* the faults are
        injected: the faults target every endpoint, and the test's own setup reads have no retry policy,
        so reading after injecting made the test fail on its own 418 rather than on the engine's."""
        requests = [await request_for(sandbox.url, amount=f"0.0{i + 1}") for i in range(5)]
        await admin.configure(block_after_429s=3, block_seconds=1)
        await admin.fault(endpoint="*", kind="burst_429", probability=0.3, times=8, count=2)
        async with engine_factory() as engine:
            ids = [(await engine.submit(request)).id for request in requests]
            results = [await engine.wait(i, timeout=60) for i in ids]
        assert all(r.state is State.DONE for r in results), [r.state for r in results]
        assert list((await admin.creations()).values()) == [1] * 5
