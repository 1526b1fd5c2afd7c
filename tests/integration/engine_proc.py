"""A runner process for crash tests: ``python -m tests.integration.engine_proc DB_PATH SANDBOX_URL``.

It runs the engine's runner on the SQLite file until killed, printing one line per transition so the
test can see progress. Kept tiny on purpose: the point is to be SIGKILLed at a chosen moment.
"""

from __future__ import annotations

import asyncio
import sys

from engine import Engine
from engine.store.sqlite import SQLiteStore
from tests.conftest import FAST, make_gateway


async def main(db: str, url: str) -> None:
    engine = Engine(store=SQLiteStore(db), gateways={"default": make_gateway(url, timeout=30.0)}, settings=FAST)
    async with engine:
        print("runner-started", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
