"""Shared fixtures: a sandbox exchange on 127.0.0.1, a real SQLite file, and an engine wired to both."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from engine import Engine, Policy, WorkflowSettings
from engine.store.sqlite import SQLiteStore
from engine.upbit.auth import Credentials
from engine.upbit.client import UpbitClient
from engine.upbit.gateway import Gateway
from engine.upbit.ratelimit import RateLimiter
from workflows.testing.timings import FAST, FAST_EXCHANGE  # the harnesses' timings; tests import them from here


@pytest.fixture(autouse=True)
def _plain_logs() -> None:
    """Tests read logs as event dicts; keep structlog's defaults between tests."""
    structlog.reset_defaults()


@pytest.fixture(autouse=True, scope="module")
def _plain_logs_per_module() -> None:
    """The same before a module's own module-scoped fixtures (a live stack logs as it starts): they are set
    up before the per-test reset, and a module before may have left logging pointed at a stream that is
    closed by now (the CLI configures logging on the stderr its test runner gave it)."""
    structlog.reset_defaults()


class SandboxAdmin:
    """A tiny client of the sandbox's /sandbox/ admin routes."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def call(self, method: str, path: str, payload: Any = None) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, f"{self.url}/sandbox/{path}", json=payload, timeout=aiohttp.ClientTimeout(total=10)
            ) as resp,
        ):
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def stats(self) -> dict[str, Any]:
        return dict(await self.call("GET", "stats"))

    async def posts(self) -> int:
        stats = await self.stats()
        return sum(v for k, v in stats["by_endpoint"].items() if k == "POST /v1/withdraws/coin")

    async def creations(self) -> dict[str, int]:
        return dict((await self.stats())["creations_by_body"])

    async def withdrawals(self) -> list[dict[str, Any]]:
        return list(await self.call("GET", "withdrawals"))

    async def fault(self, **rule: Any) -> None:
        await self.call("POST", "faults", rule)

    async def clear_faults(self) -> None:
        await self.call("DELETE", "faults")

    async def wallet(self, currency: str, net_type: str, **state: Any) -> None:
        await self.call("POST", "wallets", {"currency": currency, "net_type": net_type, **state})

    async def configure(self, **config: Any) -> None:
        await self.call("POST", "config", config)


@pytest.fixture
async def sandbox() -> AsyncIterator[Any]:
    """The sandbox exchange on an ephemeral loopback port, with fast timings."""
    from engine.sandbox import SandboxServer

    async with SandboxServer() as server:
        admin = SandboxAdmin(server.url)
        await admin.configure(**FAST_EXCHANGE)
        server.admin = admin
        yield server


@pytest.fixture
def admin(sandbox: Any) -> SandboxAdmin:
    """Admin client of the running sandbox."""
    return sandbox.admin  # type: ignore[no-any-return]


EngineFactory = Callable[..., AbstractAsyncContextManager[Engine]]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A real SQLite file for this test."""
    return tmp_path / "workflows.sqlite3"


def make_gateway(url: str, *, timeout: float = 2.0, rate: int = 30, **gw: Any) -> Gateway:
    """A gateway for the sandbox's demo account."""
    client = UpbitClient(Credentials.demo(), base_url=url, timeout=timeout, limiter=RateLimiter(rate))
    return Gateway(client, **{"allowlist_ttl": 5.0, "wallet_ttl": 0.05, "chance_ttl": 0.05, "poll_window": 0.01, **gw})


@pytest.fixture
def engine_factory(sandbox: Any, db_path: Path) -> EngineFactory:
    """Build an engine on the test's SQLite file and the sandbox (runner in the background)."""

    @asynccontextmanager
    async def build(
        *, settings: WorkflowSettings = FAST, policy: Policy | None = None, timeout: float = 2.0, **kw: Any
    ) -> AsyncIterator[Engine]:
        gateway = make_gateway(sandbox.url, timeout=timeout)
        engine = Engine(
            store=SQLiteStore(db_path, group_window=0.001), gateways={"default": gateway},
            settings=settings, policy=policy, **kw,
        )  # fmt: skip
        async with engine:
            yield engine

    return build


def postgres_required() -> bool:
    """CI sets UPBIT_REQUIRE_POSTGRES=1: then a missing PostgreSQL fails instead of skipping."""
    return os.environ.get("UPBIT_REQUIRE_POSTGRES") == "1"
