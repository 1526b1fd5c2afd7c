"""The console's live updates: committed events as Server-Sent Events, for ``GET /console/events``.

Each message says only what changed (workflow, batch, kind, states, trigger) with the feed cursor as its
``id``, so a reconnecting ``EventSource`` resumes right behind it (``Last-Event-ID``); the page re-reads its
live regions for the rest. A stream ends on disconnect (noticed within :data:`TICK`), at the server's
shutdown, on a store failure (a ``failed`` event) and after its lifetime (an ``expired`` event: the idle
time; the page then stops refreshing, so an unattended tab keeps its session for at most twice the idle time,
its refreshes being requests that renew it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from engine.api_events import stop_task
from engine.errors import EngineError
from engine.store.base import FeedItem

__all__ = ["TICK", "serve_events"]

log = structlog.get_logger("engine.console")

#: Longest a stream goes without looking at its connection and at the server's shutdown.
TICK = 0.25
#: Items read ahead of a slow client.
BUFFER = 256


async def serve_events(
    request: web.Request, items: AsyncIterator[FeedItem], *, lifetime: float, keepalive: float, closing: asyncio.Event
) -> web.StreamResponse:
    """Answer ``request`` with ``items`` as Server-Sent Events until one of the ends above."""
    response = web.StreamResponse(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.content_type = "text/event-stream"
    response.charset = "utf-8"
    with contextlib.suppress(ConnectionError):
        await response.prepare(request)
        await response.write(b": stream open\n\n")
        await _pump(request, response, items, lifetime=lifetime, keepalive=keepalive, closing=closing)
    return response


def _message(item: FeedItem) -> bytes:
    """One SSE message: enough for the page to know what changed (it re-reads the page for the rest)."""
    event = item.event
    data = {
        "workflow_id": event.workflow_id, "batch_id": item.parent_id, "kind": item.kind, "seq": event.seq,
        "from": event.from_state, "to": event.to_state, "trigger": event.trigger,
    }  # fmt: skip
    cursor = item.cursor.replace("\r", " ").replace("\n", " ")
    return f"id: {cursor}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _pump(
    request: web.Request, response: web.StreamResponse, items: AsyncIterator[FeedItem], *, lifetime: float,
    keepalive: float, closing: asyncio.Event,
) -> None:  # fmt: skip
    """Send items as they come and a keep-alive when quiet; end on disconnect, shutdown, a store failure
    or the idle time. A reader task fills a queue so the loop can look at the connection every tick."""
    queue: asyncio.Queue[FeedItem | BaseException] = asyncio.Queue(maxsize=BUFFER)
    reader = asyncio.create_task(_read(items, queue), name="console-events-reader")
    loop = asyncio.get_running_loop()
    quiet_since = started = loop.time()
    try:
        while not closing.is_set() and _connected(request):
            if loop.time() - started >= lifetime:
                await response.write(b"event: expired\ndata: {}\n\n")
                return
            try:
                got = await asyncio.wait_for(queue.get(), TICK)
            except TimeoutError:
                if loop.time() - quiet_since >= keepalive:
                    await response.write(b": keep-alive\n\n")
                    quiet_since = loop.time()
                continue
            if isinstance(got, BaseException):
                await response.write(b"event: failed\ndata: {}\n\n")
                return
            await response.write(_message(got))
            quiet_since = loop.time()
    finally:
        await _stop(reader)


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait until it really ended (see :func:`engine.api_events.stop_task`)."""
    await stop_task(task, TICK)


async def _read(items: AsyncIterator[FeedItem], queue: asyncio.Queue[FeedItem | BaseException]) -> None:
    try:
        async for item in items:
            await queue.put(item)
    except EngineError as exc:  # the store failed, or the page's cursor is unknown to this store
        log.warning("console.events_failed", error=type(exc).__name__)
        await queue.put(exc)


def _connected(request: web.Request) -> bool:
    """aiohttp drops the transport when the peer closes (the handler itself is not cancelled)."""
    transport = request.transport
    return transport is not None and not transport.is_closing()
