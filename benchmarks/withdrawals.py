"""Withdrawals benchmark: the engine against Upbit's published per-withdrawal recipe, side by side.

Usage (see benchmarks/README.md)::

    .venv/bin/python benchmarks/withdrawals.py                       # realistic, N = 1,000, both sides
    .venv/bin/python benchmarks/withdrawals.py --mode overhead -n 10000

The sandbox exchange runs in its OWN process (``run_sandbox``). Each side runs in a child process of
its own too, so that its CPU seconds and peak RSS are its own; the sandbox is reset and configured
again before every side. The result is ONE JSON object on stdout.

Modes:

``realistic``
    20 ms latency on every call (a ``latency`` fault on ``"*"``), WAITING ~2 s, PROCESSING ~5 s, the
    sandbox's 30 req/s limit (429, then 418) on. The engine runs with the product defaults (a 30/s
    :class:`RateLimiter`, the default gateway and workflow settings, SQLite in a temp dir). The baseline
    does what Upbit's recipe does for each withdrawal, as plain asyncio tasks under the same concurrency
    bound and the same kind of limiter (one ``RateLimiter`` at 30/s, our ``UpbitClient``): list the
    allowlist, check the wallet status, POST, then poll ``GET /v1/withdraw`` every ``--poll-interval``
    seconds until the withdrawal is terminal.
``overhead``
    No latency, no rate limit (the sandbox's limit off, the engine's limiter disabled), instant
    progression (timings 0). All N workflows are submitted first, then the runner runs: end-to-end
    withdrawals/s, CPU microseconds per transition, and RSS per in-flight workflow
    ((RSS loaded - RSS of the empty engine) / N). The baseline is skipped unless ``--with-baseline``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import psutil

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.config import AccountConfig, EngineConfig, GatewayConfig
from engine.errors import ExchangeError, ExchangeThrottled
from engine.models import Event, WithdrawalRequest, Workflow
from engine.upbit.auth import Credentials
from engine.upbit.client import UpbitClient, WithdrawBody
from engine.upbit.ratelimit import Priority, RateLimiter

CURRENCY, NET_TYPE = "USDT", "TRX"
ADDRESS = "TJYeasTPa6gpEEfYqGJkbXhBVxBJMEZfUt"  # allowlisted for USDT/TRX in the sandbox's default seed
BALANCE = "100000000"
SCRIPT = Path(__file__).resolve()
_URL_RE = re.compile(r"on (http://\S+)")

# -- pieces shared by both sides ---------------------------------------------------------------------


def make_requests(n: int, *, offset: int = 0, accounts: int = 1) -> list[WithdrawalRequest]:
    """N requests with distinct amounts (1.000001, 1.000002, ...): distinct lanes, like real payouts;
    spread round-robin over the accounts."""
    names = account_names(accounts)
    return [
        WithdrawalRequest(
            currency=CURRENCY,
            net_type=NET_TYPE,
            amount=Decimal(1) + Decimal(offset + i + 1) / Decimal(10**6),
            address=ADDRESS,
            account=names[i % len(names)],
        )
        for i in range(n)
    ]


def sandbox_config(mode: str, args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The sandbox's config and fault rules for a mode."""
    if mode == "overhead":
        config = {
            "timings": {"waiting_seconds": 0.0, "waiting_jitter": 0.0, "processing_seconds": 0.0,
                        "processing_jitter": 0.0},
            "rate_limit": {"enabled": False},
        }  # fmt: skip
        return config, []
    config = {
        "timings": {
            "waiting_seconds": args.waiting,
            "waiting_jitter": args.jitter,
            "processing_seconds": args.processing,
            "processing_jitter": args.jitter,
        },
        "rate_limit": {"enabled": True, "per_second": args.rate},
    }
    faults = [{"endpoint": "*", "kind": "latency", "ms": args.latency_ms}] if args.latency_ms > 0 else []
    return config, faults


def percentile_rate(times: Sequence[float], lo: float = 0.1, hi: float = 0.9) -> float | None:
    """Completions per second between the ``lo`` and ``hi`` fractions of completions (the steady part)."""
    ordered = sorted(times)
    if len(ordered) < 10:
        return None
    a, b = int(len(ordered) * lo), int(len(ordered) * hi) - 1
    span = ordered[b] - ordered[a]
    return (b - a) / span if span > 0 else None


class RssSampler:
    """Peak RSS of this process, sampled by a thread every ``interval`` seconds."""

    def __init__(self, interval: float = 0.05) -> None:
        self._proc = psutil.Process()
        self._interval = interval
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


class BudgetSampler:
    """How the account's budget was used, sampled every 100 ms from the limiter (engine side only)."""

    def __init__(self, limiter: RateLimiter, interval: float = 0.1) -> None:
        self.limiter = limiter
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        waiting = getattr(self.limiter, "waiting", None)
        while True:
            load = getattr(self.limiter, "load", 0.0)
            writes = waiting(Priority.WRITE) if waiting else 0
            reads = waiting(Priority.READ) if waiting else 0
            self.samples.append((load, writes, reads))
            await asyncio.sleep(self.interval)

    def __enter__(self) -> BudgetSampler:
        if self.limiter.enabled:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    def summary(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        n = len(self.samples)
        return {
            "samples": n,
            "mean_load": round(sum(s[0] for s in self.samples) / n, 3),
            "share_full": round(sum(1 for s in self.samples if s[0] >= 1.0) / n, 3),
            "mean_writes_waiting": round(sum(s[1] for s in self.samples) / n, 1),
            "mean_reads_waiting": round(sum(s[2] for s in self.samples) / n, 2),
            "share_no_write_waiting": round(sum(1 for s in self.samples if s[1] == 0) / n, 3),
        }


def cpu_seconds(proc: psutil.Process | None = None) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    times = (proc or psutil.Process()).cpu_times()
    return float(times.user + times.system)


def thread_cpu() -> dict[str, float]:
    """CPU seconds per live thread of this process, by thread name (SQLite's workers, samplers, main)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = Counter()
    for t in psutil.Process().threads():
        name = names.get(t.id, "other")
        name = "sqlite-reader" if "connection_worker" in name else name
        name = "sqlite-writer" if name.startswith("sqlite-writer") else name
        name = "rss-sampler" if "(_run)" in name else name
        out[name] += t.user_time + t.system_time
    return dict(out)


def rss() -> int:
    """Current RSS of this process after a full collection."""
    gc.collect()
    return int(psutil.Process().memory_info().rss)


# -- the engine side -----------------------------------------------------------------------------


@dataclass
class Tracker:
    """A transition observer: counts transitions, records when POSTs were accepted and workflows settled."""

    clock: Callable[[], float] = time.monotonic
    transitions: int = 0
    accepted: dict[str, float] = field(default_factory=dict)
    completions: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)
    target: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    observed: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    """exchange uuid -> (exchange state, wall time the engine recorded it), for the lag figures."""
    observe_states: bool = True

    def __call__(self, before: Workflow, after: Workflow, event: Event) -> None:
        self.transitions += 1
        if self.observe_states and after.exchange_uuid is not None and after.exchange_state != before.exchange_state:
            self.observed.setdefault(after.exchange_uuid, []).append((after.exchange_state, time.time()))
        if before.exchange_uuid is None and after.exchange_uuid is not None:
            self.accepted[after.id] = self.clock()
        if after.state.is_terminal and not before.state.is_terminal:
            now = self.clock()
            self.completions.append(now)
            if after.id in self.accepted:
                self.latencies.append(now - self.accepted[after.id])
            self.states[after.state.value] += 1
            if self.target and len(self.completions) >= self.target:
                self.done.set()

    def reset(self, target: int) -> None:
        self.transitions = 0
        self.accepted = {}
        self.completions = []
        self.latencies = []
        self.states = Counter()
        self.observed = {}
        self.target = target
        self.done = asyncio.Event()


def flow_figures(
    start: float, accepted: Iterable[float], completions: Sequence[float], latencies: Sequence[float]
) -> dict[str, Any]:
    """Steady-state rates (10th to 90th percentile of events) and accept-to-settled latencies."""
    accept_rate = percentile_rate([a - start for a in accepted])
    done_rate = percentile_rate([c - start for c in completions])
    rates = [r for r in (accept_rate, done_rate) if r is not None]
    ordered = sorted(latencies)

    def pct(q: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else None

    return {
        # The pipeline's sustained rate: the slower of accepting (POSTs) and settling, each over the middle
        # 80 % of its events, so neither the fill at the start nor the drain at the end counts.
        "sustained_withdrawals_per_second": round(min(rates), 2) if rates else None,
        "accept_rate_10_90": _round(accept_rate, 2),
        "completion_rate_10_90": _round(done_rate, 2),
        "first_completion_seconds": round(min(completions) - start, 3) if completions else None,
        "last_completion_seconds": round(max(completions) - start, 3) if completions else None,
        "accept_to_settled_seconds": {"p50": pct(0.5), "p95": pct(0.95), "max": pct(1.0)},
    }


def account_names(accounts: int) -> list[str]:
    """The engine's account names: ``default`` alone, or ``acct0`` .. ``acctK-1``."""
    return ["default"] if accounts <= 1 else [f"acct{i}" for i in range(accounts)]


def account_credentials(index: int) -> Credentials:
    """Account ``index``'s key pair in the multi-account seed (:func:`multi_account_seed`)."""
    return Credentials(f"bench-access-key-{index:03d}-0000000000000000", f"bench-secret-key-{index:03d}-" + "s" * 64)


def multi_account_seed(accounts: int) -> str:
    """The default seed's TOML with its one account copied ``accounts`` times, each with keys of its own
    (so each has its own 30/s bucket, ledger and allowlist) and a large USDT balance."""
    from importlib.resources import files

    text = files("engine.sandbox").joinpath("default_seed.toml").read_text()
    head, rest = text.split("[[accounts]]\n", 1)
    block, tail = rest.split("# A withdrawal of exactly", 1)
    copies = []
    for i, name in enumerate(account_names(accounts)):
        creds = account_credentials(i)
        body = block.replace('name = "demo"', f'name = "{name}"\naccess_key = "{creds.access_key}"\n'
                                               f'secret_key = "{creds.secret_key}"', 1)  # fmt: skip
        copies.append("[[accounts]]\n" + body.replace('USDT = "1000000"', f'USDT = "{BALANCE}"', 1))
    return head + "".join(copies) + "# A withdrawal of exactly" + tail


def build_engine(
    url: str,
    db: Path,
    *,
    mode: str,
    rate: int,
    concurrency: int,
    tracker: Tracker,
    accounts: int = 1,
    database: str | None = None,
    workers: int = 1,
) -> Any:
    """An engine wired as ``engine.bootstrap`` wires it, with the product defaults (runner not started).

    ``database``: a ``postgresql://`` URL instead of the SQLite file ``db``; ``workers``: how many runner
    processes share the store and each account's budget (realistic mode: the budget is shared by demand
    through the store, :func:`shared_budget`, as ``run`` wires it)."""
    from engine.bootstrap import build_gateway, open_store
    from engine.clock import SystemClock
    from engine.core import Engine
    from engine.policy import WorkflowSettings
    from engine.store.sqlite import SQLiteStore

    clock = SystemClock()
    gateways = {}
    for i, name in enumerate(account_names(accounts)):
        if accounts <= 1:
            account = AccountConfig(name=name, base_url=url, demo=True, rate_limit=rate)
        else:  # keys from the environment, as a deployment passes them
            creds = account_credentials(i)
            env = f"BENCH_ACCOUNT_{i}"
            os.environ[f"{env}_ACCESS"], os.environ[f"{env}_SECRET"] = creds.access_key, creds.secret_key
            account = AccountConfig(
                name=name, base_url=url, rate_limit=rate, access_key_env=f"{env}_ACCESS", secret_key_env=f"{env}_SECRET"
            )
        limiter = (
            RateLimiter(rate, account_rate=rate, clock=clock)
            if mode == "realistic"
            else RateLimiter(rate, enabled=False, clock=clock)
        )
        gateways[name] = build_gateway(account, GatewayConfig(), clock=clock, limiter=limiter)
    return Engine(
        store=open_store(database) if database else SQLiteStore(db),
        gateways=gateways,
        clock=clock,
        settings=WorkflowSettings(),
        run_runner=False,
        concurrency=concurrency,
        exclusive=workers <= 1,
        observers=[tracker],
    )


def budget_shares(engine: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``--workers K`` on PostgreSQL, realistic mode: a :class:`~engine.upbit.budget.BudgetShare` per account,
    heartbeating into the store, as ``engine.bootstrap.shared_budget`` wires them for ``run`` (each
    account's budget shared by the live workers by demand, never a static split). None otherwise."""
    from engine.upbit.budget import BudgetShare, BudgetStore

    if args.workers <= 1 or args.mode != "realistic" or not isinstance(engine.store, BudgetStore):
        return {}
    timeout = AccountConfig(name="default").timeout  # the accounts' call timeout (the default, as built)
    runner = engine.runner
    return {
        name: BudgetShare(engine.store, name, runner.owner, gateway.client.limiter, budget=args.rate,
                          lease=runner.lease_seconds, timeout=timeout, clock=engine.clock)
        for name, gateway in engine.gateways.items()
    }  # fmt: skip


def shared_budget(engine: Any, args: argparse.Namespace) -> contextlib.AbstractAsyncContextManager[Any]:
    """Heartbeat :func:`budget_shares` for the block (nothing to do without them)."""
    from engine.upbit.budget import shared_budgets

    shares = budget_shares(engine, args)
    return shared_budgets(shares) if shares else contextlib.nullcontext({})


async def submit_all(engine: Any, requests: Sequence[WithdrawalRequest], chunk: int = 1000) -> list[str]:
    """Submit in concurrent chunks (their writes share group commits)."""
    ids: list[str] = []
    for start in range(0, len(requests), chunk):
        part = requests[start : start + chunk]
        ids.extend(wf.id for wf in await asyncio.gather(*(engine.submit(r) for r in part)))
    return ids


async def run_runner_until(engine: Any, tracker: Tracker, timeout: float, *, shared: bool = False) -> bool:
    """Run a fresh runner until the tracker saw every workflow settle (or ``timeout``).

    ``shared``: other processes run workflows too, so wait until the store holds nothing unsettled."""
    from engine.runner import Runner

    old = engine.runner
    engine.runner = Runner(
        engine.ctx, concurrency=old.concurrency, lease_seconds=old.lease_seconds, exclusive=old.exclusive
    )  # an exclusive runner clears every lease on start: with several workers, those of the others
    task = asyncio.create_task(engine.runner.run())
    try:
        await asyncio.wait_for(all_settled(engine.store) if shared else tracker.done.wait(), timeout)
        finished = True
    except TimeoutError:
        finished = False
    engine.runner.stop()
    await task
    return finished


async def all_settled(store: Any, interval: float = 0.1) -> None:
    """Return once no workflow in the store can still move by itself (terminal, or waiting for an
    operator in needs_review: the report's ``store_states`` shows how many): none is scheduled any more.

    One indexed ``MIN(next_run_at)`` per look, so that K workers watching the store for the whole run do
    not add K table scans every interval to the server's CPU per withdrawal."""
    while True:
        if await store.next_due_at(any_lease=True) is None:
            return
        await asyncio.sleep(interval)


async def worker_side(url: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One more runner process on the shared PostgreSQL store, until every workflow is settled."""
    from engine.logging import configure_logging

    with (workdir / f"worker-{os.getpid()}-log.jsonl").open("w") as log_stream:
        configure_logging(level=args.log_level, json=True, stream=log_stream, transitions=args.log_transitions)
        tracker = Tracker()
        engine = build_engine(
            url, workdir / "unused.sqlite3", mode=args.mode, rate=args.rate, concurrency=args.concurrency,
            tracker=tracker, accounts=args.accounts, database=args.database, workers=args.workers,
        )  # fmt: skip
        async with engine, shared_budget(engine, args):
            cpu0 = cpu_seconds()
            finished = await run_runner_until(engine, tracker, args.timeout, shared=True)
            cpu1 = cpu_seconds()
    return {"side": "worker", "finished": finished, "cpu_seconds": round(cpu1 - cpu0, 3),
            "transitions": tracker.transitions}  # fmt: skip


async def start_workers(url: str, args: argparse.Namespace, workdir: Path) -> list[tuple[Any, Path]]:
    """``--workers K``: K - 1 more runner processes (this process is the first)."""
    out = []
    for i in range(1, args.workers):
        wdir = workdir / f"worker-{i}"
        wdir.mkdir(exist_ok=True)
        cmd = [sys.executable, str(SCRIPT), "--side", "worker", "--url", url, "--workdir", str(wdir),
               *_side_args(args)]  # fmt: skip
        out.append((await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL), wdir))
    return out


async def engine_side(url: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run N withdrawals through the engine; the metrics this process can see."""
    from engine.logging import configure_logging

    log_path = workdir / "engine-log.jsonl"
    with log_path.open("w") as log_stream:
        configure_logging(level=args.log_level, json=True, stream=log_stream, transitions=args.log_transitions)
        tracker = Tracker(observe_states=args.mode == "realistic")
        engine = build_engine(
            url, workdir / "engine.sqlite3", mode=args.mode, rate=args.rate, concurrency=args.concurrency,
            tracker=tracker, accounts=args.accounts, database=args.database, workers=args.workers,
        )  # fmt: skip
        result: dict[str, Any] = {"side": "engine", "n": args.n, "concurrency": args.concurrency,
                                  "accounts": args.accounts, "workers": args.workers,
                                  "database": "postgresql" if args.database else "sqlite"}  # fmt: skip
        async with engine, shared_budget(engine, args):
            if args.warmup:
                tracker.reset(args.warmup)
                await submit_all(engine, make_requests(args.warmup, offset=10 * args.n, accounts=args.accounts))
                await run_runner_until(engine, tracker, args.timeout)
                result["sandbox_stats_after_warmup"] = await sandbox_stats(url)
            rss_empty = rss()
            gateways = list(engine.gateways.values())
            gateway = gateways[0]
            calls_before = sum((Counter(g.client.calls) for g in gateways), Counter())
            batches_before, polls_before = sum(g.poll_batches for g in gateways), sum(g.polls for g in gateways)
            done_before = (await engine.store.count_by_state()).get("DONE", 0)
            tracker.reset(args.n)
            requests = make_requests(args.n, accounts=args.accounts)
            cpu0, t0 = cpu_seconds(), time.monotonic()
            await submit_all(engine, requests)
            cpu1, t1 = cpu_seconds(), time.monotonic()
            rss_submitted = rss()
            budget = BudgetSampler(gateway.client.limiter)
            with RssSampler() as sampler, budget:
                cpu2, t2, threads0 = cpu_seconds(), time.monotonic(), thread_cpu()
                workers = await start_workers(url, args, workdir)
                finished = await run_runner_until(engine, tracker, args.timeout, shared=bool(workers))
                cpu3, t3, threads1 = cpu_seconds(), time.monotonic(), thread_cpu()
                worker_results = []
                for proc, wdir in workers:
                    await proc.wait()
                    worker_results.append(json.loads((wdir / "result.json").read_text()))
            store = engine.store
            states = await store.count_by_state()
            calls = sum((Counter(g.client.calls) for g in gateways), Counter())
            calls.subtract(calls_before)
            limiter = gateway.client.limiter.stats
        done = tracker.states.get("DONE", 0)
        if workers:  # the others settled some: count from the store
            done = states.get("DONE", 0) - done_before
        workers_cpu = sum(w["cpu_seconds"] for w in worker_results)
        run_wall = t3 - t2
        result.update(
            finished=finished,
            completed=done,
            terminal_states=dict(tracker.states),
            store_states=states,
            submit_seconds=round(t1 - t0, 3),
            submit_cpu_seconds=round(cpu1 - cpu0, 3),
            wall_seconds=round(run_wall, 3),
            wall_seconds_incl_submit=round(t3 - t0, 3),
            withdrawals_per_second=round(done / run_wall, 2) if run_wall > 0 else None,
            withdrawals_per_second_incl_submit=round(done / (t3 - t0), 2),
            **flow_figures(t2, tracker.accepted.values(), tracker.completions, tracker.latencies),
            cpu_seconds=round(cpu3 - cpu2, 3),
            cpu_seconds_by_thread={
                name: round(spent - threads0.get(name, 0.0), 3) for name, spent in threads1.items()
            },
            cpu_seconds_incl_submit=round(cpu3 - cpu0, 3),
            workers_cpu_seconds=round(workers_cpu, 3),
            cpu_us_per_withdrawal_all_workers=round((cpu3 - cpu2 + workers_cpu) / max(1, done) * 1e6, 1),
            transitions=tracker.transitions,
            transitions_per_withdrawal=round(tracker.transitions / max(1, args.n), 2),
            cpu_us_per_transition=round((cpu3 - cpu2) / max(1, tracker.transitions) * 1e6, 1),
            cpu_us_per_withdrawal=round((cpu3 - cpu2) / max(1, done) * 1e6, 1),
            client_calls=dict(calls),
            poll_batches=sum(g.poll_batches for g in gateways) - batches_before,
            polls=sum(g.polls for g in gateways) - polls_before,
            budget=budget.summary(),
            gateway=_counters(gateway, "chance_fetches", "deferred_submits"),
            runner=_counters(engine.runner, "steps_run", "claims", "claimed"),
            limiter={"granted": limiter.granted, "waited": limiter.waited, "throttles": limiter.throttles,
                     "blocks": limiter.blocks, "phantom": limiter.phantom},
            store=_counters(store, "batches", "writes"),
            rss_empty_bytes=rss_empty,
            rss_submitted_bytes=rss_submitted,
            peak_rss_run_bytes=sampler.peak,
            peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            rss_per_inflight_workflow_bytes=round((sampler.peak - rss_empty) / max(1, args.n), 1),
            rss_per_submitted_workflow_bytes=round((rss_submitted - rss_empty) / max(1, args.n), 1),
            log_lines=sum(1 for _ in log_path.open()),
            observed=tracker.observed,
        )  # fmt: skip
    return result


# -- the baseline side: Upbit's recipe, one task per withdrawal --------------------------------------


async def baseline_withdrawal(
    client: UpbitClient,
    request: WithdrawalRequest,
    *,
    poll_interval: float,
    outcome: Counter[str],
    accepted: list[float] | None = None,
    observed: dict[str, list[tuple[str, float]]] | None = None,
) -> str:
    """List addresses, check the wallet, submit, poll ``GET /v1/withdraw`` every ``poll_interval``."""
    addresses = await client.coin_addresses()
    if not any(
        a.currency == request.currency and a.net_type == request.net_type and a.withdraw_address == request.address
        for a in addresses
    ):
        return "address_not_allowed"
    wallets = await client.wallet_status()
    wallet = next((w for w in wallets if (w.currency, w.net_type) == (request.currency, request.net_type)), None)
    if wallet is None or wallet.wallet_state not in ("working", "withdraw_only"):
        return "wallet_unavailable"
    body = WithdrawBody(
        currency=request.currency, net_type=request.net_type, amount=request.amount, address=request.address
    )
    while True:
        try:
            withdrawal = await client.withdraw_coin(body)
            if accepted is not None:
                accepted.append(time.monotonic())
            _observe(observed, withdrawal.uuid, withdrawal.raw_state)
            break
        except ExchangeThrottled as exc:  # 429/418: not executed, safe to send again after the wait
            outcome["post_throttled"] += 1
            await asyncio.sleep(exc.retry_after)
        except ExchangeError:
            return "submit_failed"
    while not withdrawal.state.is_terminal:
        await asyncio.sleep(poll_interval)
        try:
            withdrawal = await client.get_withdraw(uuid=withdrawal.uuid)
            _observe(observed, withdrawal.uuid, withdrawal.raw_state)
        except ExchangeError:
            outcome["poll_errors"] += 1
    return withdrawal.raw_state


def _observe(observed: dict[str, list[tuple[str, float]]] | None, uuid: str, state: str) -> None:
    """Note the first time a peer saw ``uuid`` in ``state`` (wall clock, comparable to the sandbox's)."""
    if observed is None:
        return
    seen = observed.setdefault(uuid, [])
    if not seen or seen[-1][0] != state:
        seen.append((state, time.time()))


@dataclass
class PeerRun:
    """What one peer side (the recipe, ccxt) measured over its N withdrawals."""

    outcome: Counter[str] = field(default_factory=Counter)
    accepted: list[float] = field(default_factory=list)
    completions: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    observed: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    finished: bool = False
    started: float = 0.0
    wall: float = 0.0
    cpu: float = 0.0
    peak_rss: int = 0

    def figures(self, side: str, args: argparse.Namespace) -> dict[str, Any]:
        """The figures every peer side reports (a side adds its own)."""
        done = self.outcome.get("DONE", 0)
        return {
            "side": side, "n": args.n, "concurrency": args.concurrency, "poll_interval": args.poll_interval,
            "finished": self.finished, "completed": done, "terminal_states": dict(self.outcome),
            "wall_seconds": round(self.wall, 3),
            "withdrawals_per_second": round(done / self.wall, 2) if self.wall > 0 else None,
            **flow_figures(self.started, self.accepted, self.completions, self.latencies),
            "cpu_seconds": round(self.cpu, 3), "cpu_us_per_withdrawal": round(self.cpu / max(1, done) * 1e6, 1),
            "peak_rss_run_bytes": self.peak_rss, "observed": self.observed,
        }  # fmt: skip


class PeerWithdrawal(Protocol):
    """One peer withdrawal (:func:`baseline_withdrawal`, :func:`ccxt_withdrawal`, bound to their client and
    poll interval): counts into ``outcome``, notes its acceptance time in ``accepted`` and the states it saw
    in ``observed``, and returns the state it ended in."""

    def __call__(
        self,
        request: WithdrawalRequest,
        *,
        outcome: Counter[str],
        accepted: list[float],
        observed: dict[str, list[tuple[str, float]]],
    ) -> Awaitable[str]: ...


async def run_peer(
    withdraw: PeerWithdrawal, requests: Sequence[WithdrawalRequest], *, concurrency: int, timeout: float
) -> PeerRun:
    """Each request as a task of its own, at most ``concurrency`` at once, timed (wall, CPU, peak RSS) until
    all ended or ``timeout``; per withdrawal, when it was accepted and when it ended."""
    run = PeerRun()
    gate = asyncio.Semaphore(concurrency)

    async def one(request: WithdrawalRequest) -> None:
        mine: list[float] = []
        async with gate:
            state = await withdraw(request, outcome=run.outcome, accepted=mine, observed=run.observed)
        run.outcome[state] += 1
        now = time.monotonic()
        run.completions.append(now)
        run.accepted.extend(mine)
        run.latencies.extend(now - a for a in mine)

    with RssSampler() as sampler:
        cpu0, run.started = cpu_seconds(), time.monotonic()
        tasks = [asyncio.create_task(one(r)) for r in requests]
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout)
            run.finished = True
        except TimeoutError:
            run.finished = False
        run.cpu, run.wall = cpu_seconds() - cpu0, time.monotonic() - run.started
    run.peak_rss = sampler.peak
    return run


async def baseline_side(url: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The same N withdrawals as plain asyncio tasks, bounded by the same concurrency."""
    limiter = RateLimiter(args.rate) if args.mode == "realistic" else RateLimiter(args.rate, enabled=False)
    client = UpbitClient(Credentials.demo(), base_url=url, limiter=limiter, timeout=10.0)
    withdraw = functools.partial(baseline_withdrawal, client, poll_interval=args.poll_interval)
    requests = make_requests(args.n)
    async with client:
        run = await run_peer(withdraw, requests, concurrency=args.concurrency, timeout=args.timeout)
    return {
        **run.figures("baseline", args),
        "client_calls": dict(client.calls),
        "limiter": {"granted": limiter.stats.granted, "waited": limiter.stats.waited,
                    "throttles": limiter.stats.throttles, "blocks": limiter.stats.blocks},
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }  # fmt: skip


# -- the ccxt side: ccxt's async client as a user writes it ------------------------------------------

_TERMINAL = frozenset({"DONE", "FAILED", "CANCELLED", "CANCELED", "REJECTED"})


def make_ccxt(url: str) -> Any:
    """ccxt's async Upbit client on the sandbox, with ccxt's own rate limiter (``enableRateLimit``).

    Markets and currencies are set up front (only USDT is withdrawn), so ``withdraw()`` needs no
    ``load_markets()`` call against ``GET /v1/market/all``; a user's script pays that once more."""
    import ccxt.async_support as ccxt_async

    creds = Credentials.demo()
    exchange = ccxt_async.upbit({
        "apiKey": creds.access_key, "secret": creds.secret_key, "enableRateLimit": True, "timeout": 10_000,
    })  # fmt: skip
    exchange.urls["api"] = {"public": url, "private": url}
    exchange.set_markets({}, {CURRENCY: {"id": CURRENCY, "code": CURRENCY, "precision": 1e-6}})
    return exchange


async def ccxt_withdrawal(
    exchange: Any,
    request: WithdrawalRequest,
    *,
    poll_interval: float,
    outcome: Counter[str],
    accepted: list[float],
    observed: dict[str, list[tuple[str, float]]],
) -> str:
    """``withdraw()``, then ``fetch_withdrawal()`` every ``poll_interval`` until a terminal state."""
    import ccxt.async_support as ccxt_async

    while True:
        try:
            tx = await exchange.withdraw(
                request.currency, str(request.amount), request.address, {"net_type": request.net_type}
            )
            accepted.append(time.monotonic())
            break
        except ccxt_async.RateLimitExceeded:  # a 429: not executed, safe to send again
            outcome["post_throttled"] += 1
            await asyncio.sleep(1.0)
        except ccxt_async.BaseError:
            return "submit_failed"
    state = str(tx["info"].get("state", "")).upper()
    _observe(observed, tx["id"], state)
    while state not in _TERMINAL:
        await asyncio.sleep(poll_interval)
        try:
            tx = await exchange.fetch_withdrawal(tx["id"])
        except ccxt_async.BaseError:
            outcome["poll_errors"] += 1
            continue
        state = str(tx["info"].get("state", "")).upper()
        _observe(observed, tx["id"], state)
    return state


async def ccxt_side(url: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The same N withdrawals through ccxt, one task each, bounded by the same concurrency."""
    exchange = make_ccxt(url)
    withdraw = functools.partial(ccxt_withdrawal, exchange, poll_interval=args.poll_interval)
    requests = make_requests(args.n)
    try:
        run = await run_peer(withdraw, requests, concurrency=args.concurrency, timeout=args.timeout)
    finally:
        await exchange.close()
    return run.figures("ccxt", args)


async def sandbox_stats(url: str) -> dict[str, Any]:
    """``GET /sandbox/stats`` (from a child, to take the warm-up's calls out of the figures)."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/sandbox/stats") as resp:
        return dict(await resp.json())


def _counters(obj: object, *names: str) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in names if hasattr(obj, name)}


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# -- the sandbox process and its admin routes ----------------------------------------------------------


class SandboxProcess:
    """``run_sandbox`` in a process of its own, on an ephemeral loopback port."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 30.0, seed_path: Path | None = None) -> None:
        seed = repr(str(seed_path)) if seed_path is not None else "None"
        code = f"from engine.sandbox import run_sandbox; run_sandbox(host='127.0.0.1', port=0, seed_path={seed})"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=self._log, text=True,
            cwd=str(Path(__file__).resolve().parent.parent),
        )  # fmt: skip
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the sandbox exited early; see {self.log_path}")
            match = _URL_RE.search(line)
            if match:
                self.url = match.group(1)
                return
        raise RuntimeError("the sandbox did not announce its URL in time")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(psutil.Process(self.pid))

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(AttributeError):
            self._log.close()


class PostgresCpu:
    """A fresh schema for one run, and the CPU its PostgreSQL server processes spent.

    The schema is migrated first, by a connection of its own (setup, not per-withdrawal work). Every
    connection of the run carries ``application_name`` = the schema's name; a sampler reads the CPU of
    those backends from /proc (psutil) every 0.2 s while they live, so the figure covers the whole child
    run (warm-up and submits included) but misses at most the last 0.2 s."""

    def __init__(self, url: str) -> None:
        import secrets
        from urllib.parse import urlencode, urlsplit, urlunsplit

        self.url = url
        self.schema = f"bench_{secrets.token_hex(5)}"
        parts = urlsplit(url)
        query = "&".join(q for q in (parts.query, urlencode({"search_path": self.schema,
                                                              "application_name": self.schema})) if q)  # fmt: skip
        self.dsn = urlunsplit(parts._replace(query=query))
        setup = urlencode({"search_path": self.schema, "application_name": f"{self.schema}-setup"})
        self._setup_dsn = urlunsplit(parts._replace(query="&".join(q for q in (parts.query, setup) if q)))
        self.cpu: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PostgresCpu:
        import asyncpg

        self._conn = await asyncpg.connect(self.url, timeout=10)
        await self._conn.execute(f'CREATE SCHEMA "{self.schema}"')
        from engine.store.postgres import PostgresStore

        async with PostgresStore(self._setup_dsn, pool_min=1, pool_max=1):
            pass  # migrated
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        await self._conn.close()

    async def _sample(self) -> None:
        while True:
            rows = await self._conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1", self.schema)
            for row in rows:
                with contextlib.suppress(psutil.Error):
                    self.cpu[row["pid"]] = cpu_seconds(psutil.Process(row["pid"]))
            await asyncio.sleep(0.2)

    def figures(self, withdrawals: int) -> dict[str, Any]:
        total = sum(self.cpu.values())
        return {"backends": len(self.cpu), "server_cpu_seconds": round(total, 3),
                "server_cpu_us_per_withdrawal": round(total / withdrawals * 1e6, 1)}  # fmt: skip


class Admin:
    """The sandbox's ``/sandbox/`` admin routes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Admin:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, path: str, payload: Any = None) -> Any:
        assert self._session is not None
        async with self._session.request(method, f"{self.url}/sandbox/{path}", json=payload) as resp:
            body = await resp.json()
            if resp.status >= 300:
                raise RuntimeError(f"{method} /sandbox/{path}: {resp.status} {body}")
            return body

    async def prepare(self, config: dict[str, Any], faults: Iterable[dict[str, Any]], accounts: int = 1) -> None:
        """Back to the seed, then this run's settings, faults and a large balance."""
        await self.call("POST", "reset")
        await self.call("POST", "config", config)
        faults = list(faults)
        if faults:
            await self.call("POST", "faults", faults)
        if accounts <= 1:
            await self.call("POST", "balances", {"currency": CURRENCY, "balance": BALANCE})
        for i in range(accounts if accounts > 1 else 0):
            key = account_credentials(i).access_key
            await self.call("POST", "balances", {"currency": CURRENCY, "balance": BALANCE, "access_key": key})

    async def stats(self) -> dict[str, Any]:
        return dict(await self.call("GET", "stats"))


# -- orchestration -------------------------------------------------------------------------------------


_PEER_SIDES = {"recipe": "baseline", "ccxt": "ccxt"}


def _side_args(args: argparse.Namespace) -> list[str]:
    keys = ("mode", "n", "concurrency", "rate", "poll_interval", "timeout", "warmup", "log_level", "log_transitions",
            "accounts", "workers")  # fmt: skip
    out: list[str] = []
    for key in keys:
        out += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.database:
        out += ["--database", args.database]
    return out


async def run_side(
    side: str, sandbox: SandboxProcess, admin: Admin, args: argparse.Namespace, workdir: Path, rep: int = 0
) -> dict[str, Any]:
    """Reset and configure the sandbox, run one side in a child process, add the sandbox's view."""
    config, faults = sandbox_config(args.mode, args)
    await admin.prepare(config, faults, args.accounts)
    side_dir = workdir / f"{side}-{rep}"  # a fresh database per run (the reset sandbox reuses its uuids)
    side_dir.mkdir(exist_ok=True)
    sandbox_cpu0, system0 = sandbox.cpu_seconds(), psutil.cpu_times()
    async with contextlib.AsyncExitStack() as stack:
        server: PostgresCpu | None = None
        side_args = _side_args(args)
        if args.database and side == "engine":  # a fresh schema for this run; its server processes watched
            server = await stack.enter_async_context(PostgresCpu(args.database))
            side_args[side_args.index("--database") + 1] = server.dsn
        result = await _run_child(side, sandbox, args, side_dir, side_args)
    if server is not None:
        result["postgres"] = server.figures(max(1, result["completed"] + args.warmup))
    return await _add_sandbox_view(result, sandbox, admin, args, sandbox_cpu0, system0)


async def _run_child(
    side: str, sandbox: SandboxProcess, args: argparse.Namespace, side_dir: Path, side_args: list[str]
) -> dict[str, Any]:
    cmd = [sys.executable, str(SCRIPT), "--side", side, "--url", sandbox.url,
           "--workdir", str(side_dir), *side_args]  # fmt: skip
    if args.py_spy is not None and side == "engine":  # sample the engine side (all threads, native too)
        spy = Path(sys.executable).with_name("py-spy")
        cmd = [str(spy), "record", "--format", "raw", "--rate", "250", "--threads", "--output",
               str(args.py_spy), "--", *cmd]  # fmt: skip
    started = time.monotonic()
    child = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL)
    await child.wait()
    elapsed = time.monotonic() - started
    if child.returncode != 0:
        raise RuntimeError(f"{side} side failed with exit code {child.returncode}")
    result: dict[str, Any] = json.loads((side_dir / "result.json").read_text())
    result["child_elapsed_seconds"] = round(elapsed, 2)
    return result


async def _add_sandbox_view(
    result: dict[str, Any],
    sandbox: SandboxProcess,
    admin: Admin,
    args: argparse.Namespace,
    sandbox_cpu0: float,
    system0: Any,
) -> dict[str, Any]:
    observed = result.pop("observed", None)
    if observed is not None and args.mode == "realistic":
        result["lag_seconds"] = lag_figures(observed, await admin.call("GET", "withdrawals"))
    sandbox_cpu = sandbox.cpu_seconds() - sandbox_cpu0
    system1 = psutil.cpu_times()
    stats = await admin.stats()
    completed = max(1, result["completed"])
    warm = result.pop("sandbox_stats_after_warmup", None)
    by_endpoint = Counter(stats["by_endpoint"])
    total = int(stats["requests_total"])
    if warm is not None:  # the warm-up's calls are not the measured run's
        by_endpoint.subtract(warm["by_endpoint"])
        total -= int(warm["requests_total"])
        for key in ("status_429", "status_418"):
            stats[key] -= warm[key]
    by_endpoint = Counter({k: v for k, v in sorted(by_endpoint.items()) if v})
    busy = (sum(system1) - system1.idle - getattr(system1, "iowait", 0.0)) - (
        sum(system0) - system0.idle - getattr(system0, "iowait", 0.0)
    )
    result.update(
        api_calls_total=total,
        api_calls_per_withdrawal=round(total / completed, 3),
        api_calls_by_endpoint=dict(by_endpoint),
        api_calls_per_withdrawal_by_endpoint={k: round(v / completed, 3) for k, v in by_endpoint.items()},
        status_429=stats["status_429"],
        status_418=stats["status_418"],
        exchange_withdrawals_by_state={k: v for k, v in stats["withdrawals_by_state"].items() if v},
        sandbox_cpu_seconds=round(sandbox_cpu, 3),
        sandbox_rss_bytes=sandbox.rss(),
        machine_busy_cpu_seconds=round(busy, 2),
        loadavg_after=[round(x, 2) for x in os.getloadavg()],
    )
    result["others_cpu_seconds_estimate"] = round(
        busy - sandbox_cpu - result.get("cpu_seconds_incl_submit", result["cpu_seconds"]), 2
    )
    return result


def lag_figures(observed: dict[str, list[list[Any]]], exchange_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How late a side recorded each exchange state after the exchange reached it (wall clock, seconds).

    ``all``: every state the side recorded (WAITING is recorded from the POST's answer); ``polled``: the
    states it could only learn by asking again (PROCESSING and the terminal ones)."""
    reached = {
        row["uuid"]: {state: datetime.fromisoformat(at).timestamp() for state, at in row.get("state_changes", [])}
        for row in exchange_rows
    }
    every: list[float] = []
    polled: list[float] = []
    missing = 0
    for uuid, seen in observed.items():
        times = reached.get(uuid, {})
        for state, at in seen:
            if state not in times:
                missing += 1
                continue
            lag = max(0.0, float(at) - times[state])
            every.append(lag)
            if state != "WAITING":
                polled.append(lag)
    ends = [max(times.values()) for uuid in observed if (times := reached.get(uuid))]
    starts = [min(times.values()) for uuid in observed if (times := reached.get(uuid))]
    span = round(max(ends) - min(starts), 3) if ends else None
    # exchange_span: first POST accepted to last withdrawal finished, on the exchange: no client beats it
    return {"all": distribution(every), "polled": distribution(polled), "unmatched": missing, "exchange_span": span}


def distribution(values: Sequence[float]) -> dict[str, Any]:
    """count, p10/p50/p90/p99, max and mean of ``values``."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"count": len(ordered), "p10": pct(0.1), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
            "max": round(ordered[-1], 3), "mean": round(statistics.fmean(ordered), 3)}  # fmt: skip


_RATIO_KEYS = (
    ("wall_seconds", "wall_seconds"),
    ("api_calls_per_withdrawal", "api_calls_per_withdrawal"),
    ("withdrawals_per_second", "withdrawals_per_second"),
    ("sustained_withdrawals_per_second", "sustained_withdrawals_per_second"),
    ("cpu_seconds", "cpu_seconds"),
    ("peak_rss_run_bytes", "peak_rss_run_bytes"),
    ("sandbox_cpu_seconds", "sandbox_cpu_seconds"),
)


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first run's shape with every top-level number replaced by the median over the runs."""
    if len(runs) == 1:
        return runs[0]
    merged = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
            merged[key] = statistics.median(values)
    merged["runs"] = runs
    return merged


def engine_wall(engine: dict[str, Any]) -> float:
    """The engine's wall time as a user sees it: from the first submit to the last settled."""
    return float(engine.get("wall_seconds_incl_submit") or engine["wall_seconds"])


def ratios(engine: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    """engine / baseline for the comparable figures (the engine's wall time includes its submits)."""
    out: dict[str, float | None] = {}
    if "wall_seconds_incl_submit" in engine:
        engine = {**engine, "wall_seconds": engine_wall(engine)}
    for name, key in _RATIO_KEYS:
        a, b = engine.get(key), baseline.get(key)
        out[name] = round(a / b, 3) if isinstance(a, int | float) and isinstance(b, int | float) and b else None
    return out


def targets(
    mode: str, engine: dict[str, Any], args: argparse.Namespace, peers: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The issue's targets (#15), checked against this run's figures."""
    if mode == "realistic":
        ceiling = float(args.rate)
        sustained = engine.get("sustained_withdrawals_per_second") or 0.0
        out: dict[str, Any] = {
            "api_calls_per_withdrawal<=1.06": {"value": engine["api_calls_per_withdrawal"],
                                               "met": engine["api_calls_per_withdrawal"] <= 1.06},
            "sustained>=0.9*ceiling": {"value": sustained, "ceiling": ceiling, "met": sustained >= 0.9 * ceiling},
            "zero_418": {"value": engine["status_418"], "met": engine["status_418"] == 0},
        }  # fmt: skip
        accounts = int(engine.get("accounts") or 1)
        if accounts > 1:
            posts = engine.get("accept_rate_10_90") or 0.0
            ceiling = accounts * float(args.rate)
            out["post_rate>=0.95*accounts*rate"] = {"value": posts, "ceiling": ceiling, "met": posts >= 0.95 * ceiling}
        lag = engine.get("lag_seconds", {}).get("all", {}).get("p50")
        if lag is not None:
            out["lag_p50<=1s"] = {"value": lag, "met": lag <= 1.0}
        walls = {name: peer.get("wall_seconds") for name, peer in (peers or {}).items() if peer.get("wall_seconds")}
        if walls:
            faster = min(walls, key=lambda name: walls[name])
            ratio = engine_wall(engine) / walls[faster]
            out["wall<=0.9*faster_peer"] = {"value": round(ratio, 3), "peer": faster, "met": ratio <= 0.9}
        return out
    per_wf = engine["rss_per_inflight_workflow_bytes"]
    cpu = engine["cpu_us_per_withdrawal"]
    return {
        "withdrawals_per_second>=2000": {"value": engine["withdrawals_per_second"],
                                         "met": engine["withdrawals_per_second"] >= 2000},
        "cpu_us_per_withdrawal<=500": {"value": cpu, "met": cpu <= 500},
        "rss_per_inflight_workflow<=2KB": {"value_bytes": per_wf, "n": engine["n"], "met": per_wf <= 2 * 1024},
    }  # fmt: skip


def machine_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": psutil.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_bytes": psutil.virtual_memory().total,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="upbit-bench-") as tmp:
        workdir = Path(tmp)
        sandbox = SandboxProcess(workdir / "sandbox.log")
        seed_path = None
        if args.accounts > 1:
            seed_path = workdir / "seed.toml"
            seed_path.write_text(multi_account_seed(args.accounts))
        sandbox.start(seed_path=seed_path)
        peers = [_PEER_SIDES[p] for p in args.peers.split(",") if p] if args.mode == "realistic" else []
        if args.with_baseline and "baseline" not in peers:
            peers.append("baseline")
        sides = ["engine"] + ([] if args.skip_baseline or args.accounts > 1 or args.database else peers)
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        info = machine_info()
        try:
            async with Admin(sandbox.url) as admin:
                for rep in range(args.repeat):
                    for side in sides:
                        print(f"[bench] {args.mode}: {side} side, N={args.n} ...", file=sys.stderr, flush=True)
                        result = await run_side(side, sandbox, admin, args, workdir, rep)
                        print(
                            f"[bench] {side}: {result['completed']} done in {result['wall_seconds']} s, "
                            f"{result['api_calls_per_withdrawal']} calls/withdrawal",
                            file=sys.stderr, flush=True,
                        )  # fmt: skip
                        runs[side].append(result)
        finally:
            sandbox.stop()
        config, faults = sandbox_config(args.mode, args)
        report: dict[str, Any] = {
            "benchmark": "withdrawals",
            "mode": args.mode,
            "n": args.n,
            "repeat": args.repeat,
            "settings": {
                "concurrency": args.concurrency,
                "rate_limit_per_second": args.rate if args.mode == "realistic" else None,
                "engine_defaults": {"engine": _asdict(EngineConfig()), "gateway": _asdict(GatewayConfig())},
                "baseline_poll_interval": args.poll_interval,
                "sandbox_config": config,
                "sandbox_faults": faults,
                "currency": f"{CURRENCY}/{NET_TYPE}",
                "warmup": args.warmup,
                "log_level": args.log_level,
                "log_transitions": args.log_transitions,
            },
            "machine": {**info, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        }
        for side, side_runs in runs.items():
            report[side] = median_of(side_runs)
        for peer in sides[1:]:
            report[f"ratios_engine_over_{peer}"] = ratios(report["engine"], report[peer])
        report["targets"] = targets(args.mode, report["engine"], args, {p: report[p] for p in sides[1:]})
        return report


def _asdict(obj: Any) -> dict[str, Any]:
    """A config section's settings (the sections are pydantic models), JSON-ready."""
    return dict(obj.model_dump(mode="json"))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--mode", choices=("realistic", "overhead"), default="realistic")
    p.add_argument("-n", "--n", type=int, default=None, help="withdrawals per side (realistic 1000, overhead 10000)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=EngineConfig().concurrency,
        help="the engine's runner concurrency and the baseline's task bound (default: the engine's)",
    )
    p.add_argument("--rate", type=int, default=30, help="requests per second of the account (sandbox and limiter)")
    p.add_argument("--latency-ms", type=float, default=20.0, help="injected latency per call (realistic)")
    p.add_argument("--waiting", type=float, default=2.0, help="seconds in WAITING (realistic)")
    p.add_argument("--processing", type=float, default=5.0, help="seconds in PROCESSING (realistic)")
    p.add_argument("--jitter", type=float, default=0.5, help="uniform extra seconds on each step (realistic)")
    p.add_argument("--poll-interval", type=float, default=1.0, help="the baseline's fixed poll interval")
    p.add_argument("--repeat", type=int, default=1, help="run each side this many times; report medians")
    p.add_argument("--warmup", type=int, default=None, help="withdrawals run before measuring (overhead: 50)")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up a side after this many seconds")
    p.add_argument("--log-level", default="INFO", help="engine log level (JSON lines to a file in the temp dir)")
    p.add_argument(
        "--log-transitions", choices=("info", "debug"), default="info",
        help="level of the workflow.transitioned lines (engine.log_transitions; events are kept either way)",
    )  # fmt: skip
    p.add_argument("--with-baseline", action="store_true", help="overhead mode: run the baseline too")
    p.add_argument("--skip-baseline", action="store_true", help="run the engine side only")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    p.add_argument("--py-spy", type=Path, default=None, help="record the engine side with py-spy (collapsed stacks)")
    p.add_argument(
        "--peers",
        default="recipe,ccxt",
        help="realistic mode: the peers run beside the engine, of recipe and ccxt (the `bench` extra)",
    )
    # internal: one side in a child process
    p.add_argument("--accounts", type=int, default=1, help="accounts in the sandbox and the engine (engine only)")
    p.add_argument("--database", default=None, help="postgresql://... : a fresh schema per run instead of SQLite")
    p.add_argument("--workers", type=int, default=1, help="runner processes on the --database (PostgreSQL)")
    p.add_argument("--side", choices=("engine", "baseline", "ccxt", "worker"), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.n is None:
        args.n = 1000 if args.mode == "realistic" else 10_000
    if args.warmup is None:
        args.warmup = 50 if args.mode == "overhead" else 0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.side is not None:  # a child: run one side against the given sandbox, print its JSON
        side: Callable[[str, argparse.Namespace, Path], Awaitable[dict[str, Any]]]
        side = {"engine": engine_side, "baseline": baseline_side, "ccxt": ccxt_side, "worker": worker_side}[args.side]
        result = asyncio.run(side(args.url, args, args.workdir))
        (args.workdir / "result.json").write_text(json.dumps(result))
        return 0
    report = asyncio.run(orchestrate(args))
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
