"""engine.upbit.types: Upbit's JSON answers (reference §5-6) parse into exact, aware, typed values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from engine.upbit.types import (
    AccountBalance,
    AllowedAddress,
    Chance,
    ExchangeState,
    WalletStatus,
    Withdrawal,
    parse_decimal,
    parse_time,
)

#: §6 withdrawal object, KR style (+09:00), still waiting.
WITHDRAWAL: dict[str, Any] = {
    "type": "withdraw",
    "uuid": "35a4f1dc-1db5-4d6b-89b5-7ec137875956",
    "currency": "XRP",
    "net_type": "XRP",
    "txid": None,
    "state": "WAITING",
    "created_at": "2026-05-01T12:00:00+09:00",
    "done_at": None,
    "amount": "25.0",
    "fee": "0.0",
    "transaction_type": "default",
    "is_cancelable": True,
}

#: §5.3 chance answer, the KR BTC/BTC example.
CHANCE: dict[str, Any] = {
    "member_level": {
        "security_level": 3,
        "fee_level": 0,
        "email_verified": True,
        "identity_auth_verified": True,
        "bank_account_verified": True,
        "two_factor_auth_verified": True,
        "locked": False,
        "wallet_locked": False,
    },
    "currency": {
        "code": "BTC",
        "withdraw_fee": "0.0008",
        "is_coin": True,
        "wallet_state": "working",
        "wallet_support": ["deposit", "withdraw"],
    },
    "account": {
        "currency": "BTC",
        "balance": "10.0",
        "locked": "0.0",
        "avg_buy_price": "8042000",
        "avg_buy_price_modified": False,
        "unit_currency": "KRW",
    },
    "withdraw_limit": {
        "currency": "BTC",
        "minimum": "0.00001",
        "onetime": "50.0",
        "daily": None,
        "remaining_daily": None,
        "remaining_daily_fiat": "1000000000",
        "fiat_currency": "KRW",
        "withdraw_delayed_fiat": "0",
        "can_withdraw": True,
        "remaining_daily_krw": None,
        "fixed": 8,
    },
}


class TestWithdrawal:
    """Withdrawal.from_json: the §6 object."""

    def test_reference_example(self) -> None:
        """Every field of the reference example parses to its typed value."""
        w = Withdrawal.from_json(WITHDRAWAL)
        assert w.uuid == WITHDRAWAL["uuid"]
        assert (w.currency, w.net_type, w.txid) == ("XRP", "XRP", None)
        assert (w.state, w.raw_state) == (ExchangeState.WAITING, "WAITING")
        assert w.amount == Decimal("25.0") and isinstance(w.amount, Decimal)
        assert w.fee == Decimal("0") and isinstance(w.fee, Decimal)
        assert w.done_at is None
        assert w.transaction_type == "default"
        assert w.is_cancelable is True

    @pytest.mark.parametrize(
        "created_at",
        ["2026-05-01T12:00:00+09:00", "2026-05-01T03:00:00Z", "2026-05-01T03:00:00.000+00:00", "2026-05-01T03:00:00"],
        ids=["kst-offset", "zulu", "millis-utc", "naive-taken-as-utc"],
    )
    def test_created_at_aware(self, created_at: str) -> None:
        """created_at is timezone-aware and names the same instant whatever the offset notation."""
        w = Withdrawal.from_json({**WITHDRAWAL, "created_at": created_at})
        assert w.created_at.tzinfo is not None
        assert w.created_at == datetime(2026, 5, 1, 3, 0, tzinfo=UTC)

    def test_kst_offset_kept(self) -> None:
        """A +09:00 time keeps its offset."""
        assert Withdrawal.from_json(WITHDRAWAL).created_at.utcoffset() == timedelta(hours=9)

    def test_done_at_parsed(self) -> None:
        """A done_at string is an aware datetime; null is None."""
        w = Withdrawal.from_json({**WITHDRAWAL, "state": "DONE", "done_at": "2026-05-01T12:05:00+09:00"})
        assert w.done_at == datetime(2026, 5, 1, 3, 5, tzinfo=UTC)

    @pytest.mark.parametrize(
        ("raw", "state"),
        [
            ("WAITING", ExchangeState.WAITING),
            ("PROCESSING", ExchangeState.PROCESSING),
            ("DONE", ExchangeState.DONE),
            ("FAILED", ExchangeState.FAILED),
            ("CANCELLED", ExchangeState.CANCELLED),
            ("REJECTED", ExchangeState.REJECTED),
            ("canceled", ExchangeState.CANCELLED),
            ("cancelled", ExchangeState.CANCELLED),
            ("accepted", ExchangeState.PROCESSING),
            ("processing", ExchangeState.PROCESSING),
            ("done", ExchangeState.DONE),
            ("rejected", ExchangeState.REJECTED),
            ("submitting", ExchangeState.WAITING),
            ("submitted", ExchangeState.WAITING),
            ("almost_accepted", ExchangeState.WAITING),
            ("Done", ExchangeState.DONE),
            ("WEIRD", ExchangeState.UNKNOWN),
            ("", ExchangeState.UNKNOWN),
        ],
    )
    def test_states(self, raw: str, state: ExchangeState) -> None:
        """Current and legacy state names map case-insensitively; unknown ones are UNKNOWN with raw_state kept."""
        w = Withdrawal.from_json({**WITHDRAWAL, "state": raw})
        assert w.state is state
        assert w.raw_state == raw

    def test_missing_state_unknown(self) -> None:
        """A missing or null state is UNKNOWN, never a crash."""
        assert Withdrawal.from_json({**WITHDRAWAL, "state": None}).state is ExchangeState.UNKNOWN
        assert ExchangeState.parse(None) is ExchangeState.UNKNOWN

    @pytest.mark.parametrize(
        ("state", "terminal"),
        [(s, s in {"DONE", "FAILED", "CANCELLED", "REJECTED"}) for s in ExchangeState],
    )
    def test_terminal(self, state: ExchangeState, terminal: bool) -> None:
        """Only DONE, FAILED, CANCELLED and REJECTED are terminal (UNKNOWN stays in flight)."""
        assert state.is_terminal is terminal

    @pytest.mark.parametrize("field", ["net_type", "txid", "is_cancelable", "done_at"])
    @pytest.mark.parametrize("how", ["null", "absent"])
    def test_optional_fields(self, field: str, how: str) -> None:
        """Every field the official Withdraw model marks optional may be null or absent: None."""
        data = {**WITHDRAWAL, field: None} if how == "null" else {k: v for k, v in WITHDRAWAL.items() if k != field}
        assert getattr(Withdrawal.from_json(data), field) is None

    def test_is_cancelable_must_be_boolean(self) -> None:
        """is_cancelable, when present, is a JSON boolean."""
        with pytest.raises(ValueError, match="is_cancelable"):
            Withdrawal.from_json({**WITHDRAWAL, "is_cancelable": "false"})

    def test_internal_transfer(self) -> None:
        """An internal transfer keeps its type and a UUID-like txid."""
        w = Withdrawal.from_json({**WITHDRAWAL, "transaction_type": "internal", "txid": "9f1c-uuid"})
        assert (w.transaction_type, w.txid) == ("internal", "9f1c-uuid")

    @pytest.mark.parametrize("amount", [25.0, "abc", None, "NaN"])
    def test_bad_amount_refused(self, amount: Any) -> None:
        """A float, garbage, null or non-finite amount is an unreadable answer, not a number."""
        with pytest.raises(ValueError, match="amount"):
            Withdrawal.from_json({**WITHDRAWAL, "amount": amount})

    @pytest.mark.parametrize("field", ["uuid", "currency", "created_at", "amount"])
    def test_missing_required(self, field: str) -> None:
        """A missing required field raises instead of inventing a value."""
        data = dict(WITHDRAWAL)
        del data[field]
        with pytest.raises(KeyError):
            Withdrawal.from_json(data)


class TestAllowedAddress:
    """AllowedAddress.from_json: §5.1 rows."""

    ROW: dict[str, Any] = {
        "currency": "XRP",
        "net_type": "XRP",
        "network_name": "Ripple",
        "withdraw_address": "rAddr",
        "secondary_address": "123",
        "beneficiary_name": "Kim",
        "beneficiary_type": "individual",
        "beneficiary_company_name": None,
        "exchange_name": "Other Exchange",
        "wallet_type": "exchange",
    }

    def test_full_row(self) -> None:
        """Every documented field is kept."""
        a = AllowedAddress.from_json(self.ROW)
        assert (a.currency, a.net_type, a.withdraw_address, a.secondary_address) == ("XRP", "XRP", "rAddr", "123")
        assert (a.exchange_name, a.beneficiary_type, a.beneficiary_company_name) == (
            "Other Exchange", "individual", None,
        )  # fmt: skip

    @pytest.mark.parametrize("secondary", ["", None])
    def test_empty_secondary_is_none(self, secondary: str | None) -> None:
        """An empty or null secondary address means none."""
        assert AllowedAddress.from_json({**self.ROW, "secondary_address": secondary}).secondary_address is None

    def test_old_row_without_new_fields(self) -> None:
        """A row from before v1.5.8 (no beneficiary fields) parses with them as None."""
        a = AllowedAddress.from_json({"currency": "BTC", "net_type": "BTC", "withdraw_address": "bc1q"})
        assert (a.network_name, a.secondary_address, a.exchange_name) == (None, None, None)


class TestWalletStatus:
    """WalletStatus.from_json: §5.2 rows."""

    ROW: dict[str, Any] = {
        "currency": "BTC",
        "wallet_state": "working",
        "block_state": "normal",
        "block_height": 880000,
        "block_updated_at": "2026-05-01T03:00:00.000+00:00",
        "block_elapsed_minutes": 3,
        "net_type": "BTC",
        "network_name": "Bitcoin",
    }

    def test_full_row(self) -> None:
        """Block fields parse to ints and an aware time."""
        s = WalletStatus.from_json(self.ROW)
        assert (s.currency, s.net_type, s.wallet_state, s.block_state) == ("BTC", "BTC", "working", "normal")
        assert (s.block_height, s.block_elapsed_minutes) == (880000, 3)
        assert s.block_updated_at == datetime(2026, 5, 1, 3, 0, tzinfo=UTC)

    @pytest.mark.parametrize("field", ["block_height", "block_elapsed_minutes"])
    def test_non_integer_block_field_unreadable(self, field: str) -> None:
        """A block number that is not an integer is unreadable rather than truncated."""
        with pytest.raises(ValueError, match=field):
            WalletStatus.from_json({**self.ROW, field: "12"})

    def test_null_block_fields(self) -> None:
        """Null block fields are None."""
        row = {**self.ROW, "block_state": None, "block_height": None, "block_updated_at": None,
               "block_elapsed_minutes": None}  # fmt: skip
        s = WalletStatus.from_json(row)
        assert (s.block_state, s.block_height, s.block_updated_at, s.block_elapsed_minutes) == (None,) * 4


class TestChance:
    """Chance.from_json: the nested §5.3 object."""

    def test_reference_btc_example(self) -> None:
        """The KR BTC example: fee 0.0008, minimum 0.00001, fixed 8, onetime 50.0, can_withdraw true."""
        c = Chance.from_json(CHANCE)
        assert c.currency == "BTC"
        assert c.withdraw_fee == Decimal("0.0008")
        assert c.minimum == Decimal("0.00001")
        assert c.fixed == 8
        assert c.onetime == Decimal("50.0")
        assert c.can_withdraw is True
        assert c.wallet_support == ("deposit", "withdraw")
        assert c.wallet_state == "working"
        assert (c.member_locked, c.wallet_locked) == (False, False)
        assert (c.balance, c.locked) == (Decimal("10.0"), Decimal("0.0"))
        assert c.remaining_daily_fiat == Decimal("1000000000")
        assert all(isinstance(v, Decimal) for v in (c.withdraw_fee, c.minimum, c.onetime, c.balance, c.locked))

    @pytest.mark.parametrize("field", ["locked", "wallet_locked"])
    def test_locks(self, field: str) -> None:
        """member_level.locked and wallet_locked are read."""
        c = Chance.from_json({**CHANCE, "member_level": {**CHANCE["member_level"], field: True}})
        assert (c.member_locked if field == "locked" else c.wallet_locked) is True

    def test_deprecated_onetime_null(self) -> None:
        """A null onetime (deprecated in KR 2026) is None, not zero."""
        c = Chance.from_json({**CHANCE, "withdraw_limit": {**CHANCE["withdraw_limit"], "onetime": None}})
        assert c.onetime is None

    def test_no_wallet_support(self) -> None:
        """A missing wallet_support is an empty tuple (so "withdraw" is not supported)."""
        currency = {k: v for k, v in CHANCE["currency"].items() if k != "wallet_support"}
        assert Chance.from_json({**CHANCE, "currency": currency}).wallet_support == ()

    NULLABLE_LIMITS = ("minimum", "fixed", "can_withdraw", "withdraw_delayed_fiat", "remaining_daily_fiat",
                       "fiat_currency", "onetime")  # fmt: skip

    @pytest.mark.parametrize("how", ["null", "absent"])
    @pytest.mark.parametrize("field", NULLABLE_LIMITS)
    def test_optional_limit_unknown(self, field: str, how: str) -> None:
        """A withdraw_limit field the official model marks optional (or that real answers carry as null) is
        None when null or absent: unknown, never a guessed default, never an error."""
        limit = dict(CHANCE["withdraw_limit"])
        if how == "null":
            limit[field] = None
        else:
            del limit[field]
        c = Chance.from_json({**CHANCE, "withdraw_limit": limit})
        assert getattr(c, field) is None

    def test_every_optional_limit_unknown_at_once(self) -> None:
        """The leanest answer the official model allows parses: all optional limits absent."""
        limit = {"currency": "BTC", "fiat_currency": "KRW", "remaining_daily_fiat": "1000000"}
        c = Chance.from_json({**CHANCE, "withdraw_limit": limit})
        assert (c.minimum, c.fixed, c.can_withdraw, c.withdraw_delayed_fiat, c.onetime) == (None,) * 5
        assert (c.remaining_daily_fiat, c.fiat_currency) == (Decimal("1000000"), "KRW")

    def test_delayed_fiat_and_fiat_currency(self) -> None:
        """withdraw_delayed_fiat and fiat_currency are kept."""
        c = Chance.from_json(CHANCE)
        assert (c.withdraw_delayed_fiat, c.fiat_currency) == (Decimal("0"), "KRW")

    @pytest.mark.parametrize(
        ("field", "value"),
        [("fixed", "8"), ("fixed", 8.0), ("fixed", True), ("can_withdraw", "true"), ("can_withdraw", 1),
         ("minimum", 0.00001)],
    )  # fmt: skip
    def test_wrong_types_unreadable(self, field: str, value: Any) -> None:
        """A present limit of the wrong type is an unreadable answer, not coerced into a guess."""
        with pytest.raises(ValueError, match=field):
            Chance.from_json({**CHANCE, "withdraw_limit": {**CHANCE["withdraw_limit"], field: value}})

    @pytest.mark.parametrize("section", ["member_level", "currency", "account", "withdraw_limit"])
    def test_section_not_an_object(self, section: str) -> None:
        """A section that is not an object is unreadable (a null one reads as all-unknown)."""
        with pytest.raises(ValueError, match=section):
            Chance.from_json({**CHANCE, section: ["a", "list"]})
        assert Chance.from_json({**CHANCE, section: None}) is not None

    def test_float_fee_refused(self) -> None:
        """A float fee is refused rather than rounded."""
        with pytest.raises(ValueError, match="withdraw_fee"):
            Chance.from_json({**CHANCE, "currency": {**CHANCE["currency"], "withdraw_fee": 0.0008}})


class TestAccountBalance:
    """AccountBalance.from_json: §5.8 rows."""

    def test_row(self) -> None:
        """Decimal strings become Decimals."""
        b = AccountBalance.from_json(
            {"currency": "BTC", "balance": "2.0", "locked": "0.5", "avg_buy_price": "101000",
             "avg_buy_price_modified": False, "unit_currency": "KRW"}
        )  # fmt: skip
        assert (b.currency, b.balance, b.locked) == ("BTC", Decimal("2.0"), Decimal("0.5"))
        assert (b.avg_buy_price, b.unit_currency) == (Decimal("101000"), "KRW")

    def test_missing_optional(self) -> None:
        """Missing balance/locked are zero and a missing price is None."""
        b = AccountBalance.from_json({"currency": "BTC"})
        assert (b.balance, b.locked, b.avg_buy_price) == (Decimal(0), Decimal(0), None)


class TestParseDecimal:
    """parse_decimal: strings (and ints) only, finite."""

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("0.0008", Decimal("0.0008")), ("10", Decimal(10)), (8, Decimal(8)), ("-1.5", Decimal("-1.5"))],
    )
    def test_accepted(self, value: Any, expected: Decimal) -> None:
        """Decimal strings and ints parse exactly."""
        assert parse_decimal(value, "f") == expected

    @pytest.mark.parametrize("value", [0.1, 1.0, True, None, "abc", "NaN", "Infinity", "", [], {}])
    def test_refused(self, value: Any) -> None:
        """Floats, bools, null, garbage and non-finite values are refused naming the field."""
        with pytest.raises(ValueError, match="the_field"):
            parse_decimal(value, "the_field")


class TestParseTime:
    """parse_time: ISO-8601 to aware datetimes."""

    @pytest.mark.parametrize("value", [None, 1700000000, "not a time"])
    def test_refused(self, value: Any) -> None:
        """Non-strings and garbage are refused."""
        with pytest.raises(ValueError):
            parse_time(value, "t")
