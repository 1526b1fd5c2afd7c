"""The CLI on the store, as an operator meets it: a store is created only on purpose (``run``, ``migrate``),
an empty or missing store is never "verified", ``status`` says why, ``history`` shows evidence in full,
a bad ``--cursor`` is an error, and shell completion works. Subprocesses on real SQLite files."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import Result, clean_env, run_cli

WORKFLOW_COMMANDS = [
    ["submit", "--currency", "BTC", "--net-type", "BTC", "--amount", "0.01", "--address", "bc1qx"],
    ["status", "wd_0123"],
    ["history", "wd_0123"],
    ["list"],
    ["cancel", "wd_0123"],
    ["resolve", "wd_0123", "--action", "abandon", "--note", "checked"],
    ["operator", "list"],
    ["operator", "add", "alice", "--role", "viewer"],
    ["approve", "wd_0123", "--note", "n", "--operator", "bob"],
    ["reject", "bt_0123", "--note", "n", "--operator", "bob"],
    ["verify-audit"],
    ["audit-heads", "--out", "heads.jsonl"],
]


def one_line(result: Result) -> str:
    assert result.err.count("\n") == 1, result.err
    return result.err


class TestOnlyRunAndMigrateCreateAStore:
    @pytest.mark.parametrize("command", WORKFLOW_COMMANDS, ids=lambda c: c[0])
    def test_missing_store_is_refused_and_not_created(self, tmp_path: Path, command: list[str]) -> None:
        """Every command but run/migrate exits 2 on a store path that does not exist, names it, creates nothing."""
        missing = tmp_path / "typo" / "workflows.sqlite3"
        result = run_cli(["--database", f"sqlite:///{missing}", *command], cwd=tmp_path)
        assert result.code == 2, result.err
        message = one_line(result)
        assert f"no store at {missing}" in message and "migrate" in message and "engine.database" in message
        assert sorted(p.name for p in tmp_path.iterdir()) == []

    def test_an_empty_file_is_not_a_store(self, tmp_path: Path) -> None:
        """A zero-byte file (say, left by an older version's mistaken open) is refused like a missing one."""
        empty = tmp_path / "w.sqlite3"
        empty.touch()
        result = run_cli(["--database", f"sqlite:///{empty}", "list"])
        assert result.code == 2 and "no store at" in one_line(result)
        assert empty.stat().st_size == 0

    def test_migrate_creates_then_commands_work(self, tmp_path: Path) -> None:
        """migrate creates the store (idempotently); then list answers an empty page."""
        database = ["--database", f"sqlite:///{tmp_path}/w.sqlite3"]
        first = run_cli([*database, "migrate"])
        assert first.code == 0 and "schema up to date" in first.out, first.err
        assert run_cli([*database, "migrate"]).code == 0
        listed = run_cli([*database, "--json", "list"])
        assert listed.code == 0 and listed.json() == {"withdrawals": [], "next_cursor": None, "total": 0}

    def test_verify_audit_of_zero_chains_is_not_a_success(self, tmp_path: Path) -> None:
        """An existing store with no workflow exits 3 and says nothing was verified (never 'intact')."""
        database = ["--database", f"sqlite:///{tmp_path}/w.sqlite3"]
        assert run_cli([*database, "migrate"]).code == 0
        result = run_cli([*database, "verify-audit"])
        assert result.code == 3 and "intact" not in result.out
        assert "no event chain" in one_line(result) and "nothing verified" in result.err
        as_json = run_cli([*database, "--json", "verify-audit"])
        assert as_json.code == 3 and as_json.json() == {"checked": 0, "broken": []}


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A store filled by the scripted demo: DONE, REJECTED and aborted workflows (with their reasons)."""
    db = tmp_path_factory.mktemp("demo") / "demo.sqlite3"
    result = run_cli(["demo", "--count", "6", "--db", str(db), "--json"], timeout=180)
    assert result.code == 0, result.err[-2000:]
    yield db


def views(db: Path) -> list[dict[str, Any]]:
    result = run_cli(["--database", f"sqlite:///{db}", "--json", "list"])
    assert result.code == 0, result.err
    return list(result.json()["withdrawals"])


def stored_events(db: Path, workflow_id: str) -> list[dict[str, Any]]:
    """The event data straight from the SQLite file, to compare the CLI's output with."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT data FROM events WHERE workflow_id = ? ORDER BY seq", (workflow_id,)).fetchall()
    return [json.loads(row[0]) for row in rows]


class TestStatusHistoryList:
    def test_status_shows_why_it_was_aborted(self, demo_store: Path) -> None:
        """status (table and --json) shows the abort's reason and its detail sentence."""
        aborted = next(v for v in views(demo_store) if v["reason"] == "address_not_allowed")
        database = ["--database", f"sqlite:///{demo_store}"]
        table = run_cli([*database, "status", aborted["id"]])
        assert table.code == 0, table.err
        assert re.search(r"reason detail\s+address is not in the Open API allowlist for BTC/BTC", table.out)
        as_json = run_cli([*database, "--json", "status", aborted["id"]]).json()
        assert as_json["reason_detail"]["detail"] == "address is not in the Open API allowlist for BTC/BTC"

    def test_status_of_a_done_workflow_has_no_reason_detail(self, demo_store: Path) -> None:
        """Nothing to explain: no detail row, no extra key."""
        done = next(v for v in views(demo_store) if v["state"] == "DONE")
        database = ["--database", f"sqlite:///{demo_store}"]
        assert "reason detail" not in run_cli([*database, "status", done["id"]]).out
        assert "reason_detail" not in run_cli([*database, "--json", "status", done["id"]]).json()

    def test_history_shows_evidence_in_full(self, demo_store: Path) -> None:
        """Every event's data is printed whole (wrapped between tokens, never cut); --json is complete."""
        workflow = next(v for v in views(demo_store) if v["state"] == "aborted")
        data = stored_events(demo_store, workflow["id"])
        longest = max((json.dumps(d) for d in data), key=len)
        assert len(longest) > 100, "the test needs evidence longer than the old 100-character cut"
        database = ["--database", f"sqlite:///{demo_store}"]
        table = run_cli([*database, "history", workflow["id"]])
        assert table.code == 0 and "..." not in table.out
        for token in json.dumps(data, ensure_ascii=False).replace("[", " ").replace("]", " ").split():
            assert token.strip(",") in table.out, token
        as_json = run_cli([*database, "--json", "history", workflow["id"]]).json()
        assert [e["data"] for e in as_json] == data

    def test_unknown_cursor_is_an_error(self, demo_store: Path) -> None:
        """A cursor that is not a stored id exits 2 naming --cursor; a real one pages on."""
        database = ["--database", f"sqlite:///{demo_store}"]
        for cursor, why in [("wd_0000000000", "no workflow wd_0000000000"), ("bogus", "must be a workflow id")]:
            result = run_cli([*database, "list", "--cursor", cursor])
            assert result.code == 2 and "cursor" in one_line(result) and why in result.err, result.err
        ids = [v["id"] for v in views(demo_store)]
        page = run_cli([*database, "--json", "list", "--cursor", ids[0], "--limit", "2"])
        assert page.code == 0 and [v["id"] for v in page.json()["withdrawals"]] == ids[1:3]


class TestShellCompletion:
    def test_bash_source_prints_a_completion_script(self) -> None:
        """The README's `_UPBIT_WITHDRAW_COMPLETE=bash_source upbit-withdraw` prints a bash completion script."""
        result = run_cli([], env=clean_env(_UPBIT_WITHDRAW_COMPLETE="bash_source"))
        assert result.code == 0 and result.err == ""
        assert "_upbit_withdraw_completion()" in result.out
        assert re.search(r"complete .*-F _upbit_withdraw_completion upbit-withdraw", result.out)

    def test_completion_answers_command_names(self) -> None:
        """The script's callback completes `upbit-withdraw ver` to verify-audit."""
        env = clean_env(_UPBIT_WITHDRAW_COMPLETE="bash_complete", COMP_WORDS="upbit-withdraw ver", COMP_CWORD="1")
        result = run_cli([], env=env)
        assert result.code == 0 and "verify-audit" in result.out.split("\n")[0]
