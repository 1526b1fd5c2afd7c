"""A service-like process for the webhook crash test: ``python -m tests.integration.webhook_proc DB URL``.

It runs the runner and the webhook delivery worker on the SQLite file until killed (as ``upbit-withdraw
run`` does, minus HTTP), printing one line when started. The point is to be SIGKILLed with deliveries
pending.
"""

from __future__ import annotations

import asyncio
import sys

from engine import Engine
from engine.store.sqlite import SQLiteStore
from engine.webhook_delivery import DeliverySettings, WebhookDispatcher
from tests.conftest import FAST, make_gateway

#: Fast retries, and a short lease so a killed process's claims are taken over quickly.
SETTINGS = DeliverySettings(
    allow_private_targets=True, timeout=2.0, retry_initial=0.05, retry_max_interval=0.2, poll_interval=0.05,
    lease_seconds=2.0,
)  # fmt: skip


async def main(db: str, url: str) -> None:
    store = SQLiteStore(db)
    engine = Engine(store=store, gateways={"default": make_gateway(url, timeout=30.0)}, settings=FAST)
    async with engine:
        dispatcher = WebhookDispatcher(store, settings=SETTINGS)
        print("service-started", flush=True)
        await dispatcher.run(asyncio.Event())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
