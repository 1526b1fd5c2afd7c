"""JSON views of accounts and networks: the read-only endpoints' shapes, as pure functions."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_DOWN, Decimal
from typing import Any

from engine.sandbox.model import AddressSeed, WalletState
from engine.sandbox.records import Account, Network, fmt, fmt_amount

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
    """One entry of ``GET /v1/withdraws/coin_addresses``."""
    return {
        "currency": a.currency,
        "net_type": a.net_type,
        "network_name": a.network_name,
        "withdraw_address": a.withdraw_address,
        "secondary_address": a.secondary_address,
        "beneficiary_name": a.beneficiary_name,
        "beneficiary_type": a.beneficiary_type,
        "beneficiary_company_name": a.beneficiary_company_name,
        "exchange_name": a.exchange_name,
        "wallet_type": a.wallet_type,
    }


def balance_row(account: Account, currency: str, prices: Mapping[str, Decimal]) -> dict[str, Any]:
    """One entry of ``GET /v1/accounts`` (and ``chance.account``); the seed's price is the average."""
    price = Decimal(0) if currency == "KRW" else prices.get(currency, Decimal(0))
    return {
        "currency": currency,
        "balance": fmt_amount(account.balance(currency)),
        "locked": fmt_amount(account.held(currency)),
        "avg_buy_price": fmt(price),
        "avg_buy_price_modified": False,
        "unit_currency": "KRW",
    }


def chance(
    account: Account,
    network: Network,
    prices: Mapping[str, Decimal],
    *,
    remaining: Decimal,
    fiat_used: Decimal,
) -> dict[str, Any]:
    """The object of ``GET /v1/withdraws/chance``."""
    return {
        "member_level": dict(_MEMBER_LEVEL),
        "currency": _currency(network),
        "account": balance_row(account, network.seed.currency, prices),
        "withdraw_limit": _limit(account, network, remaining=remaining, fiat_used=fiat_used),
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


def _limit(account: Account, network: Network, *, remaining: Decimal, fiat_used: Decimal) -> dict[str, Any]:
    seed = network.seed
    fiat_left = max(Decimal(0), account.daily_fiat_limit - fiat_used).quantize(Decimal(1), ROUND_DOWN)
    return {
        "currency": seed.currency,
        "minimum": fmt(seed.minimum),
        "fixed": seed.fixed,
        "onetime": fmt(seed.onetime),
        "daily": fmt(seed.daily),
        "remaining_daily": fmt_amount(remaining),
        "remaining_daily_fiat": fmt(fiat_left),
        "fiat_currency": "KRW",
        "remaining_daily_krw": fmt(fiat_left),
        "withdraw_delayed_fiat": "0",
        "can_withdraw": network.can_send() and remaining > 0,
    }
