"""ccxt's Upbit client against the sandbox: ``load_markets()`` and the unified ``withdraw()``.

ccxt sends the amount as a JSON number (a float) and hashes it as ``amount=0.01``; the sandbox must
take it as Upbit does. Its base URL is ``urls['api']`` (``public`` and ``private``).
"""

from __future__ import annotations

from decimal import Decimal

import ccxt
import ccxt.async_support as ccxt_async

from engine.sandbox.thread import SandboxThread
from engine.upbit.auth import DEMO_ACCESS_KEY, DEMO_SECRET_KEY
from tests.sdk.conftest import admin

XRP_ADDRESS = "rN7n7otQDd6FczFgLdSqtcsAUxDkw6fzRH"
BTC_ADDRESS = "bc1qsandbox0demo0wallet0000000000000000000"


def _options(url: str) -> dict[str, object]:
    return {"apiKey": DEMO_ACCESS_KEY, "secret": DEMO_SECRET_KEY, "urls": {"api": {"public": url, "private": url}}}


def test_sync_ccxt_loads_markets_and_withdraws(sandbox: SandboxThread) -> None:
    exchange = ccxt.upbit(_options(sandbox.url))
    markets = exchange.load_markets()
    assert "BTC/KRW" in markets and "ETH/BTC" in markets
    made = exchange.withdraw("BTC", 0.01, BTC_ADDRESS, params={"network": "BTC"})
    assert made["id"] and made["amount"] == 0.01
    tagged = exchange.withdraw("XRP", 20.5, XRP_ADDRESS, params={"network": "XRP", "tag": "1234567"})
    stored = {w["uuid"]: w for w in admin(sandbox, "GET", "/sandbox/withdrawals")}
    assert Decimal(stored[made["id"]]["amount"]) == Decimal("0.01")
    assert stored[tagged["id"]]["secondary_address"] == "1234567"
    balance = exchange.fetch_balance()
    assert balance["BTC"]["used"] > 0


async def test_async_ccxt_withdraws_with_a_float_amount(sandbox: SandboxThread) -> None:
    exchange = ccxt_async.upbit(_options(sandbox.url))
    try:
        await exchange.load_markets()
        made = await exchange.withdraw(
            "ETH", 1.25, "0x5a0b54d5dc17e0aadc383d2db43b0a0d3e029c4c", params={"network": "ETH"}
        )
        fetched = await exchange.fetch_withdrawal(made["id"])
    finally:
        await exchange.close()
    assert fetched["id"] == made["id"] and fetched["amount"] == 1.25
