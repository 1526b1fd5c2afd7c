"""engine.upbit.budget: the allocation (hypothesis), the heartbeat decision's invariant, and BudgetShare's
fallback, leaving and fencing against an in-memory store on the fake clock (PostgreSQL: tests/integration)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.clock import FakeClock
from engine.errors import ConfigError, StoreUnavailable
from engine.upbit.budget import (
    BudgetShare,
    Decision,
    Report,
    ShareRow,
    allocate,
    booked,
    decide,
    estimate_demand,
    min_lease,
)
from engine.upbit.ratelimit import Priority, RateLimiter

demands_st = st.dictionaries(
    st.sampled_from([f"w{i}" for i in range(12)]),
    st.one_of(st.just(0.0), st.floats(min_value=0.01, max_value=500, allow_nan=False)),
    min_size=1,
    max_size=12,
)


class TestAllocate:
    @given(budget=st.integers(1, 100), demands=demands_st, reserve=st.integers(0, 3))
    @settings(max_examples=400, deadline=None)
    def test_shares_are_bounded_fair_and_floored(self, budget: int, demands: dict[str, float], reserve: int) -> None:
        shares = allocate(budget, demands, reserve=reserve)
        assert set(shares) == set(demands)
        assert sum(shares.values()) <= budget
        wanting = [n for n, d in demands.items() if d > 0]
        idle = len(wanting) < len(demands)
        free = budget - (min(reserve, budget) if idle else 0)
        for name, demand in demands.items():
            assert 0 <= shares[name] <= max(math.ceil(demand), 0)
            if demand == 0:
                assert shares[name] == 0
        if len(wanting) <= free:
            assert all(shares[n] >= 1 for n in wanting)  # the floor: everyone with demand can start
        unsatisfied = [n for n in wanting if shares[n] < math.ceil(demands[n])]
        if unsatisfied:
            assert sum(shares.values()) == max(0, free)  # work-conserving up to the reserve
            # max-min fair: nobody holds more than one call above someone who still wants more
            lowest = min(shares[n] for n in unsatisfied)
            assert all(shares[n] <= lowest + 1 for n in wanting)

    def test_all_load_at_one_of_three(self) -> None:
        assert allocate(30, {"a": 100.0, "b": 0.0, "c": 0.0}) == {"a": 30, "b": 0, "c": 0}
        assert allocate(30, {"a": 100.0, "b": 0.0, "c": 0.0}, reserve=1) == {"a": 29, "b": 0, "c": 0}
        assert allocate(30, {"a": 100.0, "b": 100.0, "c": 100.0}) == {"a": 10, "b": 10, "c": 10}
        assert allocate(30, {"a": 5.0, "b": 100.0, "c": 0.5}) == {"a": 5, "b": 24, "c": 1}  # nobody idle: no reserve

    def test_more_hungry_workers_than_calls(self) -> None:
        shares = allocate(2, {"a": 1.0, "b": 3.0, "c": 2.0})
        assert shares == {"a": 0, "b": 1, "c": 1}

    def test_demand_counts_waiters(self) -> None:
        assert estimate_demand(10.0, 0) == pytest.approx(12.0)
        assert estimate_demand(0.0, 7) == 7.0


NOW = datetime(2026, 1, 1, 12, 0, 0).astimezone()
LEASE, DRAIN = 14.0, 12.0


class Table:
    """The store's transaction, in memory: purge expired rows, fence, decide, write."""

    def __init__(self) -> None:
        self.rows: dict[str, ShareRow] = {}

    def live(self, now: datetime) -> list[ShareRow]:
        self.rows = {o: r for o, r in self.rows.items() if r.expires_at > now}
        return list(self.rows.values())

    def beat(
        self, owner: str, beat: int, now: datetime, choose: Callable[[Sequence[ShareRow], datetime], Decision]
    ) -> Decision | None:
        rows = self.live(now)
        if any(r.owner == owner and r.beat >= beat for r in rows):
            return None
        decision = choose(rows, now)
        if decision.row.expires_at <= now:
            self.rows.pop(owner, None)
        else:
            self.rows[owner] = decision.row
        return decision

    def total(self, now: datetime) -> int:
        return sum(booked(r, now) for r in self.rows.values())


def _chooser(budget: int, report: Report) -> Callable[[Sequence[ShareRow], datetime], Decision]:
    return lambda rows, now: decide(budget, report, rows, now, lease=LEASE, drain=DRAIN)


ops_st = st.lists(
    st.tuples(
        st.integers(0, 3),  # worker
        st.floats(0.0, 3.0),  # seconds that pass first
        st.floats(0.0, 200.0),  # demand
        st.booleans(),  # settled
        st.sampled_from(["beat", "beat", "beat", "leave", "die"]),
    ),
    max_size=60,
)


class TestDecide:
    @given(ops=ops_st, budget=st.integers(1, 40))
    @settings(max_examples=300, deadline=None)
    def test_the_table_never_books_more_than_the_budget(self, ops: list[tuple], budget: int) -> None:
        """Whatever the workers report and whenever they die, at every instant the live rows book at most
        the budget, and a worker's row always books at least the rate its limiter grants at."""
        table, t = Table(), NOW
        rates: dict[str, int] = {}
        beats: dict[str, int] = {}
        dead: set[str] = set()
        for worker, dt, demand, settled, op in ops:
            owner = f"w{worker}"
            for step in range(4):  # bookings only fall between transactions: check along the way
                assert table.total(t + timedelta(seconds=dt * step / 4)) <= budget
            t += timedelta(seconds=dt)
            if owner in dead:
                continue
            if op == "die":
                dead.add(owner)
                rates.pop(owner, None)
                continue
            leaving = op == "leave"
            if leaving:
                rates[owner] = 0
            beats[owner] = beats.get(owner, 0) + 1
            rate = rates.get(owner, 0)
            mine = table.rows.get(owner)
            if mine is None or mine.expires_at <= t:
                rate = rates[owner] = 0  # rule 4: a worker whose row may have expired has stopped granting
            report = Report(owner, beats[owner], demand, rate, settled, leaving)
            decision = table.beat(owner, beats[owner], t, _chooser(budget, report))
            assert decision is not None
            assert table.total(t) <= budget
            assert decision.rate <= decision.row.share
            assert decision.row.share >= rate  # never books less than the limiter may still grant at
            if leaving:
                dead.add(owner)
                rates.pop(owner, None)
            else:
                rates[owner] = decision.rate

    def test_shrink_drains_unless_settled(self) -> None:
        table = Table()
        first = Report("a", 1, 100.0, 0, True)
        d1 = table.beat("a", 1, NOW, lambda rows, now: decide(30, first, rows, now, lease=LEASE, drain=DRAIN))
        assert d1 is not None and d1.rate == 30
        # b wants everything too: a is told to halve; it still books 29 until it reports the lower rate
        b = Report("b", 1, 100.0, 0, True)
        d2 = table.beat("b", 1, NOW, lambda rows, now: decide(30, b, rows, now, lease=LEASE, drain=DRAIN))
        assert d2 is not None and d2.rate == 0  # nothing free until a gives some back
        lower = Report("a", 2, 100.0, 30, False)
        d3 = table.beat("a", 2, NOW, lambda rows, now: decide(30, lower, rows, now, lease=LEASE, drain=DRAIN))
        assert d3 is not None and (d3.rate, d3.row.share) == (15, 30)
        unsettled = Report("a", 3, 100.0, 15, False)
        at = NOW + timedelta(seconds=1)
        d4 = table.beat("a", 3, at, lambda rows, now: decide(30, unsettled, rows, now, lease=LEASE, drain=DRAIN))
        assert d4 is not None and d4.row.share == 15 and d4.row.draining == 30
        assert booked(d4.row, at) == 30 and booked(d4.row, at + timedelta(seconds=DRAIN)) == 15
        settled = Report("a", 4, 100.0, 15, True)
        d5 = table.beat("a", 4, at, lambda rows, now: decide(30, settled, rows, now, lease=LEASE, drain=DRAIN))
        assert d5 is not None and booked(d5.row, at) == 15 and d5.row.drain_until is None

    def test_a_stale_beat_changes_nothing(self) -> None:
        table = Table()
        new = Report("a", 5, 10.0, 0, True)
        assert table.beat("a", 5, NOW, lambda rows, now: decide(30, new, rows, now, lease=LEASE, drain=DRAIN))
        old = Report("a", 4, 0.0, 0, True)
        assert table.beat("a", 4, NOW, lambda rows, now: decide(30, old, rows, now, lease=LEASE, drain=DRAIN)) is None
        assert table.rows["a"].share == 10


class MemoryStore:
    """A BudgetStore over :class:`Table` on a fake clock; ``down`` makes every heartbeat fail."""

    def __init__(self, clock: FakeClock) -> None:
        self.table = Table()
        self.clock = clock
        self.down = False
        self.broken: Exception | None = None

    async def budget_beat(
        self, account: str, owner: str, beat: int, decide: Callable[[Sequence[ShareRow], datetime], Decision]
    ) -> Decision | None:
        await asyncio.sleep(0)
        if self.down:
            raise StoreUnavailable("database unreachable")
        if self.broken is not None:
            raise self.broken
        return self.table.beat(owner, beat, self.clock.now(), decide)


class TestBudgetShare:
    def test_lease_must_outlast_window_timeout_and_two_heartbeats(self) -> None:
        clock = FakeClock()
        with pytest.raises(ConfigError) as caught:
            limiter = RateLimiter(30, clock=clock)
            BudgetShare(MemoryStore(clock), "default", "w", limiter, budget=30, lease=3.0, timeout=5.0)
        assert caught.value.key == "engine.lease_seconds"
        assert min_lease(5.0) == pytest.approx(9.0)

    async def test_grants_nothing_before_the_first_beat_then_its_share(self) -> None:
        clock = FakeClock()
        limiter = RateLimiter(10, account_rate=30, clock=clock)
        store = MemoryStore(clock)
        share = BudgetShare(store, "default", "w", limiter, budget=30, lease=LEASE, timeout=5.0, clock=clock)
        assert limiter.rate == 0
        waiter = asyncio.create_task(limiter.acquire(Priority.WRITE))
        await asyncio.sleep(0)
        assert not waiter.done()
        assert await share.beat()
        assert limiter.rate == 1  # demand 1 (the waiter): it gets 1 at once, more as demand shows
        await asyncio.wait_for(waiter, 5)

    async def test_store_outage_keeps_the_rate_until_the_row_could_lapse_then_stops(self) -> None:
        clock = FakeClock()
        store = MemoryStore(clock)
        limiter = RateLimiter(30, clock=clock)
        share = BudgetShare(store, "default", "w", limiter, budget=30, lease=LEASE, timeout=5.0, clock=clock)
        for _ in range(20):
            limiter.stats.granted += 30  # lots of demand
            clock.advance(1.0)
            assert await share.beat()
        assert limiter.rate == 30
        store.down = True
        stop_at = share.valid_until - limiter.window - share.horizon
        while clock.monotonic() + 1.0 < stop_at:
            clock.advance(1.0)
            assert not await share.beat()
            assert limiter.rate == 30
        clock.advance(1.0)
        assert not await share.beat()
        assert limiter.rate == 0
        # the row expires no sooner than the lease after the last beat that landed: by then nothing counts
        assert store.table.rows["w"].expires_at >= clock.now() + timedelta(seconds=limiter.window + 5.0)
        store.down = False
        limiter.stats.granted += 30  # (demand is still there)
        assert await share.beat()
        assert limiter.rate > 0

    async def test_leaving_gives_the_share_back_when_settled(self) -> None:
        clock = FakeClock()
        store = MemoryStore(clock)
        limiter = RateLimiter(30, clock=clock)
        share = BudgetShare(store, "default", "w", limiter, budget=30, lease=LEASE, timeout=5.0, clock=clock)
        limiter.stats.granted += 10
        clock.advance(1.0)
        assert await share.beat()
        assert "w" in store.table.rows
        await share.leave()
        assert limiter.rate == 0
        assert "w" not in store.table.rows

    async def test_leaving_while_calls_count_drains(self) -> None:
        clock = FakeClock()
        store = MemoryStore(clock)
        limiter = RateLimiter(30, clock=clock)
        share = BudgetShare(store, "default", "w", limiter, budget=30, lease=LEASE, timeout=5.0, clock=clock)
        for _ in range(2):
            limiter.stats.granted += 10
            clock.advance(1.0)
            assert await share.beat()
        held = limiter.rate
        assert held > 0
        for _ in range(held):
            await limiter.acquire()  # in flight: they count until they complete plus a window
        await share.leave()
        row = store.table.rows["w"]
        assert row.share == 0 and row.draining == held and booked(row, clock.now()) == held
        assert row.expires_at == row.drain_until

    async def test_an_unexpected_store_error_is_a_missed_beat_not_a_dead_heartbeat(self) -> None:
        clock = FakeClock()
        store = MemoryStore(clock)
        limiter = RateLimiter(30, clock=clock)
        share = BudgetShare(store, "default", "w", limiter, budget=30, lease=LEASE, timeout=5.0, clock=clock)
        store.broken = RuntimeError("driver bug")
        assert not await share.beat()
        assert share.failures == 1 and limiter.rate == 0
        store.broken = None
        limiter.stats.granted += 5
        clock.advance(1.0)
        assert await share.beat()


class TestConfig:
    def test_a_lease_shorter_than_a_call_is_refused_with_several_workers(self) -> None:
        from engine.config import load_config

        database = "postgresql://postgres@127.0.0.1:5432/postgres"
        flags = {"engine.database": database, "engine.workers": 3, "engine.lease_seconds": 14.0}
        with pytest.raises(ConfigError) as caught:
            load_config(overrides=flags, environ={})
        assert caught.value.key == "engine.lease_seconds"
        assert load_config(overrides={**flags, "engine.lease_seconds": 14.5}, environ={}).engine.lease_seconds == 14.5
        assert load_config(overrides={**flags, "engine.workers": 1, "engine.lease_seconds": 2.0}, environ={})
