"""engine.service.serve: the port is bound before the store opens; the optional metrics listener."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from engine.config import ApiConfig, Config
from engine.errors import ConfigError
from engine.sandbox import SandboxServer
from engine.service import serve
from tests.acceptance.conftest import free_port
from tests.api.conftest import TOKEN, service_config


def _token_file(tmp_path: Path) -> Path:
    path = tmp_path / "api.token"
    path.write_text(TOKEN)
    path.chmod(0o600)
    return path


def _config(exchange: SandboxServer, tmp_path: Path, **api: object) -> Config:
    base = service_config(exchange.url, tmp_path / "w.sqlite3")
    return dataclasses.replace(base, api=ApiConfig(token_file=str(_token_file(tmp_path)), **api))


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[str]:
    """serve(config) in the background until the block ends; yields the API's URL."""
    stop = asyncio.Event()
    url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, stop=stop, ready=url.set_result))
    try:
        done, _ = await asyncio.wait({task, url}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        assert url in done, task.exception() if task.done() else "serve() did not start within 60 s"
        yield url.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def test_taken_port_fails_before_the_store_is_opened(exchange: SandboxServer, tmp_path: Path) -> None:
    """A taken port is a configuration error (api.port) raised before the engine starts: the store file is
    never even created, so no runner stepped anything."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = _config(exchange, tmp_path, port=taken.getsockname()[1])
        with pytest.raises(ConfigError) as error:
            await serve(config, stop=asyncio.Event())
    assert error.value.key == "api.port"
    assert not (tmp_path / "w.sqlite3").exists()


async def test_taken_metrics_port_fails_before_the_store_is_opened(exchange: SandboxServer, tmp_path: Path) -> None:
    """The same for the metrics listener, naming api.metrics_port; the API's own port is released."""
    api_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = _config(exchange, tmp_path, port=api_port, metrics_port=taken.getsockname()[1])
        with pytest.raises(ConfigError) as error:
            await serve(config, stop=asyncio.Event())
    assert error.value.key == "api.metrics_port"
    assert not (tmp_path / "w.sqlite3").exists()
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", api_port))


async def test_metrics_listener_needs_no_token_and_the_api_still_does(exchange: SandboxServer, tmp_path: Path) -> None:
    """api.metrics_port serves GET /metrics without a token (and nothing else); the API's /metrics keeps
    requiring it; neither shows *_created series."""
    metrics_port = free_port()
    config = _config(exchange, tmp_path, port=free_port(), metrics_port=metrics_port)
    async with running(config) as url, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        scrape = f"http://127.0.0.1:{metrics_port}"
        async with http.get(f"{scrape}/metrics") as answer:
            assert answer.status == 200
            text = await answer.text()
        assert "upbit_withdraw_workflows" in text and "_created" not in text
        for path in ("/v1/withdrawals", "/healthz", "/openapi.json"):
            async with http.get(f"{scrape}{path}") as answer:
                assert answer.status == 404, path
        async with http.get(f"{url}/metrics") as answer:
            assert answer.status == 401
        async with http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
            assert answer.status == 200 and "_created" not in await answer.text()


async def test_no_metrics_listener_by_default(exchange: SandboxServer, tmp_path: Path) -> None:
    """Off unless api.metrics_port is set."""
    assert ApiConfig().metrics_port is None
    config = _config(exchange, tmp_path, port=free_port())
    async with running(config) as url, aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as answer:
        assert answer.status == 200
