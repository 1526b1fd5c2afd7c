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


# -- exported heads: a wholesale rewrite by someone with database access ------------------------------

KEY = "0123456789abcdef0123456789abcdef-audit-key"


def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``upbit-withdraw ARGS`` as a subprocess (blocking: the tests below have no loop work in flight)."""
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if not k.startswith("UPBIT_")}
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=120,
        env={**base, **(env or {})}, check=False,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


async def _rewrite_chain(db: Path, workflow_id: str, amount: str) -> None:
    """What an attacker with write access to the file does: change the request in the first event, then
    recompute every hash of the chain and point the workflow row at the new last hash."""
    from dataclasses import replace

    async with SQLiteStore(db) as store:
        events = await store.events(workflow_id)
    prev, forged = "", []
    for event in events:
        data = event.data
        if event.seq == 1:
            data = {**data, "request": {**data["request"], "amount": amount}}
        sealed = replace(event, data=data).sealed(prev)
        forged.append(sealed)
        prev = sealed.hash
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER events_append_only_update")
    for event in forged:
        conn.execute(
            "UPDATE events SET data = ?, prev_hash = ?, hash = ? WHERE workflow_id = ? AND seq = ?",
            (json.dumps(event.data), event.prev_hash, event.hash, workflow_id, event.seq),
        )
    conn.execute("UPDATE workflows SET last_hash = ?, amount = ? WHERE id = ?", (prev, amount, workflow_id))
    conn.commit()
    conn.close()


class TestExportedHeads:
    async def test_wholesale_rewrite_passes_the_chain_but_not_the_heads(
        self, sandbox: Any, engine_factory: Any, db_path: Path, tmp_path: Path
    ) -> None:
        """A chain rewritten with every hash recomputed verifies alone; against the signed heads exported
        before, verify-audit exits 1 and names that chain."""
        ids = await _run_three(engine_factory, sandbox.url)
        database = ["--database", f"sqlite:///{db_path}"]
        key_file, heads = tmp_path / "audit.key", tmp_path / "heads.jsonl"
        key_file.write_text(KEY + "\n")
        code, out, err = _cli(*database, "audit-heads", "--out", str(heads), "--key-file", str(key_file))
        assert code == 0 and "3 of 3 chain heads appended" in out, err
        lines = [json.loads(line) for line in heads.read_text().splitlines()]
        assert sorted(line["workflow_id"] for line in lines) == sorted(ids) and all(len(x["mac"]) == 64 for x in lines)
        assert KEY not in heads.read_text() + out + err

        await _rewrite_chain(db_path, ids[1], "0.99")
        code, out, err = _cli(*database, "--json", "verify-audit")
        assert (code, json.loads(out)["broken"]) == (0, []), "the unkeyed chain alone cannot see a rewrite"

        code, out, err = _cli(*database, "--json", "verify-audit", "--heads", str(heads), "--key-file", str(key_file))
        broken = json.loads(out)["broken"]
        assert code == 1 and [b["workflow_id"] for b in broken] == [ids[1]], out
        assert "rewritten" in broken[0]["problem"]
        code, out, _ = _cli(*database, "verify-audit", "--heads", str(heads), env={"UPBIT_WITHDRAW_AUDIT_KEY": KEY})
        assert code == 1 and ids[1] in out

    async def test_heads_file_itself_is_protected_by_its_key(
        self, sandbox: Any, engine_factory: Any, db_path: Path, tmp_path: Path
    ) -> None:
        """Forging a line needs the key; a signed file checked without it, or with another, fails."""
        ids = await _run_three(engine_factory, sandbox.url)
        database = ["--database", f"sqlite:///{db_path}"]
        heads = tmp_path / "heads.jsonl"
        env = {"UPBIT_WITHDRAW_AUDIT_KEY": KEY}
        assert _cli(*database, "audit-heads", "--out", str(heads), env=env)[0] == 0
        code, out, _ = _cli(*database, "verify-audit", "--heads", str(heads), env=env)
        assert code == 0 and "3 exported heads hold" in out

        code, _, err = _cli(*database, "verify-audit", "--heads", str(heads))
        assert code == 2 and "the heads file is signed" in err
        code, out, _ = _cli(
            *database,
            "--json",
            "verify-audit",
            "--heads",
            str(heads),
            env={"UPBIT_WITHDRAW_AUDIT_KEY": "another-key-of-at-least-16-bytes"},
        )
        assert code == 1 and all("signature does not match" in b["problem"] for b in json.loads(out)["broken"])

        # An attacker who rewrote a chain edits its exported line to match (without the key).
        await _rewrite_chain(db_path, ids[0], "0.5")
        async with SQLiteStore(db_path) as store:
            new_head = (await store.get(ids[0])).last_hash
        text = heads.read_text().splitlines()
        forged = [json.dumps({**json.loads(line), "hash": new_head}) if ids[0] in line else line for line in text]
        heads.write_text("\n".join(forged) + "\n")
        code, out, _ = _cli(*database, "--json", "verify-audit", "--heads", str(heads), env=env)
        broken = json.loads(out)["broken"]
        assert code == 1 and any(b["workflow_id"] == ids[0] and "signature" in b["problem"] for b in broken)

    async def test_unsigned_export_appends_only_moved_heads(
        self, sandbox: Any, engine_factory: Any, db_path: Path, tmp_path: Path
    ) -> None:
        """Without a key the lines are unsigned (and say so); a second export with nothing new appends
        nothing; a deleted workflow is reported gone."""
        ids = await _run_three(engine_factory, sandbox.url)
        database = ["--database", f"sqlite:///{db_path}"]
        heads = tmp_path / "heads.jsonl"
        code, out, _ = _cli(*database, "audit-heads", "--out", str(heads))
        assert code == 0 and "(unsigned)" in out and '"mac"' not in heads.read_text()
        code, out, _ = _cli(*database, "--json", "audit-heads", "--out", str(heads))
        assert code == 0 and json.loads(out)["written"] == 0 and len(heads.read_text().splitlines()) == 3
        _tamper(db_path, "DELETE FROM events WHERE workflow_id = ?", ids[2])
        conn = sqlite3.connect(db_path)
        conn.execute("DELETE FROM workflows WHERE id = ?", (ids[2],))
        conn.commit()
        conn.close()
        code, out, _ = _cli(*database, "--json", "verify-audit")
        assert code == 0, "deleting a whole workflow leaves no broken chain behind"
        code, out, _ = _cli(*database, "--json", "verify-audit", "--heads", str(heads))
        broken = json.loads(out)["broken"]
        assert code == 1 and [(b["workflow_id"], "gone" in b["problem"]) for b in broken] == [(ids[2], True)]


class TestHeadsExporter:
    async def test_exports_moved_heads_and_stops(
        self, sandbox: Any, engine_factory: Any, db_path: Path, tmp_path: Path
    ) -> None:
        """The service's exporter writes every head once, then only moved ones; a set stop exports once more
        and returns."""
        import asyncio

        from engine.audit import AuditKey, HeadsExporter, read_heads

        ids = await _run_three(engine_factory, sandbox.url)
        heads = tmp_path / "heads.jsonl"
        async with SQLiteStore(db_path) as store:
            exporter = HeadsExporter.from_env(
                store, env={"UPBIT_WITHDRAW_AUDIT_HEADS": str(heads), "UPBIT_WITHDRAW_AUDIT_KEY": KEY}
            )
            assert exporter is not None and exporter.interval == 300.0
            assert KEY not in repr(exporter) and KEY not in repr(exporter.key)
            assert await exporter.export_once() == 3
            assert await exporter.export_once() == 0
            stop = asyncio.Event()
            stop.set()
            await asyncio.wait_for(exporter.run(stop), timeout=30)
        found, problems = read_heads(heads.read_text().splitlines(), AuditKey(KEY.encode()))
        assert problems == [] and sorted(h.workflow_id for h in found) == sorted(ids)
        async with SQLiteStore(db_path) as store:
            assert await verify_store(store, found) == (3, [])

    def test_not_configured_means_no_exporter(self) -> None:
        """No heads file in the environment: from_env gives None; a bad interval or short key is refused."""
        from engine.audit import AuditKey, HeadsExporter
        from engine.errors import ConfigError

        store = SQLiteStore(":memory:")
        assert HeadsExporter.from_env(store, env={}) is None
        with pytest.raises(ConfigError, match="INTERVAL"):
            HeadsExporter.from_env(
                store, env={"UPBIT_WITHDRAW_AUDIT_HEADS": "h", "UPBIT_WITHDRAW_AUDIT_HEADS_INTERVAL": "nan"}
            )
        with pytest.raises(ConfigError, match="at least 16 bytes"):
            AuditKey(b"short")
