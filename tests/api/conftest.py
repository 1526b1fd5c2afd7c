"""Fixtures for the HTTP API tests: a fast sandbox, an engine wired like the service, and a client that
checks every answer against engine/openapi.json."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.api import create_app
from engine.bootstrap import build_engine
from engine.config import AccountConfig, Config, EngineConfig, GatewayConfig
from engine.core import Engine
from engine.demo import demo_seed
from engine.metrics import Metrics
from engine.policy import Policy, WorkflowSettings
from engine.sandbox import SandboxSeed, SandboxServer
from engine.sandbox.model import Timings
from engine.upbit.auth import DEMO_SECRET_KEY
from tests.api.openapi_schema import check_response
from tests.conftest import FAST, SandboxAdmin

TOKEN = "api-test-token-0123456789abcdef"
FAST_TIMINGS = Timings(waiting_seconds=0.05, waiting_jitter=0.0, processing_seconds=0.05, processing_jitter=0.0)
FAST_GATEWAY = GatewayConfig(allowlist_ttl=5.0, wallet_ttl=0.05, chance_ttl=0.05, poll_window=0.01)
BTC_ADDRESS = "bc1qsandbox0demo0wallet0000000000000000000"
DOGE_ADDRESS = "DH5yaieqoZN36fDVciNyRueRGvGLR3mr7L"


def fast_seed() -> SandboxSeed:
    """The demo seed (demo keys; DOGE paused; XRP 13.13 rejected) with withdrawals settling in ~0.1 s."""
    return dataclasses.replace(demo_seed(), timings=FAST_TIMINGS)


def btc(amount: str = "0.01", **extra: Any) -> dict[str, Any]:
    """A valid request body to the sandbox's registered BTC address."""
    return {"currency": "BTC", "net_type": "BTC", "amount": amount, "address": BTC_ADDRESS, **extra}


def service_config(
    url: str, db_path: Path, *, settings: WorkflowSettings = FAST, dry_run: bool = False, policy: Policy | None = None
) -> Config:
    """What ``upbit-withdraw run`` would load for the sandbox at ``url`` (``policy``: instead of none)."""
    return Config(
        engine=EngineConfig(database=f"sqlite:///{db_path}", dry_run=dry_run),
        gateway=FAST_GATEWAY,
        workflow=settings,
        accounts={"default": AccountConfig(name="default", base_url=url, demo=True)},
        policy=dataclasses.replace(policy or Policy(), dry_run=dry_run),
    )


@dataclass
class Answer:
    """One HTTP answer, already checked against the OpenAPI document."""

    status: int
    headers: Any
    raw: bytes
    body: Any


_DEFAULT = object()


class CheckedClient:
    """Calls the API and validates every answer against engine/openapi.json; never sees a secret."""

    def __init__(self, client: TestClient[Any, Any], token: str) -> None:
        self.client = client
        self.token = token
        self.seen: list[tuple[str, str, int]] = []

    async def call(
        self, method: str, path: str, *, body: Any = None, raw: bytes | None = None,
        headers: dict[str, str] | None = None, token: Any = _DEFAULT,
    ) -> Answer:  # fmt: skip
        sent = dict(headers or {})
        token = self.token if token is _DEFAULT else token
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        response = await self.client.request(method, path, data=data, headers=sent)
        content = await response.read()
        template = check_response(method, path, response.status, response.content_type, content)
        self.seen.append((method, template, response.status))
        for secret in (self.token, DEMO_SECRET_KEY):
            assert secret.encode() not in content, f"{method} {path} answered with a secret"
        parsed = json.loads(content) if response.content_type == "application/json" else content.decode()
        return Answer(response.status, response.headers, content, parsed)

    async def wait_state(self, workflow_id: str, states: set[str], timeout: float = 10.0) -> dict[str, Any]:
        """Poll GET until the workflow is in one of ``states``."""
        async with asyncio.timeout(timeout):
            while True:
                answer = await self.call("GET", f"/v1/withdrawals/{workflow_id}")
                if answer.body["state"] in states:
                    return dict(answer.body)
                await asyncio.sleep(0.05)


@dataclass
class Api:
    """An API under test: its checked client, the engine behind it, its metrics, the sandbox admin."""

    client: CheckedClient
    engine: Engine
    metrics: Metrics
    admin: SandboxAdmin


ApiFactory = Callable[..., AbstractAsyncContextManager[Api]]


@pytest.fixture
async def exchange() -> AsyncIterator[SandboxServer]:
    """The sandbox with the fast demo seed, on an ephemeral loopback port."""
    async with SandboxServer(seed=fast_seed()) as server:
        yield server


@pytest.fixture
def api_factory(exchange: SandboxServer, db_path: Path) -> ApiFactory:
    """Build the service's app (engine with runner, metrics, token) over a test server."""

    @asynccontextmanager
    async def build(
        *,
        settings: WorkflowSettings = FAST,
        dry_run: bool = False,
        max_body_bytes: int = 65536,
        policy: Policy | None = None,
    ) -> AsyncIterator[Api]:
        metrics = Metrics()
        config = service_config(exchange.url, db_path, settings=settings, dry_run=dry_run, policy=policy)
        engine = build_engine(config, observers=[metrics.observer], call_observer=metrics.call_observer)
        metrics.bind(engine)
        app = create_app(engine, token=TOKEN, metrics_registry=metrics, max_body_bytes=max_body_bytes)
        async with engine, TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield Api(CheckedClient(client, TOKEN), engine, metrics, SandboxAdmin(exchange.url))

    return build


@pytest.fixture
async def api(api_factory: ApiFactory) -> AsyncIterator[Api]:
    """The API with default test settings."""
    async with api_factory() as built:
        yield built
