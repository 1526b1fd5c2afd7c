"""Webhooks benchmark: N withdrawals in realistic mode with webhooks to a local receiver, and without.

Usage::

    .venv/bin/python benchmarks/webhooks.py                  # N = 1,000, realistic (as benchmarks/withdrawals.py)
    .venv/bin/python benchmarks/webhooks.py -n 200 --waiting 0.5 --processing 1

The sandbox runs in its own process (``benchmarks.withdrawals.SandboxProcess``), reset and configured
the same way before each side; each side runs the engine in a child process of its own with the product
defaults (SQLite, a 30/s limiter). The "with" side also runs the webhook delivery worker (product
defaults but ``allow_private_targets``) subscribed to every transition, posting to a receiver that runs
in this (parent) process on 127.0.0.1 and records when each event arrived.

Figures (one JSON object on stdout):

- ``exchange_calls``: requests the sandbox served per side, and ``calls_not_from_the_engine`` (sandbox
  requests minus the engine client's own count): the delivery worker has no exchange client, so this is
  0 with webhooks as without. Totals differ a little between runs by poll timing alone.
- ``last_withdrawal_seconds``: from the start of the run to the last withdrawal's terminal state, per
  side, and the difference (with - without).
- ``delivery_lag_seconds``: for each delivered event, its arrival at the receiver minus the event's
  commit time (``created_at`` in the payload): p50, p99, max; and whether every transition arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.withdrawals import (
    Admin,
    SandboxProcess,
    Tracker,
    build_engine,
    make_requests,
    run_runner_until,
    sandbox_config,
    submit_all,
)

SCRIPT = Path(__file__).resolve()
SECRET = "bench-webhook-secret-0123456789"


class Receiver:
    """Records (event id, commit time from the payload, arrival time); answers 200 at once."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, float, float]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        committed = datetime.fromisoformat(body["created_at"]).timestamp()
        self.arrivals.append((body["id"], committed, time.time()))
        return web.Response(status=200)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def child(args: argparse.Namespace) -> dict[str, Any]:
    """One side: N withdrawals through the engine (and, with --hook-url, the delivery worker)."""
    from engine.logging import configure_logging
    from engine.store.webhooks import Subscription, webhook_store
    from engine.webhook_delivery import DeliverySettings, WebhookDispatcher
    from engine.webhooks import TRANSITION

    with (args.workdir / "engine-log.jsonl").open("w") as log_stream:
        configure_logging(level="WARNING", json=True, stream=log_stream)
        tracker = Tracker(observe_states=False)
        engine = build_engine(
            args.url, args.workdir / "engine.sqlite3", mode="realistic", rate=args.rate,
            concurrency=args.concurrency, tracker=tracker,
        )  # fmt: skip
        async with engine:
            dispatcher, stop, task = None, asyncio.Event(), None
            if args.hook_url:
                await webhook_store(engine.store).create_subscription(
                    Subscription(id="wh_bench", url=args.hook_url, events=(TRANSITION,), secrets=(SECRET,),
                                 source="api", created_at=time.time())
                )  # fmt: skip
                settings = DeliverySettings(allow_private_targets=True, concurrency=args.hook_concurrency)
                dispatcher = WebhookDispatcher(engine.store, settings=settings)
                engine.ctx.observers.append(dispatcher.observer)  # as the service wires it: woken on commit
                task = asyncio.create_task(dispatcher.run(stop))
            tracker.reset(args.n)
            t0 = time.monotonic()
            await submit_all(engine, make_requests(args.n))
            finished = await run_runner_until(engine, tracker, args.timeout)
            last = max(tracker.completions, default=t0) - t0
            pending = None
            if dispatcher is not None and task is not None:
                hooks = webhook_store(engine.store)
                deadline = time.monotonic() + 120
                while (pending := await hooks.pending_count()) and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # the count is in the store: nothing to await but time
                stop.set()
                await task
            calls = sum(sum(g.client.calls.values()) for g in engine.gateways.values())
            transitions = await _count_transitions(engine.store)
    return {
        "finished": finished, "completed": tracker.states.get("DONE", 0), "terminal_states": dict(tracker.states),
        "last_withdrawal_seconds": round(last, 3), "engine_client_calls": calls, "transitions": transitions,
        "pending_deliveries_at_end": pending,
    }  # fmt: skip


async def _count_transitions(store: Any) -> int:
    """State-changing events in the store (what a transitions subscriber must receive)."""
    total = 0
    for wf in await store.list(limit=100_000):
        total += sum(1 for e in await store.events(wf.id) if e.from_state != e.to_state)
    return total


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


async def parent(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    sandbox = SandboxProcess(workdir / "sandbox.log")
    sandbox.start()
    receiver = Receiver()
    await receiver.start()
    sides: dict[str, Any] = {}
    try:
        async with Admin(sandbox.url) as admin:
            for side in ("without", "with"):
                config, faults = sandbox_config("realistic", args)
                await admin.prepare(config, faults)
                side_dir = workdir / side
                side_dir.mkdir()
                cmd = [sys.executable, str(SCRIPT), "--child", "--url", sandbox.url, "--workdir", str(side_dir),
                       "-n", str(args.n), "--rate", str(args.rate), "--concurrency", str(args.concurrency),
                       "--timeout", str(args.timeout)]  # fmt: skip
                if side == "with":
                    cmd += ["--hook-url", receiver.url, "--hook-concurrency", str(args.hook_concurrency)]
                proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
                out, _ = await proc.communicate()
                if proc.returncode != 0:
                    raise RuntimeError(f"{side} side failed ({proc.returncode}); see {side_dir}")
                result = json.loads(out)
                stats = await admin.stats()
                result["exchange_calls"] = int(stats["requests_total"])
                result["calls_not_from_the_engine"] = int(stats["requests_total"]) - result["engine_client_calls"]
                sides[side] = result
    finally:
        await receiver.stop()
        sandbox.stop()
    lags = [arrived - committed for _, committed, arrived in receiver.arrivals]
    ids = [event for event, _, _ in receiver.arrivals]
    with_, without = sides["with"], sides["without"]
    return {
        "benchmark": "webhooks", "mode": "realistic", "n": args.n, "rate": args.rate,
        "webhook_concurrency": args.hook_concurrency,
        "latency_ms": args.latency_ms, "waiting": args.waiting, "processing": args.processing,
        "without": without, "with": with_,
        "extra_exchange_calls_by_the_delivery_worker": with_["calls_not_from_the_engine"],
        "exchange_calls_difference_with_minus_without": with_["exchange_calls"] - without["exchange_calls"],
        "last_withdrawal_delay_seconds": round(
            with_["last_withdrawal_seconds"] - without["last_withdrawal_seconds"], 3
        ),
        "deliveries": {
            "received": len(ids), "distinct": len(set(ids)), "expected_transitions": with_["transitions"],
            "all_delivered": len(set(ids)) == with_["transitions"],
        },
        "delivery_lag_seconds": {
            "p50": _pct(lags, 0.5), "p99": _pct(lags, 0.99), "max": _pct(lags, 1.0),
            "mean": round(statistics.fmean(lags), 4) if lags else None,
        },
        "workdir": str(workdir),
    }  # fmt: skip


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--n", type=int, default=1000, help="withdrawals per side")
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--rate", type=int, default=30, help="requests per second of the account")
    p.add_argument("--latency-ms", type=float, default=20.0, help="injected latency per exchange call")
    p.add_argument("--waiting", type=float, default=2.0, help="seconds in WAITING")
    p.add_argument("--processing", type=float, default=5.0, help="seconds in PROCESSING")
    p.add_argument("--jitter", type=float, default=0.5, help="uniform extra seconds on each step")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--hook-concurrency", type=int, default=16, help="webhook_delivery.concurrency (default 16)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--hook-url", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        print(json.dumps(asyncio.run(child(args))))
        return 0
    report = asyncio.run(parent(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
