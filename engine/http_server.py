"""Listening for HTTP with the limits aiohttp's server lacks: a request-head deadline and a per-client cap.

aiohttp closes idle keep-alive connections (``keepalive_timeout``) but has no deadline for a request head
that trickles in byte by byte, and no bound on how many connections one address may hold open: a
slowloris client keeps any number of half-sent requests open forever. Each listener here wraps aiohttp's
protocol in :class:`_GuardedProtocol`, which

- closes a connection whose first request head is not complete ``header_timeout`` seconds after it
  opened (later requests on a kept-alive connection are bounded by ``keepalive_timeout``: aiohttp
  closes a connection that has not delivered its next complete request that long after an answer);
- answers ``503`` and closes at once a connection beyond ``max_connections_per_client`` open
  connections from the same address.

Sockets are bound by :func:`bind_listeners` before anything else starts, so that a taken port fails
before a runner steps a single workflow; :func:`start_site` serves an app on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

__all__ = ["ServerLimits", "bind_listeners", "start_site"]

log = structlog.get_logger("engine.http_server")

_BACKLOG = 128
_HEAD_END = (b"\r\n\r\n", b"\n\n")
_TOO_MANY_BODY = json.dumps(
    {"error": {"name": "too_many_connections", "message": "too many open connections from this address"}},
    separators=(",", ":"),
).encode()
_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: " + str(len(_TOO_MANY_BODY)).encode() + b"\r\n\r\n" + _TOO_MANY_BODY
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """What one client may hold of a listener (``[api]`` keys of the same names)."""

    header_timeout: float = 10.0
    """Seconds a new connection has to deliver its first complete request head."""
    keepalive_timeout: float = 30.0
    """Seconds an idle connection stays open after an answer (also bounds the next request's head)."""
    max_connections_per_client: int = 256
    """Open connections one client address may hold; more are answered 503 and closed."""


class _ConnectionCounts:
    """Open connections per client address, for one listener."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open: Counter[str] = Counter()

    def admit(self, client: str) -> bool:
        """Count a new connection from ``client``, unless it already holds the limit."""
        if self._open[client] >= self._limit:
            return False
        self._open[client] += 1
        return True

    def release(self, client: str) -> None:
        """Forget one closed connection of ``client``."""
        self._open[client] -= 1
        if self._open[client] <= 0:
            del self._open[client]


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the head deadline and the per-client cap."""

    def __init__(self, inner: asyncio.Protocol, counts: _ConnectionCounts, limits: ServerLimits) -> None:
        self._inner = inner
        self._counts = counts
        self._limits = limits
        self._transport: asyncio.Transport | None = None
        self._client = ""
        self._admitted = False
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if not self._counts.admit(self._client):
            log.warning("api.connection_refused", client=self._client, reason="max_connections_per_client")
            transport.write(_TOO_MANY)
            transport.close()
            return
        self._admitted = True
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._limits.header_timeout, self._head_too_slow)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._deadline is not None:
            seen = self._tail + data
            if any(end in seen for end in _HEAD_END):
                self._deadline.cancel()
                self._deadline = None
            self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._counts.release(self._client)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def _head_too_slow(self) -> None:
        self._deadline = None
        log.warning("api.request_head_timeout", client=self._client, seconds=self._limits.header_timeout)
        if self._transport is not None:
            self._transport.close()


class _GuardedSite(web.BaseSite):
    """An aiohttp site serving on one already-bound socket through :class:`_GuardedProtocol`."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, limits: ServerLimits) -> None:
        super().__init__(runner)
        self._sock = sock
        self._limits = limits
        self._counts = _ConnectionCounts(limits.max_connections_per_client)

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in str(host) else str(host)
        return f"http://{shown}:{port}"

    def _protocol(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _GuardedProtocol(make(), self._counts, self._limits)

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol(server), sock=self._sock, backlog=_BACKLOG)


def bind_listeners(host: str, port: int) -> list[socket.socket]:
    """Bind and listen on every address of ``host`` at ``port`` (0: any free port) now.

    Connections that arrive before the app is served wait in the backlog. Raises :class:`OSError`
    (``socket.gaierror`` for an unknown host) and leaves nothing open.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def start_site(
    app: web.Application,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: ServerLimits | None = None,
    sockets: list[socket.socket] | None = None,
) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on ``sockets`` (from :func:`bind_listeners`), or on host:port bound now.

    Returns the runner (``await runner.cleanup()`` stops serving and closes the sockets) and the URL of
    the first address it listens on.
    """
    limits = limits or ServerLimits()
    listeners = sockets if sockets is not None else bind_listeners(host, port)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=limits.keepalive_timeout)
    try:
        await runner.setup()
        sites = [_GuardedSite(runner, sock, limits) for sock in listeners]
        for site in sites:
            await site.start()
    except BaseException:
        await runner.cleanup()
        for sock in listeners:
            with contextlib.suppress(OSError):
                sock.close()
        raise
    return runner, sites[0].name
