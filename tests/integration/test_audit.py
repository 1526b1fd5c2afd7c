"""Tamper-evident audit: the hash chain of each workflow's events, checked over a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from engine.audit import verify_store
from engine.store.sqlite import SQLiteStore
from tests.integration.test_engine import request_for


async def _run_three(engine_factory: Any, url: str) -> list[str]:
    async with engine_factory() as engine:
        ids = [(await engine.submit(await request_for(url, amount=f"0.0{i + 1}"))).id for i in range(3)]
        for wf_id in ids:
            await engine.wait(wf_id, timeout=10)
    return ids


def _tamper(db: Path, sql: str, *args: Any) -> None:
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute("DROP TRIGGER events_append_only_delete")
    conn.execute(sql, args)
    conn.commit()
    conn.close()


class TestAuditChain:
    async def test_untouched_store_verifies(self, sandbox: Any, engine_factory: Any, db_path: Path) -> None:
        """Every chain written by the engine verifies."""
        await _run_three(engine_factory, sandbox.url)
        async with SQLiteStore(db_path) as store:
            checked, broken = await verify_store(store)
        assert (checked, broken) == (3, [])

    def test_database_refuses_edits_of_events(self, db_path: Path) -> None:
        """The events table itself refuses UPDATE and DELETE (append-only)."""
        import asyncio

        async def make() -> None:
            async with SQLiteStore(db_path):
                pass

        asyncio.run(make())
        conn = sqlite3.connect(db_path)
        conn.execute(
            "INSERT INTO workflows (id, kind, state, request, account, currency, amount, lane, data, version,"
            " event_seq, last_hash, created_at, updated_at) VALUES ('w','withdrawal','pending','{}','a','BTC','1',"
            "'l','{}',0,1,'h','t','t')"
        )
        conn.execute("INSERT INTO events VALUES ('w', 1, 't', 'create', NULL, 'pending', '{}', '', 'h')")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE events SET data = '{\"x\":1}'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM events")
        conn.close()

    @pytest.mark.parametrize(
        ("sql", "problem"),
        [
            ('UPDATE events SET data = \'{"amount":"999"}\' WHERE workflow_id = ? AND seq = 3', "edited"),
            ("DELETE FROM events WHERE workflow_id = ? AND seq = 2", "missing"),
            (
                "DELETE FROM events WHERE workflow_id = ? "
                "AND seq = (SELECT MAX(seq) FROM events WHERE workflow_id = ?)",
                "truncated",
            ),
        ],
    )
    async def test_tampering_names_the_first_broken_link(
        self, sandbox: Any, engine_factory: Any, db_path: Path, sql: str, problem: str
    ) -> None:
        """An edited, removed or truncated event is reported with its workflow and position."""
        ids = await _run_three(engine_factory, sandbox.url)
        victim = ids[1]
        _tamper(db_path, sql, *([victim] * sql.count("?")))
        async with SQLiteStore(db_path) as store:
            checked, broken = await verify_store(store)
        assert checked == 3 and len(broken) == 1
        assert broken[0].workflow_id == victim and problem in broken[0].problem


class TestVerifyAuditCommand:
    async def test_cli_reports_intact_then_the_broken_link(
        self, sandbox: Any, engine_factory: Any, db_path: Path
    ) -> None:
        """`upbit-withdraw verify-audit` exits 0 on an intact store and 1 naming the tampered workflow."""
        import asyncio
        import sys

        ids = await _run_three(engine_factory, sandbox.url)
        cli = [sys.executable, "-m", "engine.cli", "verify-audit", "--database", f"sqlite:///{db_path}", "--json"]

        async def run() -> tuple[int, dict[str, Any]]:
            proc = await asyncio.create_subprocess_exec(*cli, stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            return proc.returncode or 0, json.loads(out)

        code, report = await run()
        assert (code, report["checked"], report["broken"]) == (0, 3, [])
        _tamper(db_path, "UPDATE events SET trigger = 'forged' WHERE workflow_id = ? AND seq = 2", ids[0])
        code, report = await run()
        assert code == 1 and report["broken"] == [
            {"workflow_id": ids[0], "seq": 2, "problem": report["broken"][0]["problem"]}
        ]
        assert "edited" in report["broken"][0]["problem"]
