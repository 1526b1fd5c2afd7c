"""Crash safety: a runner SIGKILLed between persisting the intent and hearing the answer."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, State
from engine.store.sqlite import SQLiteStore
from tests.conftest import FAST, SandboxAdmin, make_gateway
from tests.integration.test_engine import request_for

ROOT = Path(__file__).resolve().parents[2]


def _state(db: Path, workflow_id: str) -> str | None:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        row = conn.execute("SELECT state FROM workflows WHERE id = ?", (workflow_id,)).fetchone()
    return None if row is None else str(row[0])


async def _until(predicate: Any, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)


class TestKillBetweenIntentAndAnswer:
    async def test_restart_reconciles_and_never_sends_twice(
        self, sandbox: Any, admin: SandboxAdmin, db_path: Path
    ) -> None:
        """SIGKILL while the POST hangs at the exchange; on restart the workflow adopts that withdrawal."""
        async with Engine(
            store=SQLiteStore(db_path), gateways={"default": make_gateway(sandbox.url)}, run_runner=False
        ) as engine:
            wf = await engine.submit(await request_for(sandbox.url, amount="0.0421"))
        await admin.fault(endpoint="POST /v1/withdraws/coin", kind="hang", probability=1.0, times=1, seconds=20)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.integration.engine_proc", str(db_path), sandbox.url,
            cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:

            async def posted() -> bool:
                return await admin.posts() == 1 and _state(db_path, wf.id) == "submitting"

            await _until(posted, timeout=20)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert _state(db_path, wf.id) == "submitting"  # the intent survived; the answer never arrived
        await admin.clear_faults()

        async with Engine(
            store=SQLiteStore(db_path), gateways={"default": make_gateway(sandbox.url)}, settings=FAST
        ) as engine:
            done = await engine.wait(wf.id, timeout=20)
            triggers = [e.trigger async for e in engine.events(wf.id, follow=False)]
        assert done.state is State.DONE, done
        assert "lose_track" in triggers and done.submit_count == 1
        assert await admin.posts() == 1
        assert list((await admin.creations()).values()) == [1]


@pytest.mark.skipif(os.name != "posix", reason="signals")
class TestRestartResumes:
    async def test_every_workflow_finishes_after_repeated_kills(
        self, sandbox: Any, admin: SandboxAdmin, db_path: Path
    ) -> None:
        """Kill the runner three times mid-run; a final start finishes all ten, one withdrawal each."""
        await admin.configure(waiting_seconds=0.3, processing_seconds=0.3)
        async with Engine(
            store=SQLiteStore(db_path), gateways={"default": make_gateway(sandbox.url)}, run_runner=False
        ) as engine:
            ids = [(await engine.submit(await request_for(sandbox.url, amount=f"0.05{i}"))).id for i in range(10)]
        for _ in range(3):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.integration.engine_proc", str(db_path), sandbox.url,
                cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await asyncio.sleep(0.8)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        async with Engine(
            store=SQLiteStore(db_path), gateways={"default": make_gateway(sandbox.url)}, settings=FAST
        ) as engine:
            finals = [await engine.wait(i, timeout=30) for i in ids]
        assert all(f.state in (State.DONE, State.NEEDS_REVIEW) for f in finals), [f.state for f in finals]
        created = await admin.creations()
        assert all(n == 1 for n in created.values())
        adopted = {f.exchange_uuid for f in finals if f.state is State.DONE}
        assert len(adopted) == sum(1 for f in finals if f.state is State.DONE)
