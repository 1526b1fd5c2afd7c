"""workflows.batch.report: the settlement report per item, totals by state and currency, JSON and CSV."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

from workflows.batch.intake import build_batch
from workflows.batch.report import NOT_CREATED, REPORT_COLUMNS, ChildOutcome, build_report, render_csv


def _batch() -> object:
    items = [
        {"reference": "alice", "currency": "BTC", "net_type": "BTC", "amount": "0.1", "address": "a1"},
        {"reference": "bob", "currency": "BTC", "net_type": "BTC", "amount": "0.25", "address": "a2"},
        {"reference": "carol", "currency": "XRP", "net_type": "XRP", "amount": "10", "address": "r1"},
        {"reference": "dave", "currency": "XRP", "net_type": "XRP", "amount": "x", "address": "r2"},
        {"reference": "erin", "currency": "XRP", "net_type": "XRP", "amount": "5", "address": "r3"},
    ]
    return build_batch(items, skip_invalid=True)


def test_rows_and_totals() -> None:
    """Each item shows its child's outcome; items never created say so; sums are exact per currency."""
    batch = _batch()
    children = {
        0: ChildOutcome(workflow_id="wd_1", state="DONE", exchange_uuid="u1", txid="t1"),
        1: ChildOutcome(workflow_id="wd_2", state="aborted", reason="insufficient_balance"),
        2: ChildOutcome(workflow_id="wd_3", state="DONE", exchange_uuid="u3", txid="t3", fee=Decimal("0.25")),
    }
    report = build_report("bt_1", "cancelled", batch, children)  # type: ignore[arg-type]
    rows = {r["reference"]: r for r in report["items"]}
    assert rows["alice"]["outcome"] == "DONE" and rows["alice"]["txid"] == "t1" and rows["alice"]["fee"] is None
    assert rows["bob"]["reason"] == "insufficient_balance"
    assert rows["carol"]["fee"] == "0.25"
    assert rows["erin"]["outcome"] == NOT_CREATED and rows["erin"]["workflow_id"] is None
    assert [s["reference"] for s in report["skipped"]] == ["dave"]
    totals = report["totals"]
    assert totals["items"] == 4
    assert totals["by_state"] == {"DONE": 2, "aborted": 1, NOT_CREATED: 1}
    btc = {"count": 2, "amount": "0.35", "by_state": {"DONE": "0.1", "aborted": "0.25"}}
    assert totals["by_currency"]["BTC"] == btc
    assert totals["by_currency"]["XRP"]["by_state"] == {"DONE": "10", NOT_CREATED: "5"}
    assert report["notes"] == []


def test_fee_note_when_no_child_has_one() -> None:
    """With no fee recorded anywhere, the report says why the column is empty."""
    report = build_report("bt_1", "settled", _batch(), {})  # type: ignore[arg-type]
    assert report["notes"] and "fee" in report["notes"][0]


def test_csv() -> None:
    """One line per item with the documented columns; none becomes an empty cell; amounts stay exact."""
    children = {0: ChildOutcome(workflow_id="wd_1", state="DONE", exchange_uuid="u1", txid="t1")}
    text = render_csv(build_report("bt_1", "running", _batch(), children))  # type: ignore[arg-type]
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == REPORT_COLUMNS
    assert [r["reference"] for r in rows] == ["alice", "bob", "carol", "erin"]
    assert rows[0]["txid"] == "t1" and rows[0]["amount"] == "0.1" and rows[1]["txid"] == ""
