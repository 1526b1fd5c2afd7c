"""One request budget per account, shared by every call of that account, that no transit delay can break.

Upbit counts Exchange API calls per account (KR: per pocket) in one-second windows, by when they
*arrive* (30 in the ``default`` group). We cannot see arrivals, but we know each call arrives after we
send it and before its answer comes back. So a slot counts against the budget from the moment it is
granted until one window after the call *completed* (calls still in flight count, always). Proof that
this keeps every exchange second within ``rate``: take all calls arriving in one second ``[s, s+1)``
and the last one granted, ``j``; every other such call ``i`` completed at or after its arrival ``>= s``,
which is later than ``g_j - 1`` (since ``g_j <= a_j < s + 1``), so ``i`` still counted when ``j`` was
granted; hence at most ``rate`` of them. A plain sliding window over grant times lacks this: a burst
delayed in transit (a cold TLS connection) lands in the same exchange second as the next burst.

Corrections from the exchange: ``Remaining-Req: ... sec=N`` that shows fewer calls left than our own
count explains means someone else (another process, another tool) spends this account's budget; we book
the difference as phantom calls for one window. When several runner processes share one account, each
grants at its share (``rate``) of the account's budget (``account_rate``), kept by
:mod:`engine.upbit.budget` through :meth:`set_rate` (the shares never add up to more than the budget;
the proof across workers is there); only use beyond the other shares counts as foreign.
A 429 blocks the account to the next second; a 418 blocks it for the time the exchange names (blocks
hold even when limiting is disabled). A 418 that names no time (no ``Retry-After``, no number in its
message) gets a growing one, since Upbit lengthens the block on every repeat offence: 60 s, 120 s, 240 s ...
(with jitter, capped at 30 min); 418s that arrive while a block holds belong to that block (calls sent
before it), and the schedule starts over once a call is served again after the block.

Waiters are served by priority (submits and cancels before reads) and, within a priority, first come
first served; a read that has waited ``read_patience`` seconds goes before the writes (aging), so a steady
stream of submits can delay polls but never starve them.

Callers pair every :meth:`acquire` with :meth:`release` once the call completed (or :meth:`refund` when
no request went out with the slot). A caller that holds a slot across other awaits (a submit persists its
intent between the slot and the POST) takes it as a value instead: ``async with limiter.reserve(p) as r``
refunds ``r`` on every way out of the block unless :meth:`Reservation.spend` handed it to a call.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import IntEnum

from engine.backoff import backoff_delay
from engine.clock import Clock, SystemClock

__all__ = ["Priority", "RateLimiter", "RateLimiterStats", "Reservation"]


class Priority(IntEnum):
    """Lower is served first."""

    WRITE = 0
    READ = 1


@dataclass(slots=True)
class RateLimiterStats:
    """Counters for metrics and benchmarks."""

    granted: int = 0
    waited: int = 0
    wait_seconds: float = 0.0
    throttles: int = 0
    blocks: int = 0
    phantom: int = 0
    penalties: int = 0


class Reservation:
    """One granted slot, held as a value until a request goes out with it (:meth:`spend`) or it goes back.

    Made only by :meth:`RateLimiter.reserve`, which refunds it on any exit from its block (an exception,
    a cancellation, an early return) unless it was spent; spent, it belongs to the call that sends, which
    releases it when the call completed (``slot_reserved=True`` on the client). Spending twice, or after
    the block ended, is a programming error (``RuntimeError``): one slot is one request."""

    __slots__ = ("_open", "_spent", "priority")

    def __init__(self, priority: Priority) -> None:
        self.priority = priority
        self._open = True
        self._spent = False

    def __repr__(self) -> str:
        status = "spent" if self._spent else "held" if self._open else "refunded"
        return f"<Reservation {self.priority.name} {status}>"

    @property
    def usable(self) -> bool:
        """Held and not spent yet: a request may still go out with it."""
        return self._open and not self._spent

    @property
    def spent(self) -> bool:
        """A request went out (or is going out) with this slot."""
        return self._spent

    def spend(self) -> None:
        """Hand the slot to the request about to leave; from here on the call releases it."""
        if not self.usable:
            raise RuntimeError(f"{self!r} cannot be spent: a slot carries exactly one request, inside its block")
        self._spent = True

    def _close(self) -> bool:
        """End the block; True when the slot was never spent (so it must be refunded)."""
        self._open = False
        return not self._spent


class RateLimiter:
    """A priority-ordered limiter counting calls from grant to completion plus one window."""

    def __init__(
        self,
        rate: int = 30,
        *,
        account_rate: int | None = None,
        window: float = 1.0,
        enabled: bool = True,
        clock: Clock | None = None,
        read_patience: float | None = 1.25,
        penalty_initial: float = 60.0,
        penalty_max: float = 1800.0,
        penalty_jitter: float = 6.0,
    ) -> None:
        if rate < 1:
            raise ValueError("rate must be at least 1 call per window")
        self.rate = rate
        self.account_rate = max(rate, account_rate or rate)
        self.window = window
        self.enabled = enabled
        self._clock = clock or SystemClock()
        self._busy = 0
        self._expiries: list[float] = []
        self._blocked_until = 0.0
        self.read_patience = read_patience
        self.penalty_initial, self.penalty_max, self.penalty_jitter = penalty_initial, penalty_max, penalty_jitter
        #: 418 blocks in a row (each after the previous one ended) without a call served in between.
        self.strikes = 0
        #: Waiters per priority (index = Priority), each (queued at, future), oldest first.
        self._queues: tuple[deque[tuple[float, asyncio.Future[None]]], ...] = tuple(deque() for _ in Priority)
        self._dispatcher: asyncio.Task[None] | None = None
        self._released = asyncio.Event()
        self.stats = RateLimiterStats()

    def __repr__(self) -> str:
        return (
            f"<RateLimiter rate={self.rate}/{self.window:g}s in_flight={self._busy} waiting={self.waiting()} "
            f"granted={self.stats.granted} enabled={self.enabled}>"
        )

    async def acquire(self, priority: Priority = Priority.READ) -> float:
        """Wait for a slot; returns the seconds waited. Pair with :meth:`release` or :meth:`refund`."""
        start = self._clock.monotonic()
        if not self.enabled:
            if self.blocked_for > 0:
                await self._clock.sleep(self.blocked_for)
            self.stats.granted += 1
            return self._clock.monotonic() - start
        if not any(self._queues) and self._delay(start) <= 0:
            self._grant()
            return 0.0
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues[priority].append((start, future))
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch(), name="ratelimit-dispatch")
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.refund()  # granted just as we were cancelled: the slot was never used
            raise
        waited = self._clock.monotonic() - start
        self.stats.waited += 1
        self.stats.wait_seconds += waited
        return waited

    @asynccontextmanager
    async def reserve(self, priority: Priority = Priority.WRITE) -> AsyncIterator[Reservation]:
        """Wait for a slot and hold it as a :class:`Reservation` for the block; unspent, it is refunded on
        any exit (so a slot can never leak out of the budget, whatever happens between grant and send)."""
        await self.acquire(priority)  # cancelled while waiting: acquire itself gives back a late grant
        reservation = Reservation(priority)
        try:
            yield reservation
        finally:
            if reservation._close():
                self.refund()

    def release(self) -> None:
        """The call made with a slot completed (answered, failed or timed out): it counts one more window."""
        if self.enabled and self._busy > 0:
            self._busy -= 1
            heapq.heappush(self._expiries, self._clock.monotonic() + self.window)
            self._released.set()

    def refund(self) -> None:
        """Give a slot back: it was granted but no request went out with it."""
        if self.enabled and self._busy > 0:
            self._busy -= 1
            self.stats.granted -= 1
            self._released.set()

    def observe_remaining(self, remaining: int) -> None:
        """Book calls that others spent, as told by ``Remaining-Req: sec=remaining``."""
        now = self._clock.monotonic()
        self._expire(now)
        others_share = self.account_rate - self.rate
        foreign = (self.account_rate - max(0, remaining)) - self._count() - others_share
        for _ in range(max(0, foreign)):
            heapq.heappush(self._expiries, now + self.window)
        self.stats.phantom += max(0, foreign)

    def throttled(self) -> None:
        """A 429 arrived: nothing more this second."""
        self.stats.throttles += 1
        self.block(self.window)

    def block(self, seconds: float) -> None:
        """Pause every call of this account for ``seconds`` (a 418, or a 429)."""
        if seconds > 0:
            self.stats.blocks += 1
            self._blocked_until = max(self._blocked_until, self._clock.monotonic() + seconds)

    def penalised(self, stated: float | None) -> float:
        """A 418 arrived: block the account and return for how long.

        ``stated`` is the time the exchange named (at least 1 s is taken); without one, the block grows
        with each strike. A 418 while a block still holds adds no strike and does not shorten the block."""
        self.stats.penalties += 1
        if self.blocked_for > 0 and stated is None:
            return self.blocked_for
        if self.blocked_for <= 0:
            self.strikes += 1
        if stated is not None:
            seconds = max(1.0, stated)
        else:
            seconds = backoff_delay(
                self.strikes - 1, initial=self.penalty_initial, maximum=self.penalty_max, jitter=self.penalty_jitter
            )
        self.block(seconds)
        return seconds

    def served(self) -> None:
        """The exchange served a call (not a 418/429) while no block holds: the 418 schedule starts over."""
        if self.strikes and self.blocked_for <= 0:
            self.strikes = 0

    @property
    def blocked_for(self) -> float:
        """Seconds left of a block (0 when not blocked)."""
        return max(0.0, self._blocked_until - self._clock.monotonic())

    def waiting(self, priority: Priority | None = None) -> int:
        """Callers queued for a slot (of one priority, or all); one cancelled while waiting is not counted
        (it stays in the queue until the dispatcher passes it)."""
        queues = self._queues if priority is None else (self._queues[priority],)
        return sum(1 for queue in queues for _, future in queue if not future.done())

    @property
    def load(self) -> float:
        """Share of the budget in use now (slots counted / rate); above 1 only with foreign calls booked
        (or while a lowered rate drains: see :meth:`set_rate`)."""
        self._expire(self._clock.monotonic())
        return self._count() / max(self.rate, 1)

    @property
    def in_flight(self) -> int:
        """Slots granted whose call has not completed yet."""
        return self._busy

    @property
    def counted(self) -> int:
        """Slots counted against the rate now: in flight, completed less than a window ago, and phantoms."""
        self._expire(self._clock.monotonic())
        return self._count()

    def set_rate(self, rate: int) -> None:
        """Change the calls allowed per window (a worker's share of a shared budget, :mod:`engine.upbit.budget`).

        Lowering takes effect for new grants at once; slots already granted keep counting their window as
        always (so until :attr:`counted` falls to the new rate, none is granted). Raising wakes the queue.
        ``0`` grants nothing until raised again (a worker that may have lost its share of the budget)."""
        if rate < 0:
            raise ValueError("rate must not be negative")
        raised = rate > self.rate
        self.rate = rate
        if raised:
            self._released.set()

    def _count(self) -> int:
        return self._busy + len(self._expiries)

    def _expire(self, now: float) -> None:
        while self._expiries and self._expiries[0] <= now:
            heapq.heappop(self._expiries)

    def _delay(self, now: float) -> float:
        """Seconds until a slot may be granted; ``inf`` when only a completion can free one."""
        self._expire(now)
        delay = self._blocked_until - now
        if self._count() >= self.rate:
            delay = max(delay, self._expiries[0] - now if self._expiries else float("inf"))
        return delay

    def _grant(self) -> None:
        self._busy += 1
        self.stats.granted += 1

    def _next_waiter(self, now: float) -> asyncio.Future[None] | None:
        """The waiter to serve: writes first, unless the oldest read has waited ``read_patience``."""
        for queue in self._queues:
            while queue and queue[0][1].done():  # cancelled while waiting
                queue.popleft()
        writes, reads = self._queues[Priority.WRITE], self._queues[Priority.READ]
        patience = self.read_patience
        if reads and (not writes or (patience is not None and now - reads[0][0] > patience)):
            return reads.popleft()[1]
        return writes.popleft()[1] if writes else None

    async def _dispatch(self) -> None:
        while any(self._queues):
            now = self._clock.monotonic()
            delay = self._delay(now)
            if delay == float("inf"):
                self._released.clear()
                await self._released.wait()
                continue
            if delay > 0:
                await self._clock.sleep(delay)
                continue
            future = self._next_waiter(now)
            if future is not None:
                self._grant()
                future.set_result(None)
