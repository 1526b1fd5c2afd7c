"""The engine's generic records: the persisted workflow (of any kind) and its audit events.

Both are frozen, slotted, keyword-only dataclasses. They change by :func:`dataclasses.replace`, and are
converted to and from store rows at the store's edge. A workflow's state and request are its kind's own
(:mod:`engine.kinds`); the withdrawal's vocabulary (``State``, ``AbortReason``, ``WithdrawalRequest`` ...)
lives in :mod:`workflows.withdrawal_model` and is still importable from here by its old names.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

__all__ = ["Event", "Workflow", "new_workflow_id"]

#: Names that moved to ``workflows.withdrawal_model``: resolved on first use (PEP 562), so code written
#: against ``engine.models`` keeps working without the engine importing a workflow at load time.
_MOVED = frozenset({
    "EXCHANGE_NAME_PATTERN", "MAX_ADDRESS_LEN", "MAX_AMOUNT", "MAX_DECIMALS", "MAX_SECONDARY_LEN", "NON_TERMINAL",
    "TERMINAL", "AbortReason", "State", "TransactionType", "WithdrawalRequest",
})  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module("workflows.withdrawal_model"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def new_workflow_id(prefix: str = "wd") -> str:
    """A sortable unique id: the kind's prefix, creation microseconds in hex, then 40 random bits."""
    return f"{prefix}_{time.time_ns() // 1000:014x}{secrets.token_hex(5)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Workflow:
    """One workflow's persisted state, of any kind. ``version`` is the compare-and-set token of the store.

    To the engine ``state`` is a string and ``request`` an opaque value: the workflow's kind
    (:class:`engine.kinds.WorkflowKind`) parses both from the store (its state values are its own
    ``StrEnum`` members) and says what they mean. ``parent_id`` names the workflow that created this one
    (a batch's child), if any."""

    id: str
    state: str
    request: Any
    created_at: datetime
    updated_at: datetime
    version: int = 0
    kind: str = "withdrawal"
    idempotency_key: str | None = None
    lane_held: bool = False
    exchange_uuid: str | None = None
    txid: str | None = None
    exchange_state: str | None = None
    attempt: int = 0
    submit_count: int = 0
    next_run_at: datetime | None = None
    deadline_at: datetime | None = None
    submit_body: str | None = None
    submitted_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    resolution: str | None = None
    reason: str | None = None
    error: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    event_seq: int = 0
    last_hash: str = ""
    #: The caller's own id for this payout (unique per account) and free metadata, never interpreted
    #: (engine/references.py has the rules). Stored in columns of their own, fixed at creation.
    reference: str | None = None
    metadata: dict[str, Any] | None = None
    parent_id: str | None = None
    #: Attribution (migration 7): the operator who submitted it (fixed at creation; the first event says
    #: so too), and who asked for the pending cancel or resolution with their note. The flags' pairs are
    #: written with the flags by the store's requests, never by a step; the event of the transition that
    #: acts on a flag records them (``operator``, ``note``).
    created_by: str | None = None
    cancel_by: str | None = None
    cancel_note: str | None = None
    resolution_by: str | None = None
    resolution_note: str | None = None

    @property
    def cancel_requested(self) -> bool:
        """An operator asked to cancel (the owner acts on it at its next step)."""
        return self.cancel_requested_at is not None

    @property
    def lane(self) -> str | None:
        """The request's lane, for a kind whose requests have one (a withdrawal's); else None."""
        lane = getattr(self.request, "lane", None)
        return lane if isinstance(lane, str) else None

    def __repr__(self) -> str:
        brief = getattr(self.request, "brief", None)
        what = f" {brief}" if isinstance(brief, str) else f" {self.kind}"
        return f"<Workflow {self.id} {self.state}{what} v{self.version}>"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One line of a workflow's append-only audit log; ``hash`` chains it to the previous one."""

    workflow_id: str
    seq: int
    at: datetime
    trigger: str
    from_state: str | None
    to_state: str
    data: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""

    def _fields(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id,
            "seq": self.seq,
            "at": self.at.isoformat(),
            "trigger": self.trigger,
            "from": self.from_state,
            "to": self.to_state,
            "data": self.data,
        }

    def canonical(self) -> bytes:
        """The bytes the hash covers: every field but the hash itself, as canonical JSON."""
        body = {**self._fields(), "prev": self.prev_hash}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()

    def sealed(self, prev_hash: str) -> Event:
        """This event linked to ``prev_hash``, with its own hash computed."""
        linked = replace(self, prev_hash=prev_hash, hash="")
        return replace(linked, hash=hashlib.sha256(linked.canonical()).hexdigest())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {**self._fields(), "hash": self.hash}
