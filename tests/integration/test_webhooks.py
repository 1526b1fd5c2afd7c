"""Webhook delivery end to end: a real engine (or store) on a real SQLite file / PostgreSQL schema, the
delivery worker, and a real receiver on 127.0.0.1 that checks every signature.

What is proved: every transition is delivered, in order per workflow, signed; a receiver that answers
503 or refuses connections for a while gets everything once it is back; a delivery that keeps failing
past the retry period is marked failed and can be redelivered; a service SIGKILLed with deliveries
pending loses none after a restart (repeats carry the same event id and body); on PostgreSQL two workers
share the work and each delivery is sent by one of them.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine import Engine
from engine.models import Event, State, WithdrawalRequest, Workflow
from engine.store.base import Store
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SQLiteStore
from engine.store.webhooks import Subscription, webhook_store
from engine.webhook_delivery import DeliverySettings, WebhookDispatcher
from engine.webhooks import ALL_EVENTS, TERMINAL, TRANSITION, event_id
from tests.conftest import SandboxAdmin, make_gateway
from tests.integration.test_engine import request_for
from tests.integration.webhook_receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec-test-0123456789abcdef"
FAST_DELIVERY = DeliverySettings(
    allow_private_targets=True, timeout=2.0, retry_initial=0.05, retry_max_interval=0.2, poll_interval=0.05,
    lease_seconds=30.0,
)  # fmt: skip
_ids = itertools.count(1)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A receiver that knows the subscription's secret."""
    hook = Receiver([SECRET])
    await hook.start()
    try:
        yield hook
    finally:
        await hook.stop()


async def subscribe(store: Store, url: str, events: tuple[str, ...] = (TRANSITION,)) -> Subscription:
    return await webhook_store(store).create_subscription(
        Subscription(id=f"wh_t{next(_ids)}", url=url, events=events, secrets=(SECRET,), source="api",
                     created_at=time.time())
    )  # fmt: skip


@asynccontextmanager
async def delivering(store: Store, settings: DeliverySettings = FAST_DELIVERY) -> AsyncIterator[WebhookDispatcher]:
    """A delivery worker running as its own task for the block."""
    dispatcher = WebhookDispatcher(store, settings=settings)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        yield dispatcher
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


async def transitions_of(store: Store, workflow_ids: list[str]) -> dict[str, list[int]]:
    """Each workflow's state-changing events' seqs, in order."""
    return {wf_id: [e.seq for e in await store.events(wf_id) if e.from_state != e.to_state] for wf_id in workflow_ids}


async def settled(store: Store) -> None:
    """Until no delivery is pending (bounded): the workers recorded every answer."""
    async with asyncio.timeout(60):
        while await webhook_store(store).pending_count():
            await asyncio.sleep(0.05)


def ids_of(expected: dict[str, list[int]]) -> set[str]:
    return {event_id(wf_id, seq) for wf_id, seqs in expected.items() for seq in seqs}


def assert_in_order(receiver: Receiver, expected: dict[str, list[int]]) -> None:
    """Per workflow, the first successful arrival of each event follows seq order."""
    first: dict[str, int] = {}
    for n, got in enumerate(receiver.delivered()):
        first.setdefault(got.event_id, n)
    for wf_id, seqs in expected.items():
        arrival = sorted(seqs, key=lambda seq: first[event_id(wf_id, seq)])
        assert arrival == seqs, f"{wf_id} arrived as {arrival}"


# -- workflows written straight to a store (no exchange needed) -----------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def add_workflow(store: Store) -> Workflow:
    n = next(_ids)
    wf_id = f"wd_{n:014x}00000000aa"
    event = Event(workflow_id=wf_id, seq=1, at=T0, trigger="create", from_state=None, to_state="pending").sealed("")
    request = WithdrawalRequest(
        currency="BTC", net_type="BTC", amount=Decimal(f"0.{n:06d}"), address="bc1qdestination0", account="default"
    )
    wf = Workflow(id=wf_id, state=State.PENDING, request=request, created_at=T0, updated_at=T0, event_seq=1,
                  last_hash=event.hash)  # fmt: skip
    stored, _ = await store.create(wf, event)
    return stored


async def move(store: Store, wf: Workflow, to: State) -> Workflow:
    at = wf.updated_at + timedelta(seconds=1)
    event = Event(
        workflow_id=wf.id, seq=wf.event_seq + 1, at=at, trigger="step", from_state=wf.state.value, to_state=to.value
    ).sealed(wf.last_hash)
    moved = replace(wf, state=to, updated_at=at, event_seq=event.seq, last_hash=event.hash)
    return await store.commit(moved, event, owner=None)


async def walk(store: Store, count: int) -> list[str]:
    """``count`` workflows, each pending -> verifying_address -> checking_wallet -> DONE, interleaved."""
    wfs = [await add_workflow(store) for _ in range(count)]
    for to in (State.VERIFYING_ADDRESS, State.CHECKING_WALLET, State.DONE):
        wfs = [await move(store, wf, to) for wf in wfs]
    return [wf.id for wf in wfs]


# -- the tests -----------------------------------------------------------------------------------------


class TestDeliveryWithTheEngine:
    async def test_every_transition_delivered_in_order_and_signed(
        self, sandbox: Any, engine_factory: Any, receiver: Receiver
    ) -> None:
        """Real withdrawals through the sandbox: each state change reaches the receiver once it is
        committed, signed with the secret, in seq order per workflow, with ``workflow_id:seq`` ids."""
        async with engine_factory() as engine:
            sub = await subscribe(engine.store, receiver.url)
            async with delivering(engine.store):
                wfs = [await engine.submit(await request_for(sandbox.url, amount=f"0.0{n + 1}")) for n in range(4)]
                for wf in wfs:
                    assert (await engine.wait(wf.id, timeout=30)).state is State.DONE
                expected = await transitions_of(engine.store, [wf.id for wf in wfs])
                await receiver.wait_for(ids_of(expected))
                await settled(engine.store)
            log = await webhook_store(engine.store).deliveries(sub.id, limit=1000)
        assert all(r.status != 401 for r in receiver.requests)  # every signature verified
        assert_in_order(receiver, expected)
        assert receiver.delivered_ids() == ids_of(expected)  # transitions only: no notes
        for got in receiver.delivered():
            assert got.payload["id"] == got.event_id and got.payload["type"] in (TRANSITION,)
        assert {d.status for d in log} == {"delivered"} and len(log) == len(ids_of(expected))

    async def test_terminal_only_subscription_gets_one_per_workflow(
        self, sandbox: Any, engine_factory: Any, receiver: Receiver
    ) -> None:
        """A terminal-only subscriber hears of each withdrawal once, when it ends."""
        async with engine_factory() as engine:
            await subscribe(engine.store, receiver.url, events=(TERMINAL,))
            async with delivering(engine.store):
                wfs = [await engine.submit(await request_for(sandbox.url, amount=f"0.0{n + 5}")) for n in range(3)]
                done = [await engine.wait(wf.id, timeout=30) for wf in wfs]
                await receiver.wait_for({event_id(wf.id, wf.event_seq) for wf in done})
        assert [r.payload["data"]["to_state"] for r in receiver.delivered()] == ["DONE"] * 3
        assert {r.payload["type"] for r in receiver.delivered()} == {TERMINAL}


class TestReceiverOutages:
    async def test_receiver_failing_then_gone_then_back_gets_everything(
        self, db_path: Path, receiver: Receiver
    ) -> None:
        """503s, then refused connections: deliveries are retried (tenacity backoff) until it is back."""
        async with SQLiteStore(db_path, group_window=0.001) as store:
            sub = await subscribe(store, receiver.url, events=(ALL_EVENTS,))
            receiver.mode = "fail"
            async with delivering(store):
                wf_ids = await walk(store, 5)
                async with asyncio.timeout(30):
                    while len(receiver.requests) < 5:
                        await asyncio.sleep(0.02)
                await receiver.stop()  # now connections are refused
                async with asyncio.timeout(60):  # every event fanned out, some attempts recorded as failed
                    while True:
                        pending = await webhook_store(store).deliveries(sub.id, status="pending", limit=1000)
                        if len(pending) == 20 and any(d.last_error for d in pending):
                            break
                        await asyncio.sleep(0.05)
                receiver.mode = "ok"
                await receiver.start()
                expected = await transitions_of(store, wf_ids)
                await receiver.wait_for(ids_of(expected))
                await settled(store)
            log = await webhook_store(store).deliveries(sub.id, limit=1000)
        assert_in_order(receiver, expected)
        assert {d.status for d in log} == {"delivered"}
        assert max(d.attempts for d in log) > 1
        assert any(r.status == 503 for r in receiver.requests)

    async def test_past_the_retry_period_failed_then_redelivered(self, db_path: Path, receiver: Receiver) -> None:
        """A receiver that keeps failing past ``retry_period``: the deliveries end ``failed`` (visible in
        the log), later ones of the same workflow are not held forever, and a redelivery by event id
        sends them once the receiver works."""
        settings = replace(FAST_DELIVERY, retry_period=0.3)
        async with SQLiteStore(db_path, group_window=0.001) as store:
            sub = await subscribe(store, receiver.url)
            hooks = webhook_store(store)
            receiver.mode = "fail"
            async with delivering(store, settings):
                (wf_id,) = await walk(store, 1)
                async with asyncio.timeout(30):
                    while len(await hooks.deliveries(sub.id, status="failed")) < 4:
                        await asyncio.sleep(0.05)
                failed = await hooks.deliveries(sub.id, status="failed")
                assert all(d.last_status == 503 and d.last_error == "HTTP 503" and d.next_attempt_at is None
                           for d in failed)  # fmt: skip
                receiver.mode = "ok"
                again = [event_id(wf_id, 1), event_id(wf_id, 4)]
                count = await hooks.redeliver(sub.id, at=time.time(), event_ids=again)
                assert count == 2
                await receiver.wait_for({event_id(wf_id, 1), event_id(wf_id, 4)})
                by_time = await hooks.redeliver(sub.id, at=time.time(), since=T0.timestamp() - 1)
                assert by_time == 4
                await receiver.wait_for({event_id(wf_id, seq) for seq in (1, 2, 3, 4)})


class TestCrash:
    async def test_sigkill_with_deliveries_pending_loses_nothing(
        self, sandbox: Any, admin: SandboxAdmin, db_path: Path, receiver: Receiver
    ) -> None:
        """The service is SIGKILLed while its deliveries fail; after a restart every transition arrives,
        and anything sent twice has the same event id and the same body."""
        async with Engine(
            store=SQLiteStore(db_path), gateways={"default": make_gateway(sandbox.url)}, run_runner=False
        ) as engine:
            await subscribe(engine.store, receiver.url)
            wfs = [await engine.submit(await request_for(sandbox.url, amount=f"0.00{n + 1}")) for n in range(4)]
        receiver.mode = "fail"
        proc = await _start_service(db_path, sandbox.url)
        try:
            async with asyncio.timeout(60):
                while len(receiver.requests) < 8:
                    await asyncio.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert receiver.delivered() == []
        receiver.mode = "ok"
        proc = await _start_service(db_path, sandbox.url)
        try:
            async with SQLiteStore(db_path) as store:
                async with asyncio.timeout(60):
                    while not all([(await store.get(wf.id)).state.is_terminal for wf in wfs]):
                        await asyncio.sleep(0.05)
                expected = await transitions_of(store, [wf.id for wf in wfs])
            await receiver.wait_for(ids_of(expected))
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        assert receiver.delivered_ids() == ids_of(expected)
        bodies: dict[str, bytes] = {}
        for got in receiver.requests:
            assert bodies.setdefault(got.event_id, got.body) == got.body  # a repeat is the same delivery
        assert_in_order(receiver, expected)


async def _start_service(db_path: Path, sandbox_url: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.webhook_proc", str(db_path), sandbox_url,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        line = await proc.stdout.readline()
    assert line.strip() == b"service-started", line
    return proc


@pytest.mark.postgres
class TestPostgresWorkers:
    async def test_two_workers_each_delivery_sent_by_one(self, postgres_dsn: str, receiver: Receiver) -> None:
        """Two workers (own pools) on one database: every event is fanned out once and sent once, in
        order per workflow, and the work is split by claims, not duplicated."""
        async with (
            PostgresStore(postgres_dsn, pool_max=4) as first,
            PostgresStore(postgres_dsn, pool_max=4) as second,
        ):
            sub = await subscribe(first, receiver.url)
            async with delivering(first) as one, delivering(second) as two:
                wf_ids = await walk(first, 12)
                expected = await transitions_of(first, wf_ids)
                await receiver.wait_for(ids_of(expected))
                await settled(first)  # every answer recorded before the workers stop
                await asyncio.sleep(0.3)  # anything sent twice would have arrived by now
            log = await webhook_store(first).deliveries(sub.id, limit=1000)
        sent = [r.event_id for r in receiver.requests]
        assert len(sent) == len(set(sent)) == len(ids_of(expected))
        assert one.sent + two.sent == len(sent)
        assert len(log) == len(sent) and all(d.attempts == 1 for d in log)
        assert_in_order(receiver, expected)
