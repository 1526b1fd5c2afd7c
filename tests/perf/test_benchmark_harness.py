"""The pieces of benchmarks/withdrawals.py work correctly (no timing is asserted here: figures come from
running the benchmark itself, see benchmarks/README.md)."""

from __future__ import annotations

import argparse
import asyncio
import time
import tomllib
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from benchmarks import withdrawals as bench
from engine.upbit.auth import Credentials
from engine.upbit.client import UpbitClient
from engine.upbit.ratelimit import RateLimiter
from tests.conftest import FAST_EXCHANGE, SandboxAdmin


def test_requests_have_distinct_amounts_and_lanes() -> None:
    requests = bench.make_requests(500)
    assert len({r.amount for r in requests}) == 500
    assert len({r.lane for r in requests}) == 500
    assert all(r.amount > Decimal(1) and r.currency == bench.CURRENCY for r in requests)
    assert not {r.amount for r in requests} & {r.amount for r in bench.make_requests(50, offset=5000)}


def test_steady_rate_ignores_fill_and_drain() -> None:
    steady = [i / 10 for i in range(100)]  # 10 per second
    assert bench.percentile_rate(steady) == pytest.approx(10.0, rel=0.02)
    with_tail = [*steady, 60.0, 61.0]  # a slow drain at the end hardly moves the middle 80 %
    assert bench.percentile_rate(with_tail) == pytest.approx(10.0, rel=0.1)
    assert bench.percentile_rate([1.0, 2.0]) is None


def test_flow_figures_take_the_slower_of_accepting_and_settling() -> None:
    accepted = [i / 20 for i in range(200)]  # 20/s
    settled = [10 + i / 10 for i in range(200)]  # 10/s
    figures = bench.flow_figures(0.0, accepted, settled, [10.0] * 200)
    assert figures["accept_rate_10_90"] == pytest.approx(20.0, rel=0.02)
    assert figures["completion_rate_10_90"] == pytest.approx(10.0, rel=0.02)
    assert figures["sustained_withdrawals_per_second"] == figures["completion_rate_10_90"]
    assert figures["accept_to_settled_seconds"]["p50"] == 10.0


def test_sandbox_settings_per_mode() -> None:
    args = bench.parse_args([])
    assert (args.mode, args.n, args.warmup) == ("realistic", 1000, 0)
    config, faults = bench.sandbox_config("realistic", args)
    assert faults == [{"endpoint": "*", "kind": "latency", "ms": 20.0}]
    assert config["rate_limit"] == {"enabled": True, "per_second": 30}
    assert config["timings"]["waiting_seconds"] == 2.0 and config["timings"]["processing_seconds"] == 5.0
    overhead = bench.parse_args(["--mode", "overhead"])
    assert (overhead.n, overhead.warmup) == (10_000, 50)
    config, faults = bench.sandbox_config("overhead", overhead)
    assert faults == [] and config["rate_limit"] == {"enabled": False}
    assert set(config["timings"].values()) == {0.0}


def test_report_helpers() -> None:
    runs = [{"wall_seconds": w, "completed": 10, "name": "x"} for w in (3.0, 1.0, 2.0)]
    merged = bench.median_of(runs)
    assert merged["wall_seconds"] == 2.0 and merged["name"] == "x" and len(merged["runs"]) == 3
    ratios = bench.ratios({"wall_seconds": 10.0, "cpu_seconds": 1.0}, {"wall_seconds": 40.0, "cpu_seconds": 0.0})
    assert ratios["wall_seconds"] == 0.25 and ratios["cpu_seconds"] is None
    engine = {"api_calls_per_withdrawal": 1.05, "sustained_withdrawals_per_second": 27.5, "status_418": 0}
    met = bench.targets("realistic", engine, argparse.Namespace(rate=30))
    assert all(t["met"] for t in met.values())


async def test_baseline_does_the_recipe_once_per_withdrawal(sandbox: Any, admin: SandboxAdmin) -> None:
    """Allowlist, wallet status, one POST, then polls of GET /v1/withdraw until the end state."""
    requests = bench.make_requests(3)
    outcome: Counter[str] = Counter()
    accepted: list[float] = []
    async with UpbitClient(Credentials.demo(), base_url=sandbox.url, limiter=RateLimiter(30)) as client:
        for request in requests:
            state = await bench.baseline_withdrawal(
                client, request, poll_interval=0.05, outcome=outcome, accepted=accepted
            )
            assert state == "DONE"
    stats = await admin.stats()
    calls = stats["by_endpoint"]
    assert calls["POST /v1/withdraws/coin"] == 3 == len(accepted)
    assert calls["GET /v1/withdraws/coin_addresses"] == 3 and calls["GET /v1/status/wallet"] == 3
    assert calls["GET /v1/withdraw"] >= 3
    assert sorted((await admin.creations()).values()) == [1, 1, 1]


async def test_engine_side_pieces_run_withdrawals_to_done(sandbox: Any, admin: SandboxAdmin, tmp_path: Path) -> None:
    """The engine as the benchmark builds it (product defaults) settles every workflow it was given."""
    await admin.configure(**FAST_EXCHANGE)
    await admin.call("POST", "balances", {"currency": bench.CURRENCY, "balance": bench.BALANCE})
    tracker = bench.Tracker()
    engine = bench.build_engine(
        sandbox.url, tmp_path / "bench.sqlite3", mode="realistic", rate=30, concurrency=20, tracker=tracker
    )
    async with engine:
        tracker.reset(4)
        ids = await bench.submit_all(engine, bench.make_requests(4), chunk=3)
        assert await bench.run_runner_until(engine, tracker, timeout=30.0)
        states = await engine.store.count_by_state()
    assert len(set(ids)) == 4
    assert tracker.states == Counter({"DONE": 4}) and states == {"DONE": 4}
    assert len(tracker.accepted) == 4 and len(tracker.latencies) == 4
    assert tracker.transitions >= 4 * 5  # start, verify, submit, accepted, ..., done
    assert len(tracker.observed) == 4  # the exchange states the engine recorded, for the lag figures
    assert all(seen[0][0] == "WAITING" and seen[-1][0] == "DONE" for seen in tracker.observed.values())
    assert sorted((await admin.creations()).values()) == [1, 1, 1, 1]


def test_thread_cpu_and_rss_samplers() -> None:
    threads = bench.thread_cpu()
    assert "MainThread" in threads and threads["MainThread"] >= 0
    with bench.RssSampler(interval=0.01) as sampler:
        block = bytearray(8 * 1024 * 1024)
    assert sampler.peak >= len(block)


async def test_ccxt_peer_withdraws_then_fetches_until_the_end(sandbox: Any, admin: SandboxAdmin) -> None:
    """ccxt's async client as a user writes it: one POST each, then GET /v1/withdraw until terminal."""
    pytest.importorskip("ccxt")
    await admin.call("POST", "balances", {"currency": bench.CURRENCY, "balance": bench.BALANCE})
    exchange = bench.make_ccxt(sandbox.url)
    outcome: Counter[str] = Counter()
    accepted: list[float] = []
    observed: dict[str, list[tuple[str, float]]] = {}
    try:
        for request in bench.make_requests(2):
            state = await bench.ccxt_withdrawal(
                exchange, request, poll_interval=0.05, outcome=outcome, accepted=accepted, observed=observed
            )
            assert state == "DONE"
    finally:
        await exchange.close()
    calls = (await admin.stats())["by_endpoint"]
    assert calls["POST /v1/withdraws/coin"] == 2 == len(accepted) and calls["GET /v1/withdraw"] >= 2
    assert sorted((await admin.creations()).values()) == [1, 1]
    rows = await admin.call("GET", "withdrawals")
    lag = bench.lag_figures({u: [list(s) for s in seen] for u, seen in observed.items()}, rows)
    assert lag["unmatched"] == 0 and lag["all"]["count"] >= 4  # WAITING and DONE at least, for each
    assert 0 <= lag["all"]["p50"] <= lag["all"]["max"] < 30


def test_lag_is_measured_from_when_the_exchange_reached_each_state() -> None:
    rows = [{"uuid": "u1", "state_changes": [["WAITING", "2026-01-01T00:00:00+00:00"],
                                             ["PROCESSING", "2026-01-01T00:00:02+00:00"],
                                             ["DONE", "2026-01-01T00:00:07+00:00"]]}]  # fmt: skip
    t0 = 1767225600.0  # 2026-01-01T00:00:00Z
    observed = {"u1": [["WAITING", t0 + 0.1], ["DONE", t0 + 7.5]], "u2": [["WAITING", t0]]}
    lag = bench.lag_figures(observed, rows)
    assert lag["all"]["count"] == 2 and lag["all"]["max"] == pytest.approx(0.5)
    assert lag["polled"]["count"] == 1 and lag["polled"]["p50"] == pytest.approx(0.5)
    assert lag["unmatched"] == 1 and lag["exchange_span"] == pytest.approx(7.0)


def test_multi_account_seed_gives_each_account_its_keys_and_balance() -> None:
    from engine.sandbox.seed import seed_from_mapping

    seed = seed_from_mapping(tomllib.loads(bench.multi_account_seed(3)))
    assert [a.name for a in seed.accounts] == bench.account_names(3) == ["acct0", "acct1", "acct2"]
    assert [a.keys[0].access_key for a in seed.accounts] == [bench.account_credentials(i).access_key for i in range(3)]
    assert all(a.balances["USDT"] == Decimal(bench.BALANCE) and a.addresses for a in seed.accounts)
    requests = bench.make_requests(6, accounts=3)
    assert [r.account for r in requests] == ["acct0", "acct1", "acct2"] * 2
    assert {r.account for r in bench.make_requests(4)} == {"default"}


async def test_run_peer_bounds_concurrency_and_collects_each_withdrawal() -> None:
    """The peers' shared driver: at most ``concurrency`` withdrawals at once, each one's end state counted,
    its acceptance noted, and the figures every peer side reports."""
    active, peak = 0, 0

    async def withdraw(request: Any, *, outcome: Counter[str], accepted: list[float], observed: Any) -> str:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0)
        accepted.append(time.monotonic())
        observed[str(request.amount)] = [("DONE", 0.0)]
        active -= 1
        return "DONE" if len(observed) % 4 else "FAILED"

    run = await bench.run_peer(withdraw, bench.make_requests(20), concurrency=3, timeout=60.0)
    assert run.finished and 1 <= peak <= 3
    assert run.outcome == Counter({"DONE": 15, "FAILED": 5})
    assert len(run.accepted) == len(run.completions) == len(run.latencies) == 20 and len(run.observed) == 20
    figures = run.figures("peer", argparse.Namespace(n=20, concurrency=3, poll_interval=1.0))
    assert figures["side"] == "peer" and figures["completed"] == 15 and figures["finished"] is True
    assert figures["terminal_states"] == {"DONE": 15, "FAILED": 5} and figures["observed"] is run.observed


async def test_run_peer_stops_at_its_timeout() -> None:
    """Withdrawals that never end: the run gives up at ``timeout`` and says it did not finish."""
    never = asyncio.Event()

    async def withdraw(request: Any, *, outcome: Counter[str], accepted: list[float], observed: Any) -> str:
        await never.wait()
        return "DONE"

    run = await bench.run_peer(withdraw, bench.make_requests(5), concurrency=5, timeout=0.05)
    assert not run.finished and sum(run.outcome.values()) == 0
