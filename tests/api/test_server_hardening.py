"""Hostile clients on a real socket: bytes aiohttp's client refuses to send, slowloris, connection floods.

Every request here is written byte for byte with ``asyncio.open_connection`` to the API served by
``engine.http_server.start_site`` (the listener ``upbit-withdraw run`` uses). No assertion is about
precise timing: a connection that must be closed must be closed "eventually", within a generous
deadline, and the API must still answer a normal client meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.api import create_app
from engine.bootstrap import build_engine
from engine.core import Engine
from engine.http_server import ServerLimits, start_site
from engine.sandbox import SandboxServer
from tests.api.conftest import TOKEN, btc, service_config

#: Deadline for anything that must happen "eventually" (the configured timeouts are well below it).
EVENTUALLY = 30.0
AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"


@dataclass
class Live:
    """An API listening on a loopback port, and the engine behind it."""

    host: str
    port: int
    engine: Engine

    async def exchange(self, data: bytes) -> bytes:
        """Send ``data`` on a new connection; everything the server answers until it closes."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(data)
            await writer.drain()
            return await asyncio.wait_for(reader.read(), EVENTUALLY)
        finally:
            writer.close()

    async def status(self, data: bytes) -> int:
        """The status code of the one answer to ``data`` (sent with ``Connection: close``)."""
        answer = await self.exchange(data)
        return int(answer.split(b" ", 2)[1])

    async def healthy(self) -> bool:
        """A well-behaved client still gets an answer."""
        return await self.status(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n") == 200


LiveFactory = Callable[..., AbstractAsyncContextManager[Live]]


@pytest.fixture
def live_factory(exchange: SandboxServer, db_path: Path) -> LiveFactory:
    """The service's app behind the service's listener, with the given limits."""

    @asynccontextmanager
    async def build(**limits: float) -> AsyncIterator[Live]:
        engine = build_engine(service_config(exchange.url, db_path))
        app = create_app(engine, token=TOKEN)
        async with engine:
            runner, url = await start_site(app, host="127.0.0.1", port=0, limits=ServerLimits(**limits))
            try:
                host, _, port = url.removeprefix("http://").rpartition(":")
                yield Live(host, int(port), engine)
            finally:
                await runner.cleanup()

    return build


@pytest.fixture
async def live(live_factory: LiveFactory) -> AsyncIterator[Live]:
    """The API with the default limits."""
    async with live_factory() as built:
        yield built


def post(headers: bytes, body: bytes) -> bytes:
    """A POST /v1/withdrawals with raw ``headers`` (each ending in CRLF) and ``body``."""
    return (
        b"POST /v1/withdrawals HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n"
        + headers
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def error_name(answer: bytes) -> str:
    """``error.name`` of a JSON error answer."""
    return str(json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["name"])


BODY = json.dumps(btc()).encode()


class TestBytesThatAreNotText:
    @pytest.mark.parametrize(
        "authorization",
        [b"Bearer \xff\xfe", b"\xff\xfe\xfd", b"Bearer " + TOKEN.encode() + b"\xff", b"\xc3\x28 " + TOKEN.encode()],
    )
    async def test_non_utf8_authorization_is_401_not_500(self, live: Live, authorization: bytes) -> None:
        """Anyone who reaches the port could send it: checked before, and without, any token comparison."""
        answer = await live.exchange(post(b"Authorization: " + authorization + b"\r\n", BODY))
        assert answer.startswith(b"HTTP/1.1 401 ") and error_name(answer) == "unauthorized"
        assert await live.engine.list() == []

    @pytest.mark.parametrize("key", [b"\xff\xfe", b"abc\x80def", b"\xed\xa0\x80"])
    async def test_non_utf8_idempotency_key_is_422(self, live: Live, key: bytes) -> None:
        """A key the store could not hold is a client error naming the header; nothing is stored."""
        answer = await live.exchange(post(AUTH + b"Idempotency-Key: " + key + b"\r\n", BODY))
        assert answer.startswith(b"HTTP/1.1 422 ")
        body = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert set(body["error"]["fields"]) == {"idempotency_key"}
        assert await live.engine.list() == []

    @pytest.mark.parametrize("header", [b"Idempotency-Key:\r\n", b"Idempotency-Key: \r\n", b"Idempotency-Key:   \r\n"])
    async def test_empty_idempotency_key_is_422_on_every_retry(self, live: Live, header: bytes) -> None:
        """An empty key is refused, never ignored (ignoring it made a new withdrawal on every retry)."""
        for _ in range(3):
            assert await live.status(post(AUTH + header, BODY)) == 422
        assert await live.engine.list() == []

    async def test_a_valid_key_still_replays(self, live: Live) -> None:
        """The checks leave the normal case alone: same key and body, same workflow."""
        first = await live.exchange(post(AUTH + b"Idempotency-Key: order-1\r\n", BODY))
        second = await live.exchange(post(AUTH + b"Idempotency-Key: order-1\r\n", BODY))
        assert first.startswith(b"HTTP/1.1 201 ") and second.startswith(b"HTTP/1.1 200 ")
        assert len(await live.engine.list()) == 1


class TestDeepJson:
    @pytest.mark.parametrize(
        "body",
        [b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000, b'{"address":' + b"[" * 50_000],
        ids=["lists", "objects", "unterminated"],
    )
    async def test_nested_5000_deep_is_400(self, live: Live, body: bytes) -> None:
        """json.loads' RecursionError is a malformed body (400), not a crash (500)."""
        answer = await live.exchange(post(AUTH, body))
        assert answer.startswith(b"HTTP/1.1 400 ") and error_name(answer) == "malformed_json"
        assert await live.healthy()

    async def test_deep_value_inside_a_field_is_422(self, live: Live) -> None:
        """Nesting the parser accepts ends as an invalid field."""
        body = json.dumps(btc()).encode().replace(b'"0.01"', b"[" * 500 + b"]" * 500)
        answer = await live.exchange(post(AUTH, body))
        assert answer.startswith(b"HTTP/1.1 422 ")
        assert "amount" in json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["fields"]


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """What the server sends before it closes the connection (EOF or reset)."""
    try:
        return await asyncio.wait_for(reader.read(), EVENTUALLY)
    except ConnectionResetError:
        return b""


class TestSlowClients:
    async def test_slowloris_connections_are_closed_and_the_api_answers(self, live_factory: LiveFactory) -> None:
        """200 connections that never finish their request head are all closed after header_timeout;
        meanwhile (and after) a normal client is served."""
        async with live_factory(header_timeout=0.5, max_connections_per_client=1000) as live:
            slow = [await asyncio.open_connection(live.host, live.port) for _ in range(200)]
            try:
                for _, writer in slow:
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
                assert await live.healthy()
                answers = await asyncio.gather(*(_closed_by_server(reader) for reader, _ in slow))
                assert all(b"200 OK" not in answer for answer in answers)
                assert await live.healthy()
            finally:
                for _, writer in slow:
                    writer.close()

    async def test_trickled_head_is_closed_even_while_bytes_arrive(self, live_factory: LiveFactory) -> None:
        """The deadline counts from the connection's start, not from the last byte."""
        async with live_factory(header_timeout=0.5) as live:
            reader, writer = await asyncio.open_connection(live.host, live.port)
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\n")
                closed = asyncio.create_task(_closed_by_server(reader))
                for i in range(int(EVENTUALLY / 0.1)):
                    if closed.done():
                        break
                    writer.write(f"X-{i}: a\r\n".encode())
                    await asyncio.sleep(0.1)
                assert closed.done() and b"200 OK" not in closed.result()
            finally:
                writer.close()

    async def test_idle_keepalive_connection_is_closed(self, live_factory: LiveFactory) -> None:
        """After an answer, a connection that stays idle (or sends half a head) is closed after keepalive_timeout."""
        async with live_factory(keepalive_timeout=0.5) as live:
            for follow_up in (b"", b"GET /healthz HTTP/1.1\r\nHost: t\r\n"):
                reader, writer = await asyncio.open_connection(live.host, live.port)
                try:
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" + follow_up)
                    answer = await _closed_by_server(reader)
                    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1") == 1
                finally:
                    writer.close()

    async def test_connections_beyond_the_per_client_cap_are_refused(self, live_factory: LiveFactory) -> None:
        """max_connections_per_client open connections from one address; the next gets 503 and is closed;
        once one closes, a new one is served again."""
        async with live_factory(max_connections_per_client=5, keepalive_timeout=EVENTUALLY * 2) as live:
            held = []
            for _ in range(5):  # each one answered once, so the server has surely counted it
                reader, writer = await asyncio.open_connection(live.host, live.port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), EVENTUALLY)).startswith(b"HTTP/1.1 200")
                held.append((reader, writer))
            try:
                answer = await live.exchange(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                assert answer.startswith(b"HTTP/1.1 503 ") and error_name(answer) == "too_many_connections"
            finally:
                held.pop()[1].close()
            try:
                async with asyncio.timeout(EVENTUALLY):
                    while not await live.healthy():  # the server notices the close a moment later
                        await asyncio.sleep(0.05)
            finally:
                for _, writer in held:
                    writer.close()
