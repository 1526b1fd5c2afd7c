"""Payout batches end to end: the engine over real HTTP to the sandbox on 127.0.0.1, a real SQLite file.

A batch is validated whole, stored as one workflow, creates its children durably (keys derived from the
batch), follows them through the store, and settles when every child is terminal; it can be cancelled,
and it reports per item and in totals."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from engine import Engine, IdempotencyConflict, InvalidRequest, WithdrawalRequest, Workflow, WorkflowNotFound
from engine.errors import InvalidBatch, InvalidTransition
from tests.conftest import SandboxAdmin

BTC_ADDRESS = "bc1qsandbox0demo0wallet0000000000000000000"
XRP_ADDRESS = "rN7n7otQDd6FczFgLdSqtcsAUxDkw6fzRH"


def btc(ref: str, amount: str, **extra: Any) -> dict[str, Any]:
    """A batch item paying BTC to the sandbox's registered address."""
    return {"reference": ref, "currency": "BTC", "net_type": "BTC", "amount": amount, "address": BTC_ADDRESS, **extra}


def xrp(ref: str, amount: str) -> dict[str, Any]:
    """A batch item paying XRP (with its registered destination tag)."""
    return {"reference": ref, "currency": "XRP", "net_type": "XRP", "amount": amount, "address": XRP_ADDRESS,
            "secondary_address": "1234567"}  # fmt: skip


async def until_state(engine: Engine, batch_id: str, states: set[str], timeout: float = 60.0) -> Workflow:
    """The batch once it is in one of ``states`` (read from the store; fails after ``timeout``)."""
    async with asyncio.timeout(timeout):
        while (wf := await engine.get(batch_id)).state not in states:
            await asyncio.sleep(0.05)
    return wf


async def workflow_count(engine: Engine) -> int:
    return sum((await engine.store.count_by_state()).values())


class TestEndToEnd:
    async def test_batch_settles_with_a_report(self, engine_factory: Any, admin: SandboxAdmin) -> None:
        """Every child runs to its end; the batch settles; the report names each item's outcome and the
        totals add up exactly; one POST per sent child, none for the one that aborted before sending."""
        items = [
            btc("alice", "0.0101"), btc("bob", "0.0102"), btc("carol", "0.0103"),
            xrp("dave", "20"), xrp("erin", "13.13"),  # the sandbox rejects XRP 13.13
            btc("frank", "0.0104", address="bc1qnotonthelist"),  # aborted: not allowlisted, nothing sent
        ]  # fmt: skip
        async with engine_factory() as engine:
            batch = await engine.submit_batch(items, idempotency_key="payday-1")
            assert batch.kind == "batch" and batch.state == "accepted"
            settled = await engine.wait(batch.id, timeout=60)
            assert settled.state == "settled" and settled.next_run_at is None  # never due again
            report = await engine.batch_report(batch.id)
            status = await engine.get_batch(batch.id)
            triggers = [e.trigger async for e in engine.events(batch.id, follow=False)]
        outcomes = {row["reference"]: row["outcome"] for row in report["items"]}
        assert outcomes == {"alice": "DONE", "bob": "DONE", "carol": "DONE", "dave": "DONE", "erin": "REJECTED",
                            "frank": "aborted"}  # fmt: skip
        rows = {row["reference"]: row for row in report["items"]}
        assert rows["alice"]["exchange_uuid"] and rows["alice"]["txid"]
        assert rows["frank"]["reason"] == "address_not_allowed" and rows["frank"]["exchange_uuid"] is None
        assert report["totals"]["by_state"] == {"DONE": 4, "REJECTED": 1, "aborted": 1}
        assert report["totals"]["by_currency"]["BTC"]["amount"] == "0.0410"
        assert report["totals"]["by_currency"]["BTC"]["by_state"]["DONE"] == "0.0306"
        assert report["totals"]["by_currency"]["XRP"]["by_state"] == {"DONE": "20", "REJECTED": "13.13"}
        assert status["children"] == {"DONE": 4, "REJECTED": 1, "aborted": 1} and status["dispatched"] == 6
        assert triggers[:3] == ["create", "dispatch", "dispatched"] and triggers[-1] == "settle"
        assert await admin.posts() == 5
        assert all(n == 1 for n in (await admin.creations()).values())

    async def test_children_keys_derive_from_the_batch(self, engine_factory: Any) -> None:
        """Each child names its batch as parent and carries the key ``batch:{id}:{index}``."""
        async with engine_factory() as engine:
            batch = await engine.submit_batch([btc("a", "0.0201"), btc("b", "0.0202")])
            await engine.wait(batch.id, timeout=60)
            children = [c async for c in engine.batch_children(batch.id)]
        assert sorted(c.idempotency_key or "" for c in children) == [f"batch:{batch.id}:0", f"batch:{batch.id}:1"]
        assert {c.parent_id for c in children} == {batch.id}

    async def test_replay_and_conflict(self, engine_factory: Any) -> None:
        """The same key and items give the same batch (nothing new); other items under it are refused."""
        async with engine_factory(run_runner=False) as engine:
            first, created = await engine.intake_batch([btc("a", "0.0301")], idempotency_key="k")
            again, created_again = await engine.intake_batch([btc("a", "0.03010")], idempotency_key="k")
            assert created and not created_again and again.id == first.id
            with pytest.raises(IdempotencyConflict):
                await engine.submit_batch([btc("a", "0.0302")], idempotency_key="k")
            assert await workflow_count(engine) == 1


class TestIntake:
    async def test_invalid_batch_is_refused_whole_and_nothing_is_stored(self, engine_factory: Any) -> None:
        """Every bad item and field is named; not one workflow is created."""
        items = [btc("a", "0.01"), btc("b", "-1"), btc("a", "0.02"), btc("c", "0.01", account="nope")]
        async with engine_factory(run_runner=False) as engine:
            with pytest.raises(InvalidBatch) as err:
                await engine.submit_batch(items)
            assert await workflow_count(engine) == 0
        assert {(e["index"], e["field"]) for e in err.value.errors} == {(1, "amount"), (2, "reference"), (3, "account")}

    async def test_skip_invalid_accepts_the_rest(self, engine_factory: Any) -> None:
        """With the flag the valid items form the batch; the skipped ones are in its view and report."""
        async with engine_factory(run_runner=False) as engine:
            batch = await engine.submit_batch([btc("a", "0.01"), btc("b", "x")], skip_invalid=True)
            view = await engine.get_batch(batch.id)
            report = await engine.batch_report(batch.id)
        assert view["items"] == 1 and [e["reference"] for e in view["skipped"]] == ["b"]
        assert report["skipped"][0]["field"] == "amount"
        assert report["items"][0]["outcome"] == "not_created"

    async def test_over_the_configured_cap_is_refused(self, engine_factory: Any) -> None:
        """A batch over [batches] max_total (or its own lower cap) is refused before anything exists."""
        async with engine_factory(run_runner=False) as engine:
            engine.batch_max_total = {"BTC": Decimal("0.05")}
            with pytest.raises(InvalidRequest, match=r"BTC total 0\.06 > 0\.05"):
                await engine.submit_batch([btc("a", "0.03"), btc("b", "0.03")])
            with pytest.raises(InvalidRequest, match="can only lower"):
                await engine.submit_batch([btc("a", "0.01")], max_total={"BTC": Decimal("1")})
            with pytest.raises(InvalidRequest, match=r"BTC total 0\.02 > 0\.015"):
                await engine.submit_batch([btc("a", "0.01"), btc("b", "0.01")], max_total={"BTC": Decimal("0.015")})
            assert await workflow_count(engine) == 0
            ok = await engine.submit_batch([btc("a", "0.025"), btc("b", "0.025")])
        assert ok.state == "accepted"

    async def test_unknown_batch(self, engine_factory: Any) -> None:
        """A withdrawal's id is not a batch's, and an unknown id is not found."""
        async with engine_factory(run_runner=False) as engine:
            batch = await engine.submit_batch([btc("a", "0.01")])
            withdrawal = await engine.submit(WithdrawalRequest(currency="BTC", net_type="BTC", amount=Decimal("0.01"),
                                                               address=BTC_ADDRESS))  # fmt: skip
            with pytest.raises(WorkflowNotFound, match="no batch"):
                await engine.get_batch(withdrawal.id)
            with pytest.raises(WorkflowNotFound):
                await engine.batch_report("bt_00000000000000000000")
            assert (await engine.get_batch(batch.id))["state"] == "accepted"


class TestCancel:
    async def test_cancel_stops_unsent_children_and_asks_the_exchange_for_the_rest(
        self, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """Children at the exchange (WAITING) are cancelled there; the batch ends cancelled when all are
        terminal, and a second cancel is refused."""
        await admin.configure(waiting_seconds=60.0, processing_seconds=60.0)
        async with engine_factory() as engine:
            batch = await engine.submit_batch([btc(f"r{i}", f"0.040{i}") for i in range(1, 5)])
            await until_state(engine, batch.id, {"running"})

            async def all_waiting() -> bool:
                states = [c.state async for c in engine.batch_children(batch.id)]
                return states == ["WAITING"] * 4

            async with asyncio.timeout(60):
                while not await all_waiting():
                    await asyncio.sleep(0.05)
            await engine.cancel_batch(batch.id)
            done = await until_state(engine, batch.id, {"cancelled"})
            report = await engine.batch_report(batch.id)
            with pytest.raises(InvalidTransition):
                await engine.cancel_batch(batch.id)
        assert done.state == "cancelled"
        assert report["totals"]["by_state"] == {"CANCELLED": 4}
        stats = await admin.stats()
        assert stats["by_endpoint"].get("DELETE /v1/withdraws/coin", 0) == 4

    async def test_cancel_before_dispatch_creates_nothing(self, engine_factory: Any) -> None:
        """A batch cancelled while accepted never creates a child; its report says not_created."""
        async with engine_factory(run_runner=False) as engine:
            batch = await engine.submit_batch([btc("a", "0.01"), btc("b", "0.02")])
            await engine.cancel_batch(batch.id)
            await engine.run_until_idle(timeout=30)
            final = await engine.get(batch.id)
            report = await engine.batch_report(batch.id)
        assert final.state == "cancelled"
        assert report["totals"]["by_state"] == {"not_created": 2}

    async def test_a_batch_cancels_only_its_own_children(self, engine_factory: Any) -> None:
        """The step port's cancel_child flags a child of the batch, and refuses any other workflow."""
        async with engine_factory(run_runner=False) as engine:
            batch = await engine.submit_batch([btc("a", "0.0601")])
            request = WithdrawalRequest(currency="BTC", net_type="BTC", amount=Decimal("0.0602"), address=BTC_ADDRESS)
            stranger = await engine.submit(request)
            child, _ = await engine.ctx.create(batch.request.items[0].request, idempotency_key="k", parent=batch)
            with pytest.raises(InvalidTransition, match="not a child"):
                await engine.ctx.cancel_child(batch, stranger)
            flagged = await engine.ctx.cancel_child(batch, child)
            assert flagged.cancel_requested and not (await engine.get(stranger.id)).cancel_requested


class TestAttention:
    async def test_a_child_in_review_puts_the_batch_in_needs_attention(
        self, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """A child whose POST outcome is unknown and unfound needs review: the batch says so, and settles
        once an operator resolved the child."""
        await admin.fault(endpoint="POST /v1/withdraws/coin", kind="error", probability=1.0, times=1,
                          params={"status": 500})  # fmt: skip
        async with engine_factory() as engine:
            batch = await engine.submit_batch([btc("only", "0.0501")])
            await until_state(engine, batch.id, {"needs_attention"})
            (child,) = [c async for c in engine.batch_children(batch.id)]
            assert child.state == "needs_review"
            await engine.resolve(child.id, "abandon")
            final = await until_state(engine, batch.id, {"settled"})
            triggers = [e.trigger async for e in engine.events(batch.id, follow=False)]
        assert final.state == "settled"
        assert "attention" in triggers and triggers[-1] == "settle"


class TestCancelMidDispatch:
    async def test_items_not_dispatched_are_never_created(self, engine_factory: Any, admin: SandboxAdmin) -> None:
        """Cancelled after its first chunk: the children created are flagged and cancel themselves before
        sending anything, the other items are never created (``not_created``), nothing reaches the exchange.

        The batch's own steps are driven one at a time here (no runner until every child is flagged), so
        no child can run before the cancel reaches it."""
        from workflows.batch.kind import KIND
        from workflows.batch.steps import CHUNK

        items = [btc(f"r{i}", format(Decimal("0.001") + Decimal(i) / 10**8, "f")) for i in range(CHUNK + 200)]
        async with engine_factory(run_runner=False) as engine:
            owner = engine.ctx.owner or "test"

            async def step_batch() -> Workflow:
                claimed = await engine.store.claim_due(now=engine.clock.now(), limit=10_000, owner=owner,
                                                       lease_seconds=30)  # fmt: skip
                (mine,) = [c for c in claimed if c.id == batch.id]
                step = KIND.step(mine.state)
                assert step is not None
                moved = await step(mine, engine.ctx)
                await engine.store.release([c.id for c in claimed], owner=owner)
                return moved

            batch = await engine.submit_batch(items)
            await step_batch()  # accepted -> dispatching
            await step_batch()  # the first chunk of children
            assert (await engine.get_batch(batch.id))["dispatched"] == CHUNK
            await engine.cancel_batch(batch.id)
            current = await step_batch()  # dispatching -> cancelling
            assert current.state == "cancelling"
            while current.data.get("cancel_cursor") is not None:  # flag the children, a page a time
                current = await step_batch()
            assert current.data["cancel_flagged"] == CHUNK
            await engine.run_until_idle(timeout=120)
            final = await engine.get(batch.id)
            report = await engine.batch_report(batch.id)
        assert final.state == "cancelled"
        assert report["totals"]["by_state"] == {"CANCELLED": CHUNK, "not_created": 200}
        assert await admin.posts() == 0


@pytest.mark.postgres
class TestOnPostgres:
    async def test_batch_settles_on_postgresql(self, sandbox: Any, postgres_dsn: str, admin: SandboxAdmin) -> None:
        """The same batch runs to its report with the PostgreSQL store (children, counts, pages)."""
        from engine.store.postgres import PostgresStore
        from tests.conftest import FAST, make_gateway

        store = PostgresStore(postgres_dsn, pool_max=8)
        async with Engine(store=store, gateways={"default": make_gateway(sandbox.url)}, settings=FAST) as engine:
            batch = await engine.submit_batch([btc("a", "0.0701"), btc("b", "0.0702"), xrp("c", "13.13")])
            final = await engine.wait(batch.id, timeout=60)
            report = await engine.batch_report(batch.id)
        assert final.state == "settled"
        assert report["totals"]["by_state"] == {"DONE": 2, "REJECTED": 1}
        assert await admin.posts() == 3
