"""A service on a real loopback socket (engine/http_server.py's listener, as ``upbit-withdraw run`` serves it),
and a raw Server-Sent Events reader for the /v1/events tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from engine.api import create_app
from engine.client import SSEMessage, SSEParser
from engine.core import Engine
from engine.http_server import ServerLimits, start_site
from tests.api.conftest import TOKEN
from tests.api.openapi_schema import check_response

AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Generous bound for anything a test waits on (a loaded 2-core machine).
PATIENCE = 60.0


@dataclass
class Live:
    """A served app: its URL, the engine behind it, the app (for its stream counters)."""

    url: str
    engine: Engine
    app: web.Application
    runner: web.AppRunner


@asynccontextmanager
async def serve(engine: Engine, *, keepalive: float = 15.0, limits: ServerLimits | None = None) -> AsyncIterator[Live]:
    """Serve ``engine`` (already entered) over HTTP on 127.0.0.1 until the block ends."""
    app = create_app(engine, token=TOKEN, events_keepalive=keepalive)
    runner, url = await start_site(app, limits=limits)
    try:
        yield Live(url, engine, app, runner)
    finally:
        await runner.cleanup()


@dataclass
class SSE:
    """One open /v1/events connection, read message by message."""

    response: aiohttp.ClientResponse
    parser: SSEParser = field(default_factory=SSEParser)
    pending: list[SSEMessage] = field(default_factory=list)
    raw: bytes = b""

    async def next(self, timeout: float = PATIENCE) -> SSEMessage:
        """The next message (comments are counted by the parser, not returned)."""
        async with asyncio.timeout(timeout):
            while not self.pending:
                chunk = await self.response.content.readany()
                if not chunk:
                    raise EOFError("the server ended the stream")
                self.raw += chunk
                self.pending.extend(self.parser.feed(chunk))
        return self.pending.pop(0)

    async def until(self, done: Any, timeout: float = PATIENCE) -> list[dict[str, Any]]:
        """Messages' data (with ``id`` added) until ``done(collected)`` is true."""
        collected: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while not done(collected):
                message = await self.next()
                collected.append({**json.loads(message.data), "id": message.id, "event": message.event})
        return collected


@asynccontextmanager
async def open_sse(
    session: aiohttp.ClientSession, url: str, *, params: Any = None, last_event_id: str | None = None
) -> AsyncIterator[SSE]:
    """GET /v1/events; yields the open stream once its head arrived (the start cursor is fixed by then)."""
    headers = {**AUTH, **({"Last-Event-ID": last_event_id} if last_event_id is not None else {})}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=PATIENCE)
    async with session.get(f"{url}/v1/events", params=params, headers=headers, timeout=timeout) as response:
        assert response.status == 200, await response.text()
        check_response("GET", "/v1/events", response.status, response.content_type, b"")
        yield SSE(response)


def settled_count(ids: set[str], states: frozenset[str]) -> Any:
    """A ``done`` predicate: every workflow of ``ids`` has streamed an event into one of ``states``."""

    def done(collected: list[dict[str, Any]]) -> bool:
        return {e["workflow_id"] for e in collected if e["to"] in states} >= ids

    return done
