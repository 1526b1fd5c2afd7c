"""engine.upbit.gateway: its levers on a fake client and the fake clock (end to end they are covered by the
integration tier; here each one is pinned on its own): cached reads, single-flight, refresh-ahead, batched
polls, 418/429 holds, the submit delay, and the submit slot."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from engine.clock import FakeClock
from engine.errors import ExchangeBlocked, ExchangeRefused, ExchangeThrottled, LaneBusy, OutcomeUnknown
from engine.upbit.client import MAX_LIST_IDS, WithdrawBody
from engine.upbit.gateway import Gateway, SubmitSlot
from engine.upbit.ratelimit import Priority, RateLimiter
from engine.upbit.skew import SkewEstimator
from engine.upbit.types import AllowedAddress, Chance, ExchangeState, WalletStatus, Withdrawal
from tests.unit.conftest import T0

#: Bounds every real-time wait of this file: generous, for a loaded 2-core machine; never reached when green.
BOUND = 30.0

BODY = WithdrawBody(currency="XRP", net_type="XRP", amount=Decimal("25"), address="rDestinationAddress1")


class FakeClient:
    """The calls the gateway makes of an :class:`~engine.upbit.client.UpbitClient`, answered from memory.

    Like the real client, each call holds a slot of the (real) limiter from before it leaves until it
    completed, or uses the one its caller reserved (``slot_reserved``); a scripted 429 or 418 books the
    limiter's block the way the real client does. ``calls`` records (endpoint, fake time) per call that
    left; ``gates`` hold a call at the exchange until set; ``failures`` are raised by the next calls."""

    def __init__(self, clock: FakeClock, limiter: RateLimiter | None = None) -> None:
        self.clock = clock
        self.limiter = limiter or RateLimiter(30, clock=clock)
        self.skew = SkewEstimator()
        self.calls: list[tuple[str, float]] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.failures: dict[str, list[Exception]] = {}
        self.addresses: list[AllowedAddress] = []
        self.wallets: list[WalletStatus] = []
        self.chances: dict[tuple[str, str], Chance] = {}
        self.withdrawals: dict[str, Withdrawal] = {}
        self.listed: list[list[str]] = []
        self.pages: list[list[Withdrawal]] = []
        self.closed = False

    def count(self, endpoint: str) -> int:
        """Calls to ``endpoint`` that left so far."""
        return sum(1 for name, _ in self.calls if name == endpoint)

    def times(self, endpoint: str) -> list[float]:
        """When each call to ``endpoint`` left (fake seconds)."""
        return [at for name, at in self.calls if name == endpoint]

    async def _call(self, endpoint: str, *, priority: Priority = Priority.READ, reserved: bool = False) -> None:
        if not reserved:
            await self.limiter.acquire(priority)
        try:
            self.calls.append((endpoint, self.clock.monotonic()))
            gate = self.gates.get(endpoint)
            if gate is not None:
                await asyncio.wait_for(gate.wait(), BOUND)
        finally:
            self.limiter.release()
        failures = self.failures.get(endpoint)
        if failures:
            exc = failures.pop(0)
            if isinstance(exc, ExchangeBlocked):
                self.limiter.penalised(exc.retry_after)
            elif isinstance(exc, ExchangeThrottled):
                self.limiter.throttled()
            raise exc
        self.limiter.served()

    async def coin_addresses(self) -> list[AllowedAddress]:
        await self._call("addresses")
        return list(self.addresses)

    async def wallet_status(self) -> list[WalletStatus]:
        await self._call("wallets")
        return list(self.wallets)

    async def chance(self, currency: str, net_type: str) -> Chance:
        await self._call("chance")
        return self.chances[(currency, net_type)]

    async def withdraw_coin(self, body: WithdrawBody, *, slot_reserved: bool = False) -> Withdrawal:
        await self._call("submit", priority=Priority.WRITE, reserved=slot_reserved)
        uuid = f"uuid-{len(self.withdrawals)}"
        self.withdrawals[uuid] = _withdrawal(uuid, amount=body.amount)
        return self.withdrawals[uuid]

    async def cancel_withdraw(self, uuid: str) -> Withdrawal:
        await self._call("cancel", priority=Priority.WRITE)
        return replace(self.withdrawals[uuid], state=ExchangeState.CANCELLED, raw_state="CANCELLED")

    async def list_withdraws(
        self,
        *,
        uuids: Iterable[str] = (),
        currency: str | None = None,
        limit: int = MAX_LIST_IDS,
        to: str | None = None,
        slot_reserved: bool = False,
    ) -> list[Withdrawal]:
        wanted = list(uuids)
        assert len(wanted) <= MAX_LIST_IDS and limit <= MAX_LIST_IDS
        await self._call("list", reserved=slot_reserved)
        if not wanted:  # a listing by currency, paged from ``to``
            return self.pages.pop(0) if self.pages else []
        self.listed.append(wanted)
        return [self.withdrawals[u] for u in wanted if u in self.withdrawals]

    async def aclose(self) -> None:
        self.closed = True


def _withdrawal(uuid: str, *, amount: Decimal = Decimal("25"), minutes: int = 0) -> Withdrawal:
    return Withdrawal(
        uuid=uuid, currency="XRP", net_type="XRP", txid=None, state=ExchangeState.WAITING, raw_state="WAITING",
        created_at=T0 + timedelta(minutes=minutes), done_at=None, amount=amount, fee=Decimal("1"),
        transaction_type="default", is_cancelable=True,
    )  # fmt: skip


MakeGateway = Callable[..., tuple[Gateway, FakeClient]]


@pytest.fixture(name="clock")
def _clock() -> FakeClock:
    """A clock whose sleep jumps time instantly."""
    return FakeClock()


@pytest.fixture(name="make_gateway")
async def _make_gateway(
    clock: FakeClock,
    make_chance: Callable[..., Chance],
    make_address: Callable[..., AllowedAddress],
    make_wallet: Callable[..., WalletStatus],
) -> AsyncIterator[MakeGateway]:
    """A gateway on a FakeClient (the standard XRP address, wallet and chance) and the fake clock; closed
    after the test."""
    made: list[Gateway] = []

    def make(*, limiter: RateLimiter | None = None, **options: Any) -> tuple[Gateway, FakeClient]:
        client = FakeClient(clock, limiter)
        client.addresses = [make_address()]
        client.wallets = [make_wallet()]
        client.chances = {("XRP", "XRP"): make_chance(), ("BTC", "BTC"): make_chance(currency="BTC")}
        gateway = Gateway(client, clock=clock, **options)  # type: ignore[arg-type]
        made.append(gateway)
        return gateway, client

    yield make
    for gateway in made:
        await asyncio.wait_for(gateway.aclose(), BOUND)


async def settle(rounds: int = 20) -> None:
    """Let every runnable task run (a few loop turns)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class SteppedClock(FakeClock):
    """A fake clock whose sleep really waits until the test moves time past its end (``advance``), so a
    sleeping task stays asleep while the test acts; ``run_until`` moves time in small steps."""

    def __init__(self) -> None:
        super().__init__()
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock passes now + ``seconds``."""
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.monotonic() + max(0.0, seconds), wake))
        await wake

    def advance(self, seconds: float) -> None:
        """Move time forward and wake the sleepers whose time has come."""
        super().advance(seconds)
        due = [(at, wake) for at, wake in self._sleepers if at <= self.monotonic()]
        self._sleepers = [(at, wake) for at, wake in self._sleepers if at > self.monotonic()]
        for _, wake in due:
            if not wake.done():
                wake.set_result(None)

    async def run_until(self, done: Callable[[], bool], *, step: float = 0.01, limit: float = 120.0) -> None:
        """Advance in ``step`` increments (letting tasks run between) until ``done()`` or ``limit`` seconds."""
        start = self.monotonic()
        while not done():
            assert self.monotonic() - start < limit, "not done within the fake time limit"
            self.advance(step)
            await settle()


def _stepped_gateway(clock: SteppedClock, make_address: Callable[..., AllowedAddress]) -> tuple[Gateway, FakeClient]:
    client = FakeClient(clock)
    client.addresses = [make_address()]
    return Gateway(client, clock=clock), client


class TestCaching:
    """Account-wide lists and chance are cached for their TTL; writes, polls and listings never are."""

    async def test_allowlist_is_fetched_once_per_ttl(self, make_gateway: MakeGateway, clock: FakeClock) -> None:
        """Within the TTL the allowlist is served from memory; past it, fetched again."""
        gateway, client = make_gateway(allowlist_ttl=0.5)
        first = await gateway.allowlist()
        clock.advance(0.4)
        assert await gateway.allowlist() == first
        assert client.count("addresses") == 1
        clock.advance(0.2)
        await gateway.allowlist()
        assert client.count("addresses") == 2

    async def test_wallet_status_comes_from_the_cached_list(
        self, make_gateway: MakeGateway, clock: FakeClock, make_wallet: Callable[..., WalletStatus]
    ) -> None:
        """One list fetch answers every (currency, net_type); an unknown pair is None; forget_wallets refetches."""
        gateway, client = make_gateway(wallet_ttl=0.5)
        client.wallets = [make_wallet(), make_wallet(currency="BTC", net_type="BTC", wallet_state="paused")]
        xrp = await gateway.wallet_status("XRP", "XRP")
        btc = await gateway.wallet_status("BTC", "BTC")
        assert xrp is not None and xrp.wallet_state == "working"
        assert btc is not None and btc.wallet_state == "paused"
        assert await gateway.wallet_status("DOGE", "DOGE") is None
        assert client.count("wallets") == 1
        client.wallets = [make_wallet(wallet_state="paused")]
        gateway.forget_wallets()
        refreshed = await gateway.wallet_status("XRP", "XRP")
        assert refreshed is not None and refreshed.wallet_state == "paused"
        assert client.count("wallets") == 2

    async def test_chance_is_cached_per_pair_and_fresh_skips_the_cache(
        self, make_gateway: MakeGateway, clock: FakeClock
    ) -> None:
        """Each (currency, net_type) has its own entry and TTL; ``fresh`` always asks the exchange."""
        gateway, client = make_gateway(chance_ttl=0.5)
        await gateway.chance("XRP", "XRP")
        await gateway.chance("XRP", "XRP")
        await gateway.chance("BTC", "BTC")
        assert client.count("chance") == 2 and gateway.chance_fetches == 2
        await gateway.chance("XRP", "XRP", fresh=True)
        assert client.count("chance") == 3
        clock.advance(0.6)
        await gateway.chance("BTC", "BTC")
        assert client.count("chance") == 4

    async def test_writes_and_listings_are_never_cached(self, make_gateway: MakeGateway) -> None:
        """Two cancels are two calls; two reconciliation listings are two calls."""
        gateway, client = make_gateway()
        client.withdrawals["uuid-0"] = _withdrawal("uuid-0")
        await gateway.cancel("uuid-0")
        await gateway.cancel("uuid-0")
        assert client.count("cancel") == 2
        await gateway.recent_withdrawals("XRP", T0)
        await gateway.recent_withdrawals("XRP", T0)
        assert client.count("list") == 2

    async def test_recent_withdrawals_pages_back_until_older_than_since(self, make_gateway: MakeGateway) -> None:
        """A full page leads to the next (from its last uuid); the page reaching past ``since`` ends it."""
        gateway, client = make_gateway()
        full = [_withdrawal(f"new-{i}", minutes=60 - i // 10) for i in range(MAX_LIST_IDS)]
        older = [_withdrawal("mid", minutes=30), _withdrawal("old", minutes=1)]
        client.pages = [full, older, [_withdrawal("never", minutes=0)]]
        found = await gateway.recent_withdrawals("XRP", T0 + timedelta(minutes=10))
        assert [w.uuid for w in found] == [w.uuid for w in full] + ["mid"]
        assert client.count("list") == 2

    async def test_chance_holds_what_this_gateway_submitted(self, make_gateway: MakeGateway) -> None:
        """After a POST the cached snapshot's balance shows amount + fee less; a refused POST holds nothing;
        ``fresh`` reports the exchange's own figure."""
        gateway, client = make_gateway(chance_ttl=60.0)
        assert (await gateway.chance("XRP", "XRP")).balance == Decimal("1000")
        async with gateway.submit_slot() as slot:
            await slot.record_intent(BODY, _nothing)
            await gateway.submit(BODY, slot=slot)
        assert (await gateway.chance("XRP", "XRP")).balance == Decimal("974")  # 1000 - (25 + fee 1)
        client.failures["submit"] = [ExchangeRefused("no", status=400, endpoint="submit")]
        async with gateway.submit_slot() as slot:
            await slot.record_intent(BODY, _nothing)
            with pytest.raises(ExchangeRefused):
                await gateway.submit(BODY, slot=slot)
        assert (await gateway.chance("XRP", "XRP")).balance == Decimal("974")
        assert (await gateway.chance("XRP", "XRP", fresh=True)).balance == Decimal("1000")

    async def test_an_unknown_outcome_stays_held(self, make_gateway: MakeGateway) -> None:
        """A POST that may have executed (5xx, timeout) is held against the snapshot: the safe side."""
        gateway, client = make_gateway(chance_ttl=60.0)
        await gateway.chance("XRP", "XRP")
        client.failures["submit"] = [OutcomeUnknown("timeout", endpoint="submit")]
        async with gateway.submit_slot() as slot:
            await slot.record_intent(BODY, _nothing)
            with pytest.raises(OutcomeUnknown):
                await gateway.submit(BODY, slot=slot)
        assert (await gateway.chance("XRP", "XRP")).balance == Decimal("974")


async def _nothing() -> None:
    """A persist step that stores nothing (the gateway's tests have no store)."""


class TestSingleFlight:
    """Concurrent askers of one value share the one fetch in flight."""

    async def test_concurrent_allowlist_reads_make_one_call(self, make_gateway: MakeGateway) -> None:
        """Twenty readers while the fetch is held at the exchange: one call, and all get its answer."""
        gateway, client = make_gateway()
        client.gates["addresses"] = asyncio.Event()
        readers = [asyncio.ensure_future(gateway.allowlist()) for _ in range(20)]
        await settle()
        assert client.count("addresses") == 1 and not any(r.done() for r in readers)
        client.gates["addresses"].set()
        answers = await asyncio.wait_for(asyncio.gather(*readers), BOUND)
        assert all(a == client.addresses for a in answers)
        assert client.count("addresses") == 1

    async def test_concurrent_chance_reads_make_one_call_per_pair(self, make_gateway: MakeGateway) -> None:
        """Ten readers of each of two pairs: two calls."""
        gateway, client = make_gateway()
        client.gates["chance"] = asyncio.Event()
        readers = [asyncio.ensure_future(gateway.chance(c, c)) for c in ("XRP", "BTC") for _ in range(10)]
        await settle()
        client.gates["chance"].set()
        answers = await asyncio.wait_for(asyncio.gather(*readers), BOUND)
        assert {a.currency for a in answers} == {"XRP", "BTC"}
        assert client.count("chance") == 2

    async def test_a_cancelled_reader_does_not_cancel_the_shared_fetch(self, make_gateway: MakeGateway) -> None:
        """One asker gives up; the fetch goes on for the others."""
        gateway, client = make_gateway()
        client.gates["wallets"] = asyncio.Event()
        quitter = asyncio.ensure_future(gateway.wallet_status("XRP", "XRP"))
        stayer = asyncio.ensure_future(gateway.wallet_status("XRP", "XRP"))
        await settle()
        quitter.cancel()
        await settle()
        client.gates["wallets"].set()
        assert (await asyncio.wait_for(stayer, BOUND)) is not None
        assert client.count("wallets") == 1

    async def test_a_failed_fetch_reaches_every_waiter_and_the_next_read_tries_again(
        self, make_gateway: MakeGateway
    ) -> None:
        """The shared fetch's error goes to all its askers; nothing wrong is cached."""
        gateway, client = make_gateway(read_attempts=1)
        client.gates["addresses"] = asyncio.Event()
        client.failures["addresses"] = [OutcomeUnknown("500", status=500, endpoint="addresses")]
        readers = [asyncio.ensure_future(gateway.allowlist()) for _ in range(3)]
        await settle()
        client.gates["addresses"].set()
        results = await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), BOUND)
        assert all(isinstance(r, OutcomeUnknown) for r in results)
        assert await gateway.allowlist() == client.addresses
        assert client.count("addresses") == 2


class TestRefreshAhead:
    """Past half its TTL (of a second or more) a read is served at once and the next fetch starts behind it."""

    async def test_a_read_past_half_the_ttl_refreshes_in_the_background(
        self, make_gateway: MakeGateway, clock: FakeClock, make_address: Callable[..., AllowedAddress]
    ) -> None:
        """The stale-but-valid value is returned without waiting; the refresh replaces it for later readers."""
        gateway, client = make_gateway(allowlist_ttl=60.0)
        old = await gateway.allowlist()
        clock.advance(20.0)  # under half: no refresh
        await gateway.allowlist()
        await settle()
        assert client.count("addresses") == 1
        client.addresses = [make_address(withdraw_address="rSecondAddress")]
        client.gates["addresses"] = asyncio.Event()
        clock.advance(15.0)  # 35 s: past half, within the TTL
        assert await gateway.allowlist() == old  # served at once, while the refresh is held at the exchange
        assert await gateway.allowlist() == old  # a second read does not start a second refresh
        await settle()
        assert client.count("addresses") == 2
        client.gates["addresses"].set()
        await asyncio.wait_for(_until(gateway.allowlist, client.addresses), BOUND)
        assert client.count("addresses") == 2

    async def test_a_failed_refresh_keeps_the_cached_value(self, make_gateway: MakeGateway, clock: FakeClock) -> None:
        """A background refresh that fails is only logged; readers keep the value until its TTL ends."""
        gateway, client = make_gateway(allowlist_ttl=10.0, read_attempts=1)
        old = await gateway.allowlist()
        client.failures["addresses"] = [OutcomeUnknown("500", status=500, endpoint="addresses")]
        clock.advance(6.0)
        assert await gateway.allowlist() == old
        await settle()
        assert client.count("addresses") == 2
        assert await gateway.allowlist() == old

    async def test_sub_second_ttls_fetch_on_demand(self, make_gateway: MakeGateway, clock: FakeClock) -> None:
        """Below a second there is no refresh-ahead: a read past half the TTL starts nothing."""
        gateway, client = make_gateway(wallet_ttl=0.5)
        await gateway.wallet_status("XRP", "XRP")
        clock.advance(0.4)
        await gateway.wallet_status("XRP", "XRP")
        await settle()
        assert client.count("wallets") == 1


async def _until(read: Callable[[], Any], expected: object) -> None:
    """Read until the answer is ``expected`` (the caller bounds the wait)."""
    while await read() != expected:
        await asyncio.sleep(0)


class TestBatchedPolls:
    """Polls are coalesced into listings of at most 100 uuids, the most urgent first."""

    async def test_polls_share_listings_of_at_most_100_uuids(self, make_gateway: MakeGateway) -> None:
        """250 polls: three listings of at most 100, every poll answered with its own row (or None)."""
        gateway, client = make_gateway()
        for i in range(249):
            client.withdrawals[f"u{i}"] = _withdrawal(f"u{i}")
        polls = {f"u{i}": asyncio.ensure_future(gateway.poll(f"u{i}")) for i in range(250)}
        await asyncio.wait_for(asyncio.gather(*polls.values()), BOUND)
        assert all(polls[u].result() == client.withdrawals.get(u) for u in polls)
        assert polls["u249"].result() is None  # not listed by the exchange
        assert sorted(len(batch) for batch in client.listed) == [50, 100, 100]
        assert sorted(u for batch in client.listed for u in batch) == sorted(polls)
        assert gateway.poll_batches == 3 and gateway.polls == 250

    async def test_the_same_uuid_polled_twice_is_listed_once(self, make_gateway: MakeGateway) -> None:
        """Two callers of one uuid share its place in the batch and its answer."""
        gateway, client = make_gateway()
        client.withdrawals["u1"] = _withdrawal("u1")
        first, second = await asyncio.wait_for(asyncio.gather(gateway.poll("u1"), gateway.poll("u1")), BOUND)
        assert first == second == client.withdrawals["u1"]
        assert client.listed == [["u1"]]

    async def test_the_longest_waiting_polls_go_first(self, make_gateway: MakeGateway, clock: FakeClock) -> None:
        """While the only slot is taken, 150 polls wait, then 100 newer ones: the first listing carries 100
        of the older ones, the second the other 50 older before any newer one."""
        limiter = RateLimiter(1, clock=clock)
        gateway, client = make_gateway(limiter=limiter)
        await limiter.acquire(Priority.WRITE)  # held: the first batch waits for it
        older = [f"old{i}" for i in range(150)]
        newer = [f"new{i}" for i in range(100)]
        waiting = [asyncio.ensure_future(gateway.poll(u)) for u in older]
        await settle()
        clock.advance(5.0)
        waiting += [asyncio.ensure_future(gateway.poll(u)) for u in newer]
        await settle()
        assert client.listed == []
        limiter.release()
        await asyncio.wait_for(asyncio.gather(*waiting), BOUND)
        assert [len(batch) for batch in client.listed] == [100, 100, 50]
        first, second, third = (set(batch) for batch in client.listed)
        assert first <= set(older)
        assert set(older) - first <= second and len(second & set(newer)) == 50
        assert third <= set(newer)

    async def test_a_failed_listing_fails_its_polls(self, make_gateway: MakeGateway) -> None:
        """The listing's error reaches every poll it carried; the next poll lists again."""
        gateway, client = make_gateway()
        client.withdrawals["u1"] = _withdrawal("u1")
        client.failures["list"] = [OutcomeUnknown("500", status=500, endpoint="list")]
        results = await asyncio.wait_for(
            asyncio.gather(gateway.poll("u1"), gateway.poll("u2"), return_exceptions=True), BOUND
        )
        assert all(isinstance(r, OutcomeUnknown) for r in results)
        assert await asyncio.wait_for(gateway.poll("u1"), BOUND) == client.withdrawals["u1"]

    async def test_a_batch_spends_one_read_slot(self, make_gateway: MakeGateway) -> None:
        """A listing of many uuids costs one slot of the budget, released when it completed."""
        gateway, client = make_gateway()
        await asyncio.wait_for(asyncio.gather(*(gateway.poll(f"u{i}") for i in range(60))), BOUND)
        assert client.limiter.stats.granted == 1 and client.limiter.in_flight == 0

    async def test_an_urgent_poll_wakes_a_sweep_asleep_for_slower_ones(
        self, make_gateway: MakeGateway, make_address: Callable[..., AllowedAddress]
    ) -> None:
        """The sweep sleeps as long as its waiting polls allow (60 s here); a poll that may wait only 0.5 s
        comes in meanwhile: it is listed within the poll window, not when the sweep would have woken."""
        clock = SteppedClock()
        gateway, client = _stepped_gateway(clock, make_address)
        client.withdrawals["slow"] = _withdrawal("slow")
        client.withdrawals["fast"] = _withdrawal("fast")
        first = asyncio.ensure_future(gateway.poll("slow", within=60.0))
        await clock.run_until(first.done)
        second = asyncio.ensure_future(gateway.poll("slow", within=60.0))  # the sweep now sleeps ~60 s
        await settle()
        clock.advance(1.0)
        await settle()
        fast = asyncio.ensure_future(gateway.poll("fast", within=0.5))
        await clock.run_until(fast.done, limit=5.0)
        assert fast.result() == client.withdrawals["fast"]
        assert client.times("list")[-1] <= 1.0 + 0.5 + 0.1  # listed at once, long before the 60 s
        second.cancel()
        await asyncio.wait_for(gateway.aclose(), BOUND)


class TestHolds:
    """A 429 or 418 booked on the account's limiter stops every call of the gateway until it ends."""

    async def test_a_429_pauses_reads_for_the_window_then_the_read_is_retried(self, make_gateway: MakeGateway) -> None:
        """The throttled fetch is retried (it was not executed) no sooner than the block ends."""
        gateway, client = make_gateway()
        client.failures["addresses"] = [ExchangeThrottled("429", status=429, endpoint="addresses")]
        assert await asyncio.wait_for(gateway.allowlist(), BOUND) == client.addresses
        first, second = client.times("addresses")
        assert second >= first + client.limiter.window
        assert client.limiter.stats.throttles == 1

    async def test_a_418_is_not_retried_and_holds_every_later_call(
        self, make_gateway: MakeGateway, clock: FakeClock
    ) -> None:
        """A 418 names 30 s: the read fails at once, and the next calls (a read, a poll, a POST) leave only
        after the 30 s."""
        gateway, client = make_gateway()
        client.failures["chance"] = [ExchangeBlocked("418", retry_after=30.0, status=418, endpoint="chance")]
        with pytest.raises(ExchangeBlocked):
            await gateway.chance("XRP", "XRP")
        blocked_at = client.times("chance")[0]
        assert client.count("chance") == 1
        client.withdrawals["u1"] = _withdrawal("u1")
        await asyncio.wait_for(gateway.allowlist(), BOUND)
        await asyncio.wait_for(gateway.poll("u1"), BOUND)
        async with gateway.submit_slot() as slot:
            await slot.record_intent(BODY, _nothing)
            await gateway.submit(BODY, slot=slot)
        for endpoint in ("addresses", "list", "submit"):
            assert client.times(endpoint)[0] >= blocked_at + 30.0, endpoint

    async def test_a_hold_applies_with_the_limiter_off(self, make_gateway: MakeGateway, clock: FakeClock) -> None:
        """Limiting disabled still honours the exchange's block."""
        gateway, client = make_gateway(limiter=RateLimiter(30, clock=clock, enabled=False))
        client.limiter.block(12.0)
        await asyncio.wait_for(gateway.wallet_status("XRP", "XRP"), BOUND)
        assert client.times("wallets")[0] >= 12.0


class TestSubmitDelay:
    """New workflows beyond about ``submit_queue`` seconds of submits get turns at the account's rate."""

    async def test_turns_are_spaced_at_the_rate_beyond_the_queue(
        self, make_gateway: MakeGateway, clock: FakeClock
    ) -> None:
        """Rate 10/s, queue 2 s: the first 20 start now, then each later one one tenth of a second after
        the previous turn."""
        gateway, _ = make_gateway(limiter=RateLimiter(10, clock=clock), submit_queue=2.0)
        delays = [gateway.submit_delay() for _ in range(30)]
        assert delays[:20] == [0.0] * 20
        later = delays[20:]
        assert all(b - a == pytest.approx(0.1) for a, b in itertools.pairwise(later))
        assert gateway.deferred_submits == 9  # the 21st's turn was now: it went at once

    async def test_admitted_workflows_leave_the_queue_as_they_take_a_slot(
        self, make_gateway: MakeGateway, clock: FakeClock
    ) -> None:
        """Each workflow that takes its submit slot stops counting as queued: room for the next ones."""
        gateway, _ = make_gateway(limiter=RateLimiter(10, clock=clock), submit_queue=1.0)
        assert [gateway.submit_delay() for _ in range(10)] == [0.0] * 10
        assert gateway.submit_delay() == 0.0 and gateway.deferred_submits == 0  # the queue is full: a turn now
        assert gateway.submit_delay() > 0 and gateway.deferred_submits == 1
        clock.advance(1.0)  # the turns handed out have come
        for _ in range(10):
            async with gateway.submit_slot():
                pass
        assert gateway.submit_delay() == 0.0

    async def test_stale_admissions_age_out(self, make_gateway: MakeGateway, clock: FakeClock) -> None:
        """An admitted workflow that never reached its slot stops counting after twice the queue."""
        gateway, _ = make_gateway(limiter=RateLimiter(10, clock=clock), submit_queue=1.0)
        for _ in range(10):
            gateway.submit_delay()
        clock.advance(2.5)
        assert gateway.submit_delay() == 0.0

    async def test_no_delay_with_the_limiter_off(self, make_gateway: MakeGateway, clock: FakeClock) -> None:
        """No budget to queue for: every workflow starts now."""
        gateway, _ = make_gateway(limiter=RateLimiter(1, clock=clock, enabled=False), submit_queue=0.1)
        assert [gateway.submit_delay() for _ in range(50)] == [0.0] * 50


class TestSubmitSlot:
    """One slot carries one POST, after its intent; unused, it goes back to the budget on any exit."""

    async def test_slot_then_intent_then_post(self, make_gateway: MakeGateway) -> None:
        """The POST leaves with the slot taken before the intent was persisted; the slot is then counted,
        not refunded."""
        gateway, client = make_gateway()
        order: list[str] = []

        async def persist() -> str:
            order.append(f"intent (slots in flight: {client.limiter.in_flight})")
            return "stored"

        async with gateway.submit_slot() as slot:
            assert await slot.record_intent(BODY, persist) == "stored"
            withdrawal = await gateway.submit(BODY, slot=slot)
        order.append(f"post ({client.count('submit')})")
        assert order == ["intent (slots in flight: 1)", "post (1)"]
        assert withdrawal.amount == BODY.amount and slot.used
        assert client.limiter.stats.granted == 1 and client.limiter.in_flight == 0 and client.limiter.load > 0

    async def test_an_exception_in_the_block_refunds_the_slot(self, make_gateway: MakeGateway) -> None:
        """Unused, the slot goes back: nothing of the budget was spent."""
        gateway, client = make_gateway()
        with pytest.raises(ValueError, match="boom"):
            async with gateway.submit_slot():
                assert client.limiter.in_flight == 1
                raise ValueError("boom")
        assert (client.limiter.in_flight, client.limiter.stats.granted, client.limiter.load) == (0, 0, 0.0)

    async def test_a_failed_intent_refunds_the_slot_and_forbids_the_post(self, make_gateway: MakeGateway) -> None:
        """The store refused the intent (the lane is busy): no intent recorded, no POST possible, slot back."""
        gateway, client = make_gateway()

        async def busy() -> None:
            raise LaneBusy

        async with gateway.submit_slot() as slot:
            with pytest.raises(LaneBusy):
                await slot.record_intent(BODY, busy)
            with pytest.raises(RuntimeError, match="no intent"):
                await gateway.submit(BODY, slot=slot)
        assert client.count("submit") == 0
        assert (client.limiter.in_flight, client.limiter.stats.granted) == (0, 0)

    async def test_an_early_return_refunds_the_slot(self, make_gateway: MakeGateway) -> None:
        """Leaving the block by ``return`` gives the slot back too."""
        gateway, client = make_gateway()

        async def decide_not_to_send() -> str:
            async with gateway.submit_slot():
                return "changed my mind"

        assert await decide_not_to_send() == "changed my mind"
        assert (client.limiter.in_flight, client.limiter.stats.granted) == (0, 0)

    async def test_cancellation_inside_the_block_refunds_the_slot(self, make_gateway: MakeGateway) -> None:
        """A task cancelled while it holds the slot (persisting its intent) gives it back."""
        gateway, client = make_gateway()
        holding, never = asyncio.Event(), asyncio.Event()

        async def stuck_persist() -> None:
            holding.set()
            await never.wait()

        async def submitter() -> None:
            async with gateway.submit_slot() as slot:
                await slot.record_intent(BODY, stuck_persist)
                await gateway.submit(BODY, slot=slot)

        task = asyncio.ensure_future(submitter())
        await asyncio.wait_for(holding.wait(), BOUND)
        assert client.limiter.in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, BOUND)
        assert (client.limiter.in_flight, client.limiter.stats.granted, client.count("submit")) == (0, 0, 0)

    async def test_cancellation_while_waiting_for_the_slot_takes_nothing(
        self, make_gateway: MakeGateway, clock: FakeClock
    ) -> None:
        """Queued behind a full budget and cancelled: nothing granted, nothing leaked."""
        limiter = RateLimiter(1, clock=clock)
        gateway, _ = make_gateway(limiter=limiter)
        await limiter.acquire(Priority.READ)  # the only slot, held
        entered = asyncio.Event()

        async def submitter() -> None:
            async with gateway.submit_slot():
                entered.set()

        task = asyncio.ensure_future(submitter())
        await settle()
        assert limiter.waiting(Priority.WRITE) == 1 and not entered.is_set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, BOUND)
        assert (limiter.in_flight, limiter.stats.granted, limiter.waiting()) == (1, 1, 0)
        limiter.release()

    async def test_a_slot_carries_one_post(self, make_gateway: MakeGateway) -> None:
        """A second submit on a used slot is refused before anything leaves."""
        gateway, client = make_gateway()
        async with gateway.submit_slot() as slot:
            await slot.record_intent(BODY, _nothing)
            await gateway.submit(BODY, slot=slot)
            with pytest.raises(RuntimeError, match="cannot be spent"):
                await gateway.submit(BODY, slot=slot)
            with pytest.raises(RuntimeError, match="one intent per slot"):
                await slot.record_intent(BODY, _nothing)
        assert client.count("submit") == 1

    async def test_the_post_must_be_the_recorded_intent(self, make_gateway: MakeGateway) -> None:
        """Persisting one body and sending another is refused; the slot goes back."""
        gateway, client = make_gateway()
        async with gateway.submit_slot() as slot:
            await slot.record_intent(BODY, _nothing)
            with pytest.raises(RuntimeError, match="not the intent"):
                await gateway.submit(replace(BODY, amount=Decimal("26")), slot=slot)
        assert client.count("submit") == 0 and client.limiter.stats.granted == 0

    async def test_a_slot_is_dead_once_its_block_ended(self, make_gateway: MakeGateway) -> None:
        """A slot kept past its block was refunded: it cannot carry a POST any more."""
        gateway, client = make_gateway()
        kept: list[SubmitSlot] = []
        async with gateway.submit_slot() as slot:
            await slot.record_intent(BODY, _nothing)
            kept.append(slot)
        with pytest.raises(RuntimeError, match="cannot be spent"):
            await gateway.submit(BODY, slot=kept[0])
        assert client.count("submit") == 0 and client.limiter.stats.granted == 0

    async def test_submit_requires_a_slot(self, make_gateway: MakeGateway) -> None:
        """There is no POST without a slot: the argument has no default."""
        gateway, client = make_gateway()
        with pytest.raises(TypeError, match="slot"):
            await gateway.submit(BODY)  # type: ignore[call-arg]
        assert client.count("submit") == 0

    async def test_a_failed_post_spends_its_slot(self, make_gateway: MakeGateway) -> None:
        """A POST that left and failed was a call: it counts against the budget (never refunded)."""
        gateway, client = make_gateway()
        client.failures["submit"] = [OutcomeUnknown("reset", endpoint="submit")]
        async with gateway.submit_slot() as slot:
            await slot.record_intent(BODY, _nothing)
            with pytest.raises(OutcomeUnknown):
                await gateway.submit(BODY, slot=slot)
        assert client.limiter.stats.granted == 1 and client.limiter.in_flight == 0 and client.limiter.load > 0

    async def test_aclose_closes_the_client(self, make_gateway: MakeGateway) -> None:
        """Closing the gateway closes its client."""
        gateway, client = make_gateway()
        await gateway.aclose()
        assert client.closed
