"""``upbit-withdraw batch ...`` as subprocesses, on the store (``--config``) and on the service (``--api``),
against a sandbox and a ``run`` service (the module's ``stack``)."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest

from tests.acceptance.conftest import BTC_ADDRESS, Stack

MODES = ["store", "api"]
HEADER = "reference,currency,net_type,amount,address\n"


def payouts(tmp_path: Path, rows: list[str], name: str = "payouts.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + "".join(f"{row}\n" for row in rows))
    return path


def until_done(stack: Stack, batch_id: str, timeout: float = 60.0) -> dict[str, object]:
    """Poll ``batch status --json`` until the batch is settled or cancelled."""
    deadline = time.monotonic() + timeout
    while True:
        view = stack.cli("store", "--json", "batch", "status", batch_id).json()
        if view["state"] in ("settled", "cancelled") or time.monotonic() > deadline:
            return dict(view)
        time.sleep(0.2)


@pytest.mark.parametrize("mode", MODES)
class TestBatchCommands:
    def test_submit_status_report(self, stack: Stack, mode: str, tmp_path: Path) -> None:
        """A CSV file becomes a batch; it settles; the report prints as CSV, JSON, or a table."""
        base = "0.061" if mode == "store" else "0.062"
        path = payouts(tmp_path, [f"{mode}-a,BTC,BTC,{base}1,{BTC_ADDRESS}", f"{mode}-b,BTC,BTC,{base}2,{BTC_ADDRESS}"])
        submitted = stack.cli(mode, "--json", "batch", "submit", str(path), "--idempotency-key", f"cli-{mode}")
        assert submitted.code == 0, submitted.err
        view = submitted.json()
        assert view["items"] == 2 and "submitted" in submitted.err
        again = stack.cli(mode, "--json", "batch", "submit", str(path), "--idempotency-key", f"cli-{mode}")
        assert again.code == 0 and again.json()["id"] == view["id"] and "already" in again.err
        assert until_done(stack, view["id"])["state"] == "settled"
        as_csv = stack.cli(mode, "batch", "report", view["id"], "--csv")
        assert as_csv.code == 0, as_csv.err
        rows = list(csv.DictReader(io.StringIO(as_csv.out)))
        assert [(r["reference"], r["outcome"]) for r in rows] == [(f"{mode}-a", "DONE"), (f"{mode}-b", "DONE")]
        as_json = stack.cli(mode, "--json", "batch", "report", view["id"]).json()
        assert as_json["totals"]["by_state"] == {"DONE": 2}
        table = stack.cli(mode, "batch", "report", view["id"])
        assert table.code == 0 and f"{mode}-a" in table.out and "totals" in table.out

    def test_invalid_file_is_refused_whole(self, stack: Stack, mode: str, tmp_path: Path) -> None:
        """A bad item refuses the batch (exit 2, nothing stored); --skip-invalid takes the rest."""
        path = payouts(tmp_path, [f"ok,BTC,BTC,0.0631,{BTC_ADDRESS}", "bad,BTC,BTC,-1,x"])
        refused = stack.cli(mode, "batch", "submit", str(path))
        assert refused.code == 2
        assert "invalid" in refused.err and refused.err.strip().splitlines()[-1].startswith("upbit-withdraw: error")
        assert "bad" in refused.err and "amount" in refused.err  # every bad item and field, on stderr
        skipped = stack.cli(mode, "--json", "batch", "submit", str(path), "--skip-invalid")
        assert skipped.code == 0, skipped.err
        assert [e["reference"] for e in skipped.json()["skipped"]] == ["bad"]

    def test_cancel_and_unknown(self, stack: Stack, mode: str, tmp_path: Path) -> None:
        """cancel flags the batch; an unknown batch exits 3."""
        path = tmp_path / "payouts.json"
        amount = "0.0641" if mode == "store" else "0.0642"
        path.write_text(json.dumps({"items": [{"reference": "c", "currency": "BTC", "net_type": "BTC",
                                               "amount": amount, "address": BTC_ADDRESS}]}))  # fmt: skip
        view = stack.cli(mode, "--json", "batch", "submit", str(path)).json()
        cancelled = stack.cli(mode, "--json", "batch", "cancel", view["id"])
        assert cancelled.code in (0, 4), cancelled.err  # 4: it had already settled
        assert until_done(stack, view["id"])["state"] in ("cancelled", "settled")
        assert stack.cli(mode, "batch", "status", "bt_0123abcd").code == 3


def test_refusal_as_json(stack: Stack, tmp_path: Path) -> None:
    """With --json a refused batch prints every bad item as JSON on stdout."""
    path = payouts(tmp_path, ["a,BTC,BTC,x,y", "a,BTC,BTC,1,y"])
    result = stack.cli("store", "--json", "batch", "submit", str(path))
    assert result.code == 2
    items = result.json()["error"]["items"]
    assert {(e["index"], e["field"]) for e in items} == {(0, "amount"), (1, "reference")}


def test_unknown_format(stack: Stack, tmp_path: Path) -> None:
    """A file that is neither .csv nor .json needs --format."""
    path = tmp_path / "payouts.txt"
    path.write_text(HEADER)
    assert stack.cli("store", "batch", "submit", str(path)).code == 2
