"""The batch's states, its transition table (data for :class:`engine.machine.WorkflowMachine`), and the
pure decision of what a batch does next given its children.

Path: accepted -> dispatching -> running -> settled. ``needs_attention``: a child waits for an operator
(``needs_review``, or its own ``awaiting_approval``); the batch goes back to running once no child does.
``cancelling`` -> ``cancelled``: an operator cancelled the batch; it waits there until every child it
created is terminal. ``awaiting_approval``: the batch's total of a currency is above ``[batches]
approval_above``; nothing is dispatched until an approver who is not its submitter approves it (then
``dispatching``); a rejection or the approval's expiry ends it ``aborted`` with no child created.

The guards make the table itself refuse to settle (or end a cancel) while any child is open: the step
passes the count it read in the event's data, so the decision is recorded with its evidence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from engine.machine import TransitionSpec, WorkflowMachine
from engine.models import Workflow

__all__ = [
    "ACTIVE",
    "MACHINE",
    "TABLE",
    "TERMINAL",
    "BatchAbortReason",
    "BatchResolution",
    "BatchState",
    "Progress",
    "child_key",
    "next_trigger",
]


class BatchState(StrEnum):
    """A payout batch's states."""

    ACCEPTED = "accepted"
    AWAITING_APPROVAL = "awaiting_approval"
    DISPATCHING = "dispatching"
    RUNNING = "running"
    NEEDS_ATTENTION = "needs_attention"
    CANCELLING = "cancelling"
    SETTLED = "settled"
    CANCELLED = "cancelled"
    ABORTED = "aborted"


class BatchResolution(StrEnum):
    """An approver's decision for a batch in ``awaiting_approval`` (four eyes: never by its submitter)."""

    APPROVE = "approve"
    REJECT = "reject"


class BatchAbortReason(StrEnum):
    """Why a batch ended ``aborted``: no child was ever created."""

    APPROVAL_REJECTED = "approval_rejected"
    APPROVAL_EXPIRED = "approval_expired"


B = BatchState
TERMINAL = frozenset({B.SETTLED, B.CANCELLED, B.ABORTED})
ACTIVE = tuple(s for s in BatchState if s not in TERMINAL)
_CANCELLABLE = (B.ACCEPTED, B.AWAITING_APPROVAL, B.DISPATCHING, B.RUNNING, B.NEEDS_ATTENTION)


def _none_open(_wf: Workflow, data: Mapping[str, Any]) -> bool:
    """Only with evidence that every child is terminal (``open == 0`` as read from the store)."""
    return data.get("open") == 0


def _approver_said(action: str) -> Callable[[Workflow, Mapping[str, Any]], bool]:
    def guard(wf: Workflow, _: Mapping[str, Any]) -> bool:
        return wf.resolution == action

    guard.__name__ = f"approver_said_{action}"
    return guard


TABLE: tuple[TransitionSpec, ...] = (
    TransitionSpec("dispatch", (B.ACCEPTED,), B.DISPATCHING),
    TransitionSpec("await_approval", (B.ACCEPTED,), B.AWAITING_APPROVAL),
    TransitionSpec("approve", (B.AWAITING_APPROVAL,), B.DISPATCHING, _approver_said(BatchResolution.APPROVE)),
    TransitionSpec("reject", (B.AWAITING_APPROVAL,), B.ABORTED, _approver_said(BatchResolution.REJECT)),
    TransitionSpec("expire_approval", (B.AWAITING_APPROVAL,), B.ABORTED),
    TransitionSpec("dispatched", (B.DISPATCHING,), B.RUNNING),
    TransitionSpec("attention", (B.RUNNING,), B.NEEDS_ATTENTION),
    TransitionSpec("resume", (B.NEEDS_ATTENTION,), B.RUNNING),
    TransitionSpec("settle", (B.RUNNING, B.NEEDS_ATTENTION), B.SETTLED, _none_open),
    TransitionSpec("cancel", _CANCELLABLE, B.CANCELLING),
    TransitionSpec("cancelled", (B.CANCELLING,), B.CANCELLED, _none_open),
    TransitionSpec("note", ACTIVE, None),
)

MACHINE = WorkflowMachine("batch", list(BatchState), TABLE, initial=B.ACCEPTED, terminal=TERMINAL)


def child_key(batch_id: str, index: int) -> str:
    """The idempotency key of the batch's child for item ``index``: derived, so a dispatch resumed after
    a crash asks for the same key and gets the child created the first time, never a second one."""
    return f"batch:{batch_id}:{index}"


@dataclass(frozen=True, slots=True)
class Progress:
    """What the store says about a batch's children: how many exist, how many are terminal, how many
    wait for an operator."""

    total: int
    terminal: int
    awaiting: int

    @property
    def open(self) -> int:
        """Children not terminal yet (an operator's case included)."""
        return self.total - self.terminal


def next_trigger(state: str, progress: Progress, *, expected: int, cancel_requested: bool) -> str | None:
    """What a batch in ``state`` does next, having dispatched ``progress.total`` of ``expected`` children
    (None: nothing now; look again later). Pure: tested as a table."""
    if cancel_requested and state in _CANCELLABLE:
        return "cancel"
    if state == B.CANCELLING:
        return "cancelled" if progress.open == 0 else None
    if state not in (B.RUNNING, B.NEEDS_ATTENTION):
        return None
    if progress.total >= expected and progress.open == 0:
        return "settle"
    attention = {B.RUNNING: "attention" if progress.awaiting else None,
                 B.NEEDS_ATTENTION: None if progress.awaiting else "resume"}  # fmt: skip
    return attention[BatchState(state)]
