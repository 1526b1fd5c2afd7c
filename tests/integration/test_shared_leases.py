"""Leases shared by several runners on one PostgreSQL database: a worker keeps the workflows it is
stepping, a POST in flight included, and a worker's start never takes the others' leases.

A runner renews the leases of the workflows it steps every third of ``lease_seconds``; a commit is fenced
on the lease. If a lease could run out while its worker waits for a POST's answer, another worker would
claim the row in ``submitting`` and reconcile it (never sending twice, but ending in ``needs_review``
when the withdrawal is not found in time), and the first worker's record of the answer would be
refused. These tests pin both ways a lease must not be lost.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from engine.core import Engine
from engine.models import State
from engine.store.postgres import PostgresStore
from tests.conftest import FAST, make_gateway
from tests.integration.test_engine import request_for, until
from tests.integration.test_store_contract import add

pytestmark = pytest.mark.postgres

LEASE = 3.0  # renewed every second; the POST below takes more than two leases
POST_LATENCY_MS = 7_000


def worker(dsn: str, sandbox_url: str, channel: str, **kw: Any) -> Engine:
    """One of several non-exclusive engines on the same database, as ``run`` builds them on PostgreSQL."""
    store = PostgresStore(dsn, pool_max=4, notify_channel=channel)
    gateway = make_gateway(sandbox_url, timeout=POST_LATENCY_MS / 1000 + 8)
    return Engine(store=store, gateways={"default": gateway}, settings=FAST, exclusive=False, lease_seconds=LEASE, **kw)


@pytest.fixture
def channel() -> str:
    return f"upbit_test_{secrets.token_hex(4)}"


async def lease_owner(dsn: str, workflow_id: str) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        owner: str | None = await conn.fetchval("SELECT lease_owner FROM workflows WHERE id = $1", workflow_id)
    finally:
        await conn.close()
    return owner


async def test_a_lease_outlives_a_post_slower_than_it(postgres_dsn: str, sandbox: Any, channel: str) -> None:
    """Two workers; the POST takes more than two lease periods. The worker that sent it keeps the lease
    by heartbeat and records the answer: one POST, no reconciliation, DONE."""
    await sandbox.admin.fault(endpoint="POST /v1/withdraws/coin", kind="latency", ms=POST_LATENCY_MS)
    async with worker(postgres_dsn, sandbox.url, channel) as one, worker(postgres_dsn, sandbox.url, channel):
        wf = await one.submit(await request_for(sandbox.url))
        started = time.monotonic()
        done = await until(one, wf.id, lambda w: w.state is State.DONE, timeout=120)
        assert time.monotonic() - started > 2 * LEASE  # the POST really outlasted the lease
        triggers = [event.trigger for event in await one.store.events(done.id)]
    assert await sandbox.admin.posts() == 1
    assert "lose_track" not in triggers, triggers  # nobody found it in submitting and reconciled it


async def test_a_shared_engine_run_until_idle_keeps_the_other_workers_leases(
    postgres_dsn: str, sandbox: Any, channel: str
) -> None:
    """``run_until_idle`` starts a fresh runner: it must stay non-exclusive (an exclusive one clears
    every lease on start, the other workers' in-flight ones included)."""
    async with PostgresStore(postgres_dsn) as store:
        held = await add(store, next_run_at=datetime.now(UTC))
        claimed = await store.claim_due(now=datetime.now(UTC), limit=1, owner="other-worker", lease_seconds=3600)
        assert [wf.id for wf in claimed] == [held.id]
        # The other worker sleeps it (nothing due: run_until_idle has nothing to wait for) and keeps the lease.
        await store.commit(replace(claimed[0], next_run_at=None), None, owner="other-worker")
        async with worker(postgres_dsn, sandbox.url, channel, run_runner=False) as engine:
            await engine.run_until_idle(timeout=60)
            assert engine.runner.exclusive is False
        assert await lease_owner(postgres_dsn, held.id) == "other-worker"
