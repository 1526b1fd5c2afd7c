"""``upbit-withdraw run``: the runner and the HTTP API in one process, stopped cleanly by a signal.

Start order: check the configuration (the API token, every account's keys) before anything listens or
runs; open the engine (the store; the runner resumes every stored workflow from where it stands); then
serve HTTP. Stop order on SIGTERM/SIGINT: stop accepting HTTP, let the runner drain (steps in flight
finish, a POST in flight gets its answer recorded), close the store, exit 0. A second start on the
same store resumes; nothing in memory matters.

A database that is down at start is waited for (``engine.store_wait`` seconds, capped jittered backoff,
a SIGTERM ends the wait cleanly); once running, a store outage never ends the service: the runner
backs off and resumes by itself, ``/healthz`` stays up and ``/readyz`` says 503 meanwhile. A SQLite
store already owned by another runner process is refused at once (:class:`~engine.errors.StoreInUse`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit, urlunsplit

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from engine.api import create_app, start_site
from engine.bootstrap import build_engine
from engine.config import Config
from engine.core import Engine
from engine.errors import ConfigError, StoreUnavailable
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
        async with _entered(engine, wait=config.engine.store_wait, stop=stop):
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
    except _StoppedWaiting:
        log.info("service.stopping", reason="stopped while waiting for the store")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("service.stopped")


class _StoppedWaiting(Exception):
    """Asked to stop while waiting for the store at start: nothing was started, exit cleanly."""


@contextlib.asynccontextmanager
async def _entered(engine: Engine, *, wait: float, stop: asyncio.Event) -> AsyncIterator[Engine]:
    """``async with engine``, except that a store unavailable at start (database down or restarting) is
    retried with capped, jittered backoff for up to ``wait`` seconds before its error ends the service;
    a stop request during the wait ends it cleanly (:class:`_StoppedWaiting`). Any other error (a wrong
    password, a store owned by another runner) ends it at once."""

    async def sleep(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    def waiting(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "service.store_unavailable", error=str(error), retry_in=round(state.upcoming_sleep, 2),
            waited=round(state.seconds_since_start or 0.0, 1), store_wait=wait,
        )  # fmt: skip

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(StoreUnavailable),
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=1.0),
        stop=stop_after_delay(max(wait, 0.0)),
        sleep=sleep,
        before_sleep=waiting,
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                if stop.is_set():
                    raise _StoppedWaiting
                await engine.__aenter__()
    except StoreUnavailable:
        if stop.is_set():
            raise _StoppedWaiting from None
        raise
    try:
        yield engine
    finally:
        await engine.__aexit__(None, None, None)


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
