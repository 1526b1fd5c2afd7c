"""The views of workflows, pages and events: the one place that shapes what the HTTP API answers and what the
CLI prints (``--json`` and tables alike), so the two can never drift apart.

The JSON views are plain dicts of JSON values (amounts as strings, times as ISO 8601 with offset); the
``*_rows`` functions turn those same views into the label/value rows of the CLI's tables. A view holds no
key, token or JWT: a workflow carries none, and events never record one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from engine.kinds import KindRegistry, default_kinds
from engine.models import Event, Workflow
from engine.query import Page

__all__ = [
    "EVENT_COLUMNS",
    "PAGE_COLUMNS",
    "describe_approval",
    "describe_cause",
    "event_rows",
    "event_view",
    "events_view",
    "page_rows",
    "page_view",
    "settled_states",
    "with_cause",
    "workflow_rows",
    "workflow_view",
]


def settled_states(kind: str = "withdrawal", kinds: KindRegistry | None = None) -> frozenset[str]:
    """States of ``kind`` in which a follower stops waiting: terminal, or waiting for an operator."""
    found = (kinds or default_kinds())[kind]
    return frozenset(str(s) for s in (*found.terminal, *found.awaiting_operator))


PAGE_COLUMNS = ("id", "state", "withdrawal", "reference", "reason", "updated")
EVENT_COLUMNS = ("seq", "at", "trigger", "from", "to", "data")
Style = Callable[[str], str]


def _plain(state: str) -> str:
    return state


def workflow_view(wf: Workflow, kinds: KindRegistry | None = None) -> dict[str, Any]:
    """The one JSON view of a workflow (API answers, ``--json`` CLI output): its kind's ``view``."""
    return (kinds or default_kinds())[wf.kind].view(wf)


def page_view(page: Page) -> dict[str, Any]:
    """``{"withdrawals": [...], "next_cursor": id or None, "total": n}``: one page of a list."""
    return {
        "withdrawals": [workflow_view(wf) for wf in page.items],
        "next_cursor": page.next_cursor,
        "total": page.total,
    }


def event_view(event: Event) -> dict[str, Any]:
    """One audit event: every hashed field plus its hash (so a reader can verify the chain)."""
    return event.to_dict()


def events_view(workflow_id: str, events: Iterable[Event]) -> dict[str, Any]:
    """``{"workflow_id": ..., "events": [...]}``: a workflow's audit log."""
    return {"workflow_id": workflow_id, "events": [event_view(e) for e in events]}


def with_cause(view: dict[str, Any], events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The view plus ``reason_detail``: the data of the event that set the workflow's reason (an abort's
    detail, the exchange's refusal, an escalation's evidence), which the workflow row does not keep."""
    if not view.get("reason"):
        return view
    for event in reversed(events):
        if event["to"] == view["state"] and event["data"]:
            return {**view, "reason_detail": event["data"]}
    return view


def describe_cause(data: dict[str, Any] | None) -> str | None:
    """The abort's ``detail`` sentence as is; any other evidence (an exchange refusal, an escalation's
    listings) as JSON, in full."""
    rest = {k: v for k, v in (data or {}).items() if k != "reason"}  # the reason has its own row
    if not rest:
        return None
    if set(rest) == {"detail"}:
        return str(rest["detail"])
    return json.dumps(rest, ensure_ascii=False, default=str)


def describe_approval(view: dict[str, Any]) -> str | None:
    """One line for a view's four-eyes ``approval``: who approved it and why, or that it was asked for and
    until when (the state says whether it still waits, or ended rejected, expired or cancelled)."""
    approval = view.get("approval")
    if not approval:
        return None
    if approval.get("batch_id"):
        return f"approved with batch {approval['batch_id']} by {approval.get('approved_by')}: {approval.get('note')}"
    if approval.get("approved_at"):
        return f"approved by {approval.get('approved_by')} at {approval['approved_at']}: {approval.get('note')}"
    return f"asked (above {approval.get('threshold')}), open until {approval.get('expires_at')}; not approved"


def workflow_rows(view: dict[str, Any], style: Style = _plain) -> list[tuple[str, str]]:
    """The label/value rows of one workflow's table (empty values left out)."""
    req = view["request"]
    metadata = view.get("metadata")
    rows = [
        ("id", view["id"]),
        ("state", style(view["state"])),
        ("withdrawal", f"{req['amount']} {req['currency']} on {req['net_type']} ({req['transaction_type']})"),
        ("to", req["address"] + (f"  tag/memo {req['secondary_address']}" if req["secondary_address"] else "")),
        ("account", req["account"]),
        ("reference", view.get("reference")),
        ("metadata", json.dumps(metadata, ensure_ascii=False) if metadata else None),
        ("reason", view["reason"]),
        ("reason detail", describe_cause(view.get("reason_detail"))),
        ("exchange uuid", view["exchange_uuid"]),
        ("exchange state", view["exchange_state"]),
        ("txid", view["txid"]),
        ("submits", str(view["submit_count"])),
        ("cancel requested", "yes" if view["cancel_requested"] else None),
        ("resolution", view["resolution"]),
        ("approval", describe_approval(view)),
        ("error", json.dumps(view["error"]) if view["error"] else None),
        ("created", view["created_at"]),
        ("updated", view["updated_at"]),
    ]
    return [(name, value) for name, value in rows if value]


def page_rows(page: dict[str, Any], style: Style = _plain) -> list[tuple[str, ...]]:
    """The rows of a page's table, in :data:`PAGE_COLUMNS` order."""
    rows: list[tuple[str, ...]] = []
    for view in page["withdrawals"]:
        req = view["request"]
        rows.append((
            view["id"], style(view["state"]), f"{req['amount']} {req['currency']}/{req['net_type']}",
            view.get("reference") or "", view["reason"] or "", view["updated_at"],
        ))  # fmt: skip
    return rows


def event_rows(events: Sequence[dict[str, Any]], style: Style = _plain) -> list[tuple[str, ...]]:
    """The rows of an audit log's table, in :data:`EVENT_COLUMNS` order (data in full, spaced JSON)."""
    return [_event_row(e, style) for e in events]


def _event_row(e: dict[str, Any], style: Style) -> tuple[str, ...]:
    data = json.dumps(e["data"], ensure_ascii=False, default=str)  # spaced: wraps between tokens
    return str(e["seq"]), e["at"], e["trigger"], e["from"] or "", style(e["to"]), data
