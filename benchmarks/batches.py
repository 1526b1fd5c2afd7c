"""Payout batch benchmark: intake of a 10,000-item batch, and a 1,000-item batch end to end.

Usage (see benchmarks/README.md)::

    .venv/bin/python benchmarks/batches.py                    # intake N = 10,000, end to end N = 1,000
    .venv/bin/python benchmarks/batches.py --intake 10000 --e2e 300

``intake``
    A 10,000-item CSV file read and validated (every item) and the batch stored as one workflow in a
    fresh SQLite store, through ``Engine.submit_batch``: seconds for the parsing, the validation and
    the store write, the store's writes and write transactions, and the stored request's size.
``e2e``
    A 1,000-item batch in the realistic mode of ``withdrawals.py``: the sandbox in its own process with
    20 ms latency on every call, WAITING ~2 s and PROCESSING ~5 s, its 30 req/s limit on; the engine
    with the product defaults (a 30/s limiter, default gateway and workflow settings, SQLite in a temp
    dir). Measured: wall time from submit to the batch settled, the dispatch (accepted -> running), how
    long the batch took to notice its last child ended, exchange calls per withdrawal (the target is
    <= 1.05: a batch adds no exchange call of its own), POSTs, and the store's writes.

The result is ONE JSON object on stdout (``--out FILE`` keeps it too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.withdrawals import (
    ADDRESS,
    CURRENCY,
    NET_TYPE,
    Admin,
    SandboxProcess,
    build_engine,
    cpu_seconds,
    machine_info,
    sandbox_config,
)
from engine.models import Event, Workflow

CSV_HEADER = "reference,currency,net_type,amount,address\n"


def payout_csv(n: int) -> str:
    """``n`` payouts with distinct amounts (each withdrawal in a lane of its own, like real payouts)."""
    rows = (f"payout-{i:05d},{CURRENCY},{NET_TYPE},{Decimal(1) + Decimal(i + 1) / 10**6},{ADDRESS}\n" for i in range(n))
    return CSV_HEADER + "".join(rows)


class Observer:
    """Counts transitions and remembers when the batch moved and when its last child ended."""

    def __init__(self) -> None:
        self.transitions = 0
        self.batch_at: dict[str, float] = {}
        self.last_child_end = 0.0
        self.settled = asyncio.Event()

    def __call__(self, before: Workflow, after: Workflow, event: Event) -> None:
        self.transitions += 1
        if after.kind == "batch":
            self.batch_at.setdefault(str(after.state), time.monotonic())
            if str(after.state) in ("settled", "cancelled"):
                self.settled.set()
        elif after.parent_id is not None and event.to_state != event.from_state:
            self.last_child_end = time.monotonic()


async def intake(n: int, workdir: Path) -> dict[str, Any]:
    """Read, validate and store an ``n``-item batch; nothing runs (no runner)."""
    engine = build_engine("http://127.0.0.1:9", workdir / "intake.sqlite3", mode="realistic", rate=30,
                          concurrency=200, tracker=Observer())  # type: ignore[arg-type]  # fmt: skip
    text = payout_csv(n)
    async with engine:
        store: Any = engine.store
        writes0, batches0 = store.writes, store.batches
        cpu0, t0 = cpu_seconds(), time.monotonic()
        items, _caps = engine.read_batch(text, "csv")
        t1 = time.monotonic()
        request = engine._batch_kind().accept(items, skip_invalid=False, max_total=None,
                                              accounts=engine.gateways.keys(), limits={})  # fmt: skip
        t2 = time.monotonic()
        wf = await engine.submit_batch(request)
        t3, cpu3 = time.monotonic(), cpu_seconds()
        stored = await engine.get(wf.id)
        size = len(json.dumps(stored.request.to_dict()))
        return {
            "items": len(stored.request.items),
            "csv_bytes": len(text),
            "parse_seconds": round(t1 - t0, 3),
            "validate_seconds": round(t2 - t1, 3),
            "store_seconds": round(t3 - t2, 3),
            "total_seconds": round(t3 - t0, 3),
            "cpu_seconds": round(cpu3 - cpu0, 3),
            "store_writes": store.writes - writes0,
            "store_write_transactions": store.batches - batches0,
            "stored_request_bytes": size,
        }


async def end_to_end(n: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """An ``n``-item batch through the engine against the sandbox in realistic mode."""
    sandbox = SandboxProcess(workdir / "sandbox.log")
    sandbox.start()
    try:
        async with Admin(sandbox.url) as admin:
            await admin.prepare(*sandbox_config("realistic", args))
            observer = Observer()
            engine = build_engine(sandbox.url, workdir / "e2e.sqlite3", mode="realistic", rate=args.rate,
                                  concurrency=args.concurrency, tracker=observer)  # type: ignore[arg-type]  # fmt: skip
            async with engine:
                store: Any = engine.store
                items, _ = engine.read_batch(payout_csv(n), "csv")
                cpu0, t0 = cpu_seconds(), time.monotonic()
                batch = await engine.submit_batch(items)
                runner = asyncio.create_task(engine.runner.run())
                try:
                    await asyncio.wait_for(observer.settled.wait(), args.timeout)
                finally:
                    engine.runner.stop()
                    await runner
                t1, cpu1 = time.monotonic(), cpu_seconds()
                report = await engine.batch_report(batch.id)
                calls = Counter(engine.gateways["default"].client.calls)
                stats = await admin.stats()
            at = observer.batch_at
            posts = stats["by_endpoint"].get("POST /v1/withdraws/coin", 0)
            total_calls = sum(calls.values())
            return {
                "items": n,
                "batch_state": report["state"],
                "outcomes": report["totals"]["by_state"],
                "wall_seconds": round(t1 - t0, 3),
                "dispatch_seconds": round(at["running"] - at["dispatching"], 3) if "running" in at else None,
                "settle_lag_seconds": round(at.get("settled", t1) - observer.last_child_end, 3),
                "cpu_seconds": round(cpu1 - cpu0, 3),
                "exchange_calls": dict(calls),
                "exchange_calls_total": total_calls,
                "calls_per_withdrawal": round(total_calls / n, 4),
                "calls_per_withdrawal_target": 1.05,
                "posts": posts,
                "posts_per_withdrawal": round(posts / n, 4),
                "sandbox_creations_max": max(stats.get("creations_by_body", {"": 0}).values()),
                "transitions": observer.transitions,
                "store_writes": store.writes,
                "store_write_transactions": store.batches,
            }
    finally:
        sandbox.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--intake", type=int, default=10_000, help="items of the intake batch (0: skip)")
    p.add_argument("--e2e", type=int, default=1000, help="items of the end-to-end batch (0: skip)")
    p.add_argument("--rate", type=int, default=30, help="requests per second of the account (sandbox and limiter)")
    p.add_argument("--latency-ms", type=float, default=20.0, help="injected latency per call")
    p.add_argument("--waiting", type=float, default=2.0, help="seconds in WAITING")
    p.add_argument("--processing", type=float, default=5.0, help="seconds in PROCESSING")
    p.add_argument("--jitter", type=float, default=0.5, help="uniform extra seconds on each step")
    p.add_argument("--concurrency", type=int, default=200, help="the runner's concurrency")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up the end-to-end run after this many s")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "batches", "machine": machine_info()}
    with tempfile.TemporaryDirectory(prefix="upbit-bench-batches-") as tmp:
        workdir = Path(tmp)
        if args.intake:
            result["intake"] = await intake(args.intake, workdir)
        if args.e2e:
            result["end_to_end"] = await end_to_end(args.e2e, args, workdir)
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from engine.logging import configure_logging

    configure_logging(level="WARNING", json=True, stream=sys.stderr)
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
