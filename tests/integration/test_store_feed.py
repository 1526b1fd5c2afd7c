"""The global event feed (``Store.feed`` / ``Store.feed_head``), run against every store.

The feed is what webhooks fan out from and what the SSE stream serves, so its one promise is checked
from every side: a consumer that resumes from the last cursor it saw gets every committed event exactly
once, in an order that never changes, however the writers interleave. PostgreSQL gets the case that
breaks a plain sequence number: two transactions committing in the opposite order to the one they
drew their numbers in.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from engine.errors import InvalidCursor
from engine.models import Event, State, WithdrawalRequest, Workflow
from engine.store.base import FeedItem, Store
from engine.store.postgres import PostgresStore
from engine.store.rows import EVENT_COLUMNS, event_to_row

T0 = datetime(2026, 1, 1, tzinfo=UTC)
_ids = itertools.count(1)

#: Generous bound for conditions that depend on other transactions ending (a shared, loaded server).
WAIT = 60.0


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def _add(store: Store, *, account: str = "default") -> Workflow:
    wf_id = f"wd_feed_{next(_ids):06d}"
    event = Event(
        workflow_id=wf_id, seq=1, at=_at(0), trigger="create", from_state=None, to_state=State.PENDING.value,
        data={"source": "feed"},
    ).sealed("")  # fmt: skip
    request = WithdrawalRequest(
        currency="BTC", net_type="BTC", amount=Decimal(f"0.{next(_ids):04d}"), address="bc1qdestination0",
        account=account,
    )  # fmt: skip
    wf = Workflow(
        id=wf_id, state=State.PENDING, request=request, created_at=_at(0), updated_at=_at(0), event_seq=1,
        last_hash=event.hash, next_run_at=_at(0),
    )  # fmt: skip
    stored, created = await store.create(wf, event)
    assert created
    return stored


def _next_event(wf: Workflow) -> Event:
    return Event(
        workflow_id=wf.id, seq=wf.event_seq + 1, at=_at(wf.event_seq), trigger="note", from_state=wf.state.value,
        to_state=wf.state.value, data={"n": wf.event_seq + 1},
    ).sealed(wf.last_hash)  # fmt: skip


async def _step(store: Store, wf: Workflow) -> Workflow:
    event = _next_event(wf)
    moved = replace(wf, updated_at=event.at, event_seq=event.seq, last_hash=event.hash)
    return await store.commit(moved, event, owner=None)


async def _read_all(store: Store, after: str | None, *, limit: int = 500) -> list[FeedItem]:
    items: list[FeedItem] = []
    while page := await store.feed(after=after, limit=limit):
        items.extend(page)
        after = page[-1].cursor
    return items


async def _wait_for(store: Store, after: str | None, count: int) -> list[FeedItem]:
    """Read on from ``after`` until ``count`` items arrived (bounded; fails with what did arrive)."""
    items: list[FeedItem] = []
    async with asyncio.timeout(WAIT):
        while len(items) < count:
            page = await store.feed(after=after, limit=500)
            if page:
                items.extend(page)
                after = page[-1].cursor
            else:
                await asyncio.sleep(0.02)
    return items


def _key(item: FeedItem) -> tuple[str, int]:
    return item.event.workflow_id, item.event.seq


def _unknown_cursor(cursor: str) -> str:
    """A well-formed cursor of the same shape that names no event (its last number moved far on)."""
    head, dot, last = cursor.rpartition(".")
    return f"{head}{dot}{int(last) + 100_000}"


class TestFeed:
    async def test_empty_store_has_no_head_and_no_items(self, store: Store) -> None:
        """Nothing stored: no head, an empty first page."""
        assert await store.feed_head() is None
        assert await store.feed(after=None) == []

    async def test_every_event_once_in_commit_order_with_kind_and_account(self, store: Store) -> None:
        """Events of several workflows come back in the order they committed, whole and hash-chained."""
        a = await _add(store, account="alice")
        b = await _add(store, account="bob")
        a = await _step(store, a)
        b = await _step(store, b)
        a = await _step(store, a)
        items = await _wait_for(store, None, 5)  # PostgreSQL: once every older transaction has ended
        assert await store.feed(after=items[-1].cursor) == []
        assert [_key(i) for i in items] == [(a.id, 1), (b.id, 1), (a.id, 2), (b.id, 2), (a.id, 3)]
        assert [i.account for i in items] == ["alice", "bob", "alice", "bob", "alice"]
        assert {i.kind for i in items} == {a.kind}
        stored = {(e.workflow_id, e.seq): e for wf in (a, b) for e in await store.events(wf.id)}
        assert all(i.event == stored[_key(i)] for i in items)  # the same records, hash chain untouched
        assert len({i.cursor for i in items}) == len(items)

    async def test_paging_by_cursor_neither_skips_nor_repeats(self, store: Store) -> None:
        """Reading two at a time from each last cursor yields exactly the one-page answer."""
        wfs = [await _add(store) for _ in range(3)]
        for wf in wfs:
            await _step(store, wf)
        whole = await _wait_for(store, None, 6)
        paged = await _read_all(store, None, limit=2)
        assert [_key(i) for i in paged] == [_key(i) for i in whole]
        assert [i.cursor for i in paged] == [i.cursor for i in whole]
        assert await store.feed(after=whole[-1].cursor) == []

    async def test_head_starts_now(self, store: Store) -> None:
        """From ``feed_head`` only what commits afterwards arrives."""
        wf = await _add(store)
        wf = await _step(store, wf)
        last = (await _wait_for(store, None, 2))[-1].cursor
        head = await store.feed_head()
        assert head == last
        assert await store.feed(after=head) == []
        wf = await _step(store, wf)
        assert [_key(i) for i in await _wait_for(store, head, 1)] == [(wf.id, 3)]

    @pytest.mark.parametrize("cursor", ["", "abc", "-1", "1e3", "1.2.3", " 1", "١٢", "9" * 40])
    async def test_malformed_cursor_is_refused(self, store: Store, cursor: str) -> None:
        """A cursor this store never hands out is an ``InvalidCursor`` (the API's 422), not a 500."""
        await _add(store)
        with pytest.raises(InvalidCursor):
            await store.feed(after=cursor)

    async def test_unknown_cursor_is_refused(self, store: Store) -> None:
        """A well-formed cursor that names no event is refused too (never silently read from elsewhere)."""
        await _add(store)
        head = (await _wait_for(store, None, 1))[-1].cursor
        with pytest.raises(InvalidCursor, match="unknown"):
            await store.feed(after=_unknown_cursor(head))

    async def test_concurrent_writers_and_a_follower_see_each_event_once(self, store: Store) -> None:
        """While writers commit concurrently, a follower resuming from its last cursor misses nothing,
        repeats nothing, and sees each workflow's events in seq order."""
        start = await store.feed_head()
        seen: list[FeedItem] = []
        done = asyncio.Event()

        async def follow() -> None:
            after = start
            while True:
                finished = done.is_set()
                page = await store.feed(after=after, limit=7)
                seen.extend(page)
                if page:
                    after = page[-1].cursor
                elif finished:
                    return
                else:
                    await asyncio.sleep(0.005)

        async def write(n: int) -> Workflow:
            wf = await _add(store, account=f"acct{n % 3}")
            for _ in range(4):
                wf = await _step(store, wf)
            return wf

        follower = asyncio.create_task(follow())
        written = await asyncio.gather(*(write(n) for n in range(12)))
        # Every write has committed; the follower may still need the horizon to pass them (PostgreSQL).
        expected = {(wf.id, seq) for wf in written for seq in range(1, 6)}
        async with asyncio.timeout(WAIT):
            while {_key(i) for i in seen} != expected:
                await asyncio.sleep(0.02)
        done.set()
        async with asyncio.timeout(WAIT):
            await follower
        keys = [_key(i) for i in seen]
        assert len(keys) == len(set(keys)) == len(expected)
        for wf in written:
            assert [seq for wid, seq in keys if wid == wf.id] == [1, 2, 3, 4, 5]


@pytest.mark.postgres
class TestPostgresFeedHorizon:
    async def test_an_earlier_transaction_committing_later_is_not_skipped(self, postgres_dsn: str) -> None:
        """T1 starts (takes its xid), T2 inserts an event and commits, then T1 inserts and commits. T2's
        event has the lower sequence number but must not be served while T1 runs, else a follower's
        cursor would move past the place where T1's event lands. Afterwards both arrive, T1's first."""
        async with PostgresStore(postgres_dsn, pool_max=4) as store:
            first = await _add(store)
            second = await _add(store)
            head = (await _wait_for(store, None, 2))[-1].cursor
            t1 = await asyncpg.connect(postgres_dsn)
            try:
                tx = t1.transaction()
                await tx.start()
                await t1.fetchval("SELECT pg_current_xact_id()")  # T1 now holds an xid older than T2's
                second = await _step(store, second)  # T2: committed, but behind T1's horizon
                assert await store.feed(after=head) == []
                marks = ", ".join(f"${i}" for i in range(1, len(EVENT_COLUMNS) + 1))
                await t1.execute(
                    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({marks})",
                    *event_to_row(_next_event(first)),
                )
                assert await store.feed(after=head) == []  # T1 has not committed
                await tx.commit()
            finally:
                await t1.close()
            items = await _wait_for(store, head, 2)
            assert [_key(i) for i in items] == [(first.id, 2), (second.id, 2)]
            assert await store.feed(after=items[-1].cursor) == []
