"""workflows.withdrawal: the pure decisions, tested as tables of cases."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.models import AbortReason, WithdrawalRequest, Workflow
from engine.policy import CurrencyPolicy, Policy
from engine.upbit.client import WithdrawBody
from engine.upbit.types import AllowedAddress, Chance, ExchangeState, WalletStatus, Withdrawal
from tests.unit.conftest import T0
from workflows.withdrawal import (
    Verdict,
    backoff_delay,
    chance_verdict,
    choose_candidate,
    match_address,
    policy_verdict,
    trigger_for,
    wallet_verdict,
)

MakeRequest = Callable[..., WithdrawalRequest]
MakeAddress = Callable[..., AllowedAddress]
REPO = Path(__file__).resolve().parents[2]


class TestImport:
    """The workflow module can be imported on its own."""

    def test_import_first(self) -> None:
        """``import workflows.withdrawal`` works as the first import of a fresh interpreter."""
        result = subprocess.run(
            [sys.executable, "-c", "import workflows.withdrawal"], cwd=REPO, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr[-500:]


class TestMatchAddress:
    """match_address: the destination must be registered for (currency, net_type[, exchange]) with its tag."""

    def test_no_row(self, make_request: MakeRequest) -> None:
        """An empty allowlist refuses, naming the allowlist."""
        match = match_address(make_request(), [])
        assert not match.ok
        assert "allowlist" in match.detail

    @pytest.mark.parametrize(
        "row",
        [
            {"net_type": "XRPL"},
            {"currency": "XRPX"},
            {"withdraw_address": "rOther"},
            {"withdraw_address": "rdestinationaddress1"},
        ],
        ids=["wrong-network", "wrong-currency", "other-address", "address-case-differs"],
    )
    def test_not_registered(self, make_request: MakeRequest, make_address: MakeAddress, row: dict[str, Any]) -> None:
        """A row for another network, currency or address does not allow the request."""
        assert not match_address(make_request(), [make_address(**row)]).ok

    def test_given_secondary_matches(self, make_request: MakeRequest, make_address: MakeAddress) -> None:
        """A given secondary address equal to the registered one is sent as is."""
        row = make_address(secondary_address="123")
        match = match_address(make_request(secondary_address="123"), [row])
        assert (match.ok, match.secondary_address, match.registered) == (True, "123", row)

    @pytest.mark.parametrize(
        ("given", "registered"),
        [("1234", "123"), ("12", "123"), ("abc", "ABC"), ("123", None)],
        ids=["longer", "prefix", "case", "none-registered"],
    )
    def test_given_secondary_must_match_exactly(
        self, make_request: MakeRequest, make_address: MakeAddress, given: str, registered: str | None
    ) -> None:
        """A given secondary address that is not exactly the registered one is refused."""
        match = match_address(make_request(secondary_address=given), [make_address(secondary_address=registered)])
        assert not match.ok
        assert "secondary_address" in match.detail

    @pytest.mark.parametrize("registered", ["123", None])
    def test_omitted_secondary_takes_registered(
        self, make_request: MakeRequest, make_address: MakeAddress, registered: str | None
    ) -> None:
        """An omitted secondary address takes the registered one (or none)."""
        match = match_address(make_request(), [make_address(secondary_address=registered)])
        assert (match.ok, match.secondary_address) == (True, registered)

    @pytest.mark.parametrize("secondaries", [("1", "2"), ("1", None)], ids=["two-tags", "tag-and-none"])
    def test_several_secondaries_refused_when_omitted(
        self, make_request: MakeRequest, make_address: MakeAddress, secondaries: tuple[str | None, ...]
    ) -> None:
        """With several registered secondaries for the address, an omitted one is ambiguous and refused."""
        rows = [make_address(secondary_address=s) for s in secondaries]
        match = match_address(make_request(), rows)
        assert not match.ok
        assert "several" in match.detail

    def test_several_secondaries_one_named(self, make_request: MakeRequest, make_address: MakeAddress) -> None:
        """With several registered secondaries, naming one picks its row."""
        rows = [make_address(secondary_address="1"), make_address(secondary_address="2", network_name="two")]
        match = match_address(make_request(secondary_address="2"), rows)
        assert (match.ok, match.secondary_address, match.registered) == (True, "2", rows[1])

    def test_duplicate_rows_same_secondary(self, make_request: MakeRequest, make_address: MakeAddress) -> None:
        """Two rows with the same secondary address are not ambiguous."""
        rows = [make_address(secondary_address="7"), make_address(secondary_address="7")]
        assert match_address(make_request(), rows).secondary_address == "7"

    @pytest.mark.parametrize(
        ("wanted", "rows", "ok"),
        [
            (None, [None], True),
            (None, ["Other"], True),
            ("Other", ["Other"], True),
            ("Other", ["Another"], False),
            ("Other", [None], False),
            ("Other", ["Another", "Other"], True),
        ],
        ids=["unnamed-any", "unnamed-row-named", "same", "different", "row-unnamed", "one-of-two"],
    )
    def test_exchange_name_filter(
        self,
        make_request: MakeRequest,
        make_address: MakeAddress,
        wanted: str | None,
        rows: list[str | None],
        ok: bool,
    ) -> None:
        """A named exchange only matches rows registered for that exchange."""
        allowlist = [make_address(exchange_name=name) for name in rows]
        match = match_address(make_request(exchange_name=wanted), allowlist)
        assert match.ok is ok
        if ok and wanted is not None:
            assert match.registered is not None and match.registered.exchange_name == wanted


class TestWalletVerdict:
    """wallet_verdict: may this network send now?"""

    @pytest.mark.parametrize(
        ("wallet_state", "block_state", "hold", "verdict"),
        [
            ("working", "normal", False, Verdict.SEND),
            ("withdraw_only", "normal", False, Verdict.SEND),
            ("working", None, False, Verdict.SEND),
            ("paused", "normal", False, Verdict.WAIT),
            ("deposit_only", "normal", False, Verdict.WAIT),
            ("unsupported", "normal", False, Verdict.ABORT),
            ("working", "inactive", False, Verdict.WAIT),
            ("withdraw_only", "inactive", False, Verdict.WAIT),
            ("working", "delayed", False, Verdict.SEND),
            ("working", "delayed", True, Verdict.WAIT),
            ("working", "normal", True, Verdict.SEND),
            ("paused", "delayed", True, Verdict.WAIT),
            ("something_new", "normal", False, Verdict.WAIT),
        ],
    )
    def test_table(
        self,
        make_wallet: Callable[..., WalletStatus],
        wallet_state: str,
        block_state: str | None,
        hold: bool,
        verdict: Verdict,
    ) -> None:
        """working/withdraw_only send; paused-like wait; unsupported aborts; inactive (or held delayed) blocks wait."""
        check = wallet_verdict(make_wallet(wallet_state=wallet_state, block_state=block_state), hold_on_delayed=hold)
        assert check.verdict is verdict
        if verdict is not Verdict.SEND:
            assert check.reason is AbortReason.WALLET_UNAVAILABLE

    def test_no_wallet_aborts(self) -> None:
        """A network the exchange does not list aborts."""
        check = wallet_verdict(None)
        assert (check.verdict, check.reason) == (Verdict.ABORT, AbortReason.WALLET_UNAVAILABLE)


class TestChanceVerdict:
    """chance_verdict: each of the exchange's own limits, in order."""

    @pytest.mark.parametrize(
        ("request_kw", "chance_kw", "verdict", "reason"),
        [
            ({"amount": "0.000001"}, {"minimum": None}, Verdict.SEND, None),
            ({"amount": "25.123456789"}, {"fixed": None}, Verdict.SEND, None),
            ({}, {"can_withdraw": None}, Verdict.SEND, None),
            ({}, {"can_withdraw": None, "wallet_support": ("deposit",)}, Verdict.WAIT,
             AbortReason.WALLET_UNAVAILABLE),
            ({}, {"can_withdraw": None, "wallet_support": ()}, Verdict.WAIT, AbortReason.WALLET_UNAVAILABLE),
            ({"amount": "0.1234567891"}, {"minimum": None, "fixed": None, "can_withdraw": None, "onetime": None,
              "remaining_daily_fiat": None, "withdraw_delayed_fiat": None}, Verdict.SEND, None),
            ({}, {"minimum": None, "fixed": None, "can_withdraw": None, "balance": Decimal("1")}, Verdict.ABORT,
             AbortReason.INSUFFICIENT_BALANCE),
            ({}, {"minimum": None, "member_locked": True}, Verdict.ABORT, AbortReason.CHANCE_DENIED),
            ({}, {"can_withdraw": None, "remaining_daily_fiat": Decimal("0")}, Verdict.SEND, None),
        ],
        ids=[
            "minimum-unknown-skipped", "fixed-unknown-skipped", "can-withdraw-unknown-support-says-yes",
            "can-withdraw-unknown-support-says-no", "can-withdraw-unknown-no-support", "all-limits-unknown",
            "known-checks-still-apply", "locks-still-apply", "fiat-limit-not-judged-locally",
        ],
    )  # fmt: skip
    def test_unknown_limits(
        self,
        make_request: MakeRequest,
        make_chance: Callable[..., Chance],
        request_kw: dict[str, Any],
        chance_kw: dict[str, Any],
        verdict: Verdict,
        reason: AbortReason | None,
    ) -> None:
        """A limit the exchange left unknown (None) is skipped, never a reason to abort or a crash; an unknown
        can_withdraw defers to wallet_support; the known checks still decide."""
        check = chance_verdict(make_request(**request_kw), make_chance(**chance_kw))
        assert (check.verdict, check.reason) == (verdict, reason)

    @pytest.mark.parametrize(
        ("request_kw", "chance_kw", "verdict", "reason"),
        [
            ({}, {}, Verdict.SEND, None),
            ({}, {"member_locked": True}, Verdict.ABORT, AbortReason.CHANCE_DENIED),
            ({}, {"wallet_locked": True}, Verdict.ABORT, AbortReason.CHANCE_DENIED),
            ({}, {"wallet_support": ("deposit",)}, Verdict.WAIT, AbortReason.WALLET_UNAVAILABLE),
            ({}, {"wallet_support": ()}, Verdict.WAIT, AbortReason.WALLET_UNAVAILABLE),
            ({}, {"can_withdraw": False}, Verdict.ABORT, AbortReason.CHANCE_DENIED),
            ({}, {"minimum": Decimal("25.000001")}, Verdict.ABORT, AbortReason.BELOW_MINIMUM),
            ({}, {"minimum": Decimal("25")}, Verdict.SEND, None),
            ({"amount": "25.1234567"}, {"fixed": 6}, Verdict.ABORT, AbortReason.TOO_MANY_DECIMALS),
            ({"amount": "25.123456"}, {"fixed": 6}, Verdict.SEND, None),
            ({"amount": "25.5"}, {"fixed": 0}, Verdict.ABORT, AbortReason.TOO_MANY_DECIMALS),
            ({"amount": "500"}, {"fixed": 0}, Verdict.SEND, None),
            ({}, {"onetime": Decimal("24.99")}, Verdict.ABORT, AbortReason.POLICY_DENIED),
            ({}, {"onetime": Decimal("25")}, Verdict.SEND, None),
            ({}, {"onetime": None}, Verdict.SEND, None),
            ({}, {"balance": Decimal("25.999999")}, Verdict.ABORT, AbortReason.INSUFFICIENT_BALANCE),
            ({}, {"balance": Decimal("26")}, Verdict.SEND, None),
            ({}, {"balance": Decimal("25")}, Verdict.ABORT, AbortReason.INSUFFICIENT_BALANCE),
            ({"transaction_type": "internal"}, {"balance": Decimal("25")}, Verdict.SEND, None),
            ({"transaction_type": "internal"}, {"balance": Decimal("24.999999")}, Verdict.ABORT,
             AbortReason.INSUFFICIENT_BALANCE),
            ({}, {"member_locked": True, "wallet_support": (), "balance": Decimal(0)}, Verdict.ABORT,
             AbortReason.CHANCE_DENIED),
            ({}, {"wallet_support": (), "can_withdraw": False}, Verdict.WAIT, AbortReason.WALLET_UNAVAILABLE),
        ],
        ids=[
            "all-fine", "member-locked", "wallet-locked", "no-withdraw-support", "no-support-at-all",
            "cannot-withdraw", "below-minimum", "at-minimum", "too-many-decimals", "exactly-fixed-decimals",
            "fixed-zero-with-fraction", "fixed-zero-integer", "over-onetime", "at-onetime", "no-onetime",
            "balance-below-amount-plus-fee", "balance-equals-amount-plus-fee", "balance-covers-amount-only",
            "internal-needs-no-fee", "internal-below-amount", "lock-checked-first", "support-before-can-withdraw",
        ],
    )  # fmt: skip
    def test_table(
        self,
        make_request: MakeRequest,
        make_chance: Callable[..., Chance],
        request_kw: dict[str, Any],
        chance_kw: dict[str, Any],
        verdict: Verdict,
        reason: AbortReason | None,
    ) -> None:
        """The first failing rule decides the verdict and its reason; all passing means send."""
        check = chance_verdict(make_request(**request_kw), make_chance(**chance_kw))
        assert (check.verdict, check.reason) == (verdict, reason)

    @pytest.mark.parametrize(("amount", "fixed"), [("25.10", 1), ("25.0", 0), ("0.100000000", 8)])
    def test_sent_amount_within_fixed(
        self, make_request: MakeRequest, make_chance: Callable[..., Chance], amount: str, fixed: int
    ) -> None:
        """An amount chance_verdict lets through is POSTed with at most ``fixed`` decimals (reference §9)."""
        request = make_request(amount=amount)
        chance = make_chance(fixed=fixed, minimum=Decimal("0.1"))
        assert chance_verdict(request, chance).verdict is Verdict.SEND
        body = WithdrawBody(
            currency=request.currency, net_type=request.net_type, amount=request.amount, address=request.address
        )
        sent = dict(body.params())["amount"]
        assert len(sent.partition(".")[2]) <= fixed


class TestPolicyVerdict:
    """policy_verdict: local pin-list, per-withdrawal and per-day limits."""

    @pytest.mark.parametrize(
        ("policy", "spent", "verdict"),
        [
            (CurrencyPolicy(), None, Verdict.SEND),
            (CurrencyPolicy(pinned_addresses=frozenset({"rDestinationAddress1"})), None, Verdict.SEND),
            (CurrencyPolicy(pinned_addresses=frozenset({"rOther"})), None, Verdict.ABORT),
            (CurrencyPolicy(pinned_addresses=frozenset()), None, Verdict.ABORT),
            (CurrencyPolicy(max_per_withdrawal=Decimal("25")), None, Verdict.SEND),
            (CurrencyPolicy(max_per_withdrawal=Decimal("24.999")), None, Verdict.ABORT),
            (CurrencyPolicy(max_per_day=Decimal("100")), Decimal("75"), Verdict.SEND),
            (CurrencyPolicy(max_per_day=Decimal("100")), Decimal("75.000001"), Verdict.ABORT),
            (CurrencyPolicy(max_per_day=Decimal("20")), Decimal("0"), Verdict.ABORT),
            (CurrencyPolicy(max_per_day=Decimal("20")), None, Verdict.SEND),
        ],
        ids=[
            "no-limits", "pinned-in", "pinned-out", "empty-pin-list", "at-max-per-withdrawal",
            "over-max-per-withdrawal", "day-exactly-full", "day-over", "day-single-over", "day-not-known-yet",
        ],
    )  # fmt: skip
    def test_table(
        self, make_request: MakeRequest, policy: CurrencyPolicy, spent: Decimal | None, verdict: Verdict
    ) -> None:
        """Each local limit refuses with POLICY_DENIED when exceeded, and only then."""
        check = policy_verdict(make_request(), Policy(currencies={"XRP": policy}), spent)
        assert check.verdict is verdict
        if verdict is Verdict.ABORT:
            assert check.reason is AbortReason.POLICY_DENIED

    def test_other_currency_policy_ignored(self, make_request: MakeRequest) -> None:
        """Another currency's limits do not apply."""
        policy = Policy(currencies={"BTC": CurrencyPolicy(max_per_withdrawal=Decimal("0.1"))})
        assert policy_verdict(make_request(), policy).verdict is Verdict.SEND


@pytest.fixture(name="candidates")
def _candidates(
    make_workflow: Callable[..., Workflow], make_withdrawal: Callable[..., Withdrawal]
) -> Callable[..., tuple[Any, ...]]:
    """Run choose_candidate for the standard workflow over withdrawals built from keyword dicts."""

    def run(*rows: dict[str, Any], owners: dict[str, str] | None = None) -> tuple[Any, ...]:
        withdrawals = [make_withdrawal(**{"uuid": f"u{i}", **row}) for i, row in enumerate(rows)]
        result = choose_candidate(make_workflow(), withdrawals, owners or {}, T0 - timedelta(seconds=120))
        return (result.adopt.uuid if result.adopt else None, result.matches, result.searched)

    return run


class TestChooseCandidate:
    """choose_candidate: adopt the single withdrawal that can only be ours."""

    def test_one_match_adopted(self, candidates: Callable[..., tuple[Any, ...]]) -> None:
        """Exactly one matching withdrawal is adopted."""
        assert candidates({}) == ("u0", ("u0",), 1)

    def test_none(self, candidates: Callable[..., tuple[Any, ...]]) -> None:
        """No withdrawals: nothing adopted, nothing matched."""
        assert candidates() == (None, (), 0)

    def test_two_matches_not_adopted(self, candidates: Callable[..., tuple[Any, ...]]) -> None:
        """Two matching withdrawals: no adoption, both reported."""
        assert candidates({}, {}) == (None, ("u0", "u1"), 2)

    @pytest.mark.parametrize(
        "row",
        [
            {"amount": Decimal("25.000001")},
            {"net_type": "XRPL"},
            {"currency": "BTC", "net_type": "BTC"},
            {"transaction_type": "internal"},
            {"created_at": T0 - timedelta(seconds=120, microseconds=1)},
        ],
        ids=["other-amount", "other-network", "other-currency", "other-type", "created-before-since"],
    )
    def test_excluded(self, candidates: Callable[..., tuple[Any, ...]], row: dict[str, Any]) -> None:
        """A withdrawal differing in amount, network, currency, type, or older than ``since`` is no candidate."""
        assert candidates(row) == (None, (), 1)

    @pytest.mark.parametrize(
        "row",
        [
            {"amount": Decimal("25.000")},
            {"created_at": T0 - timedelta(seconds=120)},
            {"net_type": None},
            {"state": ExchangeState.DONE, "raw_state": "DONE"},
        ],
        ids=["amount-by-value", "created-exactly-at-since", "null-net-type-is-currency", "any-state"],
    )
    def test_included(self, candidates: Callable[..., tuple[Any, ...]], row: dict[str, Any]) -> None:
        """Equal-valued amounts, the boundary instant and a null net_type (taken as the currency) still match."""
        assert candidates(row) == ("u0", ("u0",), 1)

    def test_owned_by_another_excluded(self, candidates: Callable[..., tuple[Any, ...]]) -> None:
        """A withdrawal another workflow already owns is never adopted."""
        assert candidates({}, owners={"u0": "wd_other"}) == (None, (), 1)

    def test_owned_by_itself_included(self, candidates: Callable[..., tuple[Any, ...]]) -> None:
        """A withdrawal this workflow already owns is still its candidate."""
        assert candidates({}, owners={"u0": "wd_test_0001"}) == ("u0", ("u0",), 1)

    def test_other_owner_leaves_one(self, candidates: Callable[..., tuple[Any, ...]]) -> None:
        """Of two lookalikes, the one owned elsewhere is excluded and the other adopted."""
        assert candidates({}, {}, owners={"u0": "wd_other"}) == ("u1", ("u1",), 2)


class TestTriggerFor:
    """trigger_for: exchange states to triggers."""

    @pytest.mark.parametrize(
        ("state", "trigger"),
        [
            (ExchangeState.WAITING, "mark_waiting"),
            (ExchangeState.PROCESSING, "mark_processing"),
            (ExchangeState.DONE, "mark_done"),
            (ExchangeState.FAILED, "mark_failed"),
            (ExchangeState.CANCELLED, "mark_cancelled"),
            (ExchangeState.REJECTED, "mark_rejected"),
            (ExchangeState.UNKNOWN, None),
        ],
    )
    def test_table(self, state: ExchangeState, trigger: str | None) -> None:
        """Each known state has its mark_ trigger; UNKNOWN has none (kept in flight)."""
        assert trigger_for(state) == trigger


class TestBackoffDelay:
    """backoff_delay: exponential growth, capped, with bounded jitter."""

    @pytest.mark.parametrize(
        ("attempt", "expected"),
        [(0, 2.0), (1, 4.0), (2, 8.0), (3, 16.0), (4, 30.0), (10, 30.0), (5000, 30.0)],
    )
    def test_grows_then_capped(self, attempt: int, expected: float) -> None:
        """Without jitter the delay doubles from ``initial`` and never exceeds ``maximum``."""
        assert backoff_delay(attempt, initial=2.0, maximum=30.0) == expected

    def test_initial_one(self) -> None:
        """With initial 1 the delays are 1, 2, 4, ..."""
        assert [backoff_delay(a, initial=1.0, maximum=100.0) for a in range(4)] == [1.0, 2.0, 4.0, 8.0]

    @pytest.mark.parametrize("attempt", [0, 1, 2, 3])
    def test_jitter_bounded(self, attempt: int) -> None:
        """Jitter adds between 0 and ``jitter`` seconds to the base delay."""
        base = 0.5 * 2**attempt
        delays = [backoff_delay(attempt, initial=0.5, maximum=100.0, jitter=0.25) for _ in range(200)]
        assert all(base <= d <= base + 0.25 for d in delays)
        assert len(set(delays)) > 1

    def test_jitter_never_exceeds_maximum(self) -> None:
        """The cap applies after jitter."""
        assert all(backoff_delay(10, initial=5.0, maximum=120.0, jitter=0.5) <= 120.0 for _ in range(100))

    def test_no_deprecation_warning(self) -> None:
        """Computing a delay with the workflow's real settings emits no warning."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            backoff_delay(0, initial=5.0, maximum=120.0, jitter=0.5)
        assert [str(w.message) for w in caught] == []
