"""The settlement report of a batch: per item the reference, outcome, exchange uuid, txid, fee and reason;
totals by state and by currency (exact ``Decimal`` sums). Pure: built from the batch and its children as
read from the store, rendered as JSON-ready data or as CSV.

The fee: a withdrawal's record keeps no fee today (the exchange's answer carries one, the workflow does
not store it), so ``fee`` is empty and the report says so in ``notes``; a child that records
``data["fee"]`` has it shown.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from workflows.batch.intake import BatchRequest

__all__ = ["NOT_CREATED", "REPORT_COLUMNS", "ChildOutcome", "build_report", "render_csv"]

#: The outcome of an item whose child was never created (the batch was cancelled during dispatch).
NOT_CREATED = "not_created"
REPORT_COLUMNS = (
    "index", "reference", "outcome", "currency", "net_type", "amount", "account", "exchange_uuid", "txid", "fee",
    "reason", "workflow_id",
)  # fmt: skip
_FEE_NOTE = "fee: the withdrawal record does not keep the exchange's fee; empty unless a child recorded one"


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildOutcome:
    """What the report needs of one child withdrawal."""

    workflow_id: str
    state: str
    exchange_uuid: str | None = None
    txid: str | None = None
    reason: str | None = None
    fee: Decimal | None = None


def _amount(value: Decimal) -> str:
    return format(value, "f")


def _item_row(item: Any, child: ChildOutcome | None) -> dict[str, Any]:
    req = item.request
    return {
        "index": item.index,
        "reference": item.reference,
        "outcome": child.state if child else NOT_CREATED,
        "currency": req.currency,
        "net_type": req.net_type,
        "amount": _amount(req.amount),
        "account": req.account,
        "exchange_uuid": child.exchange_uuid if child else None,
        "txid": child.txid if child else None,
        "fee": _amount(child.fee) if child and child.fee is not None else None,
        "reason": child.reason if child else None,
        "workflow_id": child.workflow_id if child else None,
    }


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_state: dict[str, int] = {}
    by_currency: dict[str, dict[str, Any]] = {}
    for row in rows:
        outcome, amount = row["outcome"], Decimal(row["amount"])
        by_state[outcome] = by_state.get(outcome, 0) + 1
        cur = by_currency.setdefault(row["currency"], {"count": 0, "amount": Decimal(0), "by_state": {}})
        cur["count"] += 1
        cur["amount"] += amount
        cur["by_state"][outcome] = cur["by_state"].get(outcome, Decimal(0)) + amount
    currencies = {
        name: {
            "count": t["count"],
            "amount": _amount(t["amount"]),
            "by_state": {s: _amount(v) for s, v in sorted(t["by_state"].items())},
        }
        for name, t in sorted(by_currency.items())
    }
    return {"items": len(rows), "by_state": dict(sorted(by_state.items())), "by_currency": currencies}


def build_report(
    batch_id: str, state: str, request: BatchRequest, children: Mapping[int, ChildOutcome]
) -> dict[str, Any]:
    """The report (JSON-ready; amounts as exact strings). ``children``: item index -> its child."""
    rows = [_item_row(item, children.get(item.index)) for item in request.items]
    notes = [] if any(r["fee"] is not None for r in rows) else [_FEE_NOTE]
    return {
        "batch_id": batch_id,
        "state": str(state),
        "items": rows,
        "skipped": [e.to_dict() for e in request.skipped],
        "totals": _totals(rows),
        "notes": notes,
    }


def render_csv(report: Mapping[str, Any]) -> str:
    """One line per item (``REPORT_COLUMNS``; empty cell = none). Totals are in the JSON report."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=REPORT_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in report["items"]:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()
