"""The PostgreSQL store's group commit (engine/store/pg_commits.py): commits and creations that arrive
together share one statement, and each still gets exactly the answer it would get alone.

Every test fires its writes together (``asyncio.gather``), so they queue in the same turn of the event
loop and leave as one batch; the store's counters show that they did.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from engine.errors import LaneBusy, ReferenceConflict, StaleVersion
from engine.models import State
from engine.store.postgres import PostgresStore
from tests.integration.test_store_contract import add, advanced, at, claim, new_workflow, request_for

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pg(postgres_dsn: str) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(postgres_dsn) as store:
        yield store


async def event_count(store: PostgresStore, workflow_id: str) -> int:
    return len(await store.events(workflow_id))


async def test_concurrent_commits_share_statements_and_each_is_written(pg: PostgresStore) -> None:
    workflows = [await add(pg, request=request_for(amount=f"0.{i + 1:04d}")) for i in range(60)]
    before = pg._commits.batches
    moved = [advanced(wf, to=State.VERIFYING_ADDRESS, attempt=3) for wf in workflows]
    stored = await asyncio.gather(*(pg.commit(wf, event, owner=None) for wf, event in moved))
    assert pg._commits.batches - before < len(workflows)  # shared, not one statement each
    for (wanted, _), got in zip(moved, stored, strict=True):
        assert got == replace(wanted, version=1)
        assert got == await pg.get(wanted.id)
        assert await event_count(pg, wanted.id) == 2


async def test_each_commit_of_a_batch_fails_or_succeeds_on_its_own(pg: PostgresStore) -> None:
    """A stale version and a lost lease fail alone (nothing of them written); the rest of the batch lands."""
    fresh = [await add(pg, request=request_for(amount=f"0.{i + 1:04d}")) for i in range(6)]
    assert sorted(await claim(pg, "a", now=0)) == sorted(wf.id for wf in fresh)
    stale = replace(fresh[1], version=7)
    writes = [
        pg.commit(*advanced(fresh[0], when=2), owner="a"),
        pg.commit(*advanced(stale, when=2), owner="a"),
        pg.commit(*advanced(fresh[2], when=2), owner="b"),  # not the lease holder
        pg.commit(*advanced(fresh[3], when=40), owner="a"),  # the lease ran out at 30
        pg.commit(*advanced(fresh[4], when=2), owner="a"),
        pg.commit(advanced(fresh[5], when=2)[0], None, owner="a"),  # no event
    ]
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert [type(r).__name__ for r in results] == [
        "Workflow", "StaleVersion", "StaleVersion", "StaleVersion", "Workflow", "Workflow",
    ]  # fmt: skip
    for wf, result in zip(fresh, results, strict=True):
        stored = await pg.get(wf.id)
        written = not isinstance(result, StaleVersion)
        assert stored.version == (1 if written else 0)
        assert await event_count(pg, wf.id) == (2 if written and wf is not fresh[5] else 1)


async def test_a_constraint_one_commit_breaks_costs_only_that_commit(pg: PostgresStore) -> None:
    """Two submits for one lane in one batch: the statement is refused as a whole, then each commit goes
    alone and exactly one gets LaneBusy."""
    same_lane = [await add(pg) for _ in range(2)]
    others = [await add(pg, request=request_for(amount=f"0.{i + 1:04d}")) for i in range(4)]
    writes = [pg.commit(*advanced(wf, to=State.SUBMITTING, lane_held=True), owner=None) for wf in same_lane]
    writes += [pg.commit(*advanced(wf, to=State.VERIFYING_ADDRESS), owner=None) for wf in others]
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert sum(isinstance(r, LaneBusy) for r in results[:2]) == 1
    assert all(not isinstance(r, Exception) for r in results[2:])
    held = [wf for wf in same_lane if (await pg.get(wf.id)).lane_held]
    assert len(held) == 1
    for wf in others:
        assert (await pg.get(wf.id)).state is State.VERIFYING_ADDRESS


async def test_an_unseen_cancel_keeps_the_row_due_in_a_batch(pg: PostgresStore) -> None:
    """The flag rules hold inside a batch, and the workflow returned is the row as stored."""
    flagged = await add(pg, next_run_at=at(100))
    plain = await add(pg, request=request_for(amount="0.5"), next_run_at=at(100))
    await pg.request_cancel(flagged.id, at=at(2))  # due at 2 now
    results = await asyncio.gather(
        pg.commit(*advanced(flagged, when=3, next_run_at=at(500)), owner=None),
        pg.commit(*advanced(plain, when=3, next_run_at=at(500)), owner=None),
    )
    assert (results[0].next_run_at, results[0].cancel_requested_at) == (at(2), at(2))
    assert results[0] == await pg.get(flagged.id)
    assert (results[1].next_run_at, results[1].cancel_requested_at) == (at(500), None)


async def test_a_commit_cancelled_before_its_batch_left_is_not_written(pg: PostgresStore) -> None:
    wf = await add(pg)
    task = asyncio.create_task(pg.commit(*advanced(wf, to=State.VERIFYING_ADDRESS), owner=None))
    await asyncio.sleep(0)  # queued; the batch leaves on the next turn of the loop
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)
    assert (await pg.get(wf.id)).version == 0
    assert await event_count(pg, wf.id) == 1


async def test_concurrent_creations_share_statements_and_keep_idempotency(pg: PostgresStore) -> None:
    """One batch of creations: distinct ones are all inserted (with their first event), two under one
    idempotency key give one workflow, and a taken reference fails only its own creation."""
    await add(pg, request=request_for(amount="0.9"), reference="ref-1")
    distinct = [new_workflow(request=request_for(amount=f"0.{i + 1:04d}")) for i in range(20)]
    keyed = [new_workflow(request=request_for(amount="0.7"), idempotency_key="key-1") for _ in range(2)]
    clash = new_workflow(request=request_for(amount="0.8"), reference="ref-1")
    before = pg._creates.batches
    results = await asyncio.gather(
        *(pg.create(wf, event) for wf, event in [*distinct, *keyed, clash]), return_exceptions=True
    )
    assert pg._creates.batches - before < len(results)
    assert all(created for _, created in results[:20])
    for wf, _ in distinct:
        assert (await pg.get(wf.id)).id == wf.id and await event_count(pg, wf.id) == 1
    (first, made_first), (second, made_second) = results[20], results[21]
    assert sorted([made_first, made_second]) == [False, True] and first.id == second.id
    assert isinstance(results[22], ReferenceConflict)


async def test_a_settled_commit_gives_its_lease_back(pg: PostgresStore) -> None:
    """Terminal and unscheduled: never stepped again, so the commit drops the lease itself (the runner's
    release afterwards has nothing to write); a commit that keeps the workflow scheduled keeps it."""
    done, going = await add(pg), await add(pg, request=request_for(amount="0.5"))
    await claim(pg, "a", now=0)
    await asyncio.gather(
        pg.commit(*advanced(done, to=State.DONE, next_run_at=None), owner="a"),
        pg.commit(*advanced(going, to=State.WAITING, next_run_at=at(5)), owner="a"),
    )
    async with pg._db().acquire() as conn:
        owners = dict(await conn.fetch("SELECT id, lease_owner FROM workflows WHERE id = ANY($1::text[])",
                                       [done.id, going.id]))  # fmt: skip
    assert owners == {done.id: None, going.id: "a"}
