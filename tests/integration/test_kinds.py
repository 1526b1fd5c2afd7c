"""The seam: the engine runs any registered workflow kind, and a step creates other workflows durably.

Two toy kinds, defined here and nowhere in the engine, run through the real engine on a real SQLite file:
a ``tally`` creates ``n`` ``tick`` children (idempotently, by keys derived from its id), follows them by
their counts, and closes when every child is settled. Nothing in engine/ names either kind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest

from engine import Engine
from engine.context import StepContext
from engine.errors import IdempotencyConflict, InvalidRequest, InvalidTransition
from engine.kinds import KindRegistry, WorkflowKind, new_workflow
from engine.machine import TransitionSpec, WorkflowMachine
from engine.models import Event, Workflow
from engine.policy import WorkflowSettings
from engine.store.base import Store
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SQLiteStore
from tests.integration.conftest import fresh_schema
from workflows.withdrawal import KIND as WITHDRAWAL
from workflows.withdrawal_model import WithdrawalRequest


class TallyState(StrEnum):
    SPAWNING = "spawning"
    FOLLOWING = "following"
    CLOSED = "closed"


class TickState(StrEnum):
    NEW = "new"
    HELD = "held"
    DONE = "done"


@dataclass(frozen=True)
class Tally:
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n}


@dataclass(frozen=True)
class Tick:
    index: int
    hold: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "hold": self.hold}


def _tick_key(parent: Workflow, index: int) -> str:
    return f"{parent.id}/tick/{index}"


async def spawn(wf: Workflow, ctx: StepContext) -> Workflow:
    """Create every child; a repeat (a crash after some were made) finds them under the same keys."""
    for index in range(wf.request.n):
        await ctx.create(Tick(index, hold=index == 0 and wf.request.n > 2), idempotency_key=_tick_key(wf, index),
                         parent=wf)  # fmt: skip
    return await ctx.transition(wf, "follow", next_run_at=ctx.now())


async def follow(wf: Workflow, ctx: StepContext) -> Workflow:
    counts = await ctx.children(wf)
    if counts.settled < wf.request.n:
        return await ctx.reschedule(wf, 0.01)
    return await ctx.transition(wf, "close", event_data={"children": counts.by_state})


async def tick(wf: Workflow, ctx: StepContext) -> Workflow:
    if wf.request.hold and wf.resolution is None:
        return await ctx.transition(wf, "hold", next_run_at=None)
    return await ctx.transition(wf, "finish")


async def held(wf: Workflow, ctx: StepContext) -> Workflow:
    return await ctx.transition(wf, "finish", resolution=None)


def _tally_kind() -> WorkflowKind:
    table = (
        TransitionSpec("follow", (TallyState.SPAWNING,), TallyState.FOLLOWING),
        TransitionSpec("close", (TallyState.FOLLOWING,), TallyState.CLOSED),
    )
    return WorkflowKind(
        name="tally", request_type=Tally, states=tuple(TallyState), initial=TallyState.SPAWNING,
        parse_state=TallyState, parse_request=lambda d: Tally(int(d["n"])), dump_request=Tally.to_dict,
        same_request=lambda a, b: a == b,
        machine=WorkflowMachine("tally", TallyState, table, terminal={TallyState.CLOSED}),
        steps={TallyState.SPAWNING: spawn, TallyState.FOLLOWING: follow}, terminal=frozenset({TallyState.CLOSED}),
        id_prefix="ty",
    )  # fmt: skip


def _tick_kind() -> WorkflowKind:
    table = (
        TransitionSpec("hold", (TickState.NEW,), TickState.HELD),
        TransitionSpec("finish", (TickState.NEW, TickState.HELD), TickState.DONE),
    )
    return WorkflowKind(
        name="tick", request_type=Tick, states=tuple(TickState), initial=TickState.NEW, parse_state=TickState,
        parse_request=lambda d: Tick(int(d["index"]), bool(d["hold"])), dump_request=Tick.to_dict,
        same_request=lambda a, b: a == b,
        machine=WorkflowMachine("tick", TickState, table, terminal={TickState.DONE}),
        steps={TickState.NEW: tick, TickState.HELD: held}, terminal=frozenset({TickState.DONE}),
        awaiting_operator=frozenset({TickState.HELD}), resolutions=("release",), id_prefix="tk",
    )  # fmt: skip


@pytest.fixture
def kinds() -> KindRegistry:
    return KindRegistry([WITHDRAWAL, _tally_kind(), _tick_kind()])


def _engine(store: SQLiteStore, kinds: KindRegistry) -> Engine:
    return Engine(store=store, gateways={}, kinds=kinds, run_runner=False)


async def test_a_registered_kind_runs_and_creates_its_children_once(tmp_path: Path, kinds: KindRegistry) -> None:
    """A tally of 3 spawns 3 ticks; one waits for an operator (settled meanwhile), the tally closes."""
    async with _engine(SQLiteStore(tmp_path / "db.sqlite3", kinds=kinds), kinds) as engine:
        tally = await engine.submit(Tally(3), idempotency_key="tally-1")
        assert (tally.kind, tally.state, tally.id[:3]) == ("tally", "spawning", "ty_")
        await engine.run_until_idle(timeout=60)
        closed = await engine.get(tally.id)
        assert closed.state is TallyState.CLOSED
        children = await engine.store.children(tally.id)
        assert [(c.kind, c.request.index, c.parent_id) for c in children] == [
            ("tick", 0, tally.id), ("tick", 1, tally.id), ("tick", 2, tally.id),
        ]  # fmt: skip
        assert [c.state for c in children] == [TickState.HELD, TickState.DONE, TickState.DONE]
        close_event = (await engine.store.events(tally.id))[-1]
        assert close_event.data["children"] == {"held": 1, "done": 2}
        first = (await engine.store.events(children[0].id))[0]
        assert first.data == {"request": {"index": 0, "hold": True}, "idempotency_key": _tick_key(tally, 0),
                              "parent_id": tally.id}  # fmt: skip

        # The operator's action is the kind's: accepted, applied by its next step.
        with pytest.raises(InvalidRequest):
            await engine.resolve(children[0].id, "resubmit-nope")
        with pytest.raises(InvalidTransition):
            await engine.resolve(children[1].id, "release")
        await engine.resolve(children[0].id, "release")
        await engine.run_until_idle(timeout=60)
        assert (await engine.get(children[0].id)).state is TickState.DONE
        assert await engine.store.count_children(tally.id) == {("tick", "done", False): 3}


async def test_a_repeated_create_returns_the_child_it_made(tmp_path: Path, kinds: KindRegistry) -> None:
    """Creating a child again under its key (a resumed step) returns the stored one; another request or
    another parent under the same key is a conflict, never a second child."""
    async with _engine(SQLiteStore(tmp_path / "db.sqlite3", kinds=kinds), kinds) as engine:
        parent = await engine.submit(Tally(1))
        ctx = engine.ctx
        child, created = await ctx.create(Tick(0), idempotency_key="k", parent=parent)
        again, created_again = await ctx.create(Tick(0), idempotency_key="k", parent=parent)
        assert (created, created_again, again) == (True, False, child)
        with pytest.raises(IdempotencyConflict):
            await ctx.create(Tick(1), idempotency_key="k", parent=parent)
        with pytest.raises(IdempotencyConflict):
            await ctx.create(Tick(0), idempotency_key="k", parent=None)
        counts = await ctx.children(parent)
        assert (counts.by_state, counts.settled, counts.total) == ({"new": 1}, 0, 1)
        # A child of another kind is created the same way; one paying from an account nobody configured
        # could never be stepped: refused, nothing stored.
        orphan = WithdrawalRequest(currency="BTC", net_type="BTC", amount=Decimal("0.1"), address="bc1qchild0")
        with pytest.raises(InvalidRequest, match="no account named 'default'"):
            await ctx.create(orphan, idempotency_key="w", parent=parent)
        assert await engine.store.get_by_idempotency_key("w") is None
        assert (await ctx.children(parent)).total == 1


async def test_rows_of_every_kind_survive_a_reopen(tmp_path: Path, kinds: KindRegistry) -> None:
    """Each row is parsed back by its own kind: state values are that kind's members again."""
    path = tmp_path / "db.sqlite3"
    async with _engine(SQLiteStore(path, kinds=kinds), kinds) as engine:
        tally = await engine.submit(Tally(2))
        await engine.run_until_idle(timeout=60)
    async with SQLiteStore(path, kinds=kinds) as store:
        again = await store.get(tally.id)
        assert again.state is TallyState.CLOSED and again.request == Tally(2)
        assert {c.state for c in await store.children(tally.id)} == {TickState.DONE}


def test_a_kind_is_checked_when_it_is_declared() -> None:
    """Unknown states in a kind's sets, a duplicate name or request type are refused up front."""
    tick = _tick_kind()
    with pytest.raises(ValueError, match="unknown state"):
        WorkflowKind(**{**_fields(tick), "terminal": frozenset({"nope"})})
    with pytest.raises(ValueError, match="already registered"):
        KindRegistry([tick, tick])
    with pytest.raises(ValueError, match="already belongs"):
        KindRegistry([tick, WorkflowKind(**{**_fields(tick), "name": "tock"})])


def _fields(kind: WorkflowKind) -> Mapping[str, Any]:
    return {name: getattr(kind, name) for name in kind.__dataclass_fields__}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def kind_store(request: pytest.FixtureRequest, tmp_path: Path, kinds: KindRegistry) -> AsyncIterator[Store]:
    """Each store, over fresh storage, holding the toy kinds beside the withdrawal."""
    if request.param == "sqlite":
        async with SQLiteStore(tmp_path / "kinds.sqlite3", kinds=kinds) as sqlite_store:
            yield sqlite_store
        return
    database = request.getfixturevalue("postgres_database")
    async with fresh_schema(database) as dsn, PostgresStore(dsn, kinds=kinds) as pg_store:
        yield pg_store


async def test_each_store_applies_each_kinds_rules(kind_store: Store, kinds: KindRegistry) -> None:
    """Per-state rules come from each row's kind: a resolution is accepted only where that kind awaits an
    operator, a cancel flag never lands on a row its kind calls terminal, rows without a lane or an amount
    hold neutral values (the daily sum ignores them), and every row reads back as its kind's values."""
    settings = WorkflowSettings()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    tick_kind = kinds["tick"]
    waiting, first = new_workflow(tick_kind, Tick(0, hold=True), now=now, settings=settings)
    done, second = new_workflow(tick_kind, Tick(1), now=now, settings=settings)
    for wf, event in ((waiting, first), (done, second)):
        assert (await kind_store.create(wf, event))[1]
    held = await _moved(kind_store, waiting, TickState.HELD, "hold", now)
    finished = await _moved(kind_store, done, TickState.DONE, "finish", now)

    assert (await kind_store.request_resolution(finished.id, "release", at=now)).resolution is None
    released = await kind_store.request_resolution(held.id, "release", at=now)
    assert (released.state, released.resolution) == (TickState.HELD, "release")
    assert (await kind_store.request_cancel(finished.id, at=now)).cancel_requested_at is None
    assert (await kind_store.request_cancel(held.id, at=now)).cancel_requested_at == now
    again = await kind_store.get(held.id)
    assert again.state is TickState.HELD and again.request == Tick(0, hold=True)
    assert await kind_store.sum_submitted(account="", currency="", since=now, not_paid=()) == 0
    assert await kind_store.count_by_state() == {"held": 1, "done": 1}
    # Leaving the awaiting state clears the resolution (by the kind's word, not a state name in SQL).
    ended = await _moved(kind_store, released, TickState.DONE, "finish", now, resolution="release")
    assert (await kind_store.get(ended.id)).resolution is None


async def _moved(store: Store, wf: Workflow, to: str, trigger: str, now: datetime, **changes: Any) -> Workflow:
    event = Event(
        workflow_id=wf.id, seq=wf.event_seq + 1, at=now, trigger=trigger, from_state=str(wf.state), to_state=to,
    ).sealed(wf.last_hash)  # fmt: skip
    moved = replace(wf, state=to, event_seq=event.seq, last_hash=event.hash, next_run_at=None, **changes)
    return await store.commit(moved, event, owner=None)
