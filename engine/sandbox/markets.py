"""``GET /v1/market/all``: the public list of trading pairs, built from the seed (no orders are simulated).

Upbit serves it without authentication; ccxt's ``load_markets()`` reads nothing else, so this is what
lets ccxt (and the SDK's ``trading_pairs.list()``) start against the sandbox. Every seeded currency is
quoted in the region's fiat (``KRW-BTC``, ``SGD-BTC``), and on Upbit KR also in BTC and USDT, as the
real lists do. ``is_details=true`` adds ``market_event`` with every flag down.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.sandbox.model import Region, SandboxSeed

__all__ = ["market_list"]

#: (Korean name, English name) of the seeded coins; others are named by their code.
_NAMES = {
    "BTC": ("비트코인", "Bitcoin"),
    "ETH": ("이더리움", "Ethereum"),
    "USDT": ("테더", "Tether"),
    "XRP": ("엑스알피(리플)", "XRP"),
    "DOGE": ("도지코인", "Dogecoin"),
}
_CAUTIONS = (
    "PRICE_FLUCTUATIONS",
    "TRADING_VOLUME_SOARING",
    "DEPOSIT_AMOUNT_SOARING",
    "GLOBAL_PRICE_DIFFERENCES",
    "CONCENTRATION_OF_SMALL_ACCOUNTS",
)


def market_list(seed: SandboxSeed, *, details: bool) -> list[dict[str, Any]]:
    """The trading pairs of the seed's currencies, in Upbit's shape."""
    coins = sorted({n.currency for n in seed.networks})
    quotes = [seed.region.fiat] + (["BTC", "USDT"] if seed.region is Region.KR else [])
    return [_row(quote, coin, details) for quote in quotes for coin in _bases(coins, quote)]


def _bases(coins: Iterable[str], quote: str) -> list[str]:
    return [coin for coin in coins if coin != quote]


def _row(quote: str, coin: str, details: bool) -> dict[str, Any]:
    korean, english = _NAMES.get(coin, (coin, coin))
    row: dict[str, Any] = {"market": f"{quote}-{coin}", "korean_name": korean, "english_name": english}
    if details:
        row["market_event"] = {"warning": False, "caution": dict.fromkeys(_CAUTIONS, False)}
    return row
