"""A live stack for tests that speak plain blocking HTTP: the sandbox, an engine with its runner, and the
HTTP API, served from a background thread's event loop (hostile input, API fuzzing)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from engine.api import create_app, start_site
from engine.bootstrap import build_engine
from engine.config import AccountConfig, Config, EngineConfig, GatewayConfig
from engine.policy import Policy
from engine.sandbox import SandboxServer
from engine.sandbox.model import Timings
from workflows.testing.chaos import TOKEN
from workflows.testing.checks import settled
from workflows.testing.timings import FAST, FAST_EXCHANGE


class LiveStack:
    """The sandbox, an engine with its runner, and the HTTP API, served from a background thread's loop.

    For tests that talk plain blocking HTTP (urllib, schemathesis' requests): ``api_url``, ``sandbox_url``,
    ``db`` (the SQLite file), and :meth:`call` / :meth:`admin` / :meth:`workflow_count` to look around.
    Loopback only, ephemeral ports; ``with LiveStack(tmp) as stack:`` stops everything it started.
    """

    def __init__(self, workdir: Path, *, settings: Any = None) -> None:
        self.dir = workdir
        self.db = workdir / "workflows.sqlite3"
        self.settings = settings
        self.api_url = ""
        self.sandbox_url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name="live-stack")

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the test thread by __enter__
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with SandboxServer() as sandbox:
            self.sandbox_url = sandbox.url
            sandbox.exchange.configure(**_exchange_timings(FAST_EXCHANGE))
            config = Config(
                engine=EngineConfig(database=f"sqlite:///{self.db}"),
                gateway=GatewayConfig(allowlist_ttl=5.0, wallet_ttl=0.05, chance_ttl=0.05, poll_window=0.01),
                workflow=self.settings or FAST,
                accounts={"default": AccountConfig(name="default", base_url=sandbox.url, demo=True, timeout=2.0)},
                policy=Policy(),
            )
            engine = build_engine(config)
            async with engine:
                runner, self.api_url = await start_site(create_app(engine, token=TOKEN), host="127.0.0.1", port=0)
                self._ready.set()
                try:
                    await self._stop.wait()
                finally:
                    await runner.cleanup()

    def __enter__(self) -> LiveStack:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the live stack did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    # -- blocking helpers ---------------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
             raw: bytes | None = None) -> tuple[int, Any]:  # fmt: skip
        """One API call (with the token); (status, parsed JSON body or None)."""
        return http_json(method, f"{self.api_url}{path}", body, token=TOKEN, headers=headers, raw=raw)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = http_json(method, f"{self.sandbox_url}/sandbox/{path}", body)
        assert status < 300, payload
        return payload

    def posts(self) -> int:
        """How many POST /v1/withdraws/coin the sandbox received."""
        return int(self.admin("GET", "stats")["by_endpoint"].get("POST /v1/withdraws/coin", 0))

    def workflow_count(self) -> int:
        """Rows in the store's workflows table, read straight from the SQLite file."""
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM workflows").fetchone()[0])

    def wait_settled(self, workflow_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """Poll the API until the workflow is terminal or needs_review."""
        deadline = time.monotonic() + timeout
        while True:
            status, view = self.call("GET", f"/v1/withdrawals/{workflow_id}")
            assert status == 200, view
            if settled(view) or time.monotonic() > deadline:
                return dict(view)
            time.sleep(0.05)


def _exchange_timings(fast: dict[str, float]) -> dict[str, Any]:
    jitter = fast.get("jitter", 0.0)
    return {"timings": Timings(
        waiting_seconds=fast["waiting_seconds"], waiting_jitter=jitter,
        processing_seconds=fast["processing_seconds"], processing_jitter=jitter,
    )}  # fmt: skip


def http_json(
    method: str,
    url: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """A small blocking JSON client; ``raw`` sends those exact bytes instead of ``body`` as JSON."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"loopback HTTP only, not {url}")
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (checked above: loopback http)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310 (loopback http, checked above)
            payload = response.read()
            return response.status, json.loads(payload) if payload else None
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            return exc.code, json.loads(payload) if payload else None
        except ValueError:
            return exc.code, payload.decode(errors="replace")
