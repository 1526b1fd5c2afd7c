"""Typed views of Upbit's answers: frozen slotted dataclasses, Decimal money, aware datetimes.

Parsing is defensive where the reference is (fields nullable, legacy names, unknown states kept as
values, never a crash) and strict where money is concerned: an amount that is not a decimal string is an
unreadable answer, not a zero.

The oracle is Upbit's official SDK (``upbit-sdk``, generated from Upbit's OpenAPI spec): every field its
response models mark optional parses here when null or absent, and unknown stays unknown (``None``), never
a guessed default: a decision that needs an unknown limit skips that check (the exchange still enforces it).
Only a field without which an answer means nothing (a withdrawal's uuid, amount, creation time) is required:
its absence is an unreadable answer (``ValueError``/``KeyError``, which the client turns into
:class:`~engine.errors.ExchangeBadResponse`). ``tests/spec`` feeds answers generated from the SDK's models
through these parsers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

__all__ = [
    "AccountBalance",
    "AllowedAddress",
    "Chance",
    "ExchangeState",
    "WalletStatus",
    "Withdrawal",
    "parse_decimal",
    "parse_time",
]

Json = Mapping[str, Any]


class ExchangeState(StrEnum):
    """Upbit's withdrawal states (current, upper case). ``UNKNOWN`` keeps an unrecognised value alive."""

    WAITING = "WAITING"
    PROCESSING = "PROCESSING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        """DONE, FAILED, CANCELLED and REJECTED end a withdrawal."""
        return self in _TERMINAL

    @classmethod
    def parse(cls, raw: str | None) -> ExchangeState:
        """Map current and legacy (pre-2020, lower-case) names; anything else is UNKNOWN."""
        if raw is None:
            return cls.UNKNOWN
        return _STATE_ALIASES.get(raw.strip().lower(), cls.UNKNOWN)


_TERMINAL = frozenset({ExchangeState.DONE, ExchangeState.FAILED, ExchangeState.CANCELLED, ExchangeState.REJECTED})
_STATE_ALIASES: dict[str, ExchangeState] = {
    "waiting": ExchangeState.WAITING,
    "submitting": ExchangeState.WAITING,
    "submitted": ExchangeState.WAITING,
    "almost_accepted": ExchangeState.WAITING,
    "processing": ExchangeState.PROCESSING,
    "accepted": ExchangeState.PROCESSING,
    "done": ExchangeState.DONE,
    "failed": ExchangeState.FAILED,
    "cancelled": ExchangeState.CANCELLED,
    "canceled": ExchangeState.CANCELLED,
    "rejected": ExchangeState.REJECTED,
}


def parse_decimal(value: object, field: str) -> Decimal:
    """A decimal from Upbit's string (or int) field; floats are refused to keep money exact."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{field}: expected a decimal string, got {type(value).__name__}")
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{field}: not a decimal: {value!r}") from None
    if not result.is_finite():
        raise ValueError(f"{field}: not finite: {value!r}")
    return result


def _opt_decimal(value: object, field: str) -> Decimal | None:
    return None if value is None else parse_decimal(value, field)


def parse_time(value: object, field: str) -> datetime:
    """An aware datetime from ISO-8601 (``+09:00`` or ``Z``); a naive one is taken as UTC."""
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected an ISO-8601 string")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _opt_time(value: object, field: str) -> datetime | None:
    return None if value in (None, "") else parse_time(value, field)


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: object, field: str) -> int | None:
    """An integer, or None when null/absent; a bool, a float or text is unreadable."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: expected an integer, got {type(value).__name__}")
    return value


def _opt_bool(value: object, field: str) -> bool | None:
    """A JSON boolean, or None when null/absent (unknown is not false)."""
    if value is None:
        return None
    if not isinstance(value, bool):
        raise ValueError(f"{field}: expected a boolean, got {type(value).__name__}")
    return value


def _object(value: object, field: str) -> Json:
    """A nested JSON object; null or absent is an empty one (its fields are then unknown)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{field}: expected an object, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Withdrawal:
    """One withdrawal as Upbit reports it. Note: Upbit does not report the destination address."""

    uuid: str
    currency: str
    net_type: str | None
    txid: str | None
    state: ExchangeState
    raw_state: str
    created_at: datetime
    done_at: datetime | None
    amount: Decimal
    fee: Decimal
    transaction_type: str
    is_cancelable: bool | None

    @classmethod
    def from_json(cls, data: Json) -> Withdrawal:
        """Parse one withdrawal object (§6 of the reference)."""
        raw_state = str(data.get("state") or "")
        return cls(
            uuid=str(data["uuid"]),
            currency=str(data["currency"]),
            net_type=_opt_str(data.get("net_type")),
            txid=_opt_str(data.get("txid")),
            state=ExchangeState.parse(raw_state),
            raw_state=raw_state,
            created_at=parse_time(data["created_at"], "created_at"),
            done_at=_opt_time(data.get("done_at"), "done_at"),
            amount=parse_decimal(data["amount"], "amount"),
            fee=parse_decimal(data.get("fee", "0"), "fee"),
            transaction_type=str(data.get("transaction_type") or "default"),
            is_cancelable=_opt_bool(data.get("is_cancelable"), "is_cancelable"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AllowedAddress:
    """An address registered for Open API withdrawals (GET /v1/withdraws/coin_addresses)."""

    currency: str
    net_type: str
    network_name: str | None
    withdraw_address: str
    secondary_address: str | None
    beneficiary_name: str | None = None
    beneficiary_type: str | None = None
    beneficiary_company_name: str | None = None
    exchange_name: str | None = None
    wallet_type: str | None = None

    @classmethod
    def from_json(cls, data: Json) -> AllowedAddress:
        """Parse one row of the allowlist; an empty secondary address means none."""
        return cls(
            currency=str(data["currency"]),
            net_type=str(data.get("net_type") or data["currency"]),
            network_name=_opt_str(data.get("network_name")),
            withdraw_address=str(data["withdraw_address"]),
            secondary_address=_opt_str(data.get("secondary_address")) or None,
            beneficiary_name=_opt_str(data.get("beneficiary_name")),
            beneficiary_type=_opt_str(data.get("beneficiary_type")),
            beneficiary_company_name=_opt_str(data.get("beneficiary_company_name")),
            exchange_name=_opt_str(data.get("exchange_name")),
            wallet_type=_opt_str(data.get("wallet_type")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class WalletStatus:
    """Deposit/withdraw status of one (currency, net_type) (GET /v1/status/wallet)."""

    currency: str
    net_type: str
    network_name: str | None
    wallet_state: str
    block_state: str | None
    block_height: int | None
    block_updated_at: datetime | None
    block_elapsed_minutes: int | None

    @classmethod
    def from_json(cls, data: Json) -> WalletStatus:
        """Parse one row; block fields may be null (the SDK types ``block_elapsed_minutes`` as an int but
        documents "may return null": it is optional here too)."""
        return cls(
            currency=str(data["currency"]),
            net_type=str(data.get("net_type") or data["currency"]),
            network_name=_opt_str(data.get("network_name")),
            wallet_state=str(data.get("wallet_state") or "unsupported"),
            block_state=_opt_str(data.get("block_state")),
            block_height=_opt_int(data.get("block_height"), "block_height"),
            block_updated_at=_opt_time(data.get("block_updated_at"), "block_updated_at"),
            block_elapsed_minutes=_opt_int(data.get("block_elapsed_minutes"), "block_elapsed_minutes"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountBalance:
    """One currency's balance (GET /v1/accounts, or the ``account`` of a chance answer)."""

    currency: str
    balance: Decimal
    locked: Decimal
    avg_buy_price: Decimal | None = None
    unit_currency: str | None = None

    @classmethod
    def from_json(cls, data: Json) -> AccountBalance:
        """Parse one balance row."""
        return cls(
            currency=str(data["currency"]),
            balance=parse_decimal(data.get("balance", "0"), "balance"),
            locked=parse_decimal(data.get("locked", "0"), "locked"),
            avg_buy_price=_opt_decimal(data.get("avg_buy_price"), "avg_buy_price"),
            unit_currency=_opt_str(data.get("unit_currency")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Chance:
    """What GET /v1/withdraws/chance says about one (currency, net_type): the pre-send facts.

    ``None`` means the exchange did not say: the official model marks ``withdraw_limit.minimum``,
    ``fixed``, ``can_withdraw`` and ``withdraw_delayed_fiat`` optional, and real answers carry ``null``
    there (so may ``remaining_daily_fiat``, typed required but seen null). ``onetime`` is deprecated
    (absent from the current spec) and kept only for older answers that still carry it."""

    currency: str
    withdraw_fee: Decimal
    wallet_support: tuple[str, ...]
    wallet_state: str | None
    member_locked: bool
    wallet_locked: bool
    balance: Decimal
    locked: Decimal
    minimum: Decimal | None
    fixed: int | None
    onetime: Decimal | None
    remaining_daily_fiat: Decimal | None
    can_withdraw: bool | None
    fiat_currency: str | None = None
    withdraw_delayed_fiat: Decimal | None = None

    @classmethod
    def from_json(cls, data: Json) -> Chance:
        """Parse the nested chance object (member_level, currency, account, withdraw_limit)."""
        member = _object(data.get("member_level"), "member_level")
        currency = _object(data.get("currency"), "currency")
        account = _object(data.get("account"), "account")
        limit = _object(data.get("withdraw_limit"), "withdraw_limit")
        return cls(
            currency=str(currency.get("code") or limit.get("currency") or account.get("currency") or ""),
            withdraw_fee=parse_decimal(_or(currency.get("withdraw_fee"), "0"), "withdraw_fee"),
            wallet_support=tuple(str(s) for s in currency.get("wallet_support") or ()),
            wallet_state=_opt_str(currency.get("wallet_state")),
            member_locked=bool(member.get("locked", False)),
            wallet_locked=bool(member.get("wallet_locked", False)),
            balance=parse_decimal(_or(account.get("balance"), "0"), "balance"),
            locked=parse_decimal(_or(account.get("locked"), "0"), "locked"),
            minimum=_opt_decimal(limit.get("minimum"), "minimum"),
            fixed=_opt_int(limit.get("fixed"), "fixed"),
            onetime=_opt_decimal(limit.get("onetime"), "onetime"),
            remaining_daily_fiat=_opt_decimal(limit.get("remaining_daily_fiat"), "remaining_daily_fiat"),
            can_withdraw=_opt_bool(limit.get("can_withdraw"), "can_withdraw"),
            fiat_currency=_opt_str(limit.get("fiat_currency")),
            withdraw_delayed_fiat=_opt_decimal(limit.get("withdraw_delayed_fiat"), "withdraw_delayed_fiat"),
        )


def _or(value: object, default: object) -> object:
    """``value`` unless it is null/absent."""
    return default if value is None else value
