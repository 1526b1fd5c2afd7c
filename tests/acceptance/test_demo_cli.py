"""``upbit-withdraw demo`` as a user runs it: a subprocess, exit 0, the outcome table on stdout."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.acceptance.conftest import run_cli


def test_demo_small_batch_prints_outcomes() -> None:
    """Eight withdrawals: the four failing cases end as documented, the rest DONE; the payout batch settles
    with its report; exit 0."""
    result = run_cli(["demo", "--count", "8"], timeout=60)
    assert result.code == 0, result.out + result.err
    for text in ("Outcomes", "address_not_allowed", "REJECTED", "FAILED", "DONE", "Exchange API calls",
                 "POST /v1/withdraws/coin", "every withdrawal ended as expected", "Payout batch", "payroll-004",
                 "as expected"):  # fmt: skip
        assert text in result.out, text
    assert "NO (wanted" not in result.out


def test_demo_json_and_kept_database(tmp_path: Path) -> None:
    """--json is one JSON document for programs; --db keeps the store for later inspection."""
    db = tmp_path / "demo.sqlite3"
    result = run_cli(["demo", "--count", "8", "--json", "--db", str(db)], timeout=60)
    assert result.code == 0, result.err
    report = result.json()
    assert report["ok"] is True and len(report["workflows"]) == 8
    by_label = {row["label"]: row for row in report["workflows"]}
    assert by_label["address not allowlisted"]["reason"] == "address_not_allowed"
    assert by_label["wallet paused"]["state"] == "aborted"
    assert by_label["exchange rejects it"]["state"] == "REJECTED"
    batch = report["batch"]
    assert batch["ok"] is True and batch["state"] == "settled"
    assert {row["reference"]: row["outcome"] for row in batch["items"]}["payroll-004"] == "REJECTED"
    assert report["calls"]["POST /v1/withdraws/coin"] == 6 + 4  # the aborted ones (two, and one item) never sent
    assert db.exists()
    listed = run_cli(["--database", f"sqlite:///{db}", "--json", "list", "--limit", "100"])
    assert listed.code == 0 and len(listed.json()["withdrawals"]) == 8 + 5  # and the batch's five children
    shown = run_cli(["--database", f"sqlite:///{db}", "--json", "batch", "report", batch["batch_id"]])
    assert shown.code == 0 and shown.json()["totals"]["by_state"] == {"DONE": 3, "REJECTED": 1, "aborted": 1}


@pytest.mark.slow
def test_demo_default_count_is_fast() -> None:
    """The default demo (20 withdrawals) finishes well under a minute."""
    started = time.monotonic()
    result = run_cli(["demo"], timeout=60)
    assert result.code == 0, result.out + result.err
    assert time.monotonic() - started < 40
    assert result.out.count("yes (") == 20
