"""The Store contract (engine/store/base.py), run against every store: SQLite and PostgreSQL.

Records are built directly, without an engine or an exchange, so each test states one rule of the
protocol and checks it through the public methods (or, for the append-only audit trail, through raw
SQL that the database itself must refuse). Times are fixed offsets from ``T0``: the stores never read
a clock of their own.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from engine.errors import LaneBusy, StaleVersion, WorkflowNotFound
from engine.models import Event, State, TransactionType, WithdrawalRequest, Workflow
from engine.store.base import Store
from engine.store.postgres import POSTGRES_MIGRATIONS, PostgresStore
from engine.store.sqlite import SQLiteStore
from tests.integration.conftest import RawSQL

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KST = timezone(timedelta(hours=9))
_ids = itertools.count(1)


def at(seconds: float) -> datetime:
    """``T0`` plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def request_for(amount: str = "0.01", currency: str = "BTC", account: str = "default", **kw: Any) -> WithdrawalRequest:
    """A valid request; its lane is (account, currency, BTC, amount)."""
    return WithdrawalRequest(
        currency=currency, net_type="BTC", amount=Decimal(amount), address="bc1qdestination0", account=account, **kw
    )


def new_workflow(*, created: float = 0.0, state: State = State.PENDING, **fields: Any) -> tuple[Workflow, Event]:
    """A fresh workflow (ids sort by creation) and its sealed first event."""
    wf_id = fields.pop("id", None) or f"wd_{next(_ids):08d}"
    event = Event(
        workflow_id=wf_id, seq=1, at=at(created), trigger="create", from_state=None, to_state=state.value,
        data={"source": "contract"},
    ).sealed("")  # fmt: skip
    fields.setdefault("request", request_for())
    fields.setdefault("next_run_at", at(created))
    wf = Workflow(
        id=wf_id, state=state, created_at=at(created), updated_at=at(created), event_seq=1, last_hash=event.hash,
        **fields,
    )  # fmt: skip
    return wf, event


async def add(store: Store, *, created: float = 0.0, state: State = State.PENDING, **fields: Any) -> Workflow:
    """Create a workflow and return it as stored."""
    wf, event = new_workflow(created=created, state=state, **fields)
    stored, was_created = await store.create(wf, event)
    assert was_created
    return stored


def advanced(wf: Workflow, *, when: float = 1.0, to: State | None = None, **changes: Any) -> tuple[Workflow, Event]:
    """The next record (written at ``when`` on the writer's clock) and its hash-chained event."""
    dest = to or wf.state
    event = Event(
        workflow_id=wf.id, seq=wf.event_seq + 1, at=at(when), trigger="note", from_state=wf.state.value,
        to_state=dest.value, data={"seq": wf.event_seq + 1},
    ).sealed(wf.last_hash)  # fmt: skip
    moved = replace(wf, state=dest, updated_at=at(when), event_seq=event.seq, last_hash=event.hash, **changes)
    return moved, event


async def commit(
    store: Store, wf: Workflow, *, owner: str | None = None, when: float = 1.0, to: State | None = None, **changes: Any
) -> Workflow:
    """Commit ``wf`` moved on by one event."""
    moved, event = advanced(wf, when=when, to=to, **changes)
    return await store.commit(moved, event, owner=owner)


async def reschedule(store: Store, wf: Workflow, *, owner: str | None, when: float, due: float | None) -> Workflow:
    """Commit without an event (a step sleeping its workflow)."""
    moved = replace(wf, updated_at=at(when), next_run_at=None if due is None else at(due))
    return await store.commit(moved, None, owner=owner)


async def claim(store: Store, owner: str, *, now: float, limit: int = 100, lease: float = 30.0) -> list[str]:
    """Ids claimed by ``owner`` at ``now``."""
    return [wf.id for wf in await store.claim_due(now=at(now), limit=limit, owner=owner, lease_seconds=lease)]


async def reopened(store: Store) -> Store:
    """A second, open store over the same storage."""
    other: Store
    if isinstance(store, SQLiteStore):
        other = SQLiteStore(store.path)
    else:
        assert isinstance(store, PostgresStore)
        other = PostgresStore(store.dsn, notify_channel=store.notify_channel)
    await other.open()
    return other


class TestCreateAndGet:
    async def test_every_field_round_trips_exactly(self, store: Store) -> None:
        """A record with every field set comes back equal: exact Decimal, aware datetimes, JSON, flags."""
        request = request_for(
            "1234.567890123456789", secondary_address="memo-42", transaction_type=TransactionType.INTERNAL,
            account="desk-2", exchange_name="Cold wallet",
        )  # fmt: skip
        wf, event = new_workflow(
            state=State.WAITING, request=request, created=0.5, idempotency_key="key-1", lane_held=True,
            exchange_uuid="ex-uuid-1", txid="0xabc", exchange_state="WAITING", attempt=3, submit_count=2,
            next_run_at=at(12.345678), deadline_at=at(600).astimezone(KST), submit_body='{"amount":"1234.5"}',
            submitted_at=at(1.000001), cancel_requested_at=at(2), resolution="resubmit", reason="why not",
            error={"error": "ExchangeTimeout", "status": None}, version=7,
            data={"nested": {"list": [1, 2.5, "x", None, True]}, "unicode": "출금"},
        )  # fmt: skip
        assert await store.create(wf, event) == (wf, True)
        got = await store.get(wf.id)
        assert got == wf
        assert str(got.request.amount) == "1234.567890123456789"
        assert got.deadline_at is not None and got.deadline_at.utcoffset() is not None
        assert await store.get_by_idempotency_key("key-1") == wf
        assert await store.events(wf.id) == [event]

    async def test_minimal_record_keeps_none_fields(self, store: Store) -> None:
        """Optional fields stored as None come back as None (not '' or 0)."""
        wf, event = new_workflow(next_run_at=None)
        await store.create(wf, event)
        got = await store.get(wf.id)
        assert got == wf
        assert (got.next_run_at, got.exchange_uuid, got.error, got.idempotency_key, got.resolution) == (None,) * 5

    async def test_unknown_id_and_key(self, store: Store) -> None:
        """An unknown id raises WorkflowNotFound; an unknown idempotency key is None."""
        with pytest.raises(WorkflowNotFound):
            await store.get("wd_missing")
        assert await store.get_by_idempotency_key("nope") is None

    async def test_known_idempotency_key_returns_the_existing_workflow(self, store: Store) -> None:
        """A second create under a known key returns (existing, False) and writes nothing."""
        first = await add(store, idempotency_key="K")
        again, event = new_workflow(idempotency_key="K", request=request_for("2"))
        assert await store.create(again, event) == (first, False)
        assert await store.events(again.id) == []
        assert await store.count_by_state() == {"pending": 1}

    async def test_concurrent_creates_under_one_key_make_one_workflow(self, store: Store) -> None:
        """Racing creates with one idempotency key: exactly one is created, all see the same workflow."""
        pairs = [new_workflow(idempotency_key="race") for _ in range(8)]
        results = await asyncio.gather(*(store.create(wf, ev) for wf, ev in pairs))
        assert sum(created for _, created in results) == 1
        assert len({wf.id for wf, _ in results}) == 1
        assert await store.count_by_state() == {"pending": 1}


class TestCommit:
    async def test_commit_bumps_version_and_appends_the_event(self, store: Store) -> None:
        """The stored row gets version + 1 and the event is appended; the result equals what get reads."""
        wf = await add(store)
        moved, event = advanced(wf, to=State.VERIFYING_ADDRESS, attempt=1)
        stored = await store.commit(moved, event, owner=None)
        assert stored.version == wf.version + 1
        assert stored == await store.get(wf.id) == replace(moved, version=wf.version + 1)
        assert [e.seq for e in await store.events(wf.id)] == [1, 2]

    async def test_stale_version_is_refused_and_writes_nothing(self, store: Store) -> None:
        """Two writers from one read: the second gets StaleVersion and its event is not written."""
        wf = await add(store)
        winner = await commit(store, wf, to=State.VERIFYING_ADDRESS)
        with pytest.raises(StaleVersion):
            await commit(store, wf, to=State.ABORTED, reason="late")
        assert await store.get(wf.id) == winner
        assert len(await store.events(wf.id)) == 2

    async def test_event_that_cannot_be_appended_rolls_back_the_row(self, store: Store) -> None:
        """Row and event are one transaction: a duplicate event seq leaves the row untouched."""
        wf = await add(store)
        _, first_event = new_workflow(id=wf.id)
        moved = replace(wf, state=State.VERIFYING_ADDRESS, updated_at=at(1))
        with pytest.raises(StaleVersion):
            await store.commit(moved, first_event, owner=None)
        assert await store.get(wf.id) == wf

    async def test_lease_holder_commits(self, store: Store) -> None:
        """The owner of an unexpired lease may write."""
        wf = await add(store)
        assert await claim(store, "a", now=0, lease=30) == [wf.id]
        assert (await commit(store, wf, owner="a", when=29)).version == 1

    async def test_wrong_owner_is_stale(self, store: Store) -> None:
        """Someone else's lease (or no lease at all) fences the writer off."""
        leased, free = await add(store, next_run_at=at(0)), await add(store, next_run_at=at(1))
        assert await claim(store, "a", now=1, limit=1) == [leased.id]
        with pytest.raises(StaleVersion):
            await commit(store, leased, owner="b")
        with pytest.raises(StaleVersion):
            await commit(store, free, owner="b")
        assert (await store.get(leased.id)).version == 0 and (await store.get(free.id)).version == 0

    async def test_expired_lease_owner_is_stale(self, store: Store) -> None:
        """A worker whose lease expired (by its own clock) cannot write, even before anyone took over."""
        wf = await add(store)
        await claim(store, "a", now=0, lease=10)
        with pytest.raises(StaleVersion):
            await commit(store, wf, owner="a", when=10.5)
        assert len(await store.events(wf.id)) == 1

    async def test_lease_taken_over_fences_the_old_owner(self, store: Store) -> None:
        """After a takeover the dead worker's late write fails and the new owner's succeeds."""
        wf = await add(store)
        await claim(store, "a", now=0, lease=10)
        assert await claim(store, "b", now=11, lease=10) == [wf.id]
        with pytest.raises(StaleVersion):
            await commit(store, wf, owner="a", when=5)
        assert (await commit(store, wf, owner="b", when=12)).version == 1

    async def test_lane_is_held_by_one_workflow_at_a_time(self, store: Store) -> None:
        """Two unresolved submits in one lane: LaneBusy until the first lets go (amounts compare by value)."""
        first, second = await add(store), await add(store, request=request_for("0.0100"))
        assert first.lane == second.lane
        first = await commit(store, first, to=State.SUBMITTING, lane_held=True)
        with pytest.raises(LaneBusy):
            await commit(store, second, to=State.SUBMITTING, lane_held=True)
        assert await store.get(second.id) == second
        assert len(await store.events(second.id)) == 1
        await commit(store, first, when=2, to=State.WAITING, lane_held=False)
        assert (await commit(store, second, when=3, to=State.SUBMITTING, lane_held=True)).lane_held

    async def test_concurrent_commits_succeed_or_fail_one_by_one(self, store: Store) -> None:
        """Commits racing together (grouped or not) each win or lose on their own merits."""
        workflows = [await add(store, request=request_for(f"{n + 1}.5")) for n in range(20)]
        held = await add(store, request=request_for("1.50"))
        held = await commit(store, held, to=State.SUBMITTING, lane_held=True)
        writes = [store.commit(*advanced(wf, to=State.SUBMITTING, lane_held=True), owner=None) for wf in workflows]
        writes.append(store.commit(*advanced(workflows[5], to=State.ABORTED), owner=None))
        results = await asyncio.gather(*writes, return_exceptions=True)
        failures = [type(r).__name__ for r in results if isinstance(r, Exception)]
        assert sorted(failures) == ["LaneBusy", "StaleVersion"]
        assert isinstance(results[0], LaneBusy)
        for wf in workflows[1:]:
            assert (await store.get(wf.id)).version == 1
            assert len(await store.events(wf.id)) == 2
        assert (await store.get(workflows[0].id)).version == 0
        fresh = [await store.get(wf.id) for wf in workflows[1:]]
        moved = await asyncio.gather(*(commit(store, wf, when=2, to=State.WAITING, lane_held=False) for wf in fresh))
        assert moved == [await store.get(wf.id) for wf in fresh]
        assert {wf.version for wf in moved} == {2}

    async def test_other_lanes_do_not_block(self, store: Store) -> None:
        """Another amount, currency or account is another lane."""
        workflows = [
            await add(store, request=request_for("0.01")),
            await add(store, request=request_for("0.02")),
            await add(store, request=request_for("0.01", currency="ETH")),
            await add(store, request=request_for("0.01", account="other")),
        ]
        for wf in workflows:
            assert (await commit(store, wf, to=State.SUBMITTING, lane_held=True)).lane_held

    async def test_exchange_uuid_belongs_to_one_workflow(self, store: Store) -> None:
        """A second workflow adopting an owned exchange uuid gets StaleVersion."""
        first, second = await add(store), await add(store, request=request_for("0.5"))
        await commit(store, first, to=State.WAITING, exchange_uuid="ex-1")
        with pytest.raises(StaleVersion):
            await commit(store, second, to=State.WAITING, exchange_uuid="ex-1")
        assert (await store.get(second.id)).exchange_uuid is None
        assert await store.owners_of(["ex-1"]) == {"ex-1": first.id}


class TestEvents:
    async def test_events_are_ordered_and_paged_by_seq(self, store: Store) -> None:
        """events() returns 1..n in order, hash-chained; after_seq skips what was seen."""
        wf = await add(store)
        for n in range(2, 6):
            wf = await commit(store, wf, when=n)
        events = await store.events(wf.id)
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]
        assert all(e.prev_hash == p.hash for p, e in itertools.pairwise(events))
        assert [e.seq for e in await store.events(wf.id, after_seq=3)] == [4, 5]
        assert await store.events(wf.id, after_seq=5) == []
        assert await store.events("wd_missing") == []

    @pytest.mark.parametrize("sql", ["UPDATE events SET trigger = 'forged'", "DELETE FROM events"])
    async def test_database_refuses_edits_to_events(self, store: Store, raw_sql: RawSQL, sql: str) -> None:
        """The audit trail is append-only in the database itself, not only in our code."""
        wf = await add(store)
        before = await store.events(wf.id)
        with pytest.raises((sqlite3.IntegrityError, asyncpg.PostgresError), match="append-only"):
            await raw_sql(sql)
        assert await store.events(wf.id) == before


class TestClaims:
    async def test_claims_only_due_rows_oldest_first_up_to_limit(self, store: Store) -> None:
        """Due rows come oldest first, up to the limit; future and unscheduled rows never."""
        late = await add(store, next_run_at=at(5))
        early = await add(store, next_run_at=at(1))
        middle = await add(store, next_run_at=at(3))
        await add(store, next_run_at=at(100))
        await add(store, next_run_at=None)
        claimed = await store.claim_due(now=at(10), limit=2, owner="a", lease_seconds=30)
        assert [wf.id for wf in claimed] == [early.id, middle.id]
        assert claimed == [early, middle]
        assert await claim(store, "a", now=10) == [late.id]
        assert await claim(store, "b", now=10) == []

    async def test_leased_rows_are_skipped_until_the_lease_expires(self, store: Store) -> None:
        """A dead worker's workflows are claimable by another after its lease expired."""
        wf = await add(store)
        assert await claim(store, "a", now=0, lease=30) == [wf.id]
        assert await claim(store, "b", now=29) == []
        assert await claim(store, "b", now=31) == [wf.id]

    @pytest.mark.parametrize("claimers", [2, 4])
    async def test_concurrent_claimers_never_share_a_workflow(self, store: Store, claimers: int) -> None:
        """Claimers racing over 200 due rows: every row is leased exactly once."""
        pairs = [new_workflow() for _ in range(200)]
        await asyncio.gather(*(store.create(wf, ev) for wf, ev in pairs))
        claimed: list[str] = []
        while True:
            rounds = await asyncio.gather(*(claim(store, f"w{i}", now=1, limit=37) for i in range(claimers)))
            batch = [wf_id for ids in rounds for wf_id in ids]
            if not batch:
                break
            claimed.extend(batch)
        assert len(claimed) == len(set(claimed)) == 200
        assert set(claimed) == {wf.id for wf, _ in pairs}

    async def test_renew_extends_only_the_owners_leases(self, store: Store) -> None:
        """renew pushes the owner's expiry forward; another owner's renew does nothing."""
        mine, theirs = await add(store, next_run_at=at(0)), await add(store, next_run_at=at(0.5))
        assert await claim(store, "a", now=1, limit=1, lease=9) == [mine.id]
        assert await claim(store, "b", now=1, limit=1, lease=9) == [theirs.id]
        await store.renew([mine.id, theirs.id], now=at(8), owner="a", lease_seconds=10)
        assert await claim(store, "c", now=15) == [theirs.id]
        assert await claim(store, "c", now=17.5) == []
        assert await claim(store, "c", now=18.5) == [mine.id]

    async def test_release_frees_only_the_owners_leases(self, store: Store) -> None:
        """release by the owner makes the row claimable at once; by anyone else, nothing happens."""
        wf = await add(store)
        await claim(store, "a", now=0)
        await store.release([wf.id], owner="b")
        assert await claim(store, "c", now=1) == []
        await store.release([wf.id], owner="a")
        await store.release([], owner="a")
        assert await claim(store, "c", now=1) == [wf.id]

    async def test_clear_leases_frees_everything(self, store: Store) -> None:
        """clear_leases (an exclusive runner taking over) drops every lease."""
        ids = {(await add(store)).id for _ in range(3)}
        await claim(store, "a", now=0)
        await store.clear_leases()
        assert set(await claim(store, "b", now=0)) == ids

    async def test_next_due_at_ignores_leased_rows_unless_asked(self, store: Store) -> None:
        """The earliest unleased due time; with any_lease, leased rows count too."""
        assert await store.next_due_at() is None
        await add(store, next_run_at=at(1))
        await claim(store, "a", now=1)
        await add(store, next_run_at=at(5))
        await add(store, next_run_at=None)
        assert await store.next_due_at() == at(5)
        assert await store.next_due_at(any_lease=True) == at(1)


class TestOperatorFlags:
    async def test_cancel_sets_the_flag_once_and_makes_it_due(self, store: Store) -> None:
        """request_cancel keeps the first request time, wakes the workflow and does not bump the version."""
        wf = await add(store, next_run_at=at(100))
        flagged = await store.request_cancel(wf.id, at=at(10))
        assert (flagged.cancel_requested_at, flagged.next_run_at, flagged.version) == (at(10), at(10), wf.version)
        assert flagged == await store.get(wf.id)
        again = await store.request_cancel(wf.id, at=at(20).astimezone(KST))
        assert (again.cancel_requested_at, again.next_run_at) == (at(10), at(10))

    async def test_cancel_wakes_an_unscheduled_workflow(self, store: Store) -> None:
        """A sleeping workflow with no next_run_at becomes due at the request time."""
        wf = await add(store, state=State.NEEDS_REVIEW, next_run_at=None)
        assert (await store.request_cancel(wf.id, at=at(7))).next_run_at == at(7)

    async def test_cancel_of_a_terminal_workflow_changes_nothing(self, store: Store) -> None:
        """Terminal workflows are returned as they are, without an error."""
        wf = await add(store, state=State.DONE, next_run_at=None)
        assert await store.request_cancel(wf.id, at=at(5)) == wf
        assert await store.get(wf.id) == wf

    async def test_flags_on_unknown_workflows_raise(self, store: Store) -> None:
        """Both requests raise WorkflowNotFound for an unknown id."""
        with pytest.raises(WorkflowNotFound):
            await store.request_cancel("wd_missing", at=at(1))
        with pytest.raises(WorkflowNotFound):
            await store.request_resolution("wd_missing", "abandon", at=at(1))

    async def test_resolution_only_for_needs_review(self, store: Store) -> None:
        """A resolution is recorded (and wakes the workflow) only in needs_review; others are unchanged."""
        waiting = await add(store, state=State.WAITING, next_run_at=at(50))
        assert await store.request_resolution(waiting.id, "abandon", at=at(5)) == waiting
        review = await add(store, state=State.NEEDS_REVIEW, next_run_at=None)
        resolved = await store.request_resolution(review.id, "resubmit", at=at(5))
        assert (resolved.resolution, resolved.next_run_at, resolved.version) == ("resubmit", at(5), review.version)
        assert resolved == await store.get(review.id)

    async def test_owner_commit_keeps_a_cancel_it_had_not_seen(self, store: Store) -> None:
        """A cancel flagged during a step survives the step's commit and keeps the workflow due."""
        wf = await add(store, state=State.WAITING, next_run_at=at(0))
        await claim(store, "a", now=0)
        await reschedule(store, wf, owner="a", when=1, due=100)
        wf = await store.get(wf.id)
        await store.request_cancel(wf.id, at=at(2))
        await reschedule(store, wf, owner="a", when=3, due=500)
        stored = await store.get(wf.id)
        assert (stored.cancel_requested_at, stored.next_run_at, stored.version) == (at(2), at(2), 2)

    async def test_owner_commit_to_a_terminal_state_unschedules_despite_a_cancel(self, store: Store) -> None:
        """A terminal workflow is never due again, even with a cancel the writer had not seen."""
        wf = await add(store, state=State.WAITING)
        await store.request_cancel(wf.id, at=at(2))
        done = await commit(store, wf, when=3, to=State.DONE, next_run_at=None)
        assert (await store.get(wf.id)).next_run_at is None
        assert done.version == 1

    async def test_owner_who_saw_the_cancel_schedules_freely(self, store: Store) -> None:
        """Once the writer read the flag, its next_run_at is written as given."""
        wf = await add(store, state=State.NEEDS_REVIEW, next_run_at=None)
        seen = await store.request_cancel(wf.id, at=at(2))
        await reschedule(store, seen, owner=None, when=3, due=None)
        stored = await store.get(wf.id)
        assert (stored.next_run_at, stored.cancel_requested_at) == (None, at(2))

    async def test_resolution_is_consumed_when_leaving_needs_review(self, store: Store) -> None:
        """The operator's decision is cleared once acted on, so it cannot fire again in a later review."""
        wf = await add(store, state=State.NEEDS_REVIEW, next_run_at=None)
        resolved = await store.request_resolution(wf.id, "resubmit", at=at(1))
        submitting = await commit(store, resolved, when=2, to=State.SUBMITTING, resolution=None)
        assert (await store.get(wf.id)).resolution is None
        await commit(store, submitting, when=3, to=State.NEEDS_REVIEW, next_run_at=None)
        assert (await store.get(wf.id)).resolution is None

    async def test_resolution_arriving_during_a_review_step_survives(self, store: Store) -> None:
        """A decision recorded while the owner notes something in needs_review is kept and stays due."""
        wf = await add(store, state=State.NEEDS_REVIEW, next_run_at=None)
        read = await store.request_cancel(wf.id, at=at(1))
        await store.request_resolution(wf.id, "abandon", at=at(2))
        await commit(store, read, when=3, next_run_at=None, data={"cancel_noted": True})
        stored = await store.get(wf.id)
        assert (stored.resolution, stored.next_run_at, stored.data) == ("abandon", at(2), {"cancel_noted": True})

    async def test_an_unflagged_commit_loses_to_an_operator_flag(self, store: Store) -> None:
        """A decision the engine takes on its own (``unflagged``) is refused once an operator's resolution or
        cancel arrived after the read, and the operator's word stays; with no flag it goes through."""
        for flag in ("resolution", "cancel"):
            wf = await add(store, state=State.NEEDS_REVIEW, next_run_at=None)
            if flag == "resolution":
                await store.request_resolution(wf.id, "abandon", at=at(2))
            else:
                await store.request_cancel(wf.id, at=at(2))
            moved, event = advanced(wf, when=3, to=State.SUBMITTING)
            with pytest.raises(StaleVersion):
                await store.commit(moved, event, owner=None, unflagged=True)
            stored = await store.get(wf.id)
            assert stored.state is State.NEEDS_REVIEW and stored.version == wf.version
            assert stored.resolution == ("abandon" if flag == "resolution" else None)
        clean = await add(store, state=State.NEEDS_REVIEW, next_run_at=None)
        moved, event = advanced(clean, when=3, to=State.SUBMITTING)
        assert (await store.commit(moved, event, owner=None, unflagged=True)).state is State.SUBMITTING


class TestAbandonWatch:
    async def test_an_aborted_workflow_may_keep_its_lane_and_be_due(self, store: Store) -> None:
        """An abandoned workflow watching its lane: terminal, lane held, due, claimable; the lane's next
        submit gets LaneBusy until the watch lets go, and the late withdrawal's uuid is then owned by it."""
        watcher = await add(store, state=State.NEEDS_REVIEW, lane_held=True, next_run_at=None)
        watching = await commit(store, watcher, when=1, to=State.ABORTED, lane_held=True, next_run_at=at(2))
        assert (watching.state, watching.lane_held, watching.next_run_at) == (State.ABORTED, True, at(2))
        assert await claim(store, "w1", now=3) == [watching.id]
        other = await add(store, created=4, state=State.CHECKING_WALLET)
        with pytest.raises(LaneBusy):
            await commit(store, other, when=5, to=State.SUBMITTING, lane_held=True)
        watching = await store.get(watching.id)
        found = await commit(store, watching, owner="w1", when=6, exchange_uuid="late-1", next_run_at=at(7))
        assert await store.owners_of(["late-1"]) == {"late-1": watching.id}
        await commit(store, found, owner="w1", when=8, lane_held=False, next_run_at=None)
        other = await store.get(other.id)
        submitted = await commit(store, other, when=9, to=State.SUBMITTING, lane_held=True)
        assert submitted.lane_held and (await store.get(watching.id)).exchange_uuid == "late-1"


class TestQueries:
    async def test_owners_of(self, store: Store) -> None:
        """Each known exchange uuid maps to its workflow; unknown ones are absent."""
        first = await add(store, exchange_uuid="u-1")
        second = await add(store, exchange_uuid="u-2", request=request_for("1"))
        assert await store.owners_of(["u-1", "u-2", "u-x"]) == {"u-1": first.id, "u-2": second.id}
        assert await store.owners_of([]) == {}

    async def test_sum_submitted_counts_what_may_have_left(self, store: Store) -> None:
        """Exact sum of this account's submits of this currency since ``since``, aborted ones excluded."""
        await add(store, state=State.WAITING, request=request_for("0.1"), submitted_at=at(10))
        await add(store, state=State.DONE, request=request_for("0.2"), submitted_at=at(20.5))
        await add(store, state=State.NEEDS_REVIEW, request=request_for("0.000000000000000001"), submitted_at=at(5))
        await add(store, state=State.ABORTED, request=request_for("5"), submitted_at=at(30))
        await add(store, state=State.DONE, request=request_for("7", currency="ETH"), submitted_at=at(30))
        await add(store, state=State.DONE, request=request_for("9", account="other"), submitted_at=at(30))
        await add(store, state=State.DONE, request=request_for("11"), submitted_at=at(4.9))
        await add(store, state=State.CHECKING_WALLET, request=request_for("13"))
        expected = Decimal("0.300000000000000001")
        assert await store.sum_submitted(account="default", currency="BTC", since=at(5)) == expected
        kst = await store.sum_submitted(account="default", currency="BTC", since=at(5).astimezone(KST))
        assert kst == expected
        assert await store.sum_submitted(account="default", currency="BTC", since=at(21)) == 0
        assert await store.sum_submitted(account="nobody", currency="BTC", since=at(0)) == 0

    async def test_attribute_makes_a_withdrawal_owned(self, store: Store) -> None:
        """An attributed uuid is owned (by its first attribution); a workflow's own exchange_uuid wins."""
        first = await add(store, exchange_uuid="own-1")
        second = await add(store, request=request_for("2"))
        await store.attribute(second.id, ["late-1", "late-2"], at=at(1))
        await store.attribute(first.id, ["late-1"], at=at(2))  # already attributed: keeps its first owner
        await store.attribute(second.id, ["late-2"], at=at(3))  # idempotent
        await store.attribute(second.id, [], at=at(4))
        owners = await store.owners_of(["own-1", "late-1", "late-2", "nobody"])
        assert owners == {"own-1": first.id, "late-1": second.id, "late-2": second.id}
        await store.attribute(second.id, ["own-1"], at=at(5))
        assert await store.owners_of(["own-1"]) == {"own-1": first.id}
        other = await reopened(store)
        try:
            assert (await other.owners_of(["late-2"])) == {"late-2": second.id}
        finally:
            await other.close()

    async def test_sum_submitted_counts_an_abandoned_one_that_was_paid_late(self, store: Store) -> None:
        """An aborted workflow with an exchange uuid (its withdrawal appeared after it was abandoned) was paid."""
        await add(store, state=State.ABORTED, request=request_for("5"), submitted_at=at(10))
        await add(store, state=State.ABORTED, request=request_for("0.5"), submitted_at=at(10), exchange_uuid="late")
        assert await store.sum_submitted(account="default", currency="BTC", since=at(0)) == Decimal("0.5")

    async def test_sum_submitted_counts_late_withdrawals_beside_the_own_one(self, store: Store) -> None:
        """A workflow paid by its own withdrawal and by a late one attributed to it was paid twice; an
        abandoned one whose two late withdrawals were attributed was paid twice too (one is its uuid)."""
        twice = await add(store, state=State.DONE, request=request_for("1"), submitted_at=at(10), exchange_uuid="own")
        await store.attribute(twice.id, ["own", "late-1"], at=at(11))
        gone = await add(store, state=State.ABORTED, request=request_for("0.5"), submitted_at=at(10), exchange_uuid="u")
        await store.attribute(gone.id, ["u", "l3"], at=at(12))
        assert await store.sum_submitted(account="default", currency="BTC", since=at(0)) == Decimal("3")

    async def test_count_by_state(self, store: Store) -> None:
        """How many workflows are in each state (absent states are absent)."""
        assert await store.count_by_state() == {}
        for state in (State.PENDING, State.PENDING, State.DONE, State.NEEDS_REVIEW):
            await add(store, state=state)
        assert await store.count_by_state() == {"pending": 2, "DONE": 1, "needs_review": 1}

    async def test_list_is_newest_first_filtered_and_paged(self, store: Store) -> None:
        """list pages newest first with before_id as the cursor and filters by state."""
        states = [State.PENDING, State.DONE, State.PENDING, State.DONE, State.PENDING]
        ids = [(await add(store, created=n, state=s)).id for n, s in enumerate(states)]
        assert [wf.id for wf in await store.list(limit=2)] == [ids[4], ids[3]]
        assert [wf.id for wf in await store.list(limit=2, before_id=ids[3])] == [ids[2], ids[1]]
        assert [wf.id for wf in await store.list(limit=2, before_id=ids[1])] == [ids[0]]
        assert [wf.id for wf in await store.list(state=State.DONE)] == [ids[3], ids[1]]
        assert [wf.id for wf in await store.list(state=State.PENDING, before_id=ids[4], limit=1)] == [ids[2]]
        assert await store.list(state=State.FAILED) == []
        assert (await store.list(limit=1))[0] == await store.get(ids[4])


class TestLifecycle:
    async def test_reopening_keeps_everything(self, store: Store) -> None:
        """A second store over the same storage sees the rows (migrations already applied are skipped)."""
        wf = await add(store, idempotency_key="persist")
        other = await reopened(store)
        try:
            assert await other.get(wf.id) == wf
            assert await other.events(wf.id) == await store.events(wf.id)
        finally:
            await other.close()


@pytest.mark.postgres
class TestPostgresOnly:
    async def test_listen_fires_after_create_and_flags(self, postgres_dsn: str) -> None:
        """NOTIFY reaches a listener in another store (another process) after create, cancel and resolve."""
        heard: asyncio.Queue[None] = asyncio.Queue()
        async with PostgresStore(postgres_dsn) as writer, PostgresStore(postgres_dsn) as runner:
            await runner.listen(lambda: heard.put_nowait(None))
            wf = await add(writer, state=State.NEEDS_REVIEW)
            await asyncio.wait_for(heard.get(), 5)
            await writer.request_cancel(wf.id, at=at(1))
            await asyncio.wait_for(heard.get(), 5)
            await writer.request_resolution(wf.id, "abandon", at=at(2))
            await asyncio.wait_for(heard.get(), 5)
            await writer.request_cancel((await add(writer, state=State.DONE)).id, at=at(3))
            await asyncio.wait_for(heard.get(), 5)  # the create; the refused cancel sends nothing
            await asyncio.sleep(0.1)
            assert heard.empty()

    async def test_close_removes_the_listener(self, postgres_dsn: str) -> None:
        """After close, notifications no longer reach the callback (and close is idempotent)."""
        heard: list[int] = []
        async with PostgresStore(postgres_dsn) as writer:
            runner = PostgresStore(postgres_dsn)
            await runner.open()
            await runner.listen(lambda: heard.append(1))
            await runner.close()
            await runner.close()
            await add(writer)
            await asyncio.sleep(0.1)
        assert heard == []

    async def test_processes_starting_together_migrate_once(self, postgres_dsn: str) -> None:
        """Concurrent opens on an empty database serialise on the advisory lock: one schema, version 1."""
        stores = [PostgresStore(postgres_dsn) for _ in range(4)]
        await asyncio.gather(*(s.open() for s in stores))
        try:
            await add(stores[0])
            assert await stores[3].count_by_state() == {"pending": 1}
        finally:
            await asyncio.gather(*(s.close() for s in stores))
        conn = await asyncpg.connect(postgres_dsn)
        try:
            applied = [r["version"] for r in await conn.fetch("SELECT version FROM schema_version ORDER BY version")]
            assert applied == [version for version, _ in POSTGRES_MIGRATIONS]  # each once
        finally:
            await conn.close()

    def test_repr_hides_the_password(self) -> None:
        """The DSN's password never reaches a repr (invariant 7)."""
        text = repr(PostgresStore("postgresql://app:s3cret@db.internal:5432/engine"))
        assert "s3cret" not in text and "app:***@db.internal" in text
