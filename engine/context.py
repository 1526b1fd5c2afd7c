"""What a step may do: read the exchange (through a gateway), move its workflow, reschedule it.

:meth:`StepContext.transition` is the one path by which a workflow changes state: decide the destination
with the machine (pure), build the new record and its hash-chained event, commit both in one store
transaction (compare-and-set on version and lease), and only then log the same event and tell the
observers. Whatever effect follows (the POST) therefore happens after its intent is durable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from engine.clock import Clock
from engine.machine import WorkflowMachine
from engine.models import Event, State, Workflow
from engine.policy import Policy, WorkflowSettings
from engine.store.base import Store
from engine.upbit.gateway import Gateway

__all__ = ["Step", "StepContext", "TransitionObserver"]

#: Called after every committed transition with (workflow before, workflow after, event).
TransitionObserver = Callable[[Workflow, Workflow, Event], None]

log = structlog.get_logger("engine")

#: A step function: given a workflow due in its state, do I/O and move it (returns the stored result).
Step = Callable[[Workflow, "StepContext"], Awaitable[Workflow]]


@dataclass(slots=True, kw_only=True)
class StepContext:
    """Everything a step needs, injected by the runner."""

    store: Store
    machine: WorkflowMachine
    gateways: Mapping[str, Gateway]
    clock: Clock
    settings: WorkflowSettings
    policy: Policy
    owner: str | None
    steps: Mapping[State, Step] = field(default_factory=dict)
    observers: list[TransitionObserver] = field(default_factory=list)

    def gateway(self, workflow: Workflow) -> Gateway:
        """The gateway of the workflow's account."""
        return self.gateways[workflow.request.account]

    def now(self) -> datetime:
        """Current aware UTC time."""
        return self.clock.now()

    def after(self, seconds: float) -> datetime:
        """Now plus ``seconds``."""
        return self.clock.now() + timedelta(seconds=seconds)

    async def transition(
        self, workflow: Workflow, trigger: str, *, event_data: Mapping[str, Any] | None = None, **changes: Any
    ) -> Workflow:
        """Fire ``trigger``, persist the new state and one event atomically, then log it."""
        dest = self.machine.fire(workflow, trigger, **dict(event_data or {}))
        now = self.clock.now()
        if dest.is_terminal:
            changes.setdefault("next_run_at", None)
            changes.setdefault("lane_held", False)
        data = {k: v for k, v in (event_data or {}).items() if v is not None}
        for key in ("exchange_uuid", "txid", "reason"):
            if changes.get(key) is not None:
                data.setdefault(key, changes[key])
        event = Event(
            workflow_id=workflow.id,
            seq=workflow.event_seq + 1,
            at=now,
            trigger=trigger,
            from_state=workflow.state.value,
            to_state=dest.value,
            data=data,
        ).sealed(workflow.last_hash)
        moved = replace(workflow, state=dest, updated_at=now, event_seq=event.seq, last_hash=event.hash, **changes)
        stored = await self.store.commit(moved, event, owner=self.owner)
        self._announce(workflow, stored, event)
        return stored

    async def note(
        self, workflow: Workflow, what: str, *, changes: Mapping[str, Any] | None = None, **data: Any
    ) -> Workflow:
        """An event without a state change (``note`` trigger), e.g. a cancel sent to the exchange."""
        return await self.transition(workflow, "note", event_data={"note": what, **data}, **dict(changes or {}))

    async def reschedule(self, workflow: Workflow, delay: float | None, **changes: Any) -> Workflow:
        """Sleep the workflow (no event): it is due again after ``delay`` seconds (None: never)."""
        moved = replace(
            workflow,
            updated_at=self.clock.now(),
            next_run_at=None if delay is None else self.after(delay),
            **changes,
        )
        return await self.store.commit(moved, None, owner=self.owner)

    def _announce(self, before: Workflow, after: Workflow, event: Event) -> None:
        fields: dict[str, Any] = {
            "workflow_id": after.id,
            "trigger": event.trigger,
            "from_state": event.from_state,
            "to_state": event.to_state,
            "seq": event.seq,
            "exchange_uuid": after.exchange_uuid,
            "attempt": after.attempt,
            "reason": after.reason,
        }
        level = "warning" if after.state in (State.NEEDS_REVIEW, State.RECONCILING) else "info"
        getattr(log, level)("workflow.transitioned", **fields, **_brief(event.data))
        for observer in self.observers:
            observer(before, after, event)


def _brief(data: Mapping[str, Any]) -> dict[str, Any]:
    """Event data for the log line, minus what the line already has and minus bulky evidence."""
    skip = {"exchange_uuid", "reason", "evidence", "body"}
    return {f"data_{k}": v for k, v in data.items() if k not in skip}
