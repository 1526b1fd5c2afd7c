"""One request budget per account: a sliding one-second window shared by every call of that account.

Upbit counts Exchange API calls per account (KR: per pocket) in one-second windows (30 in the
``default`` group). A sliding window of the last second never lets more than ``rate`` calls into any
fixed second, so the engine stays inside the budget without knowing where Upbit's seconds start.

Corrections from the exchange: ``Remaining-Req: ... sec=N`` that shows fewer calls left than our own
count explains means someone else (another process, another tool) spends this account's budget; we book
the difference as phantom calls for one window. When several runner processes share one account, each
gets a static share (``rate``) of the account's budget (``account_rate``): simple and correct, since
the shares never add up to more than the budget; only use beyond the other shares counts as foreign.
A 429 blocks the account to the next second; a 418 blocks it for the time the exchange
names. Waiters are served by priority (submits and cancels before reads) and, within a priority, first
come first served.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from dataclasses import dataclass
from enum import IntEnum

from engine.clock import Clock, SystemClock

__all__ = ["Priority", "RateLimiter", "RateLimiterStats"]


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


class RateLimiter:
    """A priority-ordered sliding-window limiter. Create one per account and share it."""

    def __init__(
        self,
        rate: int = 30,
        *,
        account_rate: int | None = None,
        window: float = 1.0,
        enabled: bool = True,
        clock: Clock | None = None,
    ) -> None:
        if rate < 1:
            raise ValueError("rate must be at least 1 call per window")
        self.rate = rate
        self.account_rate = max(rate, account_rate or rate)
        self.window = window
        self.enabled = enabled
        self._clock = clock or SystemClock()
        self._grants: deque[float] = deque()
        self._blocked_until = 0.0
        self._queue: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._dispatcher: asyncio.Task[None] | None = None
        self.stats = RateLimiterStats()

    def __repr__(self) -> str:
        return (
            f"<RateLimiter rate={self.rate}/{self.window:g}s waiting={len(self._queue)} "
            f"granted={self.stats.granted} enabled={self.enabled}>"
        )

    async def acquire(self, priority: Priority = Priority.READ) -> float:
        """Wait for a slot; returns the seconds waited."""
        if not self.enabled:
            self.stats.granted += 1
            return 0.0
        start = self._clock.monotonic()
        if not self._queue and self._delay(start) <= 0:
            self._grant(start)
            return 0.0
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._queue, (int(priority), next(self._seq), future))
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch(), name="ratelimit-dispatch")
        await future
        waited = self._clock.monotonic() - start
        self.stats.waited += 1
        self.stats.wait_seconds += waited
        return waited

    def refund(self) -> None:
        """Give back the most recent slot: it was granted but no request went out with it."""
        if self.enabled and self._grants:
            self._grants.pop()
            self.stats.granted -= 1

    def observe_remaining(self, remaining: int) -> None:
        """Book calls that others spent, as told by ``Remaining-Req: sec=remaining``."""
        now = self._clock.monotonic()
        self._expire(now)
        others_share = self.account_rate - self.rate
        foreign = (self.account_rate - max(0, remaining)) - len(self._grants) - others_share
        for _ in range(max(0, foreign)):
            self._grants.append(now)
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

    @property
    def blocked_for(self) -> float:
        """Seconds left of a block (0 when not blocked)."""
        return max(0.0, self._blocked_until - self._clock.monotonic())

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        while self._grants and self._grants[0] <= horizon:
            self._grants.popleft()

    def _delay(self, now: float) -> float:
        self._expire(now)
        delay = self._blocked_until - now
        if len(self._grants) >= self.rate:
            delay = max(delay, self._grants[0] + self.window - now)
        return delay

    def _grant(self, now: float) -> None:
        self._grants.append(now)
        self.stats.granted += 1

    async def _dispatch(self) -> None:
        while self._queue:
            now = self._clock.monotonic()
            delay = self._delay(now)
            if delay > 0:
                await self._clock.sleep(delay)
                continue
            _, _, future = heapq.heappop(self._queue)
            if not future.done():
                self._grant(now)
                future.set_result(None)
