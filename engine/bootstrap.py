"""Wiring: turn a :class:`~engine.config.Config` into a store, gateways and an :class:`~engine.Engine`.

Kept apart from the config (pure data) and from the CLI/API (presentation), so the demo, the service,
the benchmarks and the tests all build the engine the same way.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping

from engine.clock import Clock, SystemClock
from engine.config import AccountConfig, Config, GatewayConfig
from engine.context import TransitionObserver
from engine.core import Engine
from engine.errors import ConfigError
from engine.kinds import KindRegistry
from engine.logging import register_secret
from engine.store.base import Store
from engine.upbit.auth import Algorithm
from engine.upbit.budget import BudgetShare, BudgetStore, shared_budgets
from engine.upbit.client import CallObserver, UpbitClient
from engine.upbit.gateway import Gateway
from engine.upbit.ratelimit import RateLimiter
from workflows.batch.kind import KIND as BATCH
from workflows.withdrawal import KIND as WITHDRAWAL

__all__ = ["build_engine", "build_gateway", "open_store", "shared_budget", "standard_kinds"]


@functools.cache
def standard_kinds() -> KindRegistry:
    """The workflow kinds this engine runs: registered here, and nowhere else (the engine, the stores,
    the API and the CLI know a workflow only through its kind)."""
    return KindRegistry([WITHDRAWAL, BATCH])


def open_store(url: str, *, exclusive: bool = False, kinds: KindRegistry | None = None) -> Store:
    """``sqlite:///path`` or ``postgresql://...`` -> an unopened store.

    ``exclusive``: this process will run the store's one runner (SQLite): opening takes the file's owner
    lock and fails with ``StoreInUse`` if another process holds it. PostgreSQL ignores it (several
    runners share a database by design)."""
    if url.startswith("sqlite:///"):
        from engine.store.sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"), exclusive=exclusive, kinds=kinds or standard_kinds())
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from engine.store.postgres import PostgresStore  # type: ignore[import-not-found, unused-ignore]
        except ImportError as exc:  # pragma: no cover - until the PostgreSQL store exists
            raise ConfigError("the PostgreSQL store is not available", key="engine.database") from exc
        store: Store = PostgresStore(url, kinds=kinds or standard_kinds())
        return store
    raise ConfigError("must start with sqlite:/// or postgresql://", key="engine.database")


def build_gateway(
    account: AccountConfig,
    gateway: GatewayConfig,
    *,
    clock: Clock,
    observer: CallObserver | None = None,
    limiter: RateLimiter | None = None,
    workers: int = 1,
) -> Gateway:
    """One account's client behind a gateway. With ``workers`` processes sharing the account, this one
    takes an equal static share of the budget (never more than the account's rate in total), until
    :func:`shared_budget` replaces it with a share that follows demand."""
    credentials = account.credentials()
    register_secret(credentials.secret_key)
    register_secret(credentials.access_key)
    client = UpbitClient(
        credentials,
        region=None if account.base_url else account.region,
        base_url=account.base_url,
        limiter=limiter
        or RateLimiter(max(1, account.rate_limit // workers), account_rate=account.rate_limit, clock=clock),
        timeout=account.timeout,
        algorithm=Algorithm(account.algorithm),
        clock=clock,
        observer=observer,
    )
    return Gateway(
        client,
        clock=clock,
        allowlist_ttl=gateway.allowlist_ttl,
        wallet_ttl=gateway.wallet_ttl,
        chance_ttl=gateway.chance_ttl,
        poll_window=gateway.poll_window,
    )


def build_engine(
    config: Config,
    *,
    run_runner: bool = True,
    clock: Clock | None = None,
    observers: list[TransitionObserver] | None = None,
    call_observer: CallObserver | None = None,
    exclusive: bool | None = None,
) -> Engine:
    """An engine for ``config`` (enter it with ``async with``)."""
    clock = clock or SystemClock()
    is_sqlite = config.engine.database.startswith("sqlite:///")
    exclusive = is_sqlite if exclusive is None else exclusive
    kinds = standard_kinds()
    store = open_store(config.engine.database, exclusive=exclusive and run_runner, kinds=kinds)
    gateways = {
        name: build_gateway(account, config.gateway, clock=clock, observer=call_observer, workers=config.engine.workers)
        for name, account in config.accounts.items()
    }
    engine = Engine(
        store=store,
        gateways=gateways,
        clock=clock,
        settings=config.workflow,
        policy=config.policy,
        run_runner=run_runner,
        concurrency=config.engine.concurrency,
        lease_seconds=config.engine.lease_seconds,
        exclusive=exclusive,
        observers=observers,
        kinds=kinds,
    )
    engine.batch_max_total = config.batches.max_total
    engine.batch_max_body_bytes = config.batches.max_body_bytes
    return engine


def shared_budget(
    engine: Engine, config: Config, *, clock: Clock | None = None
) -> contextlib.AbstractAsyncContextManager[Mapping[str, BudgetShare]]:
    """Each account's budget shared by the live workers (``engine.workers > 1`` on PostgreSQL), replacing
    the static split of :func:`build_gateway`; a no-op otherwise. Call it before entering the engine: the
    limiters grant nothing from here until their first heartbeat booked a share. Enter it after the
    engine (its exit stops the runner, then gives the shares back, while the store is still open)."""
    store = engine.store
    if config.engine.workers <= 1 or not isinstance(store, BudgetStore):
        return contextlib.nullcontext({})

    def share(name: str, account: AccountConfig) -> BudgetShare:
        limiter = engine.gateways[name].client.limiter
        return BudgetShare(
            store, name, engine.runner.owner, limiter, budget=account.rate_limit,
            lease=config.engine.lease_seconds, timeout=account.timeout, clock=clock or engine.clock,
        )  # fmt: skip

    shares = {name: share(name, account) for name, account in config.accounts.items()}
    return shared_budgets(shares, before_leaving=engine.stop)
