"""GET /v1/events on PostgreSQL with two engines writing at once (each with its own runner and store pool):
the API runs on one, the other's events reach its stream through the store, and a reconnect with
Last-Event-ID loses and repeats nothing."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from engine.core import Engine
from engine.models import WithdrawalRequest
from engine.store.postgres import PostgresStore
from tests.api.live import open_sse, serve
from tests.conftest import FAST, make_gateway

pytestmark = pytest.mark.postgres

BTC_ADDRESS = "bc1qsandbox0demo0wallet0000000000000000000"
SETTLED = frozenset({"DONE", "FAILED", "CANCELLED", "REJECTED", "aborted", "needs_review"})


def btc(amount: str) -> WithdrawalRequest:
    return WithdrawalRequest(currency="BTC", net_type="BTC", amount=Decimal(amount), address=BTC_ADDRESS)


def engine_on(dsn: str, sandbox_url: str, channel: str) -> Engine:
    """One of several engines on the same database (non-exclusive runners, as in a scale-out)."""
    store = PostgresStore(dsn, pool_max=4, notify_channel=channel)
    return Engine(store=store, gateways={"default": make_gateway(sandbox_url)}, settings=FAST, exclusive=False)


@pytest.fixture
async def engines(postgres_dsn: str, sandbox: Any) -> AsyncIterator[tuple[Engine, Engine]]:
    channel = f"upbit_test_{secrets.token_hex(4)}"
    async with (
        engine_on(postgres_dsn, sandbox.url, channel) as one,
        engine_on(postgres_dsn, sandbox.url, channel) as two,
    ):
        yield one, two


async def test_two_writers_resume_without_gap_or_repeat(engines: tuple[Engine, Engine]) -> None:
    """Withdrawals submitted to both engines; the stream on the first hangs up mid-way and resumes from
    its last id: together the two parts are exactly the store's feed for them, in its order."""
    served, other = engines
    ids: set[str] = set()
    by_other: set[str] = set()
    async with serve(served) as live, aiohttp.ClientSession() as session:
        async with open_sse(session, live.url) as sse:
            for n in range(1, 4):
                by_other.add((await other.submit(btc(f"0.1{n}"))).id)
                ids |= {(await served.submit(btc(f"0.0{n}"))).id} | by_other
            first = await sse.until(lambda c: len(c) >= 5)
        for n in range(4, 6):  # while nobody listens
            by_other.add((await other.submit(btc(f"0.1{n}"))).id)
            ids |= {(await served.submit(btc(f"0.0{n}"))).id} | by_other
        async with open_sse(session, live.url, last_event_id=first[-1]["id"]) as sse:
            rest = await sse.until(lambda c: {e["workflow_id"] for e in c if e["to"] in SETTLED} >= ids)
    joined = [(e["id"], e["workflow_id"], e["seq"]) for e in first + rest]
    assert len(set(joined)) == len(joined), "an event was sent twice"
    feed = await served.store.feed(after=None, limit=10_000)
    expected = [(i.cursor, i.event.workflow_id, i.event.seq) for i in feed if i.event.workflow_id in ids]
    assert joined == expected[: len(joined)]
    for wf in ids:  # each workflow complete from its first event, whichever engine wrote it
        seqs = [seq for _, workflow_id, seq in joined if workflow_id == wf]
        assert seqs == list(range(1, len(seqs) + 1))
    created = {e["workflow_id"] for e in first + rest if e["trigger"] == "create"}
    assert by_other <= created, "a withdrawal the other engine wrote never reached the stream"
