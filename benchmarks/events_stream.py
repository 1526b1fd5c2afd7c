"""Live-stream benchmark: how late GET /v1/events delivers committed events, end to end.

Usage::

    .venv/bin/python benchmarks/events_stream.py            # N = 200 withdrawals, SQLite, fast sandbox
    .venv/bin/python benchmarks/events_stream.py -n 1000 --clients 4

An in-process sandbox (the demo seed, withdrawals settling in ~0.1 s), an engine with its runner on a
temporary SQLite file, the API on 127.0.0.1 (the service's own listener), and ``--clients`` typed
clients following the stream. N withdrawals are submitted at once. For every event a client receives,
its lag is the receipt time minus the event's ``at`` (both this machine's clock). The result is one
JSON object: events per client, lag p50/p99/max in ms, and gaps/duplicates against the store's feed
(both must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine.api import create_app
from engine.bootstrap import build_engine
from engine.client import WithdrawClient
from engine.config import AccountConfig, Config, EngineConfig, GatewayConfig
from engine.demo import demo_seed
from engine.http_server import start_site
from engine.logging import configure_logging
from engine.models import WithdrawalRequest
from engine.sandbox import SandboxServer
from engine.sandbox.model import Timings

TOKEN = "benchmark-token-0123456789abcdef"
BTC_ADDRESS = "bc1qsandbox0demo0wallet0000000000000000000"


async def follow(url: str, expected: int, lags: list[float], cursors: list[str]) -> None:
    async with WithdrawClient(url, TOKEN) as client:
        async for item in client.stream(after="start"):
            lags.append((datetime.now(UTC) - item.event.at).total_seconds() * 1000)
            cursors.append(item.cursor)
            if len(cursors) >= expected:
                return


async def run(n: int, clients: int) -> dict[str, Any]:
    timings = Timings(waiting_seconds=0.05, waiting_jitter=0.0, processing_seconds=0.05, processing_jitter=0.0)
    seed = dataclasses.replace(demo_seed(), timings=timings)
    with tempfile.TemporaryDirectory() as tmp:
        async with SandboxServer(seed=seed) as exchange:
            config = Config(
                engine=EngineConfig(database=f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"),
                gateway=GatewayConfig(allowlist_ttl=5.0, wallet_ttl=0.05, chance_ttl=0.05, poll_window=0.01),
                accounts={"default": AccountConfig(name="default", base_url=exchange.url, demo=True)},
            )
            async with build_engine(config) as engine:
                runner, url = await start_site(create_app(engine, token=TOKEN))
                try:
                    return await measure(engine, url, n, clients)
                finally:
                    await runner.cleanup()


async def measure(engine: Any, url: str, n: int, clients: int) -> dict[str, Any]:
    amounts = [Decimal("0.001") + Decimal(i) / 10**6 for i in range(n)]  # distinct lanes
    requests = [WithdrawalRequest(currency="BTC", net_type="BTC", amount=a, address=BTC_ADDRESS) for a in amounts]
    ids = [(await engine.submit(r)).id for r in requests]
    for wf_id in ids:
        await engine.wait(wf_id, timeout=600)
    feed = [i.cursor for i in await engine.store.feed(after=None, limit=10 * n + 100)]
    total = len(feed)
    lags: list[list[float]] = [[] for _ in range(clients)]
    cursors: list[list[str]] = [[] for _ in range(clients)]
    # replay first (every event already stored), then a live round on top
    await asyncio.gather(*(follow(url, total, lags[c], cursors[c]) for c in range(clients)))
    replay_ok = all(c == feed for c in cursors)
    live_lags: list[list[float]] = [[] for _ in range(clients)]
    live_cursors: list[list[str]] = [[] for _ in range(clients)]
    tasks = [asyncio.create_task(follow_live(url, feed[-1], live_lags[c], live_cursors[c], n)) for c in range(clients)]
    await asyncio.sleep(0.5)
    more = [(await engine.submit(dataclasses.replace(r, amount=r.amount + Decimal("0.0005")))).id for r in requests]
    for wf_id in more:
        await engine.wait(wf_id, timeout=600)
    await asyncio.wait_for(asyncio.gather(*tasks), 600)
    after = [i.cursor for i in await engine.store.feed(after=feed[-1], limit=10 * n + 100)]
    flat = sorted(x for per in live_lags for x in per)
    return {
        "withdrawals": n,
        "clients": clients,
        "replayed_events_per_client": total,
        "replay_exact": replay_ok,
        "live_events_per_client": len(after),
        "live_exact": all(c == after[: len(c)] and len(c) == len(after) for c in live_cursors),
        "live_lag_ms": {
            "p50": round(statistics.median(flat), 1),
            "p99": round(flat[min(len(flat) - 1, int(len(flat) * 0.99))], 1),
            "max": round(flat[-1], 1),
        },
    }


async def follow_live(url: str, after: str, lags: list[float], cursors: list[str], n: int) -> None:
    """Live from ``after`` until every one of the second batch reached DONE."""
    done: set[str] = set()
    async with WithdrawClient(url, TOKEN) as client:
        async for item in client.stream(after=after):
            lags.append((datetime.now(UTC) - item.event.at).total_seconds() * 1000)
            cursors.append(item.cursor)
            if item.event.to_state in {"DONE", "FAILED", "REJECTED", "CANCELLED", "aborted", "needs_review"}:
                done.add(item.event.workflow_id)
                if len(done) >= n:
                    return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="withdrawals per round")
    parser.add_argument("--clients", type=int, default=2, help="stream clients at once")
    args = parser.parse_args()
    configure_logging(level="WARNING", stream=sys.stderr)  # stdout carries the JSON only
    print(json.dumps(asyncio.run(run(args.n, args.clients)), indent=2))


if __name__ == "__main__":
    main()
