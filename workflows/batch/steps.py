"""The batch's steps: dispatch its children durably in chunks, follow them through the store, settle;
on cancel, flag every child still open (the withdrawal's own cancel path does the rest).

Dispatch is resumable and never creates a child twice: each child's idempotency key derives from the
batch and the item's position (:func:`~workflows.batch.machine.child_key`), so a step resumed after a
crash asks for the children it may already have created and gets them back. The progress counter
(``data.dispatched``) only saves work; correctness rests on the keys.

Following reads the children's states from the store (one grouped count per look), never the exchange:
the children poll the exchange themselves, batched by the gateway.

A batch whose per-currency total is above ``[batches] approval_above`` waits in ``awaiting_approval``
before it dispatches anything (four eyes; :func:`engine.policy.batch_over_approval` decides). Its approval
is recorded in its data (``approved``): each child of an approved batch finds it there and is not held
again by its own ``approval_above``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from engine.backoff import backoff_delay
from engine.kinds import Step
from engine.models import Workflow
from engine.policy import batch_over_approval
from engine.port import StepPort
from workflows.batch.intake import BatchRequest
from workflows.batch.machine import BatchAbortReason, BatchResolution, BatchState, Progress, child_key, next_trigger
from workflows.withdrawal_model import State

__all__ = ["CHUNK", "STEPS", "expire", "past_deadline", "progress_of"]

B = BatchState
#: Children created (or flagged for cancel) per step: grouped store transactions, well inside a lease
#: (fewer, larger steps: each step reads and writes the batch's row, up to 10,000 items).
CHUNK = 500
FOLLOW_INITIAL, FOLLOW_MAX = 0.25, 5.0
#: The triggers that end a batch (into a terminal state).
_ENDINGS = frozenset({"settle", "cancelled"})
T = TypeVar("T")


async def _all(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Run the store calls together (the store groups them into one transaction); the first failure is
    raised as itself (the runner knows ``StoreUnavailable`` and ``StaleVersion``), after all finished."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def _request(wf: Workflow) -> BatchRequest:
    request = wf.request
    assert isinstance(request, BatchRequest)
    return request


async def progress_of(ctx: StepPort, wf: Workflow) -> Progress:
    """The batch's children by the store: how many exist, are terminal, wait for an operator (settled by
    their kind's rule but not terminal: a withdrawal in review that no operator has decided yet)."""
    counts = await ctx.children(wf)
    terminal = sum(n for state, n in counts.by_state.items() if State(state).is_terminal)
    return Progress(total=counts.total, terminal=terminal, awaiting=counts.settled - terminal)


async def step_accepted(wf: Workflow, ctx: StepPort) -> Workflow:
    """Start dispatching (or go straight to cancelling: nothing was created yet); a batch above its approval
    threshold first waits for an approver."""
    if wf.cancel_requested:
        return await _cancel(wf, ctx)
    over = batch_over_approval(_request(wf).totals(), ctx.policy.batch_approval_above)
    if over and "approved" not in wf.data:
        return await _await_approval(wf, ctx, over)
    return await ctx.transition(
        wf, "dispatch", event_data={"items": len(_request(wf).items)}, next_run_at=ctx.now(),
        data={**wf.data, "dispatched": 0},
    )  # fmt: skip


async def _await_approval(wf: Workflow, ctx: StepPort, over: dict[str, tuple[Decimal, Decimal]]) -> Workflow:
    """``awaiting_approval`` until an approver decides or the approval expires (its deadline)."""
    now = ctx.now()
    expires = now + timedelta(seconds=ctx.policy.approval_expires_after)
    over_view = {
        cur: {"total": format(total, "f"), "threshold": format(limit, "f")} for cur, (total, limit) in over.items()
    }
    request = {"at": now.isoformat(), "expires_at": expires.isoformat(), "over": over_view}
    return await ctx.transition(
        wf, "await_approval", event_data=request, deadline_at=expires, next_run_at=expires, attempt=0,
        data={**wf.data, "approval_request": request},
    )  # fmt: skip


async def step_awaiting_approval(wf: Workflow, ctx: StepPort) -> Workflow:
    """Carry out the approver's decision (a cancel first: nothing was created); past the expiry with no
    decision, abort; else sleep until the expiry."""
    if wf.cancel_requested:
        return await _cancel(wf, ctx)
    decided = {"operator": wf.resolution_by, "note": wf.resolution_note}
    if wf.resolution == BatchResolution.APPROVE:
        approval = {"by": decided["operator"], "note": decided["note"], "at": ctx.now().isoformat()}
        return await ctx.transition(
            wf, "approve", event_data=decided, resolution=None, next_run_at=ctx.now(), attempt=0,
            data={**wf.data, "approved": approval, "dispatched": 0},
        )  # fmt: skip
    if wf.resolution == BatchResolution.REJECT:
        reason = BatchAbortReason.APPROVAL_REJECTED.value
        return await ctx.transition(wf, "reject", event_data=decided, reason=reason, resolution=None)
    if wf.deadline_at is None or ctx.now() >= wf.deadline_at:
        return await expire(wf, ctx)
    return await ctx.reschedule(wf, (wf.deadline_at - ctx.now()).total_seconds())


def past_deadline(wf: Workflow, now: datetime) -> bool:
    """A batch awaiting approval past its expiry with no decision recorded (the runner ends it first)."""
    return (
        wf.state == B.AWAITING_APPROVAL and wf.resolution is None and wf.deadline_at is not None
        and now >= wf.deadline_at
    )  # fmt: skip


async def expire(wf: Workflow, ctx: StepPort) -> Workflow:
    """No approver decided in time: ``aborted`` (approval_expired), no child created."""
    return await ctx.transition(
        wf, "expire_approval",
        event_data={"detail": "no approver decided before the approval expired",
                    "expires_at": wf.data.get("approval_request", {}).get("expires_at")},
        reason=BatchAbortReason.APPROVAL_EXPIRED.value,
    )  # fmt: skip


async def step_dispatching(wf: Workflow, ctx: StepPort) -> Workflow:
    """Create the next chunk of children (each under its derived key), then record the progress; when
    every item has its child, move to ``running`` with the count in the event."""
    if wf.cancel_requested:
        return await _cancel(wf, ctx)
    items = _request(wf).items
    start = int(wf.data.get("dispatched", 0))
    chunk = items[start : start + CHUNK]
    await _all([ctx.create(item.request, idempotency_key=child_key(wf.id, item.index), parent=wf) for item in chunk])
    done = start + len(chunk)
    data = {**wf.data, "dispatched": done}
    if done < len(items):
        return await ctx.reschedule(wf, 0.0, data=data)
    return await ctx.transition(wf, "dispatched", event_data={"children": done}, data=data, next_run_at=ctx.now())


async def step_following(wf: Workflow, ctx: StepPort) -> Workflow:
    """running / needs_attention / cancelling: flag children for cancel while some are left to flag,
    else read the children's counts and move when they say so (settle, attention, resume, cancelled)."""
    if wf.state == B.CANCELLING and wf.data.get("cancel_cursor") is not None:
        return await _flag_children(wf, ctx)
    progress = await progress_of(ctx, wf)
    expected = len(_request(wf).items)
    trigger = next_trigger(wf.state, progress, expected=expected, cancel_requested=wf.cancel_requested)
    if trigger == "cancel":
        return await _cancel(wf, ctx)
    if trigger is not None:
        ending = trigger in _ENDINGS  # a settled or cancelled batch is never due again
        return await ctx.transition(
            wf, trigger,
            event_data={"children": progress.total, "open": progress.open, "awaiting": progress.awaiting},
            next_run_at=None if ending else ctx.now(), attempt=0,
        )  # fmt: skip
    return await _look_later(wf, ctx, progress)


async def _look_later(wf: Workflow, ctx: StepPort, progress: Progress) -> Workflow:
    """Sleep until the next look: soon after a change, backing off while nothing moves."""
    seen = wf.data.get("seen")
    now_seen = [progress.total, progress.terminal, progress.awaiting]
    attempt = 0 if seen != now_seen else wf.attempt + 1
    delay = backoff_delay(attempt, initial=FOLLOW_INITIAL, maximum=FOLLOW_MAX)
    return await ctx.reschedule(wf, delay, attempt=attempt, data={**wf.data, "seen": now_seen})


async def _cancel(wf: Workflow, ctx: StepPort) -> Workflow:
    """``cancelling``: no more children are created; the ones created are flagged next (from the start)."""
    dispatched = int(wf.data.get("dispatched", 0)) if wf.state != B.ACCEPTED else 0
    return await ctx.transition(
        wf, "cancel",
        event_data={"dispatched": dispatched, "operator": wf.cancel_by or True, "note": wf.cancel_note},
        next_run_at=ctx.now(),
        data={**wf.data, "cancel_cursor": ""},
    )  # fmt: skip


async def _flag_children(wf: Workflow, ctx: StepPort) -> Workflow:
    """Flag the next page of children for cancel, through the store's cancel request (the same path an
    operator's cancel of one withdrawal takes): a child not yet submitted then cancels itself, one at the
    exchange asks the exchange to cancel it. Terminal children are left alone."""
    cursor = str(wf.data["cancel_cursor"])
    page = await ctx.list_children(wf, after_id=cursor or None, limit=CHUNK)
    open_children = [c for c in page if not ctx.kind(c).is_terminal(c.state) and not c.cancel_requested]
    await _all([ctx.cancel_child(wf, child) for child in open_children])
    flagged = int(wf.data.get("cancel_flagged", 0)) + len(open_children)
    data: dict[str, Any] = {**wf.data, "cancel_flagged": flagged}
    if len(page) < CHUNK:
        data["cancel_cursor"] = None
        return await ctx.note(wf, "children_flagged", changes={"data": data, "next_run_at": ctx.now()}, flagged=flagged)
    data["cancel_cursor"] = page[-1].id
    return await ctx.reschedule(wf, 0.0, data=data)


STEPS: dict[str, Step] = {
    B.ACCEPTED: step_accepted,
    B.AWAITING_APPROVAL: step_awaiting_approval,
    B.DISPATCHING: step_dispatching,
    B.RUNNING: step_following,
    B.NEEDS_ATTENTION: step_following,
    B.CANCELLING: step_following,
}
