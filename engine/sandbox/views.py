"""JSON views of accounts and networks: the read-only endpoints' shapes, as pure functions."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_DOWN, Decimal
from typing import Any

from engine.sandbox.model import AddressSeed, WalletState
from engine.sandbox.records import Account, Network, fmt, fmt_amount
from engine.sandbox.validation import Allowance

__all__ = ["address_row", "balance_row", "chance"]

_MEMBER_LEVEL = {
    "security_level": 4,
    "fee_level": 0,
    "email_verified": True,
    "identity_auth_verified": True,
    "bank_account_verified": True,
    "two_factor_auth_verified": True,
    "locked": False,
    "wallet_locked": False,
}


def address_row(a: AddressSeed) -> dict[str, Any]:
    """One entry of ``GET /v1/withdraws/coin_addresses``.

    As the official spec describes them: ``beneficiary_name`` is returned only for exchange wallets
    (null for personal ones), and ``wallet_type`` names a personal wallet's kind (``"MetaMask"``), so
    an exchange wallet (``exchange_name`` set) has none.
    """
    exchange = a.exchange_name is not None
    return {
        "currency": a.currency,
        "net_type": a.net_type,
        "network_name": a.network_name,
        "withdraw_address": a.withdraw_address,
        "secondary_address": a.secondary_address,
        "beneficiary_name": a.beneficiary_name if exchange else None,
        "beneficiary_type": a.beneficiary_type,
        "beneficiary_company_name": a.beneficiary_company_name,
        "exchange_name": a.exchange_name,
        "wallet_type": None if exchange else a.wallet_type,
    }


def balance_row(account: Account, currency: str, prices: Mapping[str, Decimal], fiat: str) -> dict[str, Any]:
    """One entry of ``GET /v1/accounts`` (and ``chance.account``); the seed's price is the average."""
    price = Decimal(0) if currency == fiat else prices.get(currency, Decimal(0))
    return {
        "currency": currency,
        "balance": fmt_amount(account.balance(currency)),
        "locked": fmt_amount(account.held(currency)),
        "avg_buy_price": fmt(price),
        "avg_buy_price_modified": False,
        "unit_currency": fiat,
    }


def chance(account: Account, network: Network, prices: Mapping[str, Decimal], allowance: Allowance) -> dict[str, Any]:
    """The object of ``GET /v1/withdraws/chance``."""
    return {
        "member_level": dict(_MEMBER_LEVEL),
        "currency": _currency(network),
        "account": balance_row(account, network.seed.currency, prices, allowance.fiat_currency),
        "withdraw_limit": _limit(network, allowance),
    }


def _currency(network: Network) -> dict[str, Any]:
    """KR 2026 semantics: ``wallet_state`` only says "ever supported"; ``wallet_support`` is live."""
    unsupported = network.wallet_state is WalletState.UNSUPPORTED
    return {
        "code": network.seed.currency,
        "withdraw_fee": fmt(network.seed.withdraw_fee),
        "is_coin": True,
        "wallet_state": "unsupported" if unsupported else "working",
        "wallet_support": list(network.wallet_support),
    }


def _limit(network: Network, allowance: Allowance) -> dict[str, Any]:
    """``withdraw_limit`` as the official model has it; the deprecated per-network keys only when seeded."""
    seed = network.seed
    fiat_left = allowance.fiat.quantize(Decimal(1), ROUND_DOWN)
    network_left = allowance.network_daily
    limit: dict[str, Any] = {
        "currency": seed.currency,
        "minimum": fmt(seed.minimum),
        "fixed": seed.fixed,
        "remaining_daily_fiat": fmt(fiat_left),
        "fiat_currency": allowance.fiat_currency,
        "withdraw_delayed_fiat": "0",
        "can_withdraw": network.can_send() and fiat_left > 0 and (network_left is None or network_left > 0),
    }
    if seed.onetime is not None:
        limit["onetime"] = fmt(seed.onetime)
    if seed.daily is not None and network_left is not None:
        limit["daily"] = fmt(seed.daily)
        limit["remaining_daily"] = fmt_amount(network_left)
    return limit
