"""Crash safety of a batch: a runner SIGKILLed while it dispatches a 2,000-item batch. On restart the
dispatch resumes: exactly 2,000 children (one per item, each under its derived key) and exactly one
POST each at the exchange (counted by the sandbox's recorder)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine import Engine
from engine.store.sqlite import SQLiteStore
from tests.conftest import SandboxAdmin, make_gateway
from tests.integration.batch_engine_proc import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
BTC_ADDRESS = "bc1qsandbox0demo0wallet0000000000000000000"
N = 2000

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name != "posix", reason="signals")]


def _read(db: Path, sql: str, *args: Any) -> Any:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute(sql, args).fetchone()


def _children(db: Path, batch_id: str) -> int:
    return int(_read(db, "SELECT COUNT(*) FROM workflows WHERE parent_id = ?", batch_id)[0])


def _items() -> list[dict[str, Any]]:
    """2,000 payouts with distinct amounts (each withdrawal has a lane of its own: none waits for another)."""
    return [
        {"reference": f"user-{i:05d}", "currency": "BTC", "net_type": "BTC",
         "amount": format(Decimal("0.0001") + Decimal(i) / 10**8, "f"), "address": BTC_ADDRESS}
        for i in range(N)
    ]  # fmt: skip


async def test_kill_during_dispatch_resumes_without_a_second_child_or_post(
    sandbox: Any, admin: SandboxAdmin, db_path: Path
) -> None:
    """SIGKILL mid-dispatch; the restarted runner finishes the batch with 2,000 children, one POST each."""
    await admin.configure(rate_limit={"enabled": False})
    # No child may reach its POST before the kill: one killed between its intent and its POST ends, by
    # design, in needs_review (nobody can tell whether the POST left), which is test_crash.py's subject,
    # not this test's. A paused wallet holds every child at checking_wallet, nothing sent.
    await admin.wallet("BTC", "BTC", wallet_state="paused")
    async with Engine(store=SQLiteStore(db_path), gateways={"default": make_gateway(sandbox.url)},
                      run_runner=False) as engine:  # fmt: skip
        batch = await engine.submit_batch(_items(), idempotency_key="crash-2000")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.batch_engine_proc", str(db_path), sandbox.url,
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(120):
            while _children(db_path, batch.id) < N // 4:
                await asyncio.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    at_kill = _children(db_path, batch.id)
    assert proc.returncode == -signal.SIGKILL
    assert N // 4 <= at_kill < N, f"the kill missed the dispatch ({at_kill} children)"
    assert _read(db_path, "SELECT state FROM workflows WHERE id = ?", batch.id)[0] == "dispatching"
    assert await admin.posts() == 0
    await admin.wallet("BTC", "BTC", wallet_state="working")

    async with Engine(store=SQLiteStore(db_path), gateways={"default": make_gateway(sandbox.url, rate=1000,
                      timeout=30.0)}, settings=SETTINGS) as engine:  # fmt: skip
        final = await engine.wait(batch.id, timeout=900)
        report = await engine.batch_report(batch.id)
        triggers = [e.trigger async for e in engine.events(batch.id, follow=False)]

    assert final.state == "settled", final
    assert _children(db_path, batch.id) == N
    distinct = _read(db_path, "SELECT COUNT(DISTINCT idempotency_key) FROM workflows WHERE parent_id = ?", batch.id)
    assert distinct[0] == N
    assert report["totals"]["by_state"] == {"DONE": N}
    assert sorted(r["reference"] for r in report["items"]) == [f"user-{i:05d}" for i in range(N)]
    assert await admin.posts() == N
    creations = await admin.creations()
    assert len(creations) == N and set(creations.values()) == {1}
    assert triggers.count("dispatched") == 1 and triggers[-1] == "settle"
