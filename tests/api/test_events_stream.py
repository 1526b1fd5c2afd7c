"""GET /v1/events over real HTTP (the service's own listener on 127.0.0.1, a real SQLite file, the sandbox):
order, resume without gaps or duplicates, keep-alive, filters, errors, disconnect and shutdown."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.api_events import STREAMS
from engine.bootstrap import build_engine
from engine.core import Engine
from engine.errors import StoreUnavailable
from engine.http_server import ServerLimits
from engine.models import WithdrawalRequest
from engine.sandbox import SandboxServer
from tests.api.conftest import BTC_ADDRESS, TOKEN, service_config
from tests.api.live import AUTH, PATIENCE, Live, open_sse, serve, settled_count
from tests.api.openapi_schema import check_response, validate

STREAMED_EVENT = {"$ref": "#/components/schemas/StreamedEvent"}
SETTLED = frozenset({"DONE", "FAILED", "CANCELLED", "REJECTED", "aborted", "needs_review"})


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
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def stored(engine: Engine, ids: set[str]) -> list[dict[str, Any]]:
    """Every stored event of these workflows, in feed order, as (cursor, workflow, seq, trigger)."""
    items = await engine.store.feed(after=None, limit=10_000)
    return [
        {"id": i.cursor, "workflow_id": i.event.workflow_id, "seq": i.event.seq, "trigger": i.event.trigger}
        for i in items
        if i.event.workflow_id in ids
    ]


def brief(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: e[k] for k in ("id", "workflow_id", "seq", "trigger")} for e in events]


async def wait_for(predicate: Any, timeout: float = PATIENCE) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


class TestOrder:
    async def test_events_arrive_in_commit_order_with_every_field(self, live: Live, session: Any) -> None:
        """Each workflow's events come complete (seq 1..n), in the store's feed order, described in full."""
        async with open_sse(session, live.url) as sse:
            ids = {(await live.engine.submit(btc(f"0.0{n}"))).id for n in range(1, 4)}
            got = await sse.until(settled_count(ids, SETTLED))
        assert brief(got) == (await stored(live.engine, ids))[: len(got)]
        for event in got:  # the documented shape of a message's data
            validate({k: v for k, v in event.items() if k not in {"id", "event"}}, STREAMED_EVENT)
        for wf in ids:
            seqs = [e["seq"] for e in got if e["workflow_id"] == wf]
            assert seqs == list(range(1, len(seqs) + 1))
        first = got[0]
        assert set(first) == {
            "workflow_id", "kind", "account", "reference", "batch_id", "seq", "at", "trigger", "from", "to", "data",
            "prev", "hash", "id", "event",
        }  # fmt: skip
        assert first["event"] == first["trigger"] == "create"
        described = (first["kind"], first["account"], first["from"], first["to"])
        assert described == ("withdrawal", "default", None, "pending")
        assert first["data"]["request"]["amount"] in {"0.01", "0.02", "0.03"}

    async def test_without_cursor_the_stream_starts_now(self, live: Live, session: Any) -> None:
        """Events stored before the stream opened are not sent; ``after=start`` replays them."""
        old = await live.engine.submit(btc("0.01"))
        await live.engine.wait(old.id, timeout=PATIENCE)
        async with open_sse(session, live.url) as sse:
            new = await live.engine.submit(btc("0.02"))
            got = await sse.until(lambda c: len(c) >= 1)
        assert got[0]["workflow_id"] == new.id and got[0]["seq"] == 1
        async with open_sse(session, live.url, params={"after": "start"}) as sse:
            replay = await sse.until(lambda c: len(c) >= 1)
        assert (replay[0]["workflow_id"], replay[0]["seq"]) == (old.id, 1)


class TestResume:
    async def test_reconnect_with_last_event_id_loses_and_repeats_nothing(self, live: Live, session: Any) -> None:
        """Read some, hang up while workflows keep moving, reconnect with Last-Event-ID: the two parts join
        exactly into what the store holds."""
        ids: set[str] = set()
        async with open_sse(session, live.url) as sse:
            ids |= {(await live.engine.submit(btc(f"0.0{n}"))).id for n in range(1, 4)}
            first = await sse.until(lambda c: len(c) >= 4)
        ids |= {(await live.engine.submit(btc(f"0.1{n}"))).id for n in range(1, 3)}  # while disconnected
        async with open_sse(session, live.url, last_event_id=first[-1]["id"]) as sse:
            rest = await sse.until(settled_count(ids, SETTLED))
        joined = brief(first + rest)
        assert len({e["id"] for e in joined}) == len(joined), "an event was sent twice"
        assert joined == (await stored(live.engine, ids))[: len(joined)]
        assert {e["workflow_id"] for e in rest if e["to"] in SETTLED} >= ids

    async def test_after_query_parameter_resumes_the_same_way(self, live: Live, session: Any) -> None:
        """``?after=<id>`` is the same as the header (for clients that cannot set one)."""
        wf = await live.engine.submit(btc("0.01"))
        await live.engine.wait(wf.id, timeout=PATIENCE)
        everything = await stored(live.engine, {wf.id})
        async with open_sse(session, live.url, params={"after": everything[0]["id"]}) as sse:
            got = await sse.until(lambda c: len(c) >= len(everything) - 1)
        assert brief(got) == everything[1:]

    async def test_last_event_id_wins_over_after(self, live: Live, session: Any) -> None:
        """A reconnecting EventSource keeps its original URL (maybe with ``?after=``) and adds the header:
        the header is the newer position."""
        wf = await live.engine.submit(btc("0.01"))
        await live.engine.wait(wf.id, timeout=PATIENCE)
        everything = await stored(live.engine, {wf.id})
        params = {"after": everything[0]["id"]}
        async with open_sse(session, live.url, params=params, last_event_id=everything[2]["id"]) as sse:
            got = await sse.until(lambda c: len(c) >= len(everything) - 3)
        assert brief(got) == everything[3:]

    async def test_a_store_failure_mid_stream_ends_it_with_an_error_event(
        self, live: Live, session: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The store fails while the stream waits: an ``error`` event, the end; resuming afterwards from
        the last id loses nothing."""
        wf = await live.engine.submit(btc("0.01"))
        await live.engine.wait(wf.id, timeout=PATIENCE)
        everything = await stored(live.engine, {wf.id})
        real_feed = live.engine.store.feed

        async def failing(**_: Any) -> Any:
            raise StoreUnavailable("the disk is full")

        async with open_sse(session, live.url, params={"after": everything[0]["id"]}) as sse:
            first = await sse.next()
            monkeypatch.setattr(live.engine.store, "feed", failing)
            while (message := await sse.next()).event != "error":
                pass  # items already read ahead before the failure
            assert json.loads(message.data)["error"]["name"] == "unavailable"
            with pytest.raises(EOFError):
                await sse.next()
        monkeypatch.setattr(live.engine.store, "feed", real_feed)
        async with open_sse(session, live.url, last_event_id=first.id) as sse:
            rest = await sse.until(lambda c: len(c) >= len(everything) - 2)
        assert brief(rest) == everything[2:]
        assert "disk is full" not in message.data  # the store's words stay in the service log


class TestFilters:
    async def test_workflow_and_type_filters(self, live: Live, session: Any) -> None:
        """Only the named workflow's events, only the listed triggers; the cursor still moves past others."""
        async with open_sse(session, live.url, params={"after": "start", "type": ["create", "mark_done"]}) as by_type:
            one = await live.engine.submit(btc("0.01"))
            other = await live.engine.submit(btc("0.02"))
            params = {"workflow": one.id, "after": "start"}
            async with open_sse(session, live.url, params=params) as by_workflow:
                mine = await by_workflow.until(settled_count({one.id}, SETTLED))
            typed = await by_type.until(lambda c: len([e for e in c if e["trigger"] == "create"]) >= 2)
        assert {e["workflow_id"] for e in mine} == {one.id}
        assert [e["seq"] for e in mine] == list(range(1, len(mine) + 1))
        assert {e["trigger"] for e in typed} <= {"create", "mark_done"}
        assert {e["workflow_id"] for e in typed if e["trigger"] == "create"} == {one.id, other.id}

    async def test_account_filter(self, live: Live, session: Any) -> None:
        """An account with no withdrawals streams nothing; the configured one streams its events."""
        async with (
            open_sse(session, live.url, params={"account": "default"}) as mine,
            open_sse(session, live.url, params={"account": "nobody"}) as none,
        ):
            wf = await live.engine.submit(btc("0.01"))
            got = await mine.until(lambda c: len(c) >= 1)
            with pytest.raises(TimeoutError):
                await none.next(timeout=1.0)
        assert got[0]["workflow_id"] == wf.id and got[0]["account"] == "default"


class TestErrors:
    @pytest.mark.parametrize(
        ("params", "headers", "field"),
        [
            ({"after": "999999"}, {}, "after"),
            ({}, {"Last-Event-ID": "999999"}, "after"),
            ({"after": "not a cursor"}, {}, "after"),
            ({"workflow": "nope"}, {}, "workflow"),
            ({"bogus": "1"}, {}, "bogus"),
        ],
    )
    async def test_bad_cursor_or_parameter_is_422_json_before_the_stream(
        self, live: Live, session: Any, params: dict[str, str], headers: dict[str, str], field: str
    ) -> None:
        """Refused with the API's one error shape, naming the parameter; no stream is opened."""
        await live.engine.submit(btc("0.01"))
        async with session.get(f"{live.url}/v1/events", params=params, headers={**AUTH, **headers}) as response:
            body = await response.json()
            assert response.status == 422
            check_response("GET", "/v1/events", 422, response.content_type, json.dumps(body).encode())
        assert body["error"]["name"] == "invalid_request" and field in body["error"]["fields"]
        assert live.app[STREAMS].served == 0

    async def test_needs_the_token(self, live: Live, session: Any) -> None:
        async with session.get(f"{live.url}/v1/events") as response:
            assert response.status == 401
            assert TOKEN not in await response.text()


class TestConnection:
    async def test_keepalive_comments_keep_a_quiet_stream_open_past_the_idle_timeout(
        self, engine: Engine, session: Any
    ) -> None:
        """A stream outlives the server's head and idle deadlines; comments flow while nothing happens,
        and an event still arrives afterwards."""
        limits = ServerLimits(header_timeout=0.5, keepalive_timeout=0.5)
        async with serve(engine, keepalive=0.2, limits=limits) as live, open_sse(session, live.url) as sse:
            reader = asyncio.create_task(sse.next())
            await wait_for(lambda: sse.parser.comments >= 8)  # ": stream open" + keep-alives, > 1.5 s of quiet
            wf = await engine.submit(btc("0.01"))
            message = await reader
        assert b": keep-alive\n\n" in sse.raw
        assert json.loads(message.data)["workflow_id"] == wf.id

    async def test_client_disconnect_frees_the_handler(self, live: Live, session: Any) -> None:
        """The handler notices the peer is gone without anything to write, and returns."""
        stats = live.app[STREAMS]
        async with open_sse(session, live.url):
            await wait_for(lambda: stats.open == 1)
        await wait_for(lambda: stats.open == 0)
        assert stats.served == 1

    async def test_shutdown_ends_open_streams(self, engine: Engine, session: Any) -> None:
        """Stopping the server ends a stream at once (aiohttp would otherwise wait 60 s for it)."""
        async with serve(engine) as live, open_sse(session, live.url) as sse:
            await wait_for(lambda: live.app[STREAMS].open == 1)
            async with asyncio.timeout(30):  # far below aiohttp's 60 s shutdown wait
                await live.runner.cleanup()
            assert live.app[STREAMS].open == 0
            with pytest.raises((EOFError, aiohttp.ClientError)):
                await sse.next(timeout=10)
