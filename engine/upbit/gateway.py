"""What workflows talk to: one account's client, plus the shared reads and batched polls (design §4).

- The allowlist and wallet status are account-wide lists: each is fetched at most once per TTL, and
  concurrent askers share the one fetch in flight (single-flight). A thousand withdrawals cost a handful
  of these calls, not two thousand.
- ``chance`` is cached briefly per (currency, net_type): balances move, so the TTL is short.
- ``poll(uuid)`` does not call the exchange by itself: polls that fall due together are coalesced into
  ``GET /v1/withdraws?uuids[]=...`` calls of up to 100 uuids. The window is short (tens of ms) and the
  batch leaves early when it is full.
- Transient read failures of the shared fetches are retried with tenacity (exponential backoff with
  jitter, on the injected clock); a POST is never retried here.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Generic, TypeVar

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from engine.clock import Clock, SystemClock
from engine.errors import ExchangeBlocked, ExchangeThrottled, OutcomeUnknown
from engine.upbit.client import MAX_LIST_IDS, UpbitClient, WithdrawBody
from engine.upbit.ratelimit import Priority
from engine.upbit.types import AllowedAddress, Chance, WalletStatus, Withdrawal

__all__ = ["Gateway"]

T = TypeVar("T")


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ExchangeBlocked):
        return False
    return isinstance(exc, OutcomeUnknown | ExchangeThrottled)


class _Cached(Generic[T]):
    """A value fetched at most once per TTL; concurrent callers share the fetch in flight."""

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

    async def get(self) -> T:
        if self._value is not None and self._clock.monotonic() - self._fetched_at < self._ttl:
            return self._value
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._refresh())
        inflight = self._inflight
        return await asyncio.shield(inflight)

    async def _refresh(self) -> T:
        try:
            self.fetches += 1
            value = await self._fetch()
            self._value, self._fetched_at = value, self._clock.monotonic()
            return value
        finally:
            self._inflight = None


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
    ) -> None:
        self.client = client
        self._clock = clock or SystemClock()
        self._read_attempts = read_attempts
        self._allowlist = _Cached(lambda: self._retrying(client.coin_addresses), allowlist_ttl, self._clock)
        self._wallets = _Cached(self._fetch_wallets, wallet_ttl, self._clock)
        self._chance_ttl = chance_ttl
        self._chances: dict[tuple[str, str], _Cached[Chance]] = {}
        self._poll_window = poll_window
        self._pending: dict[str, list[asyncio.Future[Withdrawal | None]]] = {}
        self._flush_task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self.poll_batches = 0
        self.polls = 0

    def __repr__(self) -> str:
        return f"<Gateway {self.client!r} pending_polls={len(self._pending)} batches={self.poll_batches}>"

    async def aclose(self) -> None:
        """Finish batches in flight, then close the client."""
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
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

    async def chance(self, currency: str, net_type: str) -> Chance:
        """Withdrawal capability, limits and balance for (currency, net_type) (briefly cached)."""
        key = (currency, net_type)
        cached = self._chances.get(key)
        if cached is None:

            async def fetch() -> Chance:
                return await self._retrying(lambda: self.client.chance(currency, net_type))

            cached = self._chances[key] = _Cached(fetch, self._chance_ttl, self._clock)
        return await cached.get()

    # -- writes ----------------------------------------------------------------------------------

    async def reserve_submit_slot(self) -> None:
        """Wait for a write slot of the account's budget before the intent is persisted, so a workflow
        never sits in ``submitting`` while queued behind the rate limit (a crash there would leave an
        intent whose POST may or may not have left; now that window is one commit long)."""
        await self.client.limiter.acquire(Priority.WRITE)

    def release_submit_slot(self) -> None:
        """The reserved slot was not used (the lane was busy): give it back."""
        self.client.limiter.refund()

    async def submit(self, body: WithdrawBody, *, slot_reserved: bool = False) -> Withdrawal:
        """POST the withdrawal once. Errors tell what is known of the outcome; nothing is retried."""
        result = await self.client.withdraw_coin(body, slot_reserved=slot_reserved)
        self._chances.pop((body.currency, body.net_type), None)
        return result

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

    async def poll(self, uuid: str) -> Withdrawal | None:
        """The withdrawal's current record (None if the exchange did not list it), batched with others."""
        future: asyncio.Future[Withdrawal | None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(uuid, []).append(future)
        self.polls += 1
        if len(self._pending) >= MAX_LIST_IDS:
            self._launch(self._take_batch())
        elif self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_later())
        return await future

    async def _flush_later(self) -> None:
        await self._clock.sleep(self._poll_window)
        while self._pending:
            self._launch(self._take_batch())

    def _take_batch(self) -> dict[str, list[asyncio.Future[Withdrawal | None]]]:
        uuids = list(self._pending)[:MAX_LIST_IDS]
        return {uuid: self._pending.pop(uuid) for uuid in uuids}

    def _launch(self, batch: dict[str, list[asyncio.Future[Withdrawal | None]]]) -> None:
        task = asyncio.create_task(self._run_batch(batch))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _run_batch(self, batch: dict[str, list[asyncio.Future[Withdrawal | None]]]) -> None:
        self.poll_batches += 1
        try:
            rows = await self.client.list_withdraws(uuids=list(batch), limit=MAX_LIST_IDS)
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
