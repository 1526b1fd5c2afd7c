"""benchmarks/withdrawals.py with several runner processes (``--workers``): each worker's runner stays
non-exclusive (an exclusive one clears the others' leases on start), and in realistic mode each account's
budget is shared through the store by demand (``BudgetShare``, as ``upbit-withdraw run`` wires it), never
split statically. No timing is asserted here."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from benchmarks import withdrawals as bench
from engine.store.postgres import PostgresStore
from engine.upbit.budget import BudgetShare


def _args(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"mode": "realistic", "workers": 3, "rate": 30, **kw})


def test_workers_share_each_account_budget_through_the_store(tmp_path: Path) -> None:
    tracker = bench.Tracker()
    engine = bench.build_engine(
        "http://127.0.0.1:9", tmp_path / "unused.sqlite3", mode="realistic", rate=30, concurrency=20,
        tracker=tracker, accounts=2, database="postgresql://postgres@127.0.0.1:1/none", workers=3,
    )  # fmt: skip
    assert isinstance(engine.store, PostgresStore)  # built, never opened: nothing is reached here
    assert not isinstance(bench.shared_budget(engine, _args()), contextlib.nullcontext)
    shares = bench.budget_shares(engine, _args())
    assert sorted(shares) == ["acct0", "acct1"]
    for name, share in shares.items():
        assert isinstance(share, BudgetShare)
        assert (share.budget, share.account, share.owner) == (30, name, engine.runner.owner)
        assert share.limiter is engine.gateways[name].client.limiter
        assert share.limiter.rate == 0  # grants nothing before its first heartbeat booked a share


def test_one_worker_or_overhead_mode_or_sqlite_needs_no_shared_budget(tmp_path: Path) -> None:
    tracker = bench.Tracker()
    sqlite = bench.build_engine(
        "http://127.0.0.1:9", tmp_path / "a.sqlite3", mode="realistic", rate=30, concurrency=20, tracker=tracker
    )
    assert isinstance(bench.shared_budget(sqlite, _args()), contextlib.nullcontext)
    assert bench.budget_shares(sqlite, _args()) == {}
    pg = bench.build_engine(
        "http://127.0.0.1:9", tmp_path / "b.sqlite3", mode="realistic", rate=30, concurrency=20, tracker=tracker,
        database="postgresql://postgres@127.0.0.1:1/none", workers=1,
    )  # fmt: skip
    assert isinstance(bench.shared_budget(pg, _args(workers=1)), contextlib.nullcontext)
    assert isinstance(bench.shared_budget(pg, _args(mode="overhead")), contextlib.nullcontext)


async def test_a_fresh_runner_of_a_worker_stays_non_exclusive(tmp_path: Path) -> None:
    """``run_runner_until`` starts a new runner for each run: with several workers it must not clear the
    leases the others hold (that is what sent workflows to needs_review with 2-3 workers)."""
    tracker = bench.Tracker()
    engine = bench.build_engine(
        "http://127.0.0.1:9", tmp_path / "c.sqlite3", mode="overhead", rate=30, concurrency=20, tracker=tracker,
        workers=2,
    )  # fmt: skip
    assert engine.runner.exclusive is False
    async with engine:
        assert await bench.run_runner_until(engine, tracker, timeout=30.0, shared=True)  # nothing to run
        assert engine.runner.exclusive is False
