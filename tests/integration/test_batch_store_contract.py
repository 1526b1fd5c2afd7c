"""The Store contract for the batch kind, on SQLite and PostgreSQL (the ``store`` fixture runs both).

A batch is stored like any workflow (its own states, its request of up to 10,000 items, its events in a
hash chain), its children name it as parent and are found and counted through the parent index, and a
child's derived idempotency key makes its creation happen once, whoever asks and however often."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from engine.audit import verify_store
from engine.bootstrap import standard_kinds
from engine.context import create_workflow
from engine.errors import IdempotencyConflict, StaleVersion
from engine.kinds import new_workflow
from engine.models import Event, Workflow
from engine.policy import WorkflowSettings
from engine.query import ListFilter
from engine.store.base import Store
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SQLiteStore
from workflows.batch.intake import BatchRequest, build_batch
from workflows.batch.kind import KIND
from workflows.batch.machine import BatchState, child_key

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KINDS = standard_kinds()
SETTINGS = WorkflowSettings()
B = BatchState


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def batch_request(n: int = 3, *, bad: bool = True, **kw: Any) -> BatchRequest:
    """``n`` valid BTC items, and (``bad``) one invalid item left out as skipped."""
    items = [
        {"reference": f"ref-{i}", "currency": "BTC", "net_type": "BTC", "amount": f"0.{i + 1:04d}", "address": "bc1q"}
        for i in range(n)
    ]
    return build_batch([*items, {"reference": "bad"}] if bad else items, skip_invalid=True, **kw)


async def add_batch(store: Store, request: BatchRequest | None = None, *, key: str | None = None) -> Workflow:
    wf, event = new_workflow(KIND, request or batch_request(), now=at(0), settings=SETTINGS, idempotency_key=key)
    stored, created = await store.create(wf, event)
    assert created
    return stored


async def move(store: Store, wf: Workflow, trigger: str, *, when: float = 1.0, **data: Any) -> Workflow:
    """Commit the batch's transition ``trigger`` (decided by its machine) with one chained event."""
    dest = KIND.machine.fire(wf, trigger, **data)
    event = Event(
        workflow_id=wf.id, seq=wf.event_seq + 1, at=at(when), trigger=trigger, from_state=str(wf.state),
        to_state=str(dest), data=data,
    ).sealed(wf.last_hash)  # fmt: skip
    moved = replace(wf, state=dest, updated_at=at(when), event_seq=event.seq, last_hash=event.hash,
                    next_run_at=None if KIND.is_terminal(dest) else wf.next_run_at)  # fmt: skip
    return await store.commit(moved, event, owner=None)


async def child(store: Store, batch: Workflow, index: int) -> tuple[Workflow, bool]:
    item = next(i for i in batch.request.items if i.index == index)
    return await create_workflow(store, KINDS, item.request, now=at(2), settings=SETTINGS,
                                 idempotency_key=child_key(batch.id, index), parent_id=batch.id)  # fmt: skip


class TestBatchRecord:
    async def test_round_trips_exactly(self, store: Store) -> None:
        """Kind, state (the kind's own enum), items with exact amounts, caps and skipped items read back."""
        request = batch_request(max_total={"BTC": Decimal("1.50")})
        stored = await add_batch(store, request, key="payday")
        read = await store.get(stored.id)
        assert read.kind == "batch" and read.state is B.ACCEPTED and read.id.startswith("bt_")
        assert isinstance(read.request, BatchRequest) and read.request.same_as(request)
        assert read.request.items[2].request.amount == Decimal("0.0003")
        assert read.request.max_total == {"BTC": Decimal("1.50")}
        assert [(e.index, e.field) for e in read.request.skipped] == [(3, "currency"), (3, "net_type"),
                                                                     (3, "amount"), (3, "address")]  # fmt: skip
        assert (await store.get_by_idempotency_key("payday")) == read
        assert read.lane is None and not read.lane_held

    async def test_a_full_batch_of_10000_items_is_one_row(self, store: Store) -> None:
        """The largest batch is stored and read back whole."""
        stored = await add_batch(store, batch_request(10_000, bad=False))
        assert len((await store.get(stored.id)).request.items) == 10_000

    async def test_transitions_are_committed_with_a_verifiable_chain(self, store: Store) -> None:
        """accepted -> dispatching -> running -> settled, one event each; compare-and-set holds; the audit
        verifies the chain."""
        wf = await add_batch(store)
        wf = await move(store, wf, "dispatch", items=3)
        stale = replace(wf, version=wf.version - 1)
        with pytest.raises(StaleVersion):
            await move(store, stale, "dispatched", children=3)
        wf = await move(store, wf, "dispatched", children=3)
        wf = await move(store, wf, "settle", when=2.0, open=0)
        assert wf.state is B.SETTLED and wf.next_run_at is None
        events = await store.events(wf.id)
        assert [e.trigger for e in events] == ["create", "dispatch", "dispatched", "settle"]
        checked, broken = await verify_store(store)
        assert checked == 1 and broken == []

    async def test_counted_and_listed_by_its_states(self, store: Store) -> None:
        """count_by_state and a list by states know the batch's states beside the withdrawal's; a list by
        kind keeps one kind (the withdrawal list of the API and CLI shows no batch)."""
        running = await move(store, await move(store, await add_batch(store), "dispatch"), "dispatched")
        await add_batch(store)
        counts = await store.count_by_state()
        assert counts.get("accepted") == 1 and counts.get("running") == 1
        assert [w.id for w in await store.list(ListFilter(states={"running"}))] == [running.id]
        kid, _ = await child(store, running, 0)
        assert [w.id for w in await store.list(ListFilter(kind="withdrawal"))] == [kid.id]
        batches = await store.list(ListFilter(kind="batch"))
        assert {w.kind for w in batches} == {"batch"} and len(batches) == 2
        assert len(await store.list()) == 3

    async def test_cancel_flag_and_claims(self, store: Store) -> None:
        """A batch is claimed like any due workflow; a cancel flags it and makes it due; a terminal one
        ignores the cancel."""
        wf = await add_batch(store)
        claimed = await store.claim_due(now=at(1), limit=10, owner="r1", lease_seconds=30)
        assert [c.id for c in claimed] == [wf.id]
        await store.release([wf.id], owner="r1")
        flagged = await store.request_cancel(wf.id, at=at(2))
        assert flagged.cancel_requested and flagged.next_run_at is not None and flagged.next_run_at <= at(2)
        done = await move(store, await move(store, flagged, "cancel"), "cancelled", open=0)
        again = await store.request_cancel(done.id, at=at(3))
        assert again.state is B.CANCELLED and again.next_run_at is None


class TestChildren:
    async def test_each_child_is_created_once_under_its_derived_key(self, store: Store) -> None:
        """Asking again (a resumed dispatch) returns the stored child; concurrent asks make one child."""
        batch = await add_batch(store)
        first, created = await child(store, batch, 0)
        again, created_again = await child(store, batch, 0)
        assert created and not created_again and again.id == first.id
        racers = await asyncio.gather(*(child(store, batch, 1) for _ in range(8)))
        assert len({wf.id for wf, _ in racers}) == 1 and sum(made for _, made in racers) == 1
        assert [c.idempotency_key for c in await store.children(batch.id)] == [
            child_key(batch.id, 0),
            child_key(batch.id, 1),
        ]
        assert (await store.get(first.id)).parent_id == batch.id

    async def test_a_key_reused_for_another_item_or_parent_conflicts(self, store: Store) -> None:
        """The derived key belongs to one item of one batch: another request or parent under it is refused."""
        batch, other = await add_batch(store), await add_batch(store)
        await child(store, batch, 0)
        wrong_item = batch.request.items[1].request
        with pytest.raises(IdempotencyConflict):
            await create_workflow(store, KINDS, wrong_item, now=at(3), settings=SETTINGS,
                                  idempotency_key=child_key(batch.id, 0), parent_id=batch.id)  # fmt: skip
        with pytest.raises(IdempotencyConflict):
            await create_workflow(store, KINDS, batch.request.items[0].request, now=at(3), settings=SETTINGS,
                                  idempotency_key=child_key(batch.id, 0), parent_id=other.id)  # fmt: skip

    async def test_children_counted_by_kind_and_state(self, store: Store) -> None:
        """The batch follows its children through one grouped count; another batch's are not mixed in."""
        batch, other = await add_batch(store), await add_batch(store)
        for index in range(3):
            await child(store, batch, index)
        await child(store, other, 0)
        assert await store.count_children(batch.id) == {("withdrawal", "pending", False): 3}
        assert len(await store.children(batch.id, limit=2)) == 2

    async def test_reopened_store_keeps_batch_and_children(self, store: Store) -> None:
        """A second store over the same storage reads the batch and its children back."""
        batch = await add_batch(store)
        await child(store, batch, 0)
        other: Store
        if isinstance(store, SQLiteStore):
            other = SQLiteStore(store.path, kinds=KINDS)
        else:
            assert isinstance(store, PostgresStore)
            other = PostgresStore(store.dsn, notify_channel=store.notify_channel, kinds=KINDS)
        await other.open()
        try:
            assert (await other.get(batch.id)).request.same_as(batch.request)
            assert len(await other.children(batch.id)) == 1
        finally:
            await other.close()
