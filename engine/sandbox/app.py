"""Serving the sandbox: the aiohttp application, an async context manager for tests, and the CLI entry.

:class:`SandboxServer` runs the sandbox on an ephemeral loopback port inside the caller's event loop
(``async with SandboxServer() as sandbox: sandbox.url``) and exposes the pure exchange for direct
inspection. :func:`run_sandbox` serves until interrupted, for ``upbit-withdraw sandbox``. Both refuse
to bind anything but a loopback address unless ``allow_non_loopback=True``: the admin routes have no
authentication, and the demo keys are published.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
from types import TracebackType

from aiohttp import web

from engine.clock import Clock
from engine.sandbox.admin import add_admin_routes
from engine.sandbox.api import add_routes
from engine.sandbox.exchange import Exchange
from engine.sandbox.model import SandboxSeed
from engine.sandbox.recorder import redact
from engine.sandbox.runtime import SANDBOX_KEY, Sandbox
from engine.sandbox.seed import default_seed, load_seed
from engine.upbit.auth import DEMO_ACCESS_KEY

__all__ = ["DEFAULT_PORT", "SandboxServer", "check_host", "create_app", "run_sandbox"]

DEFAULT_PORT = 8765
#: How long stopping waits for handlers still running (a ``hang`` fault may sleep much longer).
_SHUTDOWN_TIMEOUT = 0.5


def create_app(seed: SandboxSeed, *, clock: Clock | None = None) -> web.Application:
    """The sandbox as an aiohttp application (``/v1`` Exchange API plus ``/sandbox/`` admin)."""
    app = web.Application()
    app[SANDBOX_KEY] = Sandbox(seed, clock)
    add_routes(app)
    add_admin_routes(app)
    return app


def check_host(host: str, *, allow_non_loopback: bool = False) -> None:
    """Refuse a non-loopback bind address unless explicitly allowed."""
    if allow_non_loopback or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"refusing to bind the sandbox to {host!r}: its admin routes are unauthenticated and its "
            "demo keys are public; use a loopback address or pass allow_non_loopback=True"
        )


class SandboxServer:
    """A running sandbox on ``host:port`` (port 0: ephemeral), started and stopped by ``async with``."""

    def __init__(
        self,
        seed: SandboxSeed | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        allow_non_loopback: bool = False,
        clock: Clock | None = None,
    ) -> None:
        check_host(host, allow_non_loopback=allow_non_loopback)
        self.seed = seed if seed is not None else default_seed()
        self.host = host
        self.app = create_app(self.seed, clock=clock)
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        return f"SandboxServer({where})"

    @property
    def sandbox(self) -> Sandbox:
        """Everything the server holds (exchange, limiter, faults, recorder)."""
        return self.app[SANDBOX_KEY]

    @property
    def exchange(self) -> Exchange:
        """The pure simulated exchange (a new object after ``POST /sandbox/reset``)."""
        return self.sandbox.exchange

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked)."""
        if self._port is None:
            raise RuntimeError("the sandbox server is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving."""
        if self._runner is not None:
            raise RuntimeError("the sandbox server is already started")
        runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop serving; idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> SandboxServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def run_sandbox(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    seed_path: str | os.PathLike[str] | None = None,
    *,
    allow_non_loopback: bool = False,
) -> None:
    """Serve the sandbox until SIGINT/SIGTERM (blocking); prints one line with the URL and access key."""
    seed = load_seed(seed_path) if seed_path is not None else default_seed()
    check_host(host, allow_non_loopback=allow_non_loopback)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(seed, host, port, allow_non_loopback))


async def _serve(seed: SandboxSeed, host: str, port: int, allow_non_loopback: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with SandboxServer(seed, host, port, allow_non_loopback=allow_non_loopback) as server:
        key = seed.accounts[0].keys[0].access_key
        shown = key if key == DEMO_ACCESS_KEY else redact(key)
        print(f"Upbit sandbox on {server.url} (access key {shown}; admin at {server.url}/sandbox/)", flush=True)
        await stop.wait()
