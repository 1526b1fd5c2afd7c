"""A runner process whose policy holds BTC withdrawals above 0.01 for an approver, for the approval's
crash test: ``python -m tests.integration.approval_proc DB_PATH SANDBOX_URL``. Runs until killed."""

from __future__ import annotations

import asyncio
import sys
from decimal import Decimal

from engine import CurrencyPolicy, Engine, Policy
from engine.store.sqlite import SQLiteStore
from tests.conftest import FAST, make_gateway

POLICY = Policy(currencies={"BTC": CurrencyPolicy(approval_above=Decimal("0.01"))})


async def main(db: str, url: str) -> None:
    gateways = {"default": make_gateway(url, timeout=30.0)}
    async with Engine(store=SQLiteStore(db), gateways=gateways, settings=FAST, policy=POLICY):
        print("runner-started", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
