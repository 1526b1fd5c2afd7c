"""The batch's states, its transition table (data for :class:`engine.machine.WorkflowMachine`), and the
pure decision of what a batch does next given its children.

Path: accepted -> dispatching -> running -> settled. ``needs_attention``: a child waits for an operator
(``needs_review``); the batch goes back to running once no child does. ``cancelling`` -> ``cancelled``:
an operator cancelled the batch; it waits there until every child it created is terminal.

The guards make the table itself refuse to settle (or end a cancel) while any child is open: the step
passes the count it read in the event's data, so the decision is recorded with its evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    "BatchState",
    "Progress",
    "child_key",
    "next_trigger",
]


class BatchState(StrEnum):
    """A payout batch's states."""

    ACCEPTED = "accepted"
    DISPATCHING = "dispatching"
    RUNNING = "running"
    NEEDS_ATTENTION = "needs_attention"
    CANCELLING = "cancelling"
    SETTLED = "settled"
    CANCELLED = "cancelled"


B = BatchState
TERMINAL = frozenset({B.SETTLED, B.CANCELLED})
ACTIVE = tuple(s for s in BatchState if s not in TERMINAL)
_CANCELLABLE = (B.ACCEPTED, B.DISPATCHING, B.RUNNING, B.NEEDS_ATTENTION)


def _none_open(_wf: Workflow, data: Mapping[str, Any]) -> bool:
    """Only with evidence that every child is terminal (``open == 0`` as read from the store)."""
    return data.get("open") == 0


TABLE: tuple[TransitionSpec, ...] = (
    TransitionSpec("dispatch", (B.ACCEPTED,), B.DISPATCHING),
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
