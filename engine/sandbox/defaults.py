"""The built-in seed's data. ``default_seed.toml`` holds the same values as a documented file.

Fees, minimums and precisions are realistic for Upbit KR (BTC/BTC is the example of
upbit-api.md §5.3); addresses are well-formed but made up. DOGE is seeded *paused* (with a balance and
an allowlisted address) so demos can show a withdrawal held back by the wallet check. Two odd amounts
have fixed outcomes (``XRP 13.13`` is REJECTED, ``ETH 0.131313`` FAILED) so demos can show both
without touching the outcome weights.
"""

from __future__ import annotations

from decimal import Decimal as D

from engine.sandbox.model import (
    AccountSeed,
    AddressSeed,
    BlockState,
    NetworkSeed,
    OutcomeRule,
    RateLimitSettings,
    SandboxSeed,
    Timings,
    WalletState,
    WithdrawalState,
)
from engine.upbit.auth import Credentials

__all__ = ["build_default_seed"]

_WORKING = ("deposit", "withdraw")

NETWORKS = (
    NetworkSeed(
        currency="BTC", net_type="BTC", network_name="Bitcoin", withdraw_fee=D("0.0008"),
        minimum=D("0.00001"), fixed=8,
        wallet_support=_WORKING, block_height=930412,
    ),
    NetworkSeed(
        currency="ETH", net_type="ETH", network_name="Ethereum", withdraw_fee=D("0.01"),
        minimum=D("0.001"), fixed=8,
        wallet_support=_WORKING, block_height=23791455,
    ),
    NetworkSeed(
        currency="USDT", net_type="TRX", network_name="Tron (TRC20)", withdraw_fee=D("1"),
        minimum=D("1"), fixed=6,
        wallet_support=_WORKING, block_height=77203318,
    ),
    NetworkSeed(
        currency="USDT", net_type="ETH", network_name="Ethereum (ERC20)", withdraw_fee=D("5"),
        minimum=D("10"), fixed=6,
        wallet_support=_WORKING, block_height=23791455,
    ),
    NetworkSeed(
        currency="XRP", net_type="XRP", network_name="Ripple", withdraw_fee=D("0.4"),
        minimum=D("1"), fixed=6,
        wallet_support=_WORKING, block_height=99810024,
    ),
    NetworkSeed(
        currency="DOGE", net_type="DOGE", network_name="Dogecoin", withdraw_fee=D("4"),
        minimum=D("10"), fixed=8,
        wallet_state=WalletState.PAUSED, block_state=BlockState.NORMAL, wallet_support=(),
        block_height=5943120,
    ),
)  # fmt: skip

ADDRESSES = (
    AddressSeed(
        currency="BTC", net_type="BTC", network_name="Bitcoin",
        withdraw_address="bc1qsandbox0demo0wallet0000000000000000000",
        beneficiary_type="individual", wallet_type="Ledger",
    ),
    AddressSeed(
        currency="ETH", net_type="ETH", network_name="Ethereum",
        withdraw_address="0x5a0b54d5dc17e0aadc383d2db43b0a0d3e029c4c",
        beneficiary_type="individual", wallet_type="MetaMask",
    ),
    AddressSeed(
        currency="USDT", net_type="TRX", network_name="Tron (TRC20)",
        withdraw_address="TJYeasTPa6gpEEfYqGJkbXhBVxBJMEZfUt",
        beneficiary_name="Park Treasury", beneficiary_type="corporate",
        beneficiary_company_name="Sandbox Trading Co., Ltd.", exchange_name="Binance",
    ),
    AddressSeed(
        currency="USDT", net_type="ETH", network_name="Ethereum (ERC20)",
        withdraw_address="0x5a0b54d5dc17e0aadc383d2db43b0a0d3e029c4c",
        beneficiary_type="individual", wallet_type="MetaMask",
    ),
    AddressSeed(
        currency="XRP", net_type="XRP", network_name="Ripple",
        withdraw_address="rN7n7otQDd6FczFgLdSqtcsAUxDkw6fzRH", secondary_address="1234567",
        beneficiary_name="Kim Sandbox", beneficiary_type="individual", exchange_name="Bithumb",
    ),
    AddressSeed(
        currency="DOGE", net_type="DOGE", network_name="Dogecoin",
        withdraw_address="DH5yaieqoZN36fDVciNyRueRGvGLR3mr7L",
        beneficiary_type="individual", wallet_type="Trust Wallet",
    ),
)  # fmt: skip

BALANCES = {
    "KRW": D("100000000"),
    "BTC": D("10"),
    "ETH": D("200"),
    "USDT": D("1000000"),
    "XRP": D("1000000"),
    "DOGE": D("100000"),
}

PRICES = {
    "KRW": D("1"),
    "BTC": D("140000000"),
    "ETH": D("5000000"),
    "USDT": D("1450"),
    "XRP": D("3000"),
    "DOGE": D("300"),
}

OUTCOME_RULES = (
    OutcomeRule(currency="XRP", amount=D("13.13"), outcome=WithdrawalState.REJECTED),
    OutcomeRule(currency="ETH", amount=D("0.131313"), outcome=WithdrawalState.FAILED),
)


def build_default_seed(credentials: Credentials) -> SandboxSeed:
    """The default seed, its one account keyed with ``credentials``."""
    account = AccountSeed(
        name="demo",
        keys=(credentials,),
        balances=dict(BALANCES),
        addresses=ADDRESSES,
        daily_fiat_limit=D("5000000000"),
    )
    return SandboxSeed(
        accounts=(account,),
        networks=NETWORKS,
        prices=dict(PRICES),
        timings=Timings(),
        outcome_weights={
            WithdrawalState.DONE: 1.0,
            WithdrawalState.FAILED: 0.0,
            WithdrawalState.CANCELLED: 0.0,
            WithdrawalState.REJECTED: 0.0,
        },
        outcome_rules=OUTCOME_RULES,
        rate_limit=RateLimitSettings(),
        random_seed=20260101,
        faults=(),
    )
