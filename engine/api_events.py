"""``GET /v1/events``: every committed event across workflows as Server-Sent Events.

Each event goes out as::

    id: <feed cursor>
    event: <trigger>
    data: {"workflow_id": ..., "kind": ..., "account": ..., "seq": ..., "at": ..., "trigger": ...,
           "from": ..., "to": ..., "data": {...}, "prev": ..., "hash": ...}

(``data`` on one line). A client that reconnects with ``Last-Event-ID`` (or ``?after=``) set to the last
``id`` it read resumes right behind it: the feed's order is total and never changes, so nothing is lost
and nothing repeats. Without a cursor the stream starts now; ``?after=start`` replays every stored
event first. Filters: ``workflow``, ``account``, ``type`` (a trigger; repeatable). An unknown cursor or a
bad parameter is a 422 JSON error before the stream starts.

The handler outlives the server's idle timeouts: aiohttp's ``keepalive_timeout`` only closes a
connection between requests, and the head deadline of :mod:`engine.http_server` ends with the request
head. A ``: keep-alive`` comment goes out every ``keepalive`` seconds so proxies do not cut a quiet
stream. A client that disconnects is noticed within :data:`TICK` seconds (the handler watches its
transport; it is not cancelled by aiohttp), and the server's shutdown ends every stream at once.

The wire format is four lines of text; it is written here rather than through a library (aiohttp-sse)
so that the disconnect and shutdown rules above stay in one visible loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from engine.api import ENGINE, ApiError
from engine.core import Engine
from engine.errors import EngineError, InvalidCursor
from engine.store.base import FeedItem

__all__ = [
    "DEFAULT_KEEPALIVE",
    "FROM_START",
    "STREAMS",
    "StreamStats",
    "add_event_routes",
    "event_payload",
    "format_event",
    "stop_task",
]

log = structlog.get_logger("engine.api")

#: Seconds between keep-alive comments on a quiet stream (``[api] events_keepalive`` may change it).
DEFAULT_KEEPALIVE = 15.0
#: The ``after`` value that replays every stored event before going live.
FROM_START = "start"
#: Longest a handler goes without looking at its connection and at the server's shutdown.
TICK = 0.25
#: Items read ahead of a slow client (the reader then waits: the store is not read faster than it sends).
BUFFER = 256


@dataclass(slots=True)
class StreamStats:
    """How many streams this app serves now, and has served (``app[STREAMS]``)."""

    open: int = 0
    served: int = 0


KEEPALIVE = web.AppKey("events_keepalive", float)
STREAMS = web.AppKey("events_streams", StreamStats)
CLOSING = web.AppKey("events_closing", asyncio.Event)
_ID_RE = re.compile(r"wd_[0-9a-f]{1,64}")
_BATCH_RE = re.compile(r"bt_[0-9a-f]{1,64}")
_ACCOUNT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_TYPE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_CURSOR_RE = re.compile(r"[!-~]{1,64}")
_PARAMS = frozenset({"workflow", "batch", "account", "type", "after"})


def add_event_routes(app: web.Application, *, keepalive: float = DEFAULT_KEEPALIVE) -> None:
    """Serve ``GET /v1/events`` on ``app`` (whose ``engine`` the API's ``create_app`` set)."""
    if keepalive <= 0:
        raise ValueError("keepalive must be positive")
    app[KEEPALIVE] = keepalive
    app[CLOSING] = asyncio.Event()
    app[STREAMS] = StreamStats()
    app.on_shutdown.append(_end_streams)
    app.router.add_get("/v1/events", stream_events, allow_head=False)


async def _end_streams(app: web.Application) -> None:
    """Runs before aiohttp waits for handlers to finish: open streams end now, not at its 60 s timeout."""
    app[CLOSING].set()


def event_payload(item: FeedItem) -> dict[str, Any]:
    """The JSON ``data`` of one streamed event."""
    event = item.event
    return {
        "workflow_id": event.workflow_id,
        "kind": item.kind,
        "account": item.account,
        "reference": item.reference,
        "batch_id": item.parent_id,
        "seq": event.seq,
        "at": event.at.isoformat(),
        "trigger": event.trigger,
        "from": event.from_state,
        "to": event.to_state,
        "data": event.data,
        "prev": event.prev_hash,
        "hash": event.hash,
    }


def format_event(item: FeedItem) -> bytes:
    """One SSE message. JSON escapes every newline, so ``data`` is one line; the id and the event name
    have any line break replaced (one there would start a forged field)."""
    data = json.dumps(event_payload(item), separators=(",", ":"), default=str)
    lines = (f"id: {_one_line(item.cursor)}", f"event: {_one_line(item.event.trigger)}", f"data: {data}")
    return ("\n".join(lines) + "\n\n").encode()


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


class _Params:
    """The validated query of one stream request."""

    def __init__(self, query: Mapping[str, str], getall: list[tuple[str, str]], last_event_id: str | None) -> None:
        self.fields: dict[str, str] = {key: "unknown parameter" for key in sorted(set(query) - _PARAMS)}
        self.workflow = self._one(query, "workflow", _ID_RE, "must be a workflow id (wd_...)")
        self.batch = self._one(query, "batch", _BATCH_RE, "must be a batch id")
        self.account = self._one(query, "account", _ACCOUNT_RE, "must be an account name")
        self.types = [value for key, value in getall if key == "type"]
        if any(not _TYPE_RE.fullmatch(t) for t in self.types):
            self.fields["type"] = "each must be an event type (a trigger such as create, mark_done, abort)"
        self.after = last_event_id if last_event_id is not None else query.get("after")
        if self.after is not None and not _CURSOR_RE.fullmatch(self.after):
            self.fields["after"] = "must be an event id from this stream (or 'start'), here or in Last-Event-ID"

    def _one(self, query: Mapping[str, str], key: str, pattern: re.Pattern[str], problem: str) -> str | None:
        value = query.get(key)
        if value is not None and not pattern.fullmatch(value):
            self.fields[key] = problem
        return value


async def stream_events(request: web.Request) -> web.StreamResponse:
    """GET /v1/events."""
    params = _Params(request.query, list(request.query.items()), request.headers.get("Last-Event-ID"))
    if params.fields:
        raise ApiError(422, "invalid_request", "invalid query parameters", params.fields)
    engine = request.app[ENGINE]
    after = await _start_cursor(engine, params.after)
    items = engine.stream(
        after=after, from_start=after is None, workflow_id=params.workflow, batch_id=params.batch,
        account=params.account,
        event_types=params.types or None,
    )  # fmt: skip
    response = web.StreamResponse(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.content_type = "text/event-stream"
    response.charset = "utf-8"
    stats = request.app[STREAMS]
    stats.open += 1
    stats.served += 1
    try:
        await response.prepare(request)
        await response.write(b": stream open\n\n")
        await _pump(request, response, items)
    except ConnectionError:
        pass  # the client went away before the first event
    finally:
        stats.open -= 1
    return response


async def _start_cursor(engine: Engine, after: str | None) -> str | None:
    """Where the stream starts, fixed before the answer's head is sent: a client that has the head sees
    every event committed after it. ``None``: the first stored event. An unknown cursor is a 422 now."""
    if after == FROM_START:
        return None
    if after is None:
        return await engine.store.feed_head()
    try:
        await engine.store.feed(after=after, limit=1)
    except InvalidCursor:
        problem = "no event has this id in this store (send the id of an event this stream sent, or 'start')"
        raise ApiError(422, "invalid_request", "invalid query parameters", {"after": problem}) from None
    return after


async def _pump(request: web.Request, response: web.StreamResponse, items: AsyncIterator[FeedItem]) -> None:
    """Send items as they come, a keep-alive when quiet; end on disconnect, shutdown or a store failure.

    A reader task fills a bounded queue so that this loop can wake every :data:`TICK` to look at the
    connection without cancelling the generator mid-read (that would close it)."""
    queue: asyncio.Queue[FeedItem | BaseException] = asyncio.Queue(maxsize=BUFFER)
    reader = asyncio.create_task(_read(items, queue), name="events-reader")
    keepalive, closing = request.app[KEEPALIVE], request.app[CLOSING]
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    try:
        while not closing.is_set() and _connected(request):
            try:
                got = await asyncio.wait_for(queue.get(), TICK)
            except TimeoutError:
                if loop.time() - quiet_since >= keepalive:
                    await response.write(b": keep-alive\n\n")
                    quiet_since = loop.time()
                continue
            if isinstance(got, BaseException):
                await _fail(response, got)
                return
            await response.write(format_event(got))
            quiet_since = loop.time()
    except ConnectionError:
        pass  # the client went away mid-write
    finally:
        await stop_task(reader, TICK)


async def stop_task(task: asyncio.Task[None], tick: float) -> None:
    """Cancel ``task`` and wait until it ended, cancelling again every ``tick`` while it runs: on Python 3.11
    a cancellation that meets a finishing ``wait_for`` (the engine's stream waits in one) can be swallowed,
    and a single ``await task`` would then wait for ever (and hold up the server's shutdown: a test's
    teardown once took 60 s). An exception it ended with is retrieved (the stream already reported it)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=tick)
    if not task.cancelled():
        task.exception()


async def _read(items: AsyncIterator[FeedItem], queue: asyncio.Queue[FeedItem | BaseException]) -> None:
    try:
        async for item in items:
            await queue.put(item)
    except EngineError as exc:
        await queue.put(exc)
    except Exception as exc:
        log.exception("api.events_crashed")
        await queue.put(exc)


async def _fail(response: web.StreamResponse, exc: BaseException) -> None:
    """The store failed mid-stream: say so in an ``error`` event and end; the client resumes from its
    last id when the store is back."""
    log.warning("api.events_failed", error=type(exc).__name__)
    body = {"error": {"name": "unavailable", "message": "the store failed; reconnect with Last-Event-ID"}}
    with contextlib.suppress(ConnectionError):
        await response.write(f"event: error\ndata: {json.dumps(body)}\n\n".encode())


def _connected(request: web.Request) -> bool:
    """aiohttp drops the transport when the peer closes; the handler itself is not cancelled."""
    transport = request.transport
    return transport is not None and not transport.is_closing()
