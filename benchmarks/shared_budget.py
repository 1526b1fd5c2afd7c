"""One account's 30/s shared by three worker processes on PostgreSQL, all the load at one (engine.upbit.budget).

Three processes, each a ``RateLimiter`` + ``BudgetShare`` + ``UpbitClient`` (as ``upbit-withdraw run`` wires
them with ``engine.workers = 3``), POST withdrawals to the sandbox exchange (its own 30/s limit on):

1. ``w0`` alone has load (``--callers`` concurrent POST loops) for ``--phase`` seconds; ``w1`` and ``w2``
   are idle. Reported: the account's sustained POST rate at the exchange over the phase's steady part (after
   ``--warmup`` seconds) as a fraction of 30/s (target >= 0.95).
2. ``w0`` is SIGKILLed (its row still books its share until its lease expires) and ``w1`` gets the load.
   Reported: seconds from the kill until ``w1``'s share reaches 0.9 x 30 (one lease, ``--lease``, plus a
   heartbeat or two is expected), and the rate it sustains afterwards.

Over the whole run: the most requests the exchange received in any one-second interval (every start, not only
whole seconds; must be <= 30) and in any whole second, and its 429/418 counts (must be 0). The workers run the
production defaults (lease 30 s, call timeout 10 s) unless told otherwise; the run takes about
``phase + lease + settle`` seconds plus start-up (< 2 min by default).

    .venv/bin/python benchmarks/shared_budget.py --database postgresql://postgres@127.0.0.1:5432/postgres

Prints one JSON object. A fresh schema is created in ``--database`` and dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.client_rate import admin, sandbox_process  # noqa: E402
from engine.errors import ExchangeError  # noqa: E402
from engine.store.postgres import PostgresStore  # noqa: E402
from engine.upbit.auth import Credentials  # noqa: E402
from engine.upbit.budget import BudgetShare  # noqa: E402
from engine.upbit.client import UpbitClient, WithdrawBody  # noqa: E402
from engine.upbit.ratelimit import RateLimiter  # noqa: E402

BUDGET = 30
ACCOUNT = "default"
POST = "POST /v1/withdraws/coin"


# -- one worker process ------------------------------------------------------------------------------


async def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Heartbeat the share all along; POST in ``--callers`` loops between ``--load-from`` and ``--end``."""
    store = PostgresStore(args.dsn, pool_max=2)
    await store.open()
    limiter = RateLimiter(BUDGET, account_rate=BUDGET)
    share = BudgetShare(store, ACCOUNT, args.worker, limiter, budget=BUDGET, lease=args.lease, timeout=args.timeout)
    timeline: list[tuple[float, int]] = []
    outcomes: dict[str, int] = {}
    body = WithdrawBody(currency="BTC", net_type="BTC", amount=Decimal("0.00001"), address=args.address)

    async def sample() -> None:
        while True:
            timeline.append((round(time.time(), 3), limiter.rate))
            await asyncio.sleep(0.25)

    async def post_loop(client: UpbitClient) -> None:
        while time.time() < args.end:
            try:
                await client.withdraw_coin(body)
                outcomes["ok"] = outcomes.get("ok", 0) + 1
            except ExchangeError as exc:
                outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1

    heartbeat = asyncio.create_task(share.run())
    sampler = asyncio.create_task(sample())
    try:
        async with UpbitClient(Credentials.demo(), base_url=args.url, limiter=limiter, timeout=args.timeout) as client:
            await asyncio.sleep(max(0.0, args.load_from - time.time()))
            if args.callers:
                await asyncio.gather(*(post_loop(client) for _ in range(args.callers)))
            await asyncio.sleep(max(0.0, args.end - time.time()))
    finally:
        for task in (heartbeat, sampler):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await share.leave()
        await store.close()
    return {"name": args.worker, "outcomes": outcomes, "timeline": timeline, "beats": share.beats}


# -- the run -------------------------------------------------------------------------------------------


def _schema_dsn(dsn: str, schema: str) -> str:
    parts = urlsplit(dsn)
    query = "&".join(q for q in (parts.query, urlencode({"search_path": schema})) if q)
    return urlunsplit(parts._replace(query=query))


def _spawn(name: str, dsn: str, url: str, address: str, *, load_from: float, end: float, callers: int,
           args: argparse.Namespace) -> subprocess.Popen[str]:  # fmt: skip
    command = [
        sys.executable, __file__, "--worker", name, "--dsn", dsn, "--url", url, "--address", address,
        "--load-from", str(load_from), "--end", str(end), "--callers", str(callers),
        "--lease", str(args.lease), "--timeout", str(args.timeout),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def max_in_any_second(times: list[float]) -> int:
    """Most events in any half-open one-second interval, whatever its start."""
    ordered, best, lo = sorted(times), 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def max_in_whole_second(times: list[float]) -> int:
    counts: dict[int, int] = {}
    for t in times:
        counts[int(t)] = counts.get(int(t), 0) + 1
    return max(counts.values(), default=0)


async def _requests(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    since = 0
    while True:
        page = await admin(session, url, "GET", f"requests?since={since}&limit=5000")
        out.extend(page["requests"])
        if not page["requests"]:
            return out
        since = page["next_since"]


async def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    schema = f"bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(args.database)
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    dsn = _schema_dsn(args.database, schema)
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        with sandbox_process() as url:
            async with aiohttp.ClientSession() as session:
                await admin(session, url, "POST", "reset")
                async with UpbitClient(Credentials.demo(), base_url=url) as client:
                    address = next(a for a in await client.coin_addresses() if a.currency == "BTC").withdraw_address
                await asyncio.sleep(1.1)
                start = time.time() + 3.0  # all three have started and beaten by then
                kill_at = start + args.phase
                end = kill_at + args.lease + args.settle
                procs["w0"] = _spawn("w0", dsn, url, address, load_from=start, end=end, callers=args.callers, args=args)
                procs["w1"] = _spawn("w1", dsn, url, address, load_from=kill_at, end=end, callers=args.callers,
                                     args=args)  # fmt: skip
                procs["w2"] = _spawn("w2", dsn, url, address, load_from=end, end=end, callers=0, args=args)
                await asyncio.sleep(max(0.0, kill_at - time.time()))
                procs["w0"].send_signal(signal.SIGKILL)
                killed = time.time()
                results = {}
                for name in ("w1", "w2"):
                    out, _ = await asyncio.to_thread(procs[name].communicate, timeout=end - time.time() + 60)
                    results[name] = json.loads(out.strip().splitlines()[-1])
                stats = await admin(session, url, "GET", "stats")
                records = await _requests(session, url)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    arrivals = [_epoch(r["received_at"]) for r in records if r["status"] not in (429, 418, "dropped")]
    posts = [_epoch(r["received_at"]) for r in records if f"{r['method']} {r['path']}" == POST]
    # Rates over whole exchange seconds only: an interval of 8.6 s can hold 9 windows' worth of calls.
    steady_from, steady_to = math.ceil(start + args.warmup), math.floor(kill_at)
    steady = [t for t in posts if steady_from <= t < steady_to]
    w1 = results["w1"]["timeline"]
    back = next((t for t, rate in w1 if t >= killed and rate >= 0.9 * BUDGET), None)
    after_from, after_to = math.ceil((back or end) + 1.0), math.floor(end - 1.0)
    after = [t for t in posts if after_from <= t < after_to]
    return {
        "benchmark": "shared_budget",
        "workers": 3,
        "budget_per_s": BUDGET,
        "lease_seconds": args.lease,
        "call_timeout_seconds": args.timeout,
        "callers_at_the_loaded_worker": args.callers,
        "phase_seconds": args.phase,
        "sustained_seconds": steady_to - steady_from,
        "sustained_post_rate_per_s": round(len(steady) / (steady_to - steady_from), 2),
        "sustained_fraction_of_budget": round(len(steady) / (steady_to - steady_from) / BUDGET, 3),
        "share_back_after_kill_seconds": None if back is None else round(back - killed, 2),
        "post_rate_after_takeover_per_s": round(len(after) / max(1, after_to - after_from), 2),
        "max_requests_in_any_1s_interval": max_in_any_second(arrivals),
        "max_requests_in_any_whole_second": max_in_whole_second(arrivals),
        "requests_total": stats["requests_total"],
        "status_429": stats["status_429"],
        "status_418": stats["status_418"],
        "posts": len(posts),
        "survivors": {name: {"outcomes": r["outcomes"], "beats": r["beats"]} for name, r in results.items()},
        "cpus": os.cpu_count(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--database", default=os.environ.get("UPBIT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    p.add_argument("--phase", type=float, default=25.0, help="seconds of load at w0 before it is killed")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of the phase not counted (the ramp)")
    p.add_argument("--settle", type=float, default=10.0, help="seconds after the kill's lease ends")
    p.add_argument("--lease", type=float, default=30.0)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--callers", type=int, default=40)
    # a worker process (internal)
    p.add_argument("--worker")
    p.add_argument("--dsn")
    p.add_argument("--url")
    p.add_argument("--address")
    p.add_argument("--load-from", type=float, default=0.0)
    p.add_argument("--end", type=float, default=0.0)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(run_worker(args))))
        return
    print(json.dumps(asyncio.run(benchmark(args)), indent=2))


if __name__ == "__main__":
    main()
