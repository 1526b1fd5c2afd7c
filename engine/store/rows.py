"""Conversion between records and store rows, shared by every Store implementation.

Timestamps are ISO-8601 text in UTC, except the two scheduling columns (``next_run_at`` and the lease
expiry) which are epoch seconds so that "what is due" is a cheap indexed numeric comparison. JSON
columns hold the request, the step data and the last error. Amounts stay exact decimal strings.

A row is any kind's: the workflow's kind (from the registry a store is given) dumps and parses its
request and its state, and fills the generic indexed columns (account, currency, amount, lane; neutral
for a kind that has none).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from engine.kinds import KindRegistry
from engine.models import Event, Workflow

__all__ = [
    "ATTRIBUTION_COLUMNS",
    "CREATION_COLUMNS",
    "EVENT_COLUMNS",
    "WORKFLOW_COLUMNS",
    "epoch",
    "event_from_row",
    "event_to_row",
    "from_epoch",
    "workflow_from_row",
    "workflow_to_row",
]

WORKFLOW_COLUMNS = (
    "id", "kind", "state", "request", "account", "currency", "amount", "lane", "lane_held",
    "idempotency_key", "exchange_uuid", "txid", "exchange_state", "attempt", "submit_count",
    "next_run_at", "deadline_at", "submit_body", "submitted_at", "cancel_requested_at", "resolution",
    "reason", "error", "data", "version", "event_seq", "last_hash", "created_at", "updated_at", "parent_id",
    "net_type", "reference", "metadata", "created_by", "cancel_by", "cancel_note", "resolution_by",
    "resolution_note",
)  # fmt: skip
#: Columns fixed at creation (migrations 4 and 7): the request's network (a filter), the caller's reference
#: and metadata, the operator who submitted it. No commit rewrites them.
CREATION_COLUMNS = ("net_type", "reference", "metadata", "created_by")
#: Who asked for a cancel or a resolution, and their note (migration 7): set with the flag they go with
#: (``request_cancel``, ``request_resolution``), never by a commit; a resolution's pair is cleared with it.
ATTRIBUTION_COLUMNS = ("cancel_by", "cancel_note", "resolution_by", "resolution_note")
EVENT_COLUMNS = ("workflow_id", "seq", "at", "trigger", "from_state", "to_state", "data", "prev_hash", "hash")


def epoch(value: datetime | None) -> float | None:
    """Epoch seconds of an aware datetime (None stays None)."""
    return None if value is None else value.timestamp()


def from_epoch(value: float | None) -> datetime | None:
    """An aware UTC datetime from epoch seconds."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _from_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def workflow_to_row(wf: Workflow, kinds: KindRegistry) -> tuple[Any, ...]:
    """Values in ``WORKFLOW_COLUMNS`` order."""
    kind = kinds[wf.kind]
    req = wf.request
    index = kind.index(req)
    return (
        wf.id, wf.kind, str(wf.state), _dumps(kind.dump_request(req)), index.account, index.currency,
        index.amount, index.lane, int(wf.lane_held), wf.idempotency_key, wf.exchange_uuid,
        wf.txid, wf.exchange_state, wf.attempt, wf.submit_count, epoch(wf.next_run_at),
        _iso(wf.deadline_at), wf.submit_body, _iso(wf.submitted_at), _iso(wf.cancel_requested_at),
        wf.resolution, wf.reason, None if wf.error is None else _dumps(wf.error), _dumps(wf.data),
        wf.version, wf.event_seq, wf.last_hash, _iso(wf.created_at), _iso(wf.updated_at), wf.parent_id,
        index.net_type, wf.reference, None if wf.metadata is None else _dumps(wf.metadata), wf.created_by,
        wf.cancel_by, wf.cancel_note, wf.resolution_by, wf.resolution_note,
    )  # fmt: skip


def workflow_from_row(row: Any, kinds: KindRegistry) -> Workflow:
    """A Workflow from a mapping-like row with ``WORKFLOW_COLUMNS`` keys."""
    kind = kinds[row["kind"]]
    error = row["error"]
    metadata = row["metadata"]
    created = _from_iso(row["created_at"])
    updated = _from_iso(row["updated_at"])
    assert created is not None and updated is not None
    return Workflow(
        id=row["id"],
        kind=row["kind"],
        state=kind.parse_state(row["state"]),
        request=kind.parse_request(json.loads(row["request"])),
        lane_held=bool(row["lane_held"]),
        idempotency_key=row["idempotency_key"],
        exchange_uuid=row["exchange_uuid"],
        txid=row["txid"],
        exchange_state=row["exchange_state"],
        attempt=row["attempt"],
        submit_count=row["submit_count"],
        next_run_at=from_epoch(row["next_run_at"]),
        deadline_at=_from_iso(row["deadline_at"]),
        submit_body=row["submit_body"],
        submitted_at=_from_iso(row["submitted_at"]),
        cancel_requested_at=_from_iso(row["cancel_requested_at"]),
        resolution=row["resolution"],
        reason=row["reason"],
        error=None if error is None else json.loads(error),
        data=json.loads(row["data"]),
        version=row["version"],
        event_seq=row["event_seq"],
        last_hash=row["last_hash"],
        created_at=created,
        updated_at=updated,
        parent_id=row["parent_id"],
        reference=row["reference"],
        metadata=None if metadata is None else json.loads(metadata),
        created_by=row["created_by"],
        cancel_by=row["cancel_by"],
        cancel_note=row["cancel_note"],
        resolution_by=row["resolution_by"],
        resolution_note=row["resolution_note"],
    )


def event_to_row(event: Event) -> tuple[Any, ...]:
    """Values in ``EVENT_COLUMNS`` order."""
    return (
        event.workflow_id, event.seq, _iso(event.at), event.trigger, event.from_state, event.to_state,
        _dumps(event.data), event.prev_hash, event.hash,
    )  # fmt: skip


def event_from_row(row: Any) -> Event:
    """An Event from a mapping-like row with ``EVENT_COLUMNS`` keys."""
    at = _from_iso(row["at"])
    assert at is not None
    return Event(
        workflow_id=row["workflow_id"],
        seq=row["seq"],
        at=at,
        trigger=row["trigger"],
        from_state=row["from_state"],
        to_state=row["to_state"],
        data=json.loads(row["data"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )
