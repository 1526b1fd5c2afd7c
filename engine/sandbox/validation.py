"""Checking a ``POST /v1/withdraws/coin`` body, in Upbit's order (see :mod:`engine.sandbox.exchange`).

Format checks (:func:`parse_withdraw_request`) need nothing but the body and the known currencies;
the account checks (:func:`check_destination`, :func:`check_limits`) need the account, the network and
the remaining daily allowance. Each raises the first failing check as a :class:`SandboxError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from engine.sandbox.errors import SandboxError, invalid_value, missing
from engine.sandbox.records import Account, Network, fmt

__all__ = ["Allowance", "WithdrawRequest", "check_destination", "check_limits", "parse_withdraw_request"]

_REQUIRED = ("currency", "net_type", "amount", "address")
_TRANSACTION_TYPES = ("default", "internal")


@dataclass(frozen=True, slots=True)
class WithdrawRequest:
    """A ``POST /v1/withdraws/coin`` body that passed the format checks."""

    currency: str
    net_type: str
    amount: Decimal
    amount_text: str
    address: str
    secondary_address: str | None
    transaction_type: str

    @property
    def internal(self) -> bool:
        """Upbit-to-Upbit transfer: no fee, no chain."""
        return self.transaction_type == "internal"


def parse_withdraw_request(body: Mapping[str, Any], currencies: Iterable[str]) -> WithdrawRequest:
    """Checks 1-4 of the validation order (see the module docstring)."""
    for name in _REQUIRED:
        if body.get(name) is None:
            raise missing(name)
    for name in ("currency", "net_type", "address", "secondary_address"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise invalid_value(name)
    if body["currency"] not in currencies:
        raise SandboxError(404, "currency_not_found", f"unknown currency: {body['currency']}")
    amount = _positive_decimal(body["amount"])
    transaction_type = body.get("transaction_type")
    transaction_type = "default" if transaction_type is None else transaction_type
    if transaction_type not in _TRANSACTION_TYPES:
        raise invalid_value("transaction_type")
    return WithdrawRequest(
        currency=body["currency"],
        net_type=body["net_type"],
        amount=amount,
        amount_text=body["amount"] if isinstance(body["amount"], str) else fmt(amount),
        address=body["address"],
        secondary_address=body.get("secondary_address"),
        transaction_type=transaction_type,
    )


def _positive_decimal(value: object) -> Decimal:
    """A plain decimal string (``"1e-3"`` is refused), or a JSON number as ccxt's ``withdraw()`` sends one.

    A JSON number arrives as a float; ``repr`` gives the shortest text that reads back to it, which is
    what the sender's own JSON encoder wrote (Python's and JavaScript's both), so ``0.01`` is 0.01.
    """
    bad = SandboxError(400, "invalid_parameter", "amount must be a positive decimal string")
    if isinstance(value, int | float) and not isinstance(value, bool):
        text = repr(value)
    elif isinstance(value, str) and value and set(value) <= set("0123456789."):
        text = value
    else:
        raise bad
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise bad from None
    if not amount.is_finite() or amount <= 0:
        raise bad
    return amount


def _decimals(amount: Decimal) -> int:
    exponent = amount.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def check_destination(
    account: Account, networks: Mapping[tuple[str, str], Network], request: WithdrawRequest
) -> Network:
    """Checks 5-6: the destination is allowlisted, and its wallet may send."""
    key = (request.currency, request.net_type, request.address, request.secondary_address)
    network = networks.get((request.currency, request.net_type))
    if key not in account.allowlist or network is None:
        raise SandboxError(400, "withdraw_address_not_registered", "the address is not registered for withdrawals")
    if not network.can_send():
        raise SandboxError(
            400,
            "sandbox_wallet_unavailable",
            f"{request.currency}/{request.net_type} wallet is {network.wallet_state.value}"
            f" (block {network.block_state.value if network.block_state else 'unknown'})",
        )
    return network


@dataclass(frozen=True, slots=True)
class Allowance:
    """What is left of the day: the network's deprecated daily limit (None: none), and the account's fiat."""

    network_daily: Decimal | None
    fiat: Decimal
    fiat_currency: str
    price: Decimal
    """The currency's price in that fiat (0: unpriced, so the fiat limit cannot apply)."""


def check_limits(
    account: Account, network: Network, request: WithdrawRequest, *, fee: Decimal, allowance: Allowance
) -> None:
    """The limit checks, in order: minimum, decimals, balance, onetime and daily (when set), fiat daily."""
    seed, amount = network.seed, request.amount
    if amount < seed.minimum:
        raise SandboxError(400, "sandbox_under_min_amount", f"minimum is {fmt(seed.minimum)}")
    if _decimals(amount) > seed.fixed:
        raise SandboxError(400, "sandbox_too_many_decimals", f"at most {seed.fixed} decimal places")
    if account.balance(request.currency) < amount + fee:
        raise SandboxError(400, "withdraw_insufficient_balance", f"balance is below amount + fee ({fmt(amount + fee)})")
    if seed.onetime is not None and amount > seed.onetime:
        raise SandboxError(400, "sandbox_over_onetime_limit", f"onetime limit is {fmt(seed.onetime)}")
    if allowance.network_daily is not None and amount > allowance.network_daily:
        raise SandboxError(400, "sandbox_over_daily_limit", f"daily limit is {fmt(seed.daily or Decimal(0))}")
    if amount * allowance.price > allowance.fiat:
        raise SandboxError(
            400,
            "sandbox_over_daily_fiat_limit",
            f"worth {fmt(amount * allowance.price)} {allowance.fiat_currency}; "
            f"{fmt(allowance.fiat)} {allowance.fiat_currency} left today",
        )
