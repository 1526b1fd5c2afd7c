"""A real webhook receiver on 127.0.0.1 for tests and the benchmark: records every request, checks every
signature with :func:`engine.webhooks.verify_signature`, and can be told to fail (503) or to go away
(connections refused) and come back on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from engine.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, verify_signature


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the receiver saw it, and what it answered."""

    event_id: str
    body: bytes
    signature: str
    at: float
    status: int

    @property
    def payload(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class Receiver:
    """``mode``: "ok" (200 when the signature verifies, else 401), "fail" (503), "slow" (sleeps, then 200)."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = secrets
        self.mode = "ok"
        self.slow_seconds = 30.0
        self.requests: list[Received] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.changed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        """Listen (on the same port as before, after a :meth:`stop`)."""
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        server = site._server  # the bound socket tells the ephemeral port
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening: connections are refused until :meth:`start`."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        signature = request.headers.get(SIGNATURE_HEADER, "")
        status = 200
        if self.mode == "fail":
            status = 503
        elif self.mode == "slow":
            await asyncio.sleep(self.slow_seconds)
        if status == 200 and not verify_signature(body, signature, self.secrets):
            status = 401
        self.requests.append(Received(request.headers.get(EVENT_ID_HEADER, ""), body, signature, time.time(), status))
        self.changed.set()
        return web.Response(status=status)

    def delivered(self) -> list[Received]:
        """Requests answered 200, in arrival order."""
        return [r for r in self.requests if r.status == 200]

    def delivered_ids(self) -> set[str]:
        return {r.event_id for r in self.delivered()}

    async def wait_for(self, event_ids: set[str], timeout: float = 60.0) -> None:
        """Until every one of ``event_ids`` was answered 200 (bounded; fails naming the missing ones)."""
        try:
            async with asyncio.timeout(timeout):
                while not event_ids <= self.delivered_ids():
                    self.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.changed.wait(), 0.5)
        except TimeoutError:
            missing = sorted(event_ids - self.delivered_ids())
            raise AssertionError(f"{len(missing)} never delivered, e.g. {missing[:5]}") from None
