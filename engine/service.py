"""``upbit-withdraw run``: the runner and the HTTP API in one process, stopped cleanly by a signal.

Start order: check the configuration (the API token if set, every account's keys); bind the API's port (and
the optional metrics port), so that a taken port fails before a single workflow is stepped; open the
engine (the store; the runner resumes every stored workflow from where it stands); then serve HTTP on
the sockets bound first (connections that arrive meanwhile wait in the backlog); then store the
``[[webhooks]]`` subscriptions and start the webhook delivery worker (:mod:`engine.webhook_delivery`),
its own task beside the runner, stopped before the store closes.

Stop order on SIGTERM/SIGINT: stop accepting HTTP, let the runner drain (steps in flight finish, a POST
in flight gets its answer recorded), close the store, exit 0. A second start on the same store resumes;
nothing in memory matters.

A database that is down at start is waited for (``engine.store_wait`` seconds, capped jittered backoff,
a SIGTERM ends the wait cleanly); once running, a store outage never ends the service: the runner
backs off and resumes by itself, ``/healthz`` stays up and ``/readyz`` says 503 meanwhile. A SQLite
store already owned by another runner process is refused at once (:class:`~engine.errors.StoreInUse`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit, urlunsplit

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from engine.api import create_app, create_metrics_app
from engine.api_webhooks import WEBHOOK_SETTINGS, WEBHOOK_WAKE
from engine.audit import HeadsExporter
from engine.bootstrap import build_engine, shared_budget
from engine.config import ApiConfig, Config
from engine.console import mount_console
from engine.core import Engine
from engine.errors import ConfigError, StoreUnavailable
from engine.http_server import ServerLimits, bind_listeners, start_site
from engine.logging import register_secret
from engine.metrics import Metrics
from engine.models import Event, Workflow
from engine.store.operators import operator_store
from engine.store.webhooks import Subscription, webhook_store
from engine.webhook_delivery import DeliverySettings, WebhookDispatcher, WebhookMetrics

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
    token = _shared_token(config.api)
    if token is not None:
        register_secret(token)
    hook_secrets = {hook.name: hook.secrets() for hook in config.webhooks}  # fail before binding anything
    for secrets in hook_secrets.values():
        for secret in secrets:
            register_secret(secret)
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
            config, token=token, listeners=listeners, metrics_sockets=metrics_listeners, stop=stop, ready=ready,
            hook_secrets=hook_secrets,
        )  # fmt: skip
    log.info("service.stopped")


def _shared_token(api: ApiConfig) -> str | None:
    """The deprecated shared ``[api]`` token, or None when none is set (then the operators' own tokens are
    the only way in: :func:`_check_operators` refuses to start without any). A token file that is set but
    unusable is still a configuration error."""
    try:
        return api.token()
    except ConfigError as exc:
        if exc.key == "api.token":
            return None
        raise


async def _check_operators(engine: Engine, token: str | None, api: ApiConfig) -> None:
    """Without a shared token, the store must hold at least one operator (or nobody could call the API)."""
    if token is None and not await operator_store(engine.store).list():
        raise ConfigError(
            f"set {api.token_env} (at least 16 characters) or token_file, or add an operator first "
            "(upbit-withdraw operator add NAME --role admin)",
            key="api.token",
        )


async def _serve_on(
    config: Config,
    *,
    token: str | None,
    listeners: list[socket.socket],
    metrics_sockets: list[socket.socket],
    stop: asyncio.Event,
    ready: Callable[[str], None] | None,
    hook_secrets: dict[str, tuple[str, ...]] | None = None,
) -> None:
    metrics = Metrics()
    wake_hooks: list[Callable[[], None]] = []

    def on_transition(before: Workflow, after: Workflow, event: Event) -> None:
        for wake in wake_hooks:
            wake()

    engine = build_engine(config, observers=[metrics.observer, on_transition], call_observer=metrics.call_observer)
    budget = shared_budget(engine, config)
    metrics.bind(engine)
    metrics.bind_webhooks(webhook_store(engine.store))
    app = create_app(
        engine, token=token, metrics_registry=metrics, max_body_bytes=config.api.max_body_bytes,
        events_keepalive=config.api.events_keepalive,
    )  # fmt: skip
    dispatcher = WebhookDispatcher(
        engine.store, settings=DeliverySettings.from_config(config.webhook_delivery),
        metrics=WebhookMetrics(metrics.registry),
    )  # fmt: skip
    wake_hooks.append(dispatcher.wake)
    app[WEBHOOK_SETTINGS] = dispatcher.settings
    app[WEBHOOK_WAKE] = dispatcher.wake
    mount_console(app, engine, config.console, keepalive=config.api.events_keepalive)  # /console/ (engine/console)
    limits = server_limits(config.api)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, sig, stop)
    try:
        entered = _entered(engine, wait=config.engine.store_wait, stop=stop)
        async with entered, budget, contextlib.AsyncExitStack() as sites:
            await _check_operators(engine, token, config.api)
            site, url = await start_site(app, limits=limits, sockets=listeners)
            sites.push_async_callback(site.cleanup)
            metrics_url = None
            if metrics_sockets:
                metrics_site, metrics_url = await start_site(
                    create_metrics_app(metrics), limits=limits, sockets=metrics_sockets
                )
                sites.push_async_callback(metrics_site.cleanup)
            _export_audit_heads(engine, stop, sites)
            log.info(
                "service.started", url=url, metrics_url=metrics_url, database=redact_url(config.engine.database),
                accounts=sorted(config.accounts), dry_run=config.policy.dry_run, config=config.source,
            )  # fmt: skip
            await _start_webhooks(dispatcher, config, hook_secrets or {}, sites)
            if ready is not None:
                ready(url)
            try:
                await _until_stop_or_runner_death(engine, stop)
            finally:
                log.info("service.stopping")
    except _StoppedWaiting:
        log.info("service.stopping", reason="stopped while waiting for the store")
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


def _export_audit_heads(engine: Engine, stop: asyncio.Event, sites: contextlib.AsyncExitStack) -> None:
    """Start the periodic audit-heads export when ``$UPBIT_WITHDRAW_AUDIT_HEADS`` names a file; on the way
    out it writes the final heads (after the runner drained) and stops."""
    exporter = HeadsExporter.from_env(engine.store)
    if exporter is None:
        return
    task = asyncio.create_task(exporter.run(stop))

    async def finish() -> None:
        stop.set()
        await task

    sites.push_async_callback(finish)


async def _start_webhooks(
    dispatcher: WebhookDispatcher, config: Config, secrets: dict[str, tuple[str, ...]], sites: contextlib.AsyncExitStack
) -> None:
    """Store the configured subscriptions, then run the delivery worker as its own task until the service
    stops (it is stopped before the store closes; unfinished attempts are retried by whoever runs next)."""
    now = time.time()
    subs = [
        Subscription(id=f"cfg_{hook.name}", url=hook.url, events=tuple(hook.events), secrets=secrets[hook.name],
                     source="config", created_at=now)
        for hook in config.webhooks
    ]  # fmt: skip
    await webhook_store(dispatcher.store).sync_config_subscriptions(subs, at=now)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop), name="webhook-delivery")
    task.add_done_callback(_webhooks_ended)

    async def finish() -> None:
        stop.set()
        with contextlib.suppress(Exception):  # already logged by _webhooks_ended
            await task

    sites.push_async_callback(finish)


def _webhooks_ended(task: asyncio.Task[None]) -> None:
    """Say at once if the delivery worker died (it never holds up withdrawals, so the service goes on;
    deliveries wait in the store for the next start)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("service.webhooks_died", error=repr(task.exception()))


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
