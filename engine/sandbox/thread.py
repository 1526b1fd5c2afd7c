"""The sandbox on a thread of its own, for synchronous callers (the official SDK's ``Upbit``, ccxt, scripts).

:class:`SandboxServer` lives inside the caller's event loop, which a blocking client would freeze.
:class:`SandboxThread` runs one in a private loop on a daemon thread and hands back its URL; the
``with`` block stops it. Starting waits on an event (bounded), never on a sleep.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType

from engine.sandbox.app import SandboxServer
from engine.sandbox.model import SandboxSeed

__all__ = ["SandboxThread"]

_START_TIMEOUT = 30.0


class SandboxThread:
    """``with SandboxThread() as sandbox: Upbit(base_url=sandbox.url, ...)``."""

    def __init__(self, seed: SandboxSeed | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = SandboxServer(seed, host, port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="upbit-sandbox", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"SandboxThread({self.server!r})"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return self.server.url

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:  # handed to the starting thread, which raises it
            self._error = exc
            self._started.set()
            return
        self._started.set()
        await self._stop.wait()
        await self.server.stop()

    def start(self) -> None:
        """Start serving; returns once the port is bound (or raises why it could not be)."""
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT):
            raise TimeoutError("the sandbox thread did not start")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Stop serving and join the thread; idempotent."""
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.ident is not None:
            self._thread.join(_START_TIMEOUT)

    def __enter__(self) -> SandboxThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
