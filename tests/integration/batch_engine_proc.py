"""A runner process for the batch crash test: ``python -m tests.integration.batch_engine_proc DB URL``.

Like ``engine_proc``, it runs the engine's runner on the SQLite file until killed. One difference, for
the test's timing only: each workflow creation waits ``CREATE_DELAY`` first, so dispatching a large
batch takes a second or more and the test's SIGKILL lands in the middle of it, whatever the machine's
speed (the step creates a chunk of children concurrently: the delay adds up per chunk, not per child).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace

from engine import Engine
from engine.models import Event, Workflow
from engine.store.sqlite import SQLiteStore
from tests.conftest import FAST, make_gateway

CREATE_DELAY = 0.5
#: 2,000 children wait their turn at pre-flight; on a loaded machine that may take longer than FAST's 20 s.
SETTINGS = replace(FAST, preflight_deadline=900.0)


class PacedStore(SQLiteStore):
    """The real SQLite store, each creation started a little later."""

    async def create(self, workflow: Workflow, event: Event) -> tuple[Workflow, bool]:
        await asyncio.sleep(CREATE_DELAY)
        return await super().create(workflow, event)


async def main(db: str, url: str) -> None:
    gateway = make_gateway(url, timeout=30.0, rate=1000)
    async with Engine(store=PacedStore(db), gateways={"default": gateway}, settings=SETTINGS):
        print("runner-started", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
