"""The pure exchange: lifecycle, ledger, outcomes, cancel, listing, reproducibility, scale."""

from __future__ import annotations

import dataclasses
import time
from decimal import Decimal

import pytest

from engine.clock import FakeClock
from engine.sandbox import default_seed
from engine.sandbox.errors import SandboxError
from engine.sandbox.exchange import Exchange
from engine.sandbox.listing import ListQuery, parse_list_query
from engine.sandbox.model import OutcomeRule, SandboxSeed, Timings, WithdrawalState
from tests.sandbox.conftest import BTC_BODY, XRP_ADDRESS

S = WithdrawalState


def make(seed: SandboxSeed | None = None, **changes: object) -> tuple[Exchange, FakeClock]:
    """An exchange on a fake clock, with 1 s waiting and 2 s processing (no jitter) unless changed."""
    timings = Timings(waiting_seconds=1.0, waiting_jitter=0.0, processing_seconds=2.0, processing_jitter=0.0)
    seed = dataclasses.replace(seed or default_seed(), timings=timings, **changes)  # type: ignore[arg-type]
    clock = FakeClock()
    return Exchange(seed, monotonic=clock.monotonic, now=clock.now), clock


def step(exchange: Exchange, clock: FakeClock, seconds: float) -> None:
    clock.advance(seconds)
    exchange.advance()


class TestLifecycle:
    def test_done_moves_the_ledger(self) -> None:
        """WAITING holds amount+fee, PROCESSING shows a txid, DONE releases the hold for good."""
        exchange, clock = make()
        account = exchange.account()
        w = exchange.create_withdrawal(account, BTC_BODY)
        assert (w.state, w.txid, w.done_at) == (S.WAITING, None, None)
        assert account.balance("BTC") == Decimal("9.9892")
        assert account.held("BTC") == Decimal("0.0108")
        step(exchange, clock, 1.0)
        assert w.state is S.PROCESSING
        assert w.txid is not None and len(w.txid) == 64 and int(w.txid, 16) >= 0
        assert account.by_txid[w.txid] is w
        step(exchange, clock, 2.0)
        assert w.state is S.DONE
        assert w.done_at is not None and (w.done_at - w.created_at).total_seconds() == pytest.approx(3.0)
        assert account.balance("BTC") == Decimal("9.9892")
        assert account.held("BTC") == 0
        assert account.done_totals["BTC"] == Decimal("0.0108")

    def test_done_at_is_the_due_time_not_the_time_noticed(self) -> None:
        """A withdrawal looked at late still says when it finished."""
        exchange, clock = make()
        w = exchange.create_withdrawal(exchange.account(), BTC_BODY)
        step(exchange, clock, 100.0)
        assert w.done_at is not None and (w.done_at - w.created_at).total_seconds() == pytest.approx(3.0)

    def test_state_changes_carry_when_each_state_was_reached(self) -> None:
        """Each state with the time the exchange reached it, even when noticed late (benchmarks use it)."""
        exchange, clock = make()
        w = exchange.create_withdrawal(exchange.account(), BTC_BODY)
        step(exchange, clock, 100.0)
        offsets = [(state, (at - w.created_at).total_seconds()) for state, at in w.state_changes]
        assert offsets == [("WAITING", 0.0), ("PROCESSING", pytest.approx(1.0)), ("DONE", pytest.approx(3.0))]
        assert w.to_admin()["state_changes"][-1] == ["DONE", w.done_at.isoformat() if w.done_at else None]

    def test_failed_refunds_after_processing(self) -> None:
        """FAILED passes through PROCESSING (txid set) and gives amount+fee back."""
        exchange, clock = make(outcome_weights={S.FAILED: 1.0})
        account = exchange.account()
        w = exchange.create_withdrawal(account, BTC_BODY)
        step(exchange, clock, 3.0)
        assert w.state is S.FAILED and w.txid is not None
        assert (account.balance("BTC"), account.held("BTC")) == (Decimal("10.0000"), 0)

    def test_outcome_rule_rejects_from_waiting(self) -> None:
        """An outcome rule matches currency and amount numerically; REJECTED never gets a txid."""
        rule = OutcomeRule(currency="BTC", amount=Decimal("0.0123"), outcome=S.REJECTED)
        exchange, clock = make(outcome_rules=(rule,))
        account = exchange.account()
        rejected = exchange.create_withdrawal(account, {**BTC_BODY, "amount": "0.01230"})
        other = exchange.create_withdrawal(account, {**BTC_BODY, "amount": "0.0124"})
        step(exchange, clock, 1.0)
        assert (rejected.state, rejected.txid) == (S.REJECTED, None)
        assert other.state is S.PROCESSING
        step(exchange, clock, 2.0)
        assert other.state is S.DONE
        assert account.balance("BTC") == Decimal(10) - Decimal("0.0124") - Decimal("0.0008")

    def test_default_seed_has_demo_rules(self) -> None:
        """The default seed rejects XRP 13.13 and fails ETH 0.131313, for demos."""
        exchange, clock = make()
        account = exchange.account()
        xrp = {"currency": "XRP", "net_type": "XRP", "amount": "13.13", "address": XRP_ADDRESS,
               "secondary_address": "1234567"}  # fmt: skip
        eth = {"currency": "ETH", "net_type": "ETH", "amount": "0.131313",
               "address": "0x5a0b54d5dc17e0aadc383d2db43b0a0d3e029c4c"}  # fmt: skip
        a, b = exchange.create_withdrawal(account, xrp), exchange.create_withdrawal(account, eth)
        step(exchange, clock, 10.0)
        assert (a.state, b.state) == (S.REJECTED, S.FAILED)

    def test_internal_is_free_and_fast(self) -> None:
        """internal: fee "0.0", a tenth of the time, a UUID-like txid."""
        exchange, clock = make()
        w = exchange.create_withdrawal(exchange.account(), {**BTC_BODY, "transaction_type": "internal"})
        assert w.to_upbit()["fee"] == "0.0" and w.total == Decimal("0.01")
        step(exchange, clock, 0.1)
        assert w.state is S.PROCESSING and w.txid is not None and w.txid.count("-") == 4
        step(exchange, clock, 0.2)
        assert w.state is S.DONE


class TestCancel:
    def test_cancel_while_waiting(self) -> None:
        """Cancelling a WAITING withdrawal refunds it at once; the answer says the request was accepted."""
        exchange, clock = make()
        account = exchange.account()
        w = exchange.create_withdrawal(account, BTC_BODY)
        answer = exchange.cancel_withdrawal(account, w.uuid)
        assert answer["state"] == "CANCELLED" and answer["is_cancelable"] is True
        assert account.balance("BTC") == Decimal(10) and account.held("BTC") == 0
        step(exchange, clock, 10.0)
        assert w.state is S.CANCELLED and w.txid is None
        assert w.to_upbit()["is_cancelable"] is False

    def test_cancel_too_late(self) -> None:
        """A PROCESSING withdrawal cannot be cancelled: is_cancelable false, state unchanged."""
        exchange, clock = make()
        account = exchange.account()
        w = exchange.create_withdrawal(account, BTC_BODY)
        step(exchange, clock, 1.5)
        answer = exchange.cancel_withdrawal(account, w.uuid)
        assert (answer["state"], answer["is_cancelable"]) == ("PROCESSING", False)

    def test_cancel_unknown(self) -> None:
        """Unknown uuid: 404 withdraw_not_found; none: 400 validation_error."""
        exchange, _ = make()
        with pytest.raises(SandboxError) as info:
            exchange.cancel_withdrawal(exchange.account(), "nope")
        assert (info.value.status, info.value.name) == (404, "withdraw_not_found")
        with pytest.raises(SandboxError) as info:
            exchange.cancel_withdrawal(exchange.account(), None)
        assert info.value.name == "validation_error"


class TestReproducible:
    def _run(self, random_seed: int) -> list[tuple[str, str, str | None]]:
        weights = {S.DONE: 1.0, S.FAILED: 1.0, S.REJECTED: 1.0, S.CANCELLED: 1.0}
        exchange, clock = make(outcome_weights=weights, random_seed=random_seed)
        made = [exchange.create_withdrawal(exchange.account(), BTC_BODY) for _ in range(40)]
        step(exchange, clock, 10.0)
        return [(w.uuid, w.state.value, w.txid) for w in made]

    def test_same_seed_same_history(self) -> None:
        """Same seed and requests: same uuids, txids and outcomes."""
        first = self._run(7)
        assert first == self._run(7)
        assert len({state for _, state, _ in first}) == 4

    def test_other_seed_other_history(self) -> None:
        """Another seed draws other uuids."""
        assert self._run(7)[0][0] != self._run(8)[0][0]


class TestListing:
    @pytest.fixture(name="filled")
    def _filled(self) -> tuple[Exchange, list[str]]:
        exchange, clock = make()
        account = exchange.account()
        uuids = []
        for i in range(10):
            body = {**BTC_BODY, "amount": f"0.0{i + 1}"} if i % 2 == 0 else {**BTC_BODY, "amount": "0.5"}
            uuids.append(exchange.create_withdrawal(account, body).uuid)
            clock.advance(0.3)
        exchange.advance()
        return exchange, uuids

    def _list(self, exchange: Exchange, **query: object) -> list[str]:
        return [w.uuid for w in exchange.list_withdrawals(exchange.account(), ListQuery(**query))]  # type: ignore[arg-type]

    def test_order_and_pages(self, filled: tuple[Exchange, list[str]]) -> None:
        """Newest first by default; asc; limit and page."""
        exchange, uuids = filled
        assert self._list(exchange) == uuids[::-1]
        assert self._list(exchange, descending=False) == uuids
        assert self._list(exchange, limit=3, page=2) == uuids[::-1][3:6]

    def test_cursors(self, filled: tuple[Exchange, list[str]]) -> None:
        """from= rows after that withdrawal, to= rows before it."""
        exchange, uuids = filled
        assert self._list(exchange, from_uuid=uuids[6], descending=False) == uuids[7:]
        assert self._list(exchange, to_uuid=uuids[3], limit=2) == [uuids[2], uuids[1]]
        assert self._list(exchange, from_uuid=uuids[2], to_uuid=uuids[5]) == [uuids[4], uuids[3]]

    def test_filters(self, filled: tuple[Exchange, list[str]]) -> None:
        """state, currency, uuids[] and txids[] filter; unknown uuids are skipped."""
        exchange, uuids = filled
        processing = self._list(exchange, state=S.PROCESSING)
        assert processing and set(processing) < set(uuids)
        assert self._list(exchange, currency="ETH") == []
        assert self._list(exchange, uuids=(uuids[1], "missing", uuids[0])) == [uuids[1], uuids[0]]
        txid = exchange.by_uuid(processing[0]).txid  # type: ignore[union-attr]
        assert self._list(exchange, txids=(txid,)) == [processing[0]]

    @pytest.mark.parametrize(
        "pairs",
        [
            [("uuids[]", "a"), ("txids[]", "b")],
            [("uuids[]", str(i)) for i in range(101)],
            [("limit", "101")],
            [("limit", "0")],
            [("page", "x")],
            [("state", "done")],
            [("order_by", "newest")],
        ],
    )
    def test_bad_parameters(self, pairs: list[tuple[str, str]]) -> None:
        """Invalid list parameters are a 400 validation_error."""
        with pytest.raises(SandboxError) as info:
            parse_list_query(pairs)
        assert (info.value.status, info.value.name) == (400, "validation_error")


def test_ten_thousand_withdrawals_are_cheap() -> None:
    """10,000 withdrawals: creating, advancing and 100-uuid lookups stay fast (heap + indexes)."""
    exchange, clock = make()
    account = exchange.account()
    body = {**BTC_BODY, "amount": "0.0001", "transaction_type": "internal"}
    started = time.perf_counter()
    made = [exchange.create_withdrawal(account, body) for _ in range(10_000)]
    clock.advance(0.15)
    exchange.advance()
    uuids = tuple(w.uuid for w in made[-100:])
    for _ in range(100):
        assert len(exchange.list_withdrawals(account, ListQuery(uuids=uuids))) == 100
    clock.advance(1.0)
    assert exchange.advance() == 10_000
    elapsed = time.perf_counter() - started
    assert exchange.state_counts[S.DONE] == 10_000
    assert account.done_totals["BTC"] == Decimal("1.0000")
    assert elapsed < 5.0, elapsed
