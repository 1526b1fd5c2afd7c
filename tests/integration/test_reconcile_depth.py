"""Reconciliation reads back far enough: a busy account's lost POST is found even when hundreds of the
currency's withdrawals were created after it (the old 5-page cap stopped at the newest 500)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from typing import Any

from engine.policy import WorkflowSettings
from engine.upbit.client import WithdrawBody
from tests.conftest import make_gateway

TRX_ADDRESS = "TJYeasTPa6gpEEfYqGJkbXhBVxBJMEZfUt"
BUSY = 650


async def test_listing_reaches_back_past_the_newest_500(sandbox: Any, admin: Any) -> None:
    """With the default page cap the listing reaches the first of 650 withdrawals made since ``since``;
    the former cap of 5 pages would have missed the oldest 150 (shown side by side)."""
    await admin.configure(enabled=False, waiting_seconds=600.0)  # all stay WAITING; no rate limit
    gateway = make_gateway(sandbox.url, rate=10_000)
    async with gateway.client:
        first = await gateway.client.withdraw_coin(
            WithdrawBody(currency="USDT", net_type="TRX", amount=Decimal("20.5"), address=TRX_ADDRESS)
        )
        since = first.created_at - timedelta(seconds=1)
        bodies = [
            WithdrawBody(currency="USDT", net_type="TRX", amount=Decimal(20 + i % 7), address=TRX_ADDRESS)
            for i in range(BUSY - 1)
        ]
        for start in range(0, len(bodies), 50):
            await asyncio.gather(*(gateway.client.withdraw_coin(b) for b in bodies[start : start + 50]))
        pages = WorkflowSettings().recent_pages
        found = await gateway.recent_withdrawals("USDT", since, max_pages=pages)
        capped = await gateway.recent_withdrawals("USDT", since, max_pages=5)
    assert len(found) == BUSY and first.uuid in {w.uuid for w in found}
    assert len(capped) == 500 and first.uuid not in {w.uuid for w in capped}
