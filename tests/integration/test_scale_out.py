"""Scale-out: three `upbit-withdraw run` workers on one PostgreSQL database, one SIGKILLed mid-run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from engine import Engine, State, WithdrawalRequest
from engine.store.postgres import PostgresStore
from tests.conftest import SandboxAdmin, make_gateway
from tests.integration.test_engine import allowed

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("upbit-withdraw"))
TOKEN = "scale-out-test-token-0123456789"
LEASE = 10.0  # above min_lease(timeout 5 s): the shared budget needs it (engine.upbit.budget)
LANES = [
    ("BTC", "BTC", Decimal("0.001"), Decimal("0.00000001")),
    ("ETH", "ETH", Decimal("0.01"), Decimal("0.00000001")),
    ("USDT", "TRX", Decimal("10"), Decimal("0.000001")),
    ("XRP", "XRP", Decimal("20"), Decimal("0.000001")),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(dsn: str, url: str) -> str:
    return f"""
[engine]
database = "{dsn}"
concurrency = 200
lease_seconds = {LEASE}
workers = 3
log_format = "json"

[workflow]
preflight_deadline = 300.0
wallet_recheck_initial = 0.2
wallet_recheck_max = 1.0
read_retry_initial = 0.1
read_retry_max = 1.0
poll_initial = 0.3
poll_max = 1.0
poll_jitter = 0.1
reconcile_delay = 0.3
reconcile_grace = 10.0
clock_skew = 10.0
lane_retry = 0.1

[gateway]
wallet_ttl = 1.0
chance_ttl = 0.5
poll_window = 0.05

[accounts.default]
base_url = "{url}"
demo = true
timeout = 5.0
"""


async def _requests(url: str, count: int) -> list[WithdrawalRequest]:
    addresses = {(c, n): (await allowed(url, c, n)).withdraw_address for c, n, _, _ in LANES}
    out = []
    for i in range(count):
        currency, net_type, base, step = LANES[i % len(LANES)]
        amount = base + step * (i // len(LANES) + 1)
        out.append(
            WithdrawalRequest(
                currency=currency, net_type=net_type, amount=amount, address=addresses[(currency, net_type)]
            )
        )
    return out


async def _owner_of(log: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            if '"runner.started"' in line:
                return str(json.loads(line)["owner"])
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no runner.started in {log}")


async def _counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            r["state"]: r["n"] for r in await conn.fetch("SELECT state, COUNT(*) AS n FROM workflows GROUP BY state")
        }
    finally:
        await conn.close()


async def _held_by(dsn: str, owner: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        # Only rows that can still be stepped: a settled row (next_run_at NULL) whose lease release the
        # runner had batched for its next round keeps the dead owner's name forever, harmlessly (never due).
        sql = "SELECT COUNT(*) FROM workflows WHERE lease_owner = $1 AND next_run_at IS NOT NULL"
        return int(await conn.fetchval(sql, owner))
    finally:
        await conn.close()


async def _resolve_reviews(dsn: str, url: str, admin: SandboxAdmin) -> int:
    """The operator's job: a needs_review workflow whose body the exchange never saw is resubmitted."""
    created = {json.dumps(w["body"], sort_keys=True) for w in await admin.withdrawals()}
    async with Engine(store=PostgresStore(dsn), gateways={"default": make_gateway(url)}, run_runner=False) as engine:
        reviews = await engine.list(state=State.NEEDS_REVIEW, limit=1000)
        for wf in reviews:
            assert wf.submit_body is not None
            assert json.dumps(json.loads(wf.submit_body), sort_keys=True) not in created, wf
            await engine.resolve(wf.id, "resubmit")
    return len(reviews)


class TestThreeWorkersOneKilled:
    async def test_500_withdrawals_finish_once_each_with_takeover(
        self, sandbox: Any, admin: SandboxAdmin, postgres_dsn: str, tmp_path: Path
    ) -> None:
        """Every workflow finishes, no body is created twice, the dead worker's leases are taken over in time,
        and the shared budget gives no 418 and under 1% 429s."""
        total = 500
        await admin.configure(waiting_seconds=0.5, processing_seconds=0.5, jitter=0.2)
        async with Engine(
            store=PostgresStore(postgres_dsn), gateways={"default": make_gateway(sandbox.url)}, run_runner=False
        ) as engine:
            for request in await _requests(sandbox.url, total):
                await engine.submit(request)
        config = tmp_path / "service.toml"
        config.write_text(_config(postgres_dsn, sandbox.url))
        env = {**os.environ, "UPBIT_WITHDRAW_API_TOKEN": TOKEN}
        workers, logs = [], []
        for index in range(3):
            log = tmp_path / f"worker{index}.log"
            logs.append(log)
            with log.open("wb") as sink:
                workers.append(await asyncio.create_subprocess_exec(
                    CLI, "run", "--config", str(config), "--port", str(_free_port()),
                    cwd=ROOT, env=env, stdout=sink, stderr=sink,
                ))  # fmt: skip
        try:
            owners = [await _owner_of(log) for log in logs]
            started = time.monotonic()
            while (await _counts(postgres_dsn)).get("DONE", 0) < total // 4:
                assert time.monotonic() - started < 300, await _counts(postgres_dsn)
                await asyncio.sleep(0.2)
            workers[0].send_signal(signal.SIGKILL)
            await workers[0].wait()
            killed_at = time.monotonic()
            orphans_at_kill = await _held_by(postgres_dsn, owners[0])
            while await _held_by(postgres_dsn, owners[0]) > 0:
                # Generous on purpose: on a loaded 2-core box the survivors' claim rounds can lag the lease by
                # many seconds; what must hold is that the takeover happens, not how fast (the benchmark and the
                # printed figure say how fast).
                assert time.monotonic() - killed_at < LEASE + 120, "the dead worker's leases were never taken over"
                await asyncio.sleep(0.1)
            takeover = time.monotonic() - killed_at
            while True:
                counts = await _counts(postgres_dsn)
                settled = sum(n for s, n in counts.items() if State(s).is_terminal or s == "needs_review")
                if settled == total:
                    break
                assert time.monotonic() - started < 600, counts
                await asyncio.sleep(0.3)
            in_review = await _resolve_reviews(postgres_dsn, sandbox.url, admin)
            while (counts := await _counts(postgres_dsn)).get("DONE", 0) < total:
                assert time.monotonic() - started < 240, counts
                await asyncio.sleep(0.3)
        finally:
            for proc in workers[1:]:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            codes = [await asyncio.wait_for(p.wait(), 40) for p in workers[1:]]
        stats = await admin.stats()
        creations = await admin.creations()
        summary = {
            "final_states": counts, "takeover_seconds": round(takeover, 2), "orphans_at_kill": orphans_at_kill,
            "lease_seconds": LEASE, "requests": stats["requests_total"], "status_429": stats["status_429"],
            "status_418": stats["status_418"], "posts": stats["by_endpoint"].get("POST /v1/withdraws/coin"),
            "needs_review_resubmitted": in_review,
            "withdrawals_created": stats["withdrawals_total"], "wall_seconds": round(time.monotonic() - started, 1),
        }  # fmt: skip
        print("SCALE-OUT", json.dumps(summary))
        assert codes == [0, 0]
        assert counts.get("DONE") == total, summary
        assert len(creations) == total and set(creations.values()) == {1}, summary
        assert stats["status_418"] == 0, summary
        assert stats["status_429"] < 0.01 * stats["requests_total"], summary
        # Reserving the rate-limit slot before the intent keeps the ambiguous window to one commit:
        # only workflows caught between that commit and their POST can need an operator.
        assert in_review <= 10, summary
