"""One account's budget shared through PostgreSQL by the workers that are alive (engine.upbit.budget).

Workers here are BudgetShare + RateLimiter pairs in this process, each with a store (a connection pool)
of its own, as separate processes would have; their calls are simulated (a call arrives between its
grant and its completion), so every arrival across all workers is known. A checker reads the table all
along and asserts its invariant at every step: the live rows book at most the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.bootstrap import build_engine, shared_budget
from engine.config import Config, load_config
from engine.errors import ExchangeError
from engine.store.postgres import PostgresStore
from engine.upbit.auth import Credentials
from engine.upbit.budget import BudgetShare, booked
from engine.upbit.client import UpbitClient
from engine.upbit.ratelimit import Priority, RateLimiter

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BUDGET = 30
ACCOUNT = "default"
INTERVAL = 0.2  # heartbeats
TIMEOUT = 1.0  # the simulated calls' timeout
LEASE = 4.0  # > window + timeout + margin + two heartbeats (3.4 s)
PATIENCE = 60.0  # bound on waiting for any condition (a loaded 2-core machine can be slow)


@dataclass
class Worker:
    """A worker: its store, limiter and heartbeat, and load tasks when it has load."""

    name: str
    store: PostgresStore
    limiter: RateLimiter
    share: BudgetShare
    heartbeat: asyncio.Task[None] | None = None
    load: list[asyncio.Task[None]] = field(default_factory=list)

    def kill(self) -> None:
        """Die abruptly: no goodbye, the row stays until its lease expires."""
        for task in [self.heartbeat, *self.load]:
            if task is not None:
                task.cancel()


async def _call(limiter: RateLimiter, arrivals: list[float]) -> None:
    """Forever: take a slot, arrive at the 'exchange' a little later, complete, release."""
    while True:
        await limiter.acquire(Priority.WRITE)
        try:
            await asyncio.sleep(0.003)
            arrivals.append(time.monotonic())
            await asyncio.sleep(0.003)
        finally:
            limiter.release()


async def _http_call(client: UpbitClient) -> None:
    """Forever: a real call to the sandbox through the worker's client (and so its limiter)."""
    while True:
        with contextlib.suppress(ExchangeError):  # a timeout on a loaded machine: the slot still counted
            await client.accounts()


async def _until(condition: Callable[[], bool], what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < PATIENCE, f"not within {PATIENCE} s: {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def _max_in_any_second(times: list[float]) -> int:
    """Most arrivals in any half-open one-second interval (every start, not only aligned ones)."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class Scenario:
    """Workers on one database, a checker reading the table all along, and their load (simulated calls,
    or real ones to the sandbox at ``url``)."""

    def __init__(self, dsn: str, url: str | None) -> None:
        self.dsn, self.url = dsn, url
        self.workers: dict[str, Worker] = {}
        self.clients: list[UpbitClient] = []
        self.arrivals: list[float] = []
        self.totals: list[int] = []
        self.broken: list[str] = []
        self.checker_store = PostgresStore(dsn, pool_max=1)
        self.checker: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Scenario:
        await self.checker_store.open()
        self.checker = asyncio.create_task(self._check())
        return self

    async def _check(self) -> None:
        while True:
            before = {name: w.limiter.rate for name, w in self.workers.items()}
            now, rows = await self.checker_store.budget_shares(ACCOUNT)
            total = sum(booked(r, now) for r in rows)
            self.totals.append(total)
            if total > BUDGET:
                self.broken.append(f"{total} booked at {now}: {rows}")
            for worker in self.workers.values():  # a live worker never grants beyond what its row books
                mine = [r for r in rows if r.owner == worker.name]
                if worker.heartbeat is not None and not worker.heartbeat.done() and mine:
                    rate = min(before.get(worker.name, 0), worker.limiter.rate)  # around the read
                    if rate > booked(mine[0], now):
                        self.broken.append(f"{worker.name} grants {rate} > booked {mine[0]}")
            await asyncio.sleep(0.05)

    async def start(self, name: str) -> Worker:
        store = PostgresStore(self.dsn, pool_max=2)
        await store.open()
        limiter = RateLimiter(BUDGET, account_rate=BUDGET)
        share = BudgetShare(
            store, ACCOUNT, name, limiter, budget=BUDGET, lease=LEASE, timeout=TIMEOUT, interval=INTERVAL
        )
        worker = self.workers[name] = Worker(name, store, limiter, share)
        worker.heartbeat = asyncio.create_task(share.run())
        return worker

    def load(self, worker: Worker, callers: int = 40) -> None:
        if self.url is None:
            worker.load = [asyncio.create_task(_call(worker.limiter, self.arrivals)) for _ in range(callers)]
            return
        client = UpbitClient(Credentials.demo(), base_url=self.url, limiter=worker.limiter, timeout=TIMEOUT)
        self.clients.append(client)
        worker.load = [asyncio.create_task(_http_call(client)) for _ in range(callers)]

    async def __aexit__(self, *exc: object) -> None:
        tasks = [t for w in self.workers.values() for t in [w.heartbeat, *w.load] if t is not None]
        for task in [self.checker, *tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for worker in self.workers.values():
            await worker.store.close()
        await self.checker_store.close()
        for client in self.clients:
            await client.aclose()

    async def run(self) -> float:
        """Load at one, kill it, add one; returns seconds from the kill until its share was taken over."""
        a, b, c = [await self.start(n) for n in ("a", "b", "c")]
        await _until(lambda: len(self.totals) > 3 and all(w.share.beats > 0 for w in (a, b, c)), "first beats")
        # 1. All the load at a: its share reaches >= 0.9 of the budget (all of it: b and c are idle).
        self.load(a)
        await _until(lambda: a.limiter.rate >= 0.9 * BUDGET, "a's share reaches 0.9 x budget")
        assert (b.limiter.rate, c.limiter.rate) == (0, 0)
        await asyncio.sleep(2.0)  # a while at that share, for the arrivals check
        # 2. a dies holding it, and b gets the load: b waits for a's row to expire, then takes it over.
        a.kill()
        killed = time.monotonic()
        self.load(b)
        await _until(lambda: b.limiter.rate >= 0.9 * BUDGET, "b takes over a's share")
        took_over = time.monotonic() - killed
        assert took_over >= LEASE - 1.0, "a's share was handed out while its row still lived"
        # 3. d joins, loaded, mid-run: it gets a share, b gives up half, and nothing ever overbooks.
        d = await self.start("d")
        self.load(d)
        await _until(lambda: d.limiter.rate >= 1, "d gets a share")
        await _until(lambda: min(b.limiter.rate, d.limiter.rate) >= 10, "b and d share the budget")
        await asyncio.sleep(2.0)
        return took_over

    def assert_never_overbooked(self) -> None:
        assert not self.broken, self.broken[:3]
        assert max(self.totals) <= BUDGET


class TestSharedBudget:
    async def test_load_at_one_kill_one_add_one(self, postgres_dsn: str) -> None:
        """Simulated calls: the test knows every arrival and checks every one-second interval."""
        async with Scenario(postgres_dsn, None) as scenario:
            took_over = await scenario.run()
        scenario.assert_never_overbooked()
        assert _max_in_any_second(scenario.arrivals) <= BUDGET, "an exchange second saw more than the budget"
        figures = {"takeover_seconds": round(took_over, 2), "arrivals": len(scenario.arrivals)}
        print("SHARED-BUDGET", {**figures, "checks": len(scenario.totals)})

    async def test_over_http_the_exchange_never_throttles(self, postgres_dsn: str, sandbox: Any) -> None:
        """Real calls to the sandbox, which enforces 30/s itself: it never answers 429 or 418."""
        async with Scenario(postgres_dsn, sandbox.url) as scenario:
            await scenario.run()
        scenario.assert_never_overbooked()
        stats = await sandbox.admin.stats()
        assert (stats["status_429"], stats["status_418"]) == (0, 0), stats
        assert stats["requests_total"] >= 2 * BUDGET, stats


def _config(tmp_path: Path, database: str, *, workers: int) -> Config:
    config_file = tmp_path / "engine.toml"
    config_file.write_text(
        f'[engine]\ndatabase = "{database}"\nworkers = {workers}\nlease_seconds = 30\n\n'
        '[accounts.default]\nbase_url = "http://127.0.0.1:9"\ndemo = true\n'
    )
    return load_config(config_file, environ={})


class TestWiring:
    async def test_the_service_wiring_books_and_gives_back_a_share(self, postgres_dsn: str, tmp_path: Path) -> None:
        """bootstrap.shared_budget: with workers > 1 on PostgreSQL the limiter grants nothing until the first
        heartbeat, a row appears for the runner's owner, and leaving (after the runner stopped) deletes it."""
        config = _config(tmp_path, postgres_dsn, workers=2)
        engine = build_engine(config, run_runner=False)
        limiter = engine.gateways["default"].client.limiter
        budget = shared_budget(engine, config)
        assert limiter.rate == 0
        async with engine, budget as shares:
            assert set(shares) == {"default"}
            await _until(lambda: shares["default"].beats > 0, "the first heartbeat")
            assert isinstance(engine.store, PostgresStore)
            _, rows = await engine.store.budget_shares("default")
            assert [row.owner for row in rows] == [engine.runner.owner]
        async with PostgresStore(postgres_dsn) as store:
            _, rows = await store.budget_shares("default")
        assert rows == []

    async def test_sqlite_keeps_the_plain_limiter(self, tmp_path: Path) -> None:
        config = _config(tmp_path, f"sqlite:///{tmp_path / 'x.sqlite3'}", workers=1)
        engine = build_engine(config, run_runner=False)
        async with shared_budget(engine, config) as shares:
            assert shares == {}
        assert engine.gateways["default"].client.limiter.rate == 30
