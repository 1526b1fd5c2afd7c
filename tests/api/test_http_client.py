"""engine.client.WithdrawClient against a real running API (the service's listener on 127.0.0.1, a real
SQLite file, the sandbox): typed results, the engine's error tree, a submit retried under one
Idempotency-Key after its answer was lost, and a stream that resumes by itself after a cut."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.bootstrap import build_engine
from engine.client import Health, Page, SSEParser, Submitted, WithdrawalView, WithdrawClient
from engine.core import Engine
from engine.errors import (
    EngineError,
    IdempotencyConflict,
    InvalidRequest,
    InvalidTransition,
    RemoteInvalidRequest,
    ServiceError,
    ServiceUnreachable,
    WorkflowNotFound,
)
from engine.models import Event, State, WithdrawalRequest
from engine.sandbox import SandboxServer
from engine.store.base import FeedItem
from tests.api.conftest import BTC_ADDRESS, TOKEN, service_config
from tests.api.live import PATIENCE, Live, serve
from tests.integration.tcp_proxy import TcpProxy

SETTLED = {"DONE", "FAILED", "CANCELLED", "REJECTED", "aborted", "needs_review"}


def btc(amount: str) -> WithdrawalRequest:
    return WithdrawalRequest(currency="BTC", net_type="BTC", amount=Decimal(amount), address=BTC_ADDRESS)


@pytest.fixture
async def engine(exchange: SandboxServer, db_path: Path) -> AsyncIterator[Engine]:
    async with build_engine(service_config(exchange.url, db_path)) as built:
        yield built


@pytest.fixture
async def live(engine: Engine) -> AsyncIterator[Live]:
    async with serve(engine) as served:
        yield served


@pytest.fixture
async def client(live: Live) -> AsyncIterator[WithdrawClient]:
    async with WithdrawClient(live.url, TOKEN, timeout=30) as opened:
        yield opened


class DropFirstAnswer:
    """A loopback TCP proxy that forwards the first connection's request but resets it instead of passing
    the answer back: the request acted, the caller never hears of it."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.connections = 0
        self.dropped = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> DropFirstAnswer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 10)

        async def upstream() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if number == 0:
                    self.dropped += 1
                    return
                writer.write(data)
                await writer.drain()

        with contextlib.suppress(OSError):
            _, pending = await asyncio.wait(
                [asyncio.create_task(upstream()), asyncio.create_task(downstream())],
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in pending:
                task.cancel()
        writer.transport.abort()
        up_writer.transport.abort()


class TestTypedResults:
    async def test_submit_get_list_events_are_typed_records(self, client: WithdrawClient, live: Live) -> None:
        """Decimals, states, aware datetimes, the engine's Event records (with a chain that verifies)."""
        done = await client.submit(btc("0.0123"))
        assert isinstance(done, Submitted) and done.created and done.idempotency_key
        view = done.withdrawal
        assert isinstance(view, WithdrawalView) and view.request.amount == Decimal("0.0123")
        assert view.state is State.PENDING and view.created_at.tzinfo is not None
        await live.engine.wait(view.id, timeout=PATIENCE)
        fetched = await client.get(view.id)
        assert fetched.state is State.DONE and fetched.txid and fetched.raw["id"] == view.id
        page = await client.list(state=State.DONE, limit=1)
        assert isinstance(page, Page) and [w.id for w in page.withdrawals] == [view.id]
        assert page.next_cursor is None or page.next_cursor == view.id
        events = await client.events(view.id)
        assert all(isinstance(e, Event) for e in events) and [e.seq for e in events] == list(range(1, len(events) + 1))
        for event in events:  # the chain re-verifies from what the API shows
            assert event.sealed(event.prev_hash).hash == event.hash
        assert events == await live.engine.store.events(view.id)

    async def test_replay_under_the_callers_key(self, client: WithdrawClient) -> None:
        """The caller's key is used as given; a second submit with it is a replay, not a creation."""
        first = await client.submit(btc("0.02"), idempotency_key="invoice-17")
        again = await client.submit({**btc("0.020").to_dict()}, idempotency_key="invoice-17")
        assert (first.created, again.created) == (True, False)
        assert first.withdrawal.id == again.withdrawal.id and again.idempotency_key == "invoice-17"

    async def test_healthz(self, client: WithdrawClient) -> None:
        health = await client.healthz()
        assert health == Health(ok=True, detail={"status": "ok"})


class TestErrors:
    async def test_http_errors_map_to_the_engine_tree(self, client: WithdrawClient, live: Live) -> None:
        """404, 422, 409 become the same classes the local engine raises, with the HTTP details kept."""
        with pytest.raises(WorkflowNotFound) as missing:
            await client.get("wd_00000000000000")
        assert isinstance(missing.value, ServiceError) and missing.value.status == 404
        with pytest.raises(InvalidRequest) as invalid:
            await client.submit({"currency": "BTC", "net_type": "BTC", "amount": "1.2.3", "address": "a b"})
        assert isinstance(invalid.value, RemoteInvalidRequest)
        assert {"amount", "address"} <= set(invalid.value.fields) and invalid.value.field in {"amount", "address"}
        await client.submit(btc("0.03"), idempotency_key="k-1")
        with pytest.raises(IdempotencyConflict):
            await client.submit(btc("0.04"), idempotency_key="k-1")
        done = await client.submit(btc("0.05"))
        await live.engine.wait(done.withdrawal.id, timeout=PATIENCE)
        with pytest.raises(InvalidTransition) as refused:
            await client.cancel(done.withdrawal.id)
        assert refused.value.status == 409  # type: ignore[attr-defined]
        with pytest.raises(InvalidTransition):
            await client.resolve(done.withdrawal.id, "resubmit", note="try again")

    async def test_wrong_token_is_a_service_error_without_the_token(self, live: Live) -> None:
        async with WithdrawClient(live.url, "wrong-token-0123456789abcdef") as wrong:
            with pytest.raises(ServiceError) as refused:
                await wrong.list()
        assert refused.value.status == 401 and refused.value.name == "unauthorized"
        assert "wrong-token" not in str(refused.value) and "wrong-token" not in repr(wrong)

    async def test_nobody_listening_is_service_unreachable(self) -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        async with WithdrawClient(f"http://127.0.0.1:{port}", TOKEN, timeout=5, retries=2) as gone:
            with pytest.raises(ServiceUnreachable):
                await gone.get("wd_0123")
        assert issubclass(ServiceUnreachable, EngineError)


class TestRetries:
    async def test_a_submit_whose_answer_was_lost_is_retried_under_the_same_key(self, live: Live) -> None:
        """The first POST creates the withdrawal but its answer never arrives; the retry carries the same
        generated Idempotency-Key and gets that withdrawal back: one workflow, reported as created."""
        port = int(live.url.rsplit(":", 1)[1])
        async with DropFirstAnswer(port) as proxy, WithdrawClient(f"http://127.0.0.1:{proxy.port}", TOKEN) as client:
            done = await client.submit(btc("0.06"))
        assert proxy.dropped == 1 and proxy.connections == 2
        assert done.created
        stored = await live.engine.store.get_by_idempotency_key(done.idempotency_key)
        assert stored is not None and stored.id == done.withdrawal.id
        assert [wf.id for wf in await live.engine.list()] == [done.withdrawal.id]


class TestStream:
    async def test_stream_yields_feed_items_and_resumes_after_a_cut(self, live: Live) -> None:
        """FeedItems equal to the store's; the connection is cut mid-way, the client reconnects with
        Last-Event-ID, and the whole sequence has no gap and no repeat."""
        port = int(live.url.rsplit(":", 1)[1])
        proxy = TcpProxy("127.0.0.1", port)
        await proxy.start()
        got: list[FeedItem] = []
        try:
            async with WithdrawClient(f"http://127.0.0.1:{proxy.port}", TOKEN, timeout=10) as client:
                ids = {(await live.engine.submit(btc(f"0.0{n}"))).id for n in range(1, 4)}
                stream = client.stream(after="start", idle_timeout=30)
                async with asyncio.timeout(PATIENCE):
                    async for item in stream:
                        got.append(item)
                        if len(got) == 3:
                            proxy.cut()
                            proxy.restore()
                        if {i.event.workflow_id for i in got if i.event.to_state in SETTLED} >= ids:
                            break
                await stream.aclose()  # type: ignore[attr-defined]
        finally:
            await proxy.close()
        assert proxy.accepted >= 2, "the stream was not reconnected"
        stored = await live.engine.store.feed(after=None, limit=10_000)
        assert got == stored[: len(got)]

    async def test_unknown_cursor_is_raised_not_retried(self, client: WithdrawClient) -> None:
        with pytest.raises(InvalidRequest):
            async with asyncio.timeout(PATIENCE):
                async for _ in client.stream(after="424242"):
                    pass


class TestSSEParser:
    @pytest.mark.parametrize("split", [1, 2, 3, 7, 1000])
    def test_messages_across_arbitrary_chunks_and_line_ends(self, split: int) -> None:
        """CR, LF, CRLF line ends, comments, multi-line data, an id that persists: as the standard says."""
        raw = b': hello\r\nid: 1\r\nevent: create\r\ndata: {"a":\r\ndata: 1}\r\n\r\n: ka\n\ndata: x\rid: 2\r\r'
        parser = SSEParser()
        messages: list[Any] = []
        for i in range(0, len(raw), split):
            messages += parser.feed(raw[i : i + split])
        assert [(m.id, m.event, m.data) for m in messages] == [("1", "create", '{"a":\n1}'), ("2", "message", "x")]
        assert parser.comments == 2 and parser.last_id == "2"

    def test_a_cr_inside_a_chunk_does_not_swallow_a_later_lf(self) -> None:
        parser = SSEParser()
        assert parser.feed(b"data: a\rdata: b") == []
        assert [m.data for m in parser.feed(b"\n\n")] == ["a\nb"]


def test_views_parse_timezone_aware_times() -> None:
    """A view from the API's JSON: the engine's request record, an aware datetime."""
    data = {
        "id": "wd_1", "state": "DONE", "request": btc("1").to_dict(), "exchange_uuid": "u", "txid": "t",
        "exchange_state": "DONE", "reason": None, "error": None, "submit_count": 1, "cancel_requested": False,
        "resolution": None, "created_at": "2026-01-01T00:00:00+00:00", "updated_at": "2026-01-01T00:00:01+00:00",
        "lane": "x", "reference": "payout-1", "metadata": {"batch": 7}, "a_newer_field": True,
    }  # fmt: skip
    view = WithdrawalView.from_json(data)
    assert view.request == btc("1") and isinstance(view.updated_at, datetime) and view.updated_at.tzinfo
    assert (view.reference, view.metadata) == ("payout-1", {"batch": 7})
    assert view.raw["a_newer_field"] is True
    page = Page.from_json({"withdrawals": [data], "next_cursor": None, "total": 1})
    assert page.total == 1 and page.withdrawals == (view,)
    with pytest.raises(ServiceUnreachable):
        WithdrawalView.from_json({**data, "state": "bogus"})


def test_verify_signature_is_the_webhooks_one() -> None:
    """Receivers get the signature check from the client module too (the very same function)."""
    import engine.webhooks
    from engine.client import verify_signature

    assert verify_signature is engine.webhooks.verify_signature
