"""``upbit-withdraw run``: the runner and the HTTP API in one process, stopped cleanly by a signal.

Start order: check the configuration (the API token, every account's keys) before anything listens or
runs; open the engine (the store; the runner resumes every stored workflow from where it stands); then
serve HTTP. Stop order on SIGTERM/SIGINT: stop accepting HTTP, let the runner drain (steps in flight
finish, a POST in flight gets its answer recorded), close the store, exit 0. A second start on the
same store resumes; nothing in memory matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import structlog

from engine.api import create_app, start_site
from engine.bootstrap import build_engine
from engine.config import Config
from engine.core import Engine
from engine.errors import ConfigError
from engine.logging import register_secret
from engine.metrics import Metrics

__all__ = ["redact_url", "serve"]

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
    metrics = Metrics()
    engine = build_engine(config, observers=[metrics.observer], call_observer=metrics.call_observer)
    metrics.bind(engine)
    app = create_app(engine, token=token, metrics_registry=metrics, max_body_bytes=config.api.max_body_bytes)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, sig, stop)
    try:
        async with engine:
            try:
                site, url = await start_site(app, host=config.api.host, port=config.api.port)
            except OSError as exc:
                where = f"{config.api.host}:{config.api.port}"
                raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}", key="api.port") from None
            log.info(
                "service.started", url=url, database=redact_url(config.engine.database),
                accounts=sorted(config.accounts), dry_run=config.policy.dry_run, config=config.source,
            )  # fmt: skip
            if ready is not None:
                ready(url)
            try:
                await _until_stop_or_runner_death(engine, stop)
            finally:
                log.info("service.stopping")
                await site.cleanup()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("service.stopped")


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
