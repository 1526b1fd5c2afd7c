"""The Python API of references and search: ``Engine.submit(reference=, metadata=)``, ``find``, ``page`` and
``count``, on a real SQLite file (the runner left off: these are the intake and read paths)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from engine.audit import verify_store
from engine.core import Engine
from engine.errors import IdempotencyConflict, InvalidRequest, ReferenceConflict
from engine.models import State, WithdrawalRequest
from engine.query import ListFilter
from engine.store.postgres import PostgresStore
from tests.conftest import EngineFactory


def btc(amount: str = "0.01") -> WithdrawalRequest:
    return WithdrawalRequest(currency="BTC", net_type="BTC", amount=Decimal(amount), address="bc1qdest0")


async def test_submit_stores_reference_and_metadata_and_find_returns_it(engine_factory: EngineFactory) -> None:
    """Both are on the stored workflow and in the submission event; find works by either handle."""
    async with engine_factory(run_runner=False) as engine:
        wf = await engine.submit(btc(), idempotency_key="k1", reference="payout-1", metadata={"user": "42"})
        assert (wf.reference, wf.metadata) == ("payout-1", {"user": "42"})
        assert await engine.find(reference="payout-1") == wf
        assert await engine.find(reference="payout-1", account="default") == wf
        assert await engine.find(idempotency_key="k1") == wf
        assert await engine.find(reference="payout-1", account="other") is None
        first = (await engine.store.events(wf.id))[0]
        assert (first.data["reference"], first.data["metadata"]) == ("payout-1", {"user": "42"})
        with pytest.raises(InvalidRequest):
            await engine.find()
        floats = await engine.submit(btc("0.5"), metadata={"rate": 0.1, "big": 1e300, "neg": -2.5e-7, "u": "출금"})
        assert (await engine.get(floats.id)).metadata == {"rate": 0.1, "big": 1e300, "neg": -2.5e-7, "u": "출금"}
        assert await verify_store(engine.store) == (2, [])  # the sealed first events verify as stored


async def test_reference_conflicts_and_replays(engine_factory: EngineFactory) -> None:
    """Another key with a taken reference is a conflict (nothing created); the same key and the same
    submission is a replay; the same key with other metadata is an idempotency conflict."""
    async with engine_factory(run_runner=False) as engine:
        wf = await engine.submit(btc(), idempotency_key="k1", reference="r1", metadata={"a": 1})
        with pytest.raises(ReferenceConflict, match=wf.id):
            await engine.submit(btc("0.02"), idempotency_key="k2", reference="r1")
        with pytest.raises(ReferenceConflict):
            await engine.submit(btc("0.02"), reference="r1")
        assert await engine.submit(btc(), idempotency_key="k1", reference="r1", metadata={"a": 1}) == wf
        with pytest.raises(IdempotencyConflict):
            await engine.submit(btc(), idempotency_key="k1", reference="r1", metadata={"a": 2})
        with pytest.raises(IdempotencyConflict):
            await engine.submit(btc(), idempotency_key="k1")
        assert await engine.count() == 1


async def test_concurrent_retries_under_one_key_and_reference_make_one_workflow(engine_factory: EngineFactory) -> None:
    """A client that retries at once (same key, same reference): every call answers the same workflow."""
    async with engine_factory(run_runner=False) as engine:
        results = await asyncio.gather(
            *(engine.submit(btc(), idempotency_key="same", reference="same-ref") for _ in range(8))
        )
        assert len({wf.id for wf in results}) == 1
        assert await engine.count() == 1


async def test_page_is_exact_and_counts(engine_factory: EngineFactory) -> None:
    """``page`` says next_cursor only when another page follows, and totals what the filter selects."""
    async with engine_factory(run_runner=False) as engine:
        ids = [(await engine.submit(btc(f"0.0{n + 1}"), reference=f"p{n}")).id for n in range(4)]
        first = await engine.page(limit=2)
        assert [wf.id for wf in first.items] == [ids[3], ids[2]] and first.total == 4
        second = await engine.page(limit=2, cursor=first.next_cursor)
        assert [wf.id for wf in second.items] == [ids[1], ids[0]] and second.next_cursor is None
        only = await engine.page(ListFilter(reference="p1", states={State.PENDING}))
        assert ([wf.id for wf in only.items], only.total, only.next_cursor) == ([ids[1]], 1, None)
        assert await engine.list(state=State.DONE) == []
        with pytest.raises(InvalidRequest) as caught:
            await engine.page(cursor="wd_00")
        assert caught.value.field == "cursor"


@pytest.mark.postgres
async def test_concurrent_retries_on_postgres_make_one_workflow(postgres_dsn: str) -> None:
    """The same race on PostgreSQL, where the insert of a loser may trip the reference index before the
    idempotency key's: it still answers the winner's workflow. A store-only engine: no gateways, no keys."""
    async with Engine(store=PostgresStore(postgres_dsn), gateways={}, accounts=["default"], run_runner=False) as engine:
        for round_ in range(3):
            results = await asyncio.gather(
                *(engine.submit(btc(), idempotency_key=f"same-{round_}", reference=f"ref-{round_}") for _ in range(8))
            )
            assert len({wf.id for wf in results}) == 1
        assert await engine.count() == 3
        with pytest.raises(InvalidRequest, match="no account named 'desk'"):
            await engine.submit(
                WithdrawalRequest(currency="BTC", net_type="BTC", amount="1", address="a", account="desk")
            )
