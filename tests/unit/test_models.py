"""engine.models: WithdrawalRequest validation, lanes and equality, and the audit event hash chain."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from engine.errors import InvalidRequest
from engine.models import (
    MAX_ADDRESS_LEN,
    MAX_SECONDARY_LEN,
    NON_TERMINAL,
    TERMINAL,
    Event,
    State,
    TransactionType,
    WithdrawalRequest,
)
from tests.unit.conftest import T0

MakeRequest = Callable[..., WithdrawalRequest]


class TestAmount:
    """The amount must be a Decimal or a plain positive decimal string, finite, bounded, <= 18 decimals."""

    @pytest.mark.parametrize(
        "amount",
        [
            pytest.param(1.5, id="float"),
            pytest.param(1, id="int"),
            pytest.param(True, id="bool"),
            pytest.param(None, id="none"),
            pytest.param(b"1", id="bytes"),
            pytest.param("1e3", id="exponent-string"),
            pytest.param("1E3", id="exponent-string-upper"),
            pytest.param("-1", id="negative-string"),
            pytest.param("+1", id="plus-sign"),
            pytest.param("0", id="zero-string"),
            pytest.param("0.000", id="zero-with-decimals"),
            pytest.param("NaN", id="nan-string"),
            pytest.param("Infinity", id="infinity-string"),
            pytest.param("inf", id="inf-string"),
            pytest.param(Decimal("NaN"), id="decimal-nan"),
            pytest.param(Decimal("sNaN"), id="decimal-snan"),
            pytest.param(Decimal("Infinity"), id="decimal-infinity"),
            pytest.param(Decimal("-1"), id="decimal-negative"),
            pytest.param(Decimal("0"), id="decimal-zero"),
            pytest.param(Decimal("-0"), id="decimal-negative-zero"),
            pytest.param("", id="empty"),
            pytest.param(" 1", id="leading-space"),
            pytest.param("1 ", id="trailing-space"),
            pytest.param("1\n", id="trailing-newline"),
            pytest.param("1,000", id="thousands-separator"),
            pytest.param("1.", id="trailing-dot"),
            pytest.param(".5", id="leading-dot"),
            pytest.param("1_000", id="underscore"),
            pytest.param("0x10", id="hex"),
            pytest.param("0.0000000000000000001", id="19-decimals-string"),
            pytest.param(Decimal("1E-19"), id="19-decimals-decimal"),
            pytest.param("1000000000000000000", id="1e18-string"),
            pytest.param(Decimal("1E+18"), id="1e18-decimal"),
            pytest.param("99999999999999999999", id="above-1e18"),
        ],
    )
    def test_refused(self, make_request: MakeRequest, amount: Any) -> None:
        """Each malformed amount is refused with an error naming the ``amount`` field."""
        with pytest.raises(InvalidRequest) as caught:
            make_request(amount=amount)
        assert caught.value.field == "amount"
        assert str(caught.value).startswith("amount: ")

    @pytest.mark.parametrize(
        "amount", ["\uff11", "\u0661\u0660", "1.\uff15", "\u0663"], ids=["fullwidth", "arabic-indic", "mixed", "three"]
    )
    def test_non_ascii_digits_refused(self, make_request: MakeRequest, amount: str) -> None:
        """Digits outside ASCII 0-9 are not a plain decimal string and are refused."""
        with pytest.raises(InvalidRequest) as caught:
            make_request(amount=amount)
        assert caught.value.field == "amount"

    @pytest.mark.parametrize(
        ("amount", "expected"),
        [
            ("1", Decimal("1")),
            ("0.5", Decimal("0.5")),
            ("25.000001", Decimal("25.000001")),
            ("0.000000000000000001", Decimal("1E-18")),
            ("999999999999999999", Decimal("999999999999999999")),
            (Decimal("0.00001"), Decimal("0.00001")),
            (Decimal("1E+2"), Decimal("100")),
        ],
        ids=["int-string", "fraction", "six-decimals", "18-decimals", "just-below-1e18", "decimal", "decimal-exponent"],
    )
    def test_accepted(self, make_request: MakeRequest, amount: Any, expected: Decimal) -> None:
        """Plain decimal strings and finite positive Decimals are accepted and stored as Decimal."""
        request = make_request(amount=amount)
        assert isinstance(request.amount, Decimal)
        assert request.amount == expected


class TestCodes:
    """currency and net_type: 1-32 upper-case ASCII letters or digits."""

    @pytest.mark.parametrize("field", ["currency", "net_type"])
    @pytest.mark.parametrize(
        "value",
        [
            pytest.param("btc", id="lower-case"),
            pytest.param("Btc", id="mixed-case"),
            pytest.param("B TC", id="inner-space"),
            pytest.param(" BTC", id="leading-space"),
            pytest.param("BTC\n", id="trailing-newline"),
            pytest.param("BTC-2", id="dash"),
            pytest.param("\u0412\u0422\u0421", id="cyrillic-look-alike"),
            pytest.param("\uff22\uff34\uff23", id="fullwidth"),
            pytest.param("", id="empty"),
            pytest.param("A" * 33, id="33-chars"),
            pytest.param(None, id="none"),
            pytest.param(1, id="int"),
        ],
    )
    def test_refused(self, make_request: MakeRequest, field: str, value: Any) -> None:
        """Anything but 1-32 of A-Z0-9 is refused with an error naming the field."""
        with pytest.raises(InvalidRequest) as caught:
            make_request(**{field: value})
        assert caught.value.field == field

    @pytest.mark.parametrize("field", ["currency", "net_type"])
    @pytest.mark.parametrize("value", ["BTC", "1INCH", "A", "A" * 32])
    def test_accepted(self, make_request: MakeRequest, field: str, value: str) -> None:
        """Upper-case codes with digits, from 1 to 32 characters, are accepted."""
        assert getattr(make_request(**{field: value}), field) == value


class TestAddresses:
    """address and secondary_address: printable ASCII without whitespace, bounded length."""

    BAD = [
        pytest.param("abc def", id="space"),
        pytest.param("abc\tdef", id="tab"),
        pytest.param("abc\ndef", id="newline"),
        pytest.param("abc\r", id="carriage-return"),
        pytest.param("abc\x00", id="nul"),
        pytest.param("abc\x7f", id="del"),
        pytest.param("abc\u200bdef", id="zero-width-space"),
        pytest.param("\u00a0abc", id="no-break-space"),
        pytest.param("r\u0430ddr", id="cyrillic-a"),
        pytest.param("\uff41bc", id="fullwidth-a"),
        pytest.param("", id="empty"),
        pytest.param(7, id="int"),
    ]

    @pytest.mark.parametrize("value", BAD)
    def test_address_refused(self, make_request: MakeRequest, value: Any) -> None:
        """A malformed address is refused naming ``address``."""
        with pytest.raises(InvalidRequest) as caught:
            make_request(address=value)
        assert caught.value.field == "address"

    @pytest.mark.parametrize("value", BAD)
    def test_secondary_refused(self, make_request: MakeRequest, value: Any) -> None:
        """A malformed secondary address is refused naming ``secondary_address``."""
        with pytest.raises(InvalidRequest) as caught:
            make_request(secondary_address=value)
        assert caught.value.field == "secondary_address"

    @pytest.mark.parametrize(
        ("field", "limit"), [("address", MAX_ADDRESS_LEN), ("secondary_address", MAX_SECONDARY_LEN)]
    )
    def test_length_bound(self, make_request: MakeRequest, field: str, limit: int) -> None:
        """Exactly the limit is accepted; one character more is refused."""
        assert getattr(make_request(**{field: "x" * limit}), field) == "x" * limit
        with pytest.raises(InvalidRequest) as caught:
            make_request(**{field: "x" * (limit + 1)})
        assert caught.value.field == field

    def test_printable_punctuation_accepted(self, make_request: MakeRequest) -> None:
        """Every printable ASCII character except space is allowed (memos use punctuation)."""
        printable = "".join(chr(c) for c in range(0x21, 0x7F))
        assert make_request(address=printable, secondary_address=printable[:100]).address == printable

    def test_secondary_optional(self, make_request: MakeRequest) -> None:
        """The secondary address defaults to None."""
        assert make_request().secondary_address is None


class TestOtherFields:
    """transaction_type, account and exchange_name."""

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("default", TransactionType.DEFAULT),
            ("internal", TransactionType.INTERNAL),
            (TransactionType.INTERNAL, TransactionType.INTERNAL),
        ],
    )
    def test_transaction_type_accepted(self, make_request: MakeRequest, value: Any, expected: TransactionType) -> None:
        """Only ``default`` and ``internal`` are accepted, and become the enum."""
        assert make_request(transaction_type=value).transaction_type is expected

    def test_transaction_type_default(self, make_request: MakeRequest) -> None:
        """The default transaction type is ``default``."""
        assert make_request().transaction_type is TransactionType.DEFAULT

    @pytest.mark.parametrize("value", ["DEFAULT", "Internal", "instant", "", None, 1, []])
    def test_transaction_type_refused(self, make_request: MakeRequest, value: Any) -> None:
        """Any other transaction type is refused naming ``transaction_type``."""
        with pytest.raises(InvalidRequest) as caught:
            make_request(transaction_type=value)
        assert caught.value.field == "transaction_type"

    @pytest.mark.parametrize("value", ["default", "a", "0", "main-1", "pocket_2", "a" * 64])
    def test_account_accepted(self, make_request: MakeRequest, value: str) -> None:
        """Accounts of 1-64 lower-case letters, digits, ``_`` or ``-`` (not first) are accepted."""
        assert make_request(account=value).account == value

    @pytest.mark.parametrize("value", ["", "Main", "-a", "_a", "a b", "a.b", "ä", "a" * 65, None, 3])
    def test_account_refused(self, make_request: MakeRequest, value: Any) -> None:
        """Any other account name is refused naming ``account``."""
        with pytest.raises(InvalidRequest) as caught:
            make_request(account=value)
        assert caught.value.field == "account"

    @pytest.mark.parametrize("value", ["", "x" * 129, 5])
    def test_exchange_name_refused(self, make_request: MakeRequest, value: Any) -> None:
        """exchange_name, when given, must be a 1-128 character string."""
        with pytest.raises(InvalidRequest) as caught:
            make_request(exchange_name=value)
        assert caught.value.field == "exchange_name"

    def test_frozen(self, make_request: MakeRequest) -> None:
        """A validated request cannot be changed in place."""
        request = make_request()
        with pytest.raises(AttributeError):
            request.amount = Decimal("1")  # type: ignore[misc]


class TestFromDict:
    """WithdrawalRequest.from_dict: JSON-like input, unknown and missing fields named."""

    BASE: dict[str, Any] = {"currency": "XRP", "net_type": "XRP", "amount": "25", "address": "rAddr"}

    def test_round_trip(self, make_request: MakeRequest) -> None:
        """to_dict and from_dict are inverses."""
        request = make_request(secondary_address="123", exchange_name="Other", account="main")
        assert WithdrawalRequest.from_dict(request.to_dict()) == request

    def test_none_optional_takes_default(self) -> None:
        """A null optional field takes its default."""
        request = WithdrawalRequest.from_dict({**self.BASE, "secondary_address": None, "transaction_type": None})
        assert request.secondary_address is None
        assert request.transaction_type is TransactionType.DEFAULT

    @pytest.mark.parametrize("unknown", ["amout", "memo", "id"])
    def test_unknown_field_named(self, unknown: str) -> None:
        """An unknown key is refused and named (so typos never pass silently)."""
        with pytest.raises(InvalidRequest) as caught:
            WithdrawalRequest.from_dict({**self.BASE, unknown: "x"})
        assert caught.value.field == unknown

    @pytest.mark.parametrize("missing", ["currency", "net_type", "amount", "address"])
    @pytest.mark.parametrize("how", ["absent", "null", "empty"])
    def test_missing_field_named(self, missing: str, how: str) -> None:
        """A required field that is absent, null or empty is refused and named."""
        data = dict(self.BASE)
        if how == "absent":
            del data[missing]
        else:
            data[missing] = None if how == "null" else ""
        with pytest.raises(InvalidRequest) as caught:
            WithdrawalRequest.from_dict(data)
        assert caught.value.field == missing

    def test_json_number_amount_refused(self) -> None:
        """A JSON number (float) amount is refused naming ``amount``."""
        with pytest.raises(InvalidRequest) as caught:
            WithdrawalRequest.from_dict({**self.BASE, "amount": 25.5})
        assert caught.value.field == "amount"

    @pytest.mark.parametrize("data", [[], "x", None])
    def test_not_an_object(self, data: Any) -> None:
        """Anything but a dict is refused."""
        with pytest.raises(InvalidRequest):
            WithdrawalRequest.from_dict(data)


class TestLaneAndSameAs:
    """lane normalises the amount; same_as compares by value."""

    @pytest.mark.parametrize(
        ("a", "b"),
        [("1.0", "1"), ("1", Decimal("1.000")), ("100", Decimal("1E+2")), ("0.50", "0.5")],
    )
    def test_equal_amounts_same_lane(self, make_request: MakeRequest, a: Any, b: Any) -> None:
        """Amounts equal by value share a lane."""
        assert make_request(amount=a).lane == make_request(amount=b).lane

    def test_lane_spelled_out(self, make_request: MakeRequest) -> None:
        """A lane is account|currency|net_type|amount, the amount in plain notation."""
        assert make_request(amount=Decimal("1E+2"), account="main").lane == "main|XRP|XRP|100"

    @pytest.mark.parametrize(
        "change",
        [{"amount": "2"}, {"account": "other"}, {"currency": "BTC"}, {"net_type": "XRPL"}],
        ids=["amount", "account", "currency", "net_type"],
    )
    def test_different_lane(self, make_request: MakeRequest, change: dict[str, Any]) -> None:
        """Changing any lane component changes the lane."""
        assert make_request().lane != make_request(**change).lane

    def test_same_as_compares_amount_by_value(self, make_request: MakeRequest) -> None:
        """Amounts "1.0" and "1" make the same request."""
        assert make_request(amount="1.0").same_as(make_request(amount="1"))

    @pytest.mark.parametrize(
        "change",
        [
            {"amount": "26"},
            {"address": "rOther"},
            {"secondary_address": "1"},
            {"transaction_type": "internal"},
            {"account": "main"},
            {"exchange_name": "Other"},
            {"net_type": "XRPL"},
        ],
        ids=["amount", "address", "secondary", "type", "account", "exchange", "net_type"],
    )
    def test_same_as_detects_differences(self, make_request: MakeRequest, change: dict[str, Any]) -> None:
        """Any difference in a field makes the requests different."""
        assert not make_request().same_as(make_request(**change))


class TestStates:
    """State: terminal and after-submit classes."""

    def test_terminal_partition(self) -> None:
        """Terminal and non-terminal states partition the 14 states."""
        assert frozenset(State) == TERMINAL | NON_TERMINAL
        assert not TERMINAL & NON_TERMINAL
        assert len(State) == 14
        assert {s for s in State if s.is_terminal} == {
            State.DONE, State.FAILED, State.CANCELLED, State.REJECTED, State.ABORTED,
        }  # fmt: skip

    def test_after_submit(self) -> None:
        """Only states in which a POST may have left are after_submit."""
        assert {s for s in State if s.after_submit} == {
            State.SUBMITTING, State.RECONCILING, State.WAITING, State.PROCESSING, State.NEEDS_REVIEW,
        }  # fmt: skip


@pytest.fixture(name="make_event")
def _make_event() -> Callable[..., Event]:
    """Build an unsealed event; keywords override fields."""

    def make(**overrides: Any) -> Event:
        fields: dict[str, Any] = {
            "workflow_id": "wd_1",
            "seq": 1,
            "at": T0,
            "trigger": "start",
            "from_state": "pending",
            "to_state": "verifying_address",
            "data": {"k": "v"},
        }
        fields.update(overrides)
        return Event(**fields)

    return make


class TestEventChain:
    """Event.sealed: a SHA-256 over every field but the hash, linked to the previous hash."""

    def test_hash_is_sha256_of_canonical(self, make_event: Callable[..., Event]) -> None:
        """The hash is the SHA-256 of the canonical bytes, which include the previous hash."""
        sealed = make_event().sealed("prev")
        assert sealed.prev_hash == "prev"
        assert sealed.hash == hashlib.sha256(sealed.canonical()).hexdigest()
        assert b'"prev":"prev"' in sealed.canonical()

    def test_deterministic_and_ignores_old_hash(self, make_event: Callable[..., Event]) -> None:
        """Sealing is deterministic and does not depend on a stale hash value."""
        assert make_event().sealed("p").hash == make_event(hash="bogus", prev_hash="x").sealed("p").hash

    @pytest.mark.parametrize(
        "change",
        [
            {"workflow_id": "wd_2"},
            {"seq": 2},
            {"at": T0 + timedelta(microseconds=1)},
            {"trigger": "abort"},
            {"from_state": None},
            {"from_state": "None"},
            {"to_state": "aborted"},
            {"data": {"k": "w"}},
            {"data": {"k": "v", "extra": 1}},
            {"data": {}},
        ],
        ids=[
            "workflow_id",
            "seq",
            "at",
            "trigger",
            "from-none",
            "from-string-None",
            "to",
            "data-value",
            "data-key",
            "data-empty",
        ],
    )
    def test_any_field_changes_hash(self, make_event: Callable[..., Event], change: dict[str, Any]) -> None:
        """Changing any covered field changes the hash."""
        assert make_event().sealed("p").hash != make_event(**change).sealed("p").hash

    def test_prev_hash_changes_hash(self, make_event: Callable[..., Event]) -> None:
        """The same event linked to another predecessor has another hash."""
        assert make_event().sealed("a").hash != make_event().sealed("b").hash

    def test_chain_links(self, make_event: Callable[..., Event]) -> None:
        """Each event's prev_hash is its predecessor's hash; tampering breaks the recomputed chain."""
        first = make_event().sealed("")
        second = make_event(seq=2, trigger="verify").sealed(first.hash)
        third = make_event(seq=3, trigger="submit").sealed(second.hash)
        assert (second.prev_hash, third.prev_hash) == (first.hash, second.hash)
        tampered = replace(first, data={"k": "evil"}).sealed("")
        assert tampered.hash != second.prev_hash

    def test_to_dict(self, make_event: Callable[..., Event]) -> None:
        """The JSON view carries the hash and ISO time."""
        sealed = make_event().sealed("")
        view = sealed.to_dict()
        assert view["hash"] == sealed.hash
        assert view["at"] == T0.isoformat()
