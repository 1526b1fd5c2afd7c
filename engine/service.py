"""``upbit-withdraw run``: the runner and the HTTP API in one process, stopped cleanly by a signal.

Start order: check the configuration (the API token, every account's keys); bind the API's port (and
the optional metrics port), so that a taken port fails before a single workflow is stepped; open the
engine (the store; the runner resumes every stored workflow from where it stands); then serve HTTP on
the sockets bound first (connections that arrive meanwhile wait in the backlog).

Stop order on SIGTERM/SIGINT: stop accepting HTTP, let the runner drain (steps in flight finish, a POST
in flight gets its answer recorded), close the store, exit 0. A second start on the same store resumes;
nothing in memory matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import structlog

from engine.api import create_app, create_metrics_app
from engine.bootstrap import build_engine
from engine.config import ApiConfig, Config
from engine.core import Engine
from engine.errors import ConfigError
from engine.http_server import ServerLimits, bind_listeners, start_site
from engine.logging import register_secret
from engine.metrics import Metrics

__all__ = ["redact_url", "serve", "server_limits"]

log = structlog.get_logger("engine.service")


def redact_url(url: str) -> str:
    """A database URL without its password (``postgresql://u:***@host/db``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def serve(
    config: Config, *, stop: asyncio.Event | None = None, ready: Callable[[str], None] | None = None
) -> None:
    """Run until ``stop`` is set or SIGTERM/SIGINT arrives; then drain and return."""
    token = config.api.token()
    register_secret(token)
    stop = stop or asyncio.Event()
    with contextlib.ExitStack() as sockets:
        listeners = _bind(config.api.host, config.api.port, "api.host", "api.port")
        sockets.callback(_close, listeners)
        metrics_listeners: list[socket.socket] = []
        if config.api.metrics_port is not None:
            metrics_listeners = _bind(
                config.api.metrics_host, config.api.metrics_port, "api.metrics_host", "api.metrics_port"
            )
            sockets.callback(_close, metrics_listeners)
        await _serve_on(
            config, token=token, listeners=listeners, metrics_sockets=metrics_listeners, stop=stop, ready=ready
        )
    log.info("service.stopped")


async def _serve_on(
    config: Config,
    *,
    token: str,
    listeners: list[socket.socket],
    metrics_sockets: list[socket.socket],
    stop: asyncio.Event,
    ready: Callable[[str], None] | None,
) -> None:
    metrics = Metrics()
    engine = build_engine(config, observers=[metrics.observer], call_observer=metrics.call_observer)
    metrics.bind(engine)
    app = create_app(engine, token=token, metrics_registry=metrics, max_body_bytes=config.api.max_body_bytes)
    limits = server_limits(config.api)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, sig, stop)
    try:
        async with engine, contextlib.AsyncExitStack() as sites:
            site, url = await start_site(app, limits=limits, sockets=listeners)
            sites.push_async_callback(site.cleanup)
            metrics_url = None
            if metrics_sockets:
                metrics_site, metrics_url = await start_site(
                    create_metrics_app(metrics), limits=limits, sockets=metrics_sockets
                )
                sites.push_async_callback(metrics_site.cleanup)
            log.info(
                "service.started", url=url, metrics_url=metrics_url, database=redact_url(config.engine.database),
                accounts=sorted(config.accounts), dry_run=config.policy.dry_run, config=config.source,
            )  # fmt: skip
            if ready is not None:
                ready(url)
            try:
                await _until_stop_or_runner_death(engine, stop)
            finally:
                log.info("service.stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def server_limits(api: ApiConfig) -> ServerLimits:
    """The HTTP listeners' limits from ``[api]``."""
    return ServerLimits(
        header_timeout=api.header_timeout,
        keepalive_timeout=api.keepalive_timeout,
        max_connections_per_client=api.max_connections_per_client,
    )


def _bind(host: str, port: int, host_key: str, port_key: str) -> list[socket.socket]:
    """Bind host:port now; a taken port or an unknown host is a configuration error naming the key."""
    try:
        return bind_listeners(host, port)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve {host!r}: {exc.strerror or exc}", key=host_key) from None
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", key=port_key) from None


def _close(listeners: list[socket.socket]) -> None:
    for sock in listeners:
        sock.close()


async def _until_stop_or_runner_death(engine: Engine, stop: asyncio.Event) -> None:
    """Serve until asked to stop; a dead runner stops the service too (never serve with no one working)."""
    while not stop.is_set():
        if engine.runner_failed is not None:
            log.error("service.runner_died", error=repr(engine.runner_failed))
            raise RuntimeError("the runner stopped unexpectedly") from engine.runner_failed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    log.info("service.signal", signal=sig.name)
    stop.set()
