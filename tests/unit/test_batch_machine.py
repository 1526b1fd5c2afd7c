"""workflows.batch.machine: the batch's transition table and the pure decision of its next move."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.errors import GuardRejected, InvalidTransition
from engine.models import Workflow
from workflows.batch.machine import MACHINE, BatchState, Progress, child_key, next_trigger

B = BatchState
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _wf(state: BatchState) -> Workflow:
    return Workflow(id="bt_1", kind="batch", state=state, request=None, created_at=T0, updated_at=T0)


@pytest.mark.parametrize(
    ("state", "trigger", "dest"),
    [
        (B.ACCEPTED, "dispatch", B.DISPATCHING),
        (B.DISPATCHING, "dispatched", B.RUNNING),
        (B.RUNNING, "attention", B.NEEDS_ATTENTION),
        (B.NEEDS_ATTENTION, "resume", B.RUNNING),
        (B.DISPATCHING, "cancel", B.CANCELLING),
        (B.NEEDS_ATTENTION, "cancel", B.CANCELLING),
    ],
)
def test_transitions(state: BatchState, trigger: str, dest: BatchState) -> None:
    """The table's unguarded paths."""
    assert MACHINE.fire(_wf(state), trigger) == dest


def test_settle_needs_evidence() -> None:
    """Settling (or ending a cancel) needs the read count of open children to be zero."""
    assert MACHINE.fire(_wf(B.RUNNING), "settle", open=0) == B.SETTLED
    assert MACHINE.fire(_wf(B.CANCELLING), "cancelled", open=0) == B.CANCELLED
    with pytest.raises(GuardRejected):
        MACHINE.fire(_wf(B.RUNNING), "settle", open=3)
    with pytest.raises(GuardRejected):
        MACHINE.fire(_wf(B.CANCELLING), "cancelled")


@pytest.mark.parametrize(("state", "trigger"), [(B.SETTLED, "cancel"), (B.CANCELLED, "note"), (B.ACCEPTED, "settle")])
def test_refused(state: BatchState, trigger: str) -> None:
    """Terminal batches do not move; a batch does not settle before it ran."""
    with pytest.raises(InvalidTransition):
        MACHINE.fire(_wf(state), trigger, open=0)


@pytest.mark.parametrize(
    ("state", "progress", "cancel", "expected"),
    [
        (B.RUNNING, Progress(10, 10, 0), False, "settle"),
        (B.RUNNING, Progress(9, 9, 0), False, None),  # not every child exists yet
        (B.RUNNING, Progress(10, 8, 1), False, "attention"),
        (B.RUNNING, Progress(10, 8, 0), False, None),
        (B.NEEDS_ATTENTION, Progress(10, 9, 1), False, None),
        (B.NEEDS_ATTENTION, Progress(10, 9, 0), False, "resume"),
        (B.NEEDS_ATTENTION, Progress(10, 10, 0), False, "settle"),
        (B.RUNNING, Progress(10, 8, 0), True, "cancel"),
        (B.DISPATCHING, Progress(3, 0, 0), True, "cancel"),
        (B.CANCELLING, Progress(3, 2, 0), True, None),
        (B.CANCELLING, Progress(3, 3, 0), True, "cancelled"),
        (B.SETTLED, Progress(10, 10, 0), True, None),
        (B.DISPATCHING, Progress(3, 3, 0), False, None),
    ],
)
def test_next_trigger(state: BatchState, progress: Progress, cancel: bool, expected: str | None) -> None:
    """The next move from the children's counts (expected: 10 children)."""
    assert next_trigger(state, progress, expected=10, cancel_requested=cancel) == expected


def test_child_key_derives_from_batch_and_position() -> None:
    """Same batch and index, same key; anything else, another."""
    assert child_key("bt_1", 7) == "batch:bt_1:7" != child_key("bt_1", 8) != child_key("bt_2", 7)
