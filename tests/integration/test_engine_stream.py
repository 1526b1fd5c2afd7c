"""Engine.stream, the Python API's live feed, on a real SQLite file and the sandbox: order, filters, resume
from a cursor, start now versus from the start, and an unknown cursor refused before anything else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from decimal import Decimal

import pytest

from engine.core import Engine
from engine.errors import InvalidCursor
from engine.models import WithdrawalRequest
from engine.store.base import FeedItem
from tests.conftest import EngineFactory

BTC_ADDRESS = "bc1qsandbox0demo0wallet0000000000000000000"
PATIENCE = 60.0


def btc(amount: str) -> WithdrawalRequest:
    return WithdrawalRequest(currency="BTC", net_type="BTC", amount=Decimal(amount), address=BTC_ADDRESS)


async def take(stream: AsyncIterator[FeedItem], done: Callable[[list[FeedItem]], bool]) -> list[FeedItem]:
    """Items until ``done(items)``; then the stream is closed."""
    got: list[FeedItem] = []
    try:
        async with asyncio.timeout(PATIENCE):
            async for item in stream:
                got.append(item)
                if done(got):
                    break
    finally:
        with contextlib.suppress(AttributeError):
            await stream.aclose()  # type: ignore[attr-defined]
    return got


def finished(workflow_id: str) -> Callable[[list[FeedItem]], bool]:
    return lambda got: any(i.event.workflow_id == workflow_id and i.event.to_state == "DONE" for i in got)


@pytest.fixture
async def engine(engine_factory: EngineFactory) -> AsyncIterator[Engine]:
    async with engine_factory() as built:
        yield built


async def test_live_items_are_the_feed_in_order(engine: Engine) -> None:
    """Without a cursor the stream starts now (nothing of an earlier withdrawal), then yields every
    committed event, each the store's own record with its cursor, in the feed's order."""
    old = await engine.submit(btc("0.01"))
    await engine.wait(old.id, timeout=PATIENCE)
    stream = engine.stream()
    first = asyncio.ensure_future(anext(stream))
    wf = await engine.submit(btc("0.02"))
    got = [await first, *await take(stream, finished(wf.id))]
    assert {i.event.workflow_id for i in got} == {wf.id}
    feed = await engine.store.feed(after=None, limit=1000)
    start = feed.index(got[0])
    assert got == feed[start : start + len(got)]
    assert [i.event.seq for i in got] == list(range(got[0].event.seq, got[0].event.seq + len(got)))
    everything = await take(engine.stream(from_start=True), finished(wf.id))
    assert everything[0].event.workflow_id == old.id and everything[0].event.trigger == "create"
    assert (everything[0].kind, everything[0].account) == ("withdrawal", "default")


async def test_filters_and_resume_from_a_cursor(engine: Engine) -> None:
    """Filter by workflow, account and trigger; a cursor resumes right behind an item."""
    one, two = await engine.submit(btc("0.01")), await engine.submit(btc("0.02"))
    await engine.wait(one.id, timeout=PATIENCE)
    await engine.wait(two.id, timeout=PATIENCE)
    mine = await take(engine.stream(from_start=True, workflow_id=two.id), finished(two.id))
    assert {i.event.workflow_id for i in mine} == {two.id}
    creates = await take(engine.stream(from_start=True, event_types=["create"]), lambda got: len(got) == 2)
    assert [i.event.workflow_id for i in creates] == [one.id, two.id]
    nobody = engine.stream(from_start=True, account="nobody")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.5):
            await anext(nobody)
    rest = await take(engine.stream(after=mine[2].cursor, workflow_id=two.id), finished(two.id))
    assert rest == mine[3:]


async def test_unknown_cursor_is_refused_at_once(engine: Engine) -> None:
    await engine.submit(btc("0.01"))
    with pytest.raises(InvalidCursor):
        await anext(engine.stream(after="987654321"))


async def test_items_carry_the_reference_and_a_batch_is_followed_with_its_children(engine: Engine) -> None:
    """Every event of a workflow carries its caller reference (not only the first one), and the batch
    filter yields the batch's own events and its children's, each child's marked with the batch id."""
    single = await engine.submit(btc("0.03"), reference="payout-7")
    await engine.wait(single.id, timeout=PATIENCE)
    mine = await take(engine.stream(from_start=True, workflow_id=single.id), finished(single.id))
    assert len(mine) > 2 and {i.reference for i in mine} == {"payout-7"}
    items = [
        {"reference": f"b-{n}", "currency": "BTC", "net_type": "BTC", "amount": f"0.0{n}", "address": BTC_ADDRESS}
        for n in (4, 5)
    ]
    batch = await engine.submit_batch(items)
    await engine.wait(batch.id, timeout=PATIENCE)
    followed = await take(
        engine.stream(from_start=True, batch_id=batch.id),
        lambda got: any(i.event.workflow_id == batch.id and i.event.to_state == "settled" for i in got),
    )
    children = {i.event.workflow_id for i in followed} - {batch.id}
    assert len(children) == 2
    assert all(i.parent_id == batch.id for i in followed if i.event.workflow_id in children)
    assert single.id not in {i.event.workflow_id for i in followed}
