"""A database made by the release before workflow kinds migrates, and every event chain still verifies.

``tests/fixtures/v2_database.sqlite3`` was written by that release's own code (commit dfd1f2e, schema
version 2; ``tests/fixtures/make_v2_database.py`` rebuilds it): eight withdrawals its demo ran to DONE,
REJECTED, FAILED and aborted, plus one pending under an idempotency key with an operator's cancel flag.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from engine import Engine
from engine.audit import verify_store
from engine.clock import FakeClock
from engine.store.migrations import SQLITE_MIGRATIONS
from engine.store.postgres import POSTGRES_MIGRATIONS, PostgresStore
from engine.store.rows import EVENT_COLUMNS
from engine.store.sqlite import SQLiteStore
from workflows.withdrawal_model import State

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v2_database.sqlite3"


def _rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return [tuple(row) for row in db.execute(sql)]
    finally:
        db.close()


async def _verify_audit(path: Path) -> tuple[int, dict[str, Any]]:
    """``upbit-withdraw verify-audit`` on the file, as an operator runs it."""
    cli = [sys.executable, "-m", "engine.cli", "verify-audit", "--database", f"sqlite:///{path}", "--json"]
    proc = await asyncio.create_subprocess_exec(*cli, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, json.loads(out)


async def test_a_v2_database_migrates_with_every_row_and_chain_intact(tmp_path: Path) -> None:
    path = tmp_path / "workflows.sqlite3"
    shutil.copyfile(FIXTURE, path)
    assert _rows(path, "SELECT MAX(version) FROM schema_version") == [(2,)]
    workflows_before = _rows(path, "SELECT * FROM workflows ORDER BY id")
    events_before = _rows(path, "SELECT * FROM events ORDER BY workflow_id, seq")
    assert len(workflows_before) == 9 and len(events_before) > 40

    async with SQLiteStore(path) as store:
        stored = await store.list(limit=100)
        assert await store.count_by_state() == {"DONE": 4, "REJECTED": 1, "FAILED": 1, "aborted": 2, "pending": 1}
    assert _rows(path, "SELECT MAX(version) FROM schema_version") == [(SQLITE_MIGRATIONS[-1][0],)]
    # Every value of every row is kept (the new column is appended, NULL), every event untouched.
    after = _rows(path, "SELECT * FROM workflows ORDER BY id")
    assert [row[: len(workflows_before[0])] for row in after] == workflows_before
    assert _rows(path, "SELECT COUNT(*) FROM workflows WHERE parent_id IS NOT NULL") == [(0,)]
    assert _rows(path, "SELECT * FROM events ORDER BY workflow_id, seq") == events_before
    assert all(wf.kind == "withdrawal" and wf.parent_id is None for wf in stored)

    code, report = await _verify_audit(path)
    assert (code, report["checked"], report["broken"]) == (0, 9, [])


async def test_the_migrated_live_row_runs_on_and_its_chain_still_verifies(tmp_path: Path) -> None:
    """The pending withdrawal the old release flagged for cancellation is picked up by the new runner,
    cancelled locally (nothing was sent), and its chain (old events + new) verifies. The engine's clock
    stands a second after the operator's flag (well before the row's pre-flight deadline), as if the new
    release had been started right then, whenever this test runs."""
    path = tmp_path / "workflows.sqlite3"
    shutil.copyfile(FIXTURE, path)
    ((flagged_at,),) = _rows(path, "SELECT cancel_requested_at FROM workflows WHERE cancel_requested_at IS NOT NULL")
    clock = FakeClock(datetime.fromisoformat(flagged_at) + timedelta(seconds=1))
    store = SQLiteStore(path, exclusive=True)
    async with Engine(store=store, gateways={}, run_runner=False, clock=clock) as engine:
        (flagged,) = await engine.list(state=State.PENDING)
        assert flagged.cancel_requested and flagged.idempotency_key == "fixture-key-1"
        await engine.run_until_idle(timeout=60)
        ended = await engine.get(flagged.id)
        assert ended.state is State.CANCELLED
        assert [e.trigger for e in await engine.store.events(flagged.id)] == ["create", "cancel"]
    code, report = await _verify_audit(path)
    assert (code, report["checked"], report["broken"]) == (0, 9, [])


@pytest.mark.postgres
async def test_a_v2_postgres_schema_migrates_with_every_row_and_chain_intact(postgres_dsn: str) -> None:
    """The same rows in a PostgreSQL schema at version 2 (its own v1+v2 migrations, the fixture's rows
    copied in): opening the store migrates it; every value and event is kept and every chain verifies."""
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
        for version, script in POSTGRES_MIGRATIONS[:2]:
            await conn.execute(script)
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
        for table in ("workflows", "events"):
            names, rows = _table(FIXTURE, table)
            marks = ", ".join(f"${i}" for i in range(1, len(names) + 1))
            held = names.index("lane_held") if "lane_held" in names else -1
            values = [tuple(bool(v) if i == held else v for i, v in enumerate(row)) for row in rows]
            await conn.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})", values)
        events_before = [tuple(r) for r in await conn.fetch(_EVENTS_V2)]
    finally:
        await conn.close()

    async with PostgresStore(postgres_dsn) as store:
        assert await store.count_by_state() == {"DONE": 4, "REJECTED": 1, "FAILED": 1, "aborted": 2, "pending": 1}
        assert await verify_store(store) == (9, [])
        assert all(wf.parent_id is None for wf in await store.list(limit=100))
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert await conn.fetchval("SELECT MAX(version) FROM schema_version") == POSTGRES_MIGRATIONS[-1][0]
        assert [tuple(r) for r in await conn.fetch(_EVENTS_V2)] == events_before
    finally:
        await conn.close()


#: The events' columns of a v2 database: later migrations add columns of their own (the feed's position),
#: and what must not change is every value the old rows had.
_EVENTS_V2 = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events ORDER BY workflow_id, seq"


def _table(path: Path, table: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    db = sqlite3.connect(path)
    try:
        cursor = db.execute(f"SELECT * FROM {table}")
        return [d[0] for d in cursor.description], [tuple(row) for row in cursor]
    finally:
        db.close()
