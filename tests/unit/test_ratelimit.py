"""engine.upbit.ratelimit: the budget window, in-flight slots, priorities, foreign usage and blocks, on a FakeClock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from engine.clock import FakeClock
from engine.upbit.ratelimit import Priority, RateLimiter

MakeLimiter = Callable[..., RateLimiter]


@pytest.fixture(name="clock")
def _clock() -> FakeClock:
    """A clock whose sleep jumps time instantly."""
    return FakeClock()


@pytest.fixture(name="make_limiter")
def _make_limiter(clock: FakeClock) -> MakeLimiter:
    """Build a limiter on the fake clock."""

    def make(rate: int = 10, **kwargs: object) -> RateLimiter:
        return RateLimiter(rate, clock=clock, **kwargs)  # type: ignore[arg-type]

    return make


class SettlingClock(FakeClock):
    """A FakeClock that lets everything already runnable run before time jumps.

    FakeClock advances first and yields after, so a waiter granted at t but not yet resumed would read a
    later time; for measuring grant times under concurrency, the jump must come after the loop settles.
    """

    async def sleep(self, seconds: float) -> None:
        """Yield first, then jump ahead by ``seconds``."""
        await asyncio.sleep(0)
        await super().sleep(seconds)


async def call(limiter: RateLimiter, priority: Priority = Priority.READ) -> float:
    """One exchange call that completes at once: acquire, then release."""
    waited = await limiter.acquire(priority)
    limiter.release()
    return waited


def max_in_any_window(times: list[float], window: float = 1.0) -> int:
    """The most grants inside any half-open window (t - window, t] ending at a grant."""
    return max(sum(1 for s in times if t - window < s <= t) for t in times)


class TestWindow:
    """Never more than ``rate`` grants in any one-second window."""

    @pytest.mark.parametrize("rate", [1, 7, 30])
    async def test_sequential(self, make_limiter: MakeLimiter, clock: FakeClock, rate: int) -> None:
        """200 back-to-back acquisitions stay within the rate in every sliding window."""
        limiter = make_limiter(rate)
        grants = []
        for _ in range(200):
            await call(limiter)
            grants.append(clock.monotonic())
        assert max_in_any_window(grants) == rate
        assert limiter.stats.granted == 200

    @pytest.mark.parametrize("rate", [3, 30])
    async def test_concurrent_mixed_priorities(self, rate: int) -> None:
        """200 concurrent waiters of both priorities stay within the rate in every sliding window."""
        clock = SettlingClock()
        limiter = RateLimiter(rate, clock=clock)
        rng = random.Random(7)
        grants: list[float] = []

        async def one() -> None:
            await call(limiter, rng.choice(list(Priority)))
            grants.append(clock.monotonic())

        await asyncio.gather(*(one() for _ in range(200)))
        assert len(grants) == 200
        assert max_in_any_window(grants) <= rate
        assert 199 // rate <= clock.monotonic() < 199 // rate + 0.5

    async def test_uses_the_budget(self, make_limiter: MakeLimiter, clock: FakeClock) -> None:
        """The limiter does not wait needlessly: 200 calls at 10/s take about 19 seconds."""
        limiter = make_limiter(10)
        for _ in range(200):
            await call(limiter)
        assert 19.0 <= clock.monotonic() < 19.5

    async def test_first_burst_free(self, make_limiter: MakeLimiter, clock: FakeClock) -> None:
        """The first ``rate`` calls pass without waiting."""
        limiter = make_limiter(5)
        waits = [await call(limiter) for _ in range(5)]
        assert waits == [0.0] * 5
        assert clock.monotonic() == 0.0

    def test_rate_must_be_positive(self) -> None:
        """A rate below one call per window is refused."""
        with pytest.raises(ValueError, match="rate"):
            RateLimiter(0)


class TestPriority:
    """Writes before reads; first come first served within a priority."""

    async def test_write_served_before_earlier_read(self, make_limiter: MakeLimiter) -> None:
        """A WRITE waiter queued after READ waiters is granted first."""
        limiter = make_limiter(1)
        await call(limiter)
        order: list[str] = []

        async def wait(name: str, priority: Priority) -> None:
            await call(limiter, priority)
            order.append(name)

        tasks = [asyncio.create_task(wait("read-1", Priority.READ)), asyncio.create_task(wait("read-2", Priority.READ))]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(wait("write", Priority.WRITE)))
        await asyncio.gather(*tasks)
        assert order == ["write", "read-1", "read-2"]

    async def test_fifo_within_priority(self, make_limiter: MakeLimiter) -> None:
        """Waiters of one priority are served in arrival order."""
        limiter = make_limiter(2)
        await call(limiter)
        await call(limiter)
        order: list[int] = []

        async def wait(n: int) -> None:
            await call(limiter, Priority.WRITE)
            order.append(n)

        await asyncio.gather(*(wait(n) for n in range(6)))
        assert order == list(range(6))


class TestCorrections:
    """observe_remaining, throttled and block."""

    async def test_observe_remaining_books_foreign_usage(self, make_limiter: MakeLimiter, clock: FakeClock) -> None:
        """``sec=5`` of 30 with nothing spent by us leaves exactly 5 immediate grants."""
        limiter = make_limiter(30)
        limiter.observe_remaining(5)
        assert limiter.stats.phantom == 25
        assert [await call(limiter) for _ in range(5)] == [0.0] * 5
        await call(limiter)
        assert clock.monotonic() >= 1.0

    async def test_observe_remaining_counts_own_calls(self, make_limiter: MakeLimiter) -> None:
        """Calls we made ourselves are not booked twice as foreign."""
        limiter = make_limiter(30)
        for _ in range(10):
            await call(limiter)
        limiter.observe_remaining(20)
        assert limiter.stats.phantom == 0
        limiter.observe_remaining(25)
        assert limiter.stats.phantom == 0

    async def test_observe_zero_remaining(self, make_limiter: MakeLimiter, clock: FakeClock) -> None:
        """``sec=0`` means nothing more this second."""
        limiter = make_limiter(30)
        limiter.observe_remaining(0)
        waited = await call(limiter)
        assert waited >= 1.0 and clock.monotonic() >= 1.0

    @pytest.mark.parametrize("seconds", [0.25, 1.0, 42.0])
    async def test_block_delays_next_grant(self, make_limiter: MakeLimiter, clock: FakeClock, seconds: float) -> None:
        """After block(s), the next grant comes at least ``s`` seconds later."""
        limiter = make_limiter(30)
        limiter.block(seconds)
        assert limiter.blocked_for == seconds
        waited = await call(limiter)
        assert clock.monotonic() >= seconds
        assert waited >= seconds
        assert limiter.blocked_for == 0.0

    async def test_throttled_blocks_one_window(self, make_limiter: MakeLimiter, clock: FakeClock) -> None:
        """After a 429, the next grant comes at least one window later."""
        limiter = make_limiter(30)
        await call(limiter)
        start = clock.monotonic()
        limiter.throttled()
        await call(limiter, Priority.WRITE)
        assert clock.monotonic() - start >= 1.0
        assert (limiter.stats.throttles, limiter.stats.blocks) == (1, 1)

    async def test_shorter_block_does_not_shorten(self, make_limiter: MakeLimiter, clock: FakeClock) -> None:
        """A later, shorter block does not cut an existing longer one."""
        limiter = make_limiter(30)
        limiter.block(10)
        limiter.block(1)
        await call(limiter)
        assert clock.monotonic() >= 10

    @pytest.mark.parametrize("seconds", [0.0, -5.0])
    def test_non_positive_block_ignored(self, make_limiter: MakeLimiter, seconds: float) -> None:
        """Blocking for zero or negative seconds does nothing."""
        limiter = make_limiter()
        limiter.block(seconds)
        assert (limiter.blocked_for, limiter.stats.blocks) == (0.0, 0)


class TestDisabledAndCancel:
    """enabled=False and cancelled waiters."""

    async def test_disabled_never_waits_for_budget(self, make_limiter: MakeLimiter, clock: FakeClock) -> None:
        """A disabled limiter grants at once however many calls were made or others spent."""
        limiter = make_limiter(1, enabled=False)
        limiter.observe_remaining(0)
        waits = [await call(limiter, p) for p in list(Priority) * 100]
        assert waits == [0.0] * 200
        assert clock.monotonic() == 0.0
        assert limiter.stats.granted == 200

    async def test_disabled_still_honours_a_block(self, make_limiter: MakeLimiter, clock: FakeClock) -> None:
        """A 418 pauses the account even when limiting is off (else 429 retries would spin)."""
        limiter = make_limiter(1, enabled=False)
        limiter.block(7)
        assert await call(limiter) >= 7 and clock.monotonic() >= 7

    async def test_cancelled_waiter_does_not_wedge(self, make_limiter: MakeLimiter, clock: FakeClock) -> None:
        """Cancelling a queued waiter lets the ones behind it through, without using its slot."""
        limiter = make_limiter(1)
        await call(limiter)
        first = asyncio.create_task(call(limiter, Priority.WRITE))
        second = asyncio.create_task(call(limiter, Priority.READ))
        await asyncio.sleep(0)
        first.cancel()
        assert await asyncio.wait_for(second, timeout=5) >= 0.0
        assert first.cancelled()
        assert limiter.stats.granted == 2
        await asyncio.wait_for(call(limiter), timeout=5)
        assert limiter.stats.granted == 3

    async def test_only_waiter_cancelled_then_new_one(self, make_limiter: MakeLimiter) -> None:
        """After the only waiter is cancelled, a new acquisition still completes."""
        limiter = make_limiter(1)
        limiter.block(5)
        lone = asyncio.create_task(call(limiter))
        await asyncio.sleep(0)
        lone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lone
        await asyncio.wait_for(call(limiter), timeout=5)
        assert limiter.stats.granted == 1

    def test_repr(self, make_limiter: MakeLimiter) -> None:
        """The repr shows the rate, queue and counts."""
        assert repr(make_limiter(30)) == "<RateLimiter rate=30/1s in_flight=0 waiting=0 granted=0 enabled=True>"


class TestInFlight:
    """A slot counts from its grant until one window after its call completed."""

    async def test_slow_call_holds_its_slot_until_completion_plus_window(
        self, make_limiter: MakeLimiter, clock: FakeClock
    ) -> None:
        """With rate 1, a call still in flight blocks the next grant; after release, one more window."""
        limiter = make_limiter(1)
        await limiter.acquire()
        nxt = asyncio.create_task(limiter.acquire())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not nxt.done() and limiter.in_flight == 1
        clock.advance(3.0)
        limiter.release()
        await nxt
        assert clock.monotonic() >= 4.0

    async def test_refund_frees_the_slot_at_once(self, make_limiter: MakeLimiter, clock: FakeClock) -> None:
        """A slot given back unused (no request went out) does not count for a window."""
        limiter = make_limiter(1)
        await limiter.acquire()
        limiter.refund()
        assert await limiter.acquire() == 0.0 and clock.monotonic() == 0.0

    @pytest.mark.parametrize("seed", [1, 2, 3])
    async def test_arrivals_never_exceed_rate_in_any_exchange_second(self, seed: int) -> None:
        """Whatever the transit delay (0-400 ms), no fixed exchange second receives more than ``rate``."""
        clock = SettlingClock()
        limiter = RateLimiter(30, clock=clock)
        rng = random.Random(seed)
        arrivals: list[float] = []

        async def one() -> None:
            await limiter.acquire()
            transit = rng.uniform(0.0, 0.4)
            await clock.sleep(transit)
            arrivals.append(clock.monotonic())
            await clock.sleep(rng.uniform(0.0, 0.05))
            limiter.release()

        await asyncio.gather(*(one() for _ in range(300)))
        buckets: dict[int, int] = {}
        for t in arrivals:
            buckets[int(t // 1.0)] = buckets.get(int(t // 1.0), 0) + 1
        assert max(buckets.values()) <= 30


class TestSetRate:
    """set_rate: a lower rate applies to new grants at once, granted slots keep counting; raising wakes."""

    async def test_lowering_waits_for_the_counted_slots(self, make_limiter: MakeLimiter, clock: FakeClock) -> None:
        limiter = make_limiter(10)
        for _ in range(10):
            await limiter.acquire()
        limiter.set_rate(4)
        for _ in range(10):
            limiter.release()  # completed now: each counts one more window
        assert limiter.counted == 10
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0)
        assert not waiter.done() and limiter.counted == 10
        await asyncio.wait_for(waiter, 5)  # the fake clock jumps to the window's end
        assert clock.monotonic() >= 1.0 and limiter.counted == 1

    async def test_zero_grants_nothing_until_raised(self, make_limiter: MakeLimiter) -> None:
        limiter = make_limiter(5)
        limiter.set_rate(0)
        assert limiter.load == 0.0
        waiters = [asyncio.create_task(limiter.acquire(Priority.WRITE)) for _ in range(3)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert not any(w.done() for w in waiters)
        limiter.set_rate(2)
        await asyncio.wait(waiters, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        for _ in range(5):
            await asyncio.sleep(0)
        assert sum(w.done() for w in waiters) == 2
        limiter.set_rate(3)
        await asyncio.wait_for(asyncio.gather(*waiters), 5)
        assert limiter.in_flight == 3

    def test_negative_is_refused(self, make_limiter: MakeLimiter) -> None:
        with pytest.raises(ValueError, match="negative"):
            make_limiter(5).set_rate(-1)
