"""What workflows talk to: one account's client, plus the shared reads and batched polls (design §4).

- The allowlist and wallet status are account-wide lists: each is fetched at most once per TTL, and
  concurrent askers share the one fetch in flight (single-flight). A thousand withdrawals cost a handful
  of these calls, not two thousand.
- ``chance`` is cached briefly per (currency, net_type): balances move, so the TTL is short. What this
  gateway itself submitted since a snapshot was fetched (amount + fee, including POSTs still in flight) is
  held against the snapshot's balance locally, so a submit does not cost every later withdrawal a fresh
  ``chance`` call; a workflow that finds the held balance short asks for a fresh snapshot before it gives up.
- ``poll(uuid, within=...)`` does not call the exchange by itself: polls are coalesced into
  ``GET /v1/withdraws?uuids[]=...`` calls of up to 100 uuids, the longest-waiting first. A batch leaves
  ``poll_window`` after a poll falls due, but no sooner than the smallest ``within`` of the waiting polls
  after the previous batch: polling is a sweep that costs at most one call per ``within`` however many
  withdrawals are in flight (beyond 100, each is simply looked at less often), and every answer still
  comes within its ``within``. A batch takes its uuids only once it holds a rate-limit slot: when the
  budget is tight (submits go first) it keeps growing while it waits. With the limiter off there is no
  budget to spare, and full batches leave at once.
- ``submit_delay()`` keeps the queue of submits waiting for a rate-limit slot about ``submit_queue``
  seconds long: a new workflow beyond that gets a turn (a time, spaced at the account's rate) and waits
  for it as a row in the store, not as a task holding a runner slot; polls and cancels are not stuck
  behind a backlog.
- ``submit_slot()`` holds the write slot a POST goes out with, as a value: the intent is persisted through
  it and ``submit(body, slot=slot)`` refuses a slot without that intent (or used already); a slot whose
  POST never left goes back to the budget on any exit from its block.
- Transient read failures of the shared fetches are retried with tenacity (exponential backoff with
  jitter, on the injected clock); a POST is never retried here.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

import structlog
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from engine.clock import Clock, SystemClock
from engine.errors import ExchangeBlocked, ExchangeRefused, ExchangeThrottled, OutcomeUnknown
from engine.upbit.client import MAX_LIST_IDS, UpbitClient, WithdrawBody
from engine.upbit.ratelimit import Priority, Reservation
from engine.upbit.types import AllowedAddress, Chance, WalletStatus, Withdrawal

__all__ = ["Gateway", "SubmitSlot"]

log = structlog.get_logger("engine.gateway")

T = TypeVar("T")


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ExchangeBlocked):
        return False
    return isinstance(exc, OutcomeUnknown | ExchangeThrottled)


class _Cached(Generic[T]):
    """A value fetched at most once per TTL; concurrent callers share the fetch in flight.

    Refresh-ahead: past half its TTL (of a second or more), a read still gets the cached value and starts
    the next fetch in the background, so callers rarely wait for a fetch (which, as a read, may queue
    behind submits). Sub-second TTLs (tests) simply fetch on demand."""

    def __init__(self, fetch: Callable[[], Awaitable[T]], ttl: float, clock: Clock) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._clock = clock
        self._value: T | None = None
        self._fetched_at = float("-inf")
        self._inflight: asyncio.Future[T] | None = None
        self.fetches = 0

    def invalidate(self) -> None:
        self._fetched_at = float("-inf")

    @property
    def value(self) -> T | None:
        """The last value fetched (possibly stale), or None."""
        return self._value

    async def get(self) -> T:
        age = self._clock.monotonic() - self._fetched_at
        if self._value is not None and age < self._ttl:
            if self._ttl >= 1.0 and age >= self._ttl / 2 and self._inflight is None:
                self._start().add_done_callback(_retrieve)  # nobody awaits it: its failure is only logged
            return self._value
        inflight = self._inflight or self._start()
        return await asyncio.shield(inflight)

    def _start(self) -> asyncio.Future[T]:
        self._inflight = asyncio.ensure_future(self._refresh())
        return self._inflight

    async def _refresh(self) -> T:
        try:
            self.fetches += 1
            value = await self._fetch()
            self._value, self._fetched_at = value, self._clock.monotonic()
            return value
        finally:
            self._inflight = None


class _Holds:
    """Funds this gateway's submissions took from one (currency, net_type) balance, for the snapshot's
    sake: in flight (not answered yet), and answered, in the order the answers came."""

    __slots__ = ("answered", "answered_total", "in_flight")

    def __init__(self) -> None:
        self.in_flight = Decimal(0)
        self.answered: deque[tuple[float, Decimal]] = deque()
        self.answered_total = Decimal(0)

    def since(self, asked_at: float) -> Decimal:
        """What a snapshot asked for at ``asked_at`` may not show yet (older answers it does show)."""
        while self.answered and self.answered[0][0] < asked_at:
            self.answered_total -= self.answered.popleft()[1]
        return self.in_flight + self.answered_total

    def answer(self, total: Decimal, at: float, *, executed: bool) -> None:
        self.in_flight -= total
        if executed:  # or possibly executed: held until a snapshot asked later shows it
            self.answered.append((at, total))
            self.answered_total += total


class SubmitSlot:
    """The one write slot a POST goes out with, and the intent it was recorded for (the order that
    protects money, held by the types rather than by a convention).

    Only :meth:`Gateway.submit_slot` makes one, after the rate limiter granted it; :meth:`record_intent`
    persists the intent *through* the slot; :meth:`Gateway.submit` takes the slot as a required argument
    and refuses it unless that intent, for exactly the body being sent, was recorded and the slot is
    unused. So a POST cannot leave before its slot, nor before its intent is committed, nor twice on
    one slot; and a slot whose POST never left goes back to the budget when its block exits."""

    __slots__ = ("_intent", "_reservation")

    def __init__(self, reservation: Reservation) -> None:
        self._reservation = reservation
        self._intent: WithdrawBody | None = None

    def __repr__(self) -> str:
        return f"<SubmitSlot {self._reservation!r} intent={'recorded' if self._intent else 'none'}>"

    @property
    def used(self) -> bool:
        """A POST went out with this slot."""
        return self._reservation.spent

    async def record_intent(self, body: WithdrawBody, persist: Callable[[], Awaitable[T]]) -> T:
        """Run ``persist`` (the store commit of the intent to send ``body``) while holding the slot; only
        once it returned may :meth:`Gateway.submit` send ``body`` with this slot. If ``persist`` raises,
        nothing is recorded (and the slot goes back when the block exits)."""
        if not self._reservation.usable or self._intent is not None:
            raise RuntimeError(f"{self!r}: one intent per slot, inside its block")
        result = await persist()
        self._intent = body
        return result

    def spend_on(self, body: WithdrawBody) -> None:
        """The POST of ``body`` leaves now with this slot: check the order, then hand the slot over."""
        if self._intent is None:
            raise RuntimeError("no intent was recorded with this slot: persist it before the POST")
        if self._intent != body:
            raise RuntimeError("the body sent is not the intent recorded with this slot")
        self._reservation.spend()


@dataclass(slots=True)
class _Poll:
    """The callers waiting for one uuid, by when the batch that carries it should leave, and how late
    its answer may come (the sweep's period)."""

    deadline: float
    within: float
    futures: list[asyncio.Future[Withdrawal | None]]


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("gateway.refresh_failed", error=str(future.exception()))


class Gateway:
    """One account's exchange access for workflows: cached reads, batched polls, writes."""

    def __init__(
        self,
        client: UpbitClient,
        *,
        clock: Clock | None = None,
        allowlist_ttl: float = 60.0,
        wallet_ttl: float = 10.0,
        chance_ttl: float = 2.0,
        poll_window: float = 0.05,
        read_attempts: int = 3,
        submit_queue: float = 2.0,
    ) -> None:
        self.client = client
        self._clock = clock or SystemClock()
        self._read_attempts = read_attempts
        self._allowlist = _Cached(lambda: self._retrying(client.coin_addresses), allowlist_ttl, self._clock)
        self._wallets = _Cached(self._fetch_wallets, wallet_ttl, self._clock)
        self._chance_ttl = chance_ttl
        self._chances: dict[tuple[str, str], _Cached[tuple[float, Chance]]] = {}
        self._holds: dict[tuple[str, str], _Holds] = {}
        self._poll_window = poll_window
        self._pending: dict[str, _Poll] = {}
        self._due = float("inf")
        self._spacing = float("inf")
        self._last_batch = float("-inf")
        self._acquiring = 0
        self._flush_task: asyncio.Task[None] | None = None
        #: When the sweep's current sleep ends (monotonic); -inf while it is not asleep.
        self._flush_wakes = float("-inf")
        self._batches: set[asyncio.Task[None]] = set()
        self._submit_queue = submit_queue
        self._next_turn = float("-inf")
        self._admitted: deque[float] = deque()
        self.poll_batches = 0
        self.polls = 0
        self.chance_fetches = 0
        self.deferred_submits = 0

    def __repr__(self) -> str:
        return f"<Gateway {self.client!r} pending_polls={len(self._pending)} batches={self.poll_batches}>"

    async def aclose(self) -> None:
        """Finish batches in flight, then close the client."""
        if self._flush_task is not None:
            self._flush_task.cancel()
            await asyncio.gather(self._flush_task, return_exceptions=True)
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
        for entry in self._pending.values():  # nobody is left to ask (the runner stopped first)
            for future in entry.futures:
                future.cancel()
        self._pending.clear()
        await self.client.aclose()

    async def _retrying(self, fetch: Callable[[], Awaitable[T]]) -> T:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._read_attempts),
            wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
            retry=retry_if_exception(_transient),
            sleep=self._clock.sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await fetch()
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _fetch_wallets(self) -> dict[tuple[str, str], WalletStatus]:
        rows = await self._retrying(self.client.wallet_status)
        return {(row.currency, row.net_type): row for row in rows}

    # -- shared reads ------------------------------------------------------------------------------

    async def allowlist(self) -> list[AllowedAddress]:
        """The Open API allowlist (cached)."""
        return await self._allowlist.get()

    async def wallet_status(self, currency: str, net_type: str) -> WalletStatus | None:
        """The wallet row of (currency, net_type), from the cached list; None when Upbit lists none."""
        return (await self._wallets.get()).get((currency, net_type))

    def forget_wallets(self) -> None:
        """Drop the cached wallet list (a workflow waiting on a paused wallet wants a fresh look)."""
        self._wallets.invalidate()

    async def chance(self, currency: str, net_type: str, *, fresh: bool = False) -> Chance:
        """Withdrawal capability, limits and balance for (currency, net_type) (briefly cached).

        The balance is the snapshot's minus what this gateway submitted that the snapshot may not show yet
        (POSTs in flight, or answered after the snapshot was asked for). ``fresh``: a new snapshot, as
        the exchange reports it (no local holds)."""
        key = (currency, net_type)
        cached = self._chances.get(key)
        if cached is None:

            async def fetch() -> tuple[float, Chance]:
                asked_at = self._clock.monotonic()
                self.chance_fetches += 1
                return asked_at, await self._retrying(lambda: self.client.chance(currency, net_type))

            cached = self._chances[key] = _Cached(fetch, self._chance_ttl, self._clock)
        if fresh:
            cached.invalidate()
        asked_at, chance = await cached.get()
        holds = self._holds.get(key)
        held = holds.since(asked_at) if holds is not None else Decimal(0)
        return chance if fresh or not held else replace(chance, balance=chance.balance - held)

    def _hold(self, body: WithdrawBody) -> tuple[_Holds, Decimal]:
        key = (body.currency, body.net_type)
        cached = self._chances.get(key)
        fee = Decimal(0)
        if body.transaction_type != "internal" and cached is not None and cached.value is not None:
            fee = cached.value[1].withdraw_fee
        holds = self._holds.setdefault(key, _Holds())
        total = body.amount + fee
        holds.in_flight += total
        return holds, total

    # -- writes ----------------------------------------------------------------------------------

    def submit_delay(self) -> float:
        """Seconds a new workflow should wait before it starts towards its POST (0: start now).

        Keeps about ``submit_queue`` seconds of submits queued for (or heading to) a write slot; beyond
        that, each caller gets the next turn at the account's rate and should come back then (as a row
        with ``next_run_at``, holding no runner slot). A caller that already waited for its turn passes
        ``True`` to :meth:`admit` instead of asking again."""
        limiter = self.client.limiter
        if not limiter.enabled:
            return 0.0
        now = self._clock.monotonic()
        rate = limiter.account_rate / limiter.window  # a worker's share may grow to it (engine.upbit.budget)
        queued = limiter.waiting(Priority.WRITE) + self._recently_admitted(now)
        if queued < rate * self._submit_queue and self._next_turn <= now:
            self.admit()
            return 0.0
        turn = max(self._next_turn, now + queued / rate - self._submit_queue)
        self._next_turn = turn + 1 / rate
        if turn <= now:  # its turn is now: it goes, counted as queued like any other
            self.admit()
            return 0.0
        self.deferred_submits += 1
        return turn - now

    def admit(self) -> None:
        """A workflow starts towards its POST now (counted as queued until it reserves its slot)."""
        self._admitted.append(self._clock.monotonic())

    def _recently_admitted(self, now: float) -> int:
        horizon = now - 2 * self._submit_queue  # pre-flight takes milliseconds; a stale entry fell out
        while self._admitted and self._admitted[0] < horizon:
            self._admitted.popleft()
        return len(self._admitted)

    @asynccontextmanager
    async def submit_slot(self) -> AsyncIterator[SubmitSlot]:
        """A write slot of the account's budget for one POST, taken before the intent is persisted, so a
        workflow never sits in ``submitting`` while queued behind the rate limit (a crash there would leave
        an intent whose POST may or may not have left; this way that window is one commit long).

        Inside the block: :meth:`SubmitSlot.record_intent` persists the intent, then :meth:`submit` sends
        it with the slot. Unused, the slot goes back to the budget on any exit from the block."""
        if self._admitted:
            self._admitted.popleft()
        async with self.client.limiter.reserve(Priority.WRITE) as reservation:
            yield SubmitSlot(reservation)

    async def submit(self, body: WithdrawBody, *, slot: SubmitSlot) -> Withdrawal:
        """POST the withdrawal once, with ``slot`` (whose intent for exactly ``body`` was recorded).
        Errors tell what is known of the outcome; nothing is retried."""
        slot.spend_on(body)
        holds, total = self._hold(body)
        executed = True  # or unknown: stays held, the safe side
        try:
            return await self.client.withdraw_coin(body, slot_reserved=True)
        except (ExchangeRefused, ExchangeThrottled):  # definitely not executed: nothing to hold
            executed = False
            raise
        finally:
            holds.answer(total, self._clock.monotonic(), executed=executed)

    async def cancel(self, uuid: str) -> Withdrawal:
        """Ask the exchange to cancel."""
        return await self.client.cancel_withdraw(uuid)

    # -- reconciliation --------------------------------------------------------------------------

    async def recent_withdrawals(self, currency: str, since: datetime, *, max_pages: int = 5) -> list[Withdrawal]:
        """The currency's withdrawals created at or after ``since``, newest first, paging back by uuid."""
        found: list[Withdrawal] = []
        cursor: str | None = None
        for _ in range(max_pages):
            page = await self._retrying(
                functools.partial(self.client.list_withdraws, currency=currency, limit=MAX_LIST_IDS, to=cursor)
            )
            found.extend(w for w in page if w.created_at >= since)
            if len(page) < MAX_LIST_IDS or page[-1].created_at < since:
                break
            cursor = page[-1].uuid
        return found

    # -- coalesced polling -----------------------------------------------------------------------

    async def poll(self, uuid: str, *, within: float | None = None) -> Withdrawal | None:
        """The withdrawal's current record (None if the exchange did not list it), batched with others.

        ``within``: how late the answer may come (the caller's own poll schedule can stretch that much);
        never less than the gateway's ``poll_window``."""
        future: asyncio.Future[Withdrawal | None] = asyncio.get_running_loop().create_future()
        deadline = self._clock.monotonic() + self._poll_window
        slack = max(self._poll_window, within or 0.0)
        entry = self._pending.get(uuid)
        if entry is None:
            self._pending[uuid] = _Poll(deadline, slack, [future])
        else:
            entry.futures.append(future)
            entry.deadline, entry.within = min(entry.deadline, deadline), min(entry.within, slack)
        self._due = min(self._due, deadline)
        self._spacing = min(self._spacing, slack)
        self.polls += 1
        if self._flush_task is None or self._flush_task.done() or self._sweep_sleeps_too_long():
            if self._flush_task is not None:
                self._flush_task.cancel()  # asleep at its only await: nothing is lost, the new one decides
            self._flush_wakes = float("-inf")
            self._flush_task = asyncio.create_task(self._flush())
        return await future

    def _sweep_sleeps_too_long(self) -> bool:
        """The sweep sleeps past the moment a poll that just came in may go (a poll due sooner than those it
        was sleeping for): it must be woken, or that poll would wait as long as the slowest one. A poll_window
        of tolerance keeps the ordinary case (a poll due when the sweep wakes anyway) from restarting it."""
        return max(self._due, self._last_batch + self._spacing) < self._flush_wakes - self._poll_window

    async def _flush(self) -> None:
        """Start a batch when polls fall due, the sweep's spacing has passed and no batch is waiting."""
        while self._pending:
            now = self._clock.monotonic()
            uncovered = len(self._pending) - MAX_LIST_IDS * self._acquiring  # not yet in a waiting batch
            wait = max(self._due - now, self._last_batch + self._spacing - now)
            if not self.client.limiter.enabled and uncovered >= MAX_LIST_IDS:
                wait = 0.0  # no budget to spare (limiter off): a full batch leaves at once, beside others
            elif self._acquiring:
                wait = max(wait, self._poll_window)
            if wait <= 0 and uncovered > 0:
                self._acquiring += 1
                self._last_batch = now
                self._launch(self._batch())
                continue
            if self._acquiring:  # the batch takes its uuids once it has a slot: look again soon
                wait = self._poll_window
            pause = max(self._poll_window, min(wait, self._spacing))
            self._flush_wakes = now + pause
            await self._clock.sleep(pause)
            self._flush_wakes = float("-inf")

    async def _batch(self) -> None:
        """Get a read slot, then take up to 100 pending uuids (the most urgent first) and list them."""
        try:
            await self.client.limiter.acquire(Priority.READ)
        finally:
            self._acquiring -= 1
        batch = self._take_batch()
        if not batch:
            self.client.limiter.refund()
            return
        await self._run_batch(batch)

    def _take_batch(self) -> dict[str, list[asyncio.Future[Withdrawal | None]]]:
        if len(self._pending) <= MAX_LIST_IDS:
            taken, self._pending = self._pending, {}
        else:
            urgent = sorted(self._pending, key=lambda u: self._pending[u].deadline)[:MAX_LIST_IDS]
            taken = {uuid: self._pending.pop(uuid) for uuid in urgent}
        self._due = min((p.deadline for p in self._pending.values()), default=float("inf"))
        self._spacing = min((p.within for p in self._pending.values()), default=float("inf"))
        return {uuid: entry.futures for uuid, entry in taken.items()}

    def _launch(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _run_batch(self, batch: dict[str, list[asyncio.Future[Withdrawal | None]]]) -> None:
        self.poll_batches += 1
        try:
            rows = await self.client.list_withdraws(uuids=list(batch), limit=MAX_LIST_IDS, slot_reserved=True)
        except Exception as exc:
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        by_uuid = {row.uuid: row for row in rows}
        for uuid, futures in batch.items():
            for future in futures:
                if not future.done():
                    future.set_result(by_uuid.get(uuid))
