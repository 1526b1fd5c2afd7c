"""What a step may do: read the exchange (through a gateway), move its workflow, reschedule it.

:meth:`StepContext.transition` is the one path by which a workflow changes state: decide the destination
with the machine (pure), build the new record and its hash-chained event, commit both in one store
transaction (compare-and-set on version and lease), and only then log the same event and tell the
observers. Whatever effect follows (the POST) therefore happens after its intent is durable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
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

_FIELDS = tuple(f.name for f in fields(Workflow))
_NAMES = frozenset(_FIELDS)
_new, _set = object.__new__, object.__setattr__


def evolve(workflow: Workflow, **changes: Any) -> Workflow:
    """``dataclasses.replace`` for a Workflow, without the generic machinery (~40% cheaper; a transition
    makes two). Unknown field names raise ``TypeError`` as ``replace`` does."""
    if not changes.keys() <= _NAMES:
        raise TypeError(f"Workflow has no field(s) {sorted(changes.keys() - _NAMES)}")
    moved: Workflow = _new(Workflow)
    for name in _FIELDS:
        _set(moved, name, changes[name] if name in changes else getattr(workflow, name))
    return moved


#: Called after every committed transition with (workflow before, workflow after, event).
TransitionObserver = Callable[[Workflow, Workflow, Event], None]

log = structlog.get_logger("engine")
_INFO, _WARNING = logging.INFO, logging.WARNING
_bound: tuple[tuple[Any, ...], Any] | None = None


def _logger() -> Any:
    """The ``engine`` logger, assembled once per structlog configuration (not once per log line).

    ``structlog.get_logger()`` returns a lazy proxy that, without ``cache_logger_on_first_use``, builds a
    new bound logger (and a new output logger) on every call. A transition logs once, so we keep the
    assembled logger and build it again only when the configuration changed (``configure``,
    ``reset_defaults`` and ``capture_logs`` all install new objects)."""
    global _bound  # noqa: PLW0603 - a one-entry cache of module scope, like the lazy proxy it replaces
    config = structlog.get_config()
    key = (id(config["processors"]), config["wrapper_class"], id(config["logger_factory"]), config["context_class"])
    if _bound is None or _bound[0] != key:
        _bound = (key, log.bind())
    return _bound[1]


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
    #: Set by the runner: a context manager a step wraps around a wait for shared work (a batched poll),
    #: during which its workflow does not count against the runner's concurrency.
    park: Callable[[], AbstractContextManager[None]] = field(default=contextlib.nullcontext, repr=False)
    #: (state, trigger) -> destination, for the transitions that have no guard: the machine is static,
    #: so once it answered, the same question has the same answer (saves ~10 us per transition).
    _known: dict[tuple[State, str], State] = field(default_factory=dict, repr=False)

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
        self, workflow: Workflow, trigger: str, *, event_data: Mapping[str, Any] | None = None,
        unflagged: bool = False, **changes: Any,
    ) -> Workflow:  # fmt: skip
        """Fire ``trigger``, persist the new state and one event atomically, then log it (``unflagged``: see
        :meth:`engine.store.base.Store.commit`)."""
        dest = self._fire(workflow, trigger, event_data)
        now = self.clock.now()
        if dest.is_terminal:
            changes.setdefault("next_run_at", None)
            changes.setdefault("lane_held", False)
        data = {k: v for k, v in event_data.items() if v is not None} if event_data else {}
        for key in ("exchange_uuid", "txid", "reason"):
            if changes.get(key) is not None:
                data.setdefault(key, changes[key])
        event = _sealed(workflow, now, trigger, dest, data)
        moved = evolve(workflow, state=dest, updated_at=now, event_seq=event.seq, last_hash=event.hash, **changes)
        stored = await self.store.commit(moved, event, owner=self.owner, unflagged=unflagged)
        self._announce(workflow, stored, event)
        return stored

    def _fire(self, workflow: Workflow, trigger: str, event_data: Mapping[str, Any] | None) -> State:
        """The destination by the machine; unguarded answers are remembered (see ``_known``)."""
        key = (workflow.state, trigger)
        dest = self._known.get(key)
        if dest is not None:
            return dest
        dest = self.machine.fire(workflow, trigger, **dict(event_data or {}))
        if not any(s.guard is not None for s in self.machine.table if s.trigger == trigger and key[0] in s.source):
            self._known[key] = dest
        return dest

    async def note(
        self, workflow: Workflow, what: str, *, changes: Mapping[str, Any] | None = None, **data: Any
    ) -> Workflow:
        """An event without a state change (``note`` trigger), e.g. a cancel sent to the exchange."""
        return await self.transition(workflow, "note", event_data={"note": what, **data}, **dict(changes or {}))

    async def reschedule(self, workflow: Workflow, delay: float | None, **changes: Any) -> Workflow:
        """Sleep the workflow (no event): it is due again after ``delay`` seconds (None: never)."""
        moved = evolve(
            workflow,
            updated_at=self.clock.now(),
            next_run_at=None if delay is None else self.after(delay),
            **changes,
        )
        return await self.store.commit(moved, None, owner=self.owner)

    def _announce(self, before: Workflow, after: Workflow, event: Event) -> None:
        level = _WARNING if after.state in (State.NEEDS_REVIEW, State.RECONCILING) else _INFO
        logger = _logger()
        enabled = getattr(logger, "is_enabled_for", None)
        if enabled is None or enabled(level):  # nothing to build when the level is filtered out
            (logger.warning if level == _WARNING else logger.info)(
                "workflow.transitioned",
                workflow_id=after.id,
                trigger=event.trigger,
                from_state=event.from_state,
                to_state=event.to_state,
                seq=event.seq,
                exchange_uuid=after.exchange_uuid,
                attempt=after.attempt,
                reason=after.reason,
                **_brief(event.data),
            )
        for observer in self.observers:
            observer(before, after, event)


#: ``Event.canonical``'s encoder, built once (``json.dumps`` with options builds one per call).
_canonical_json = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode


def _sealed(workflow: Workflow, at: datetime, trigger: str, dest: State, data: dict[str, Any]) -> Event:
    """The transition's event, hash-chained to the workflow's last one: ``Event(...).sealed(last_hash)``
    built directly: the hashed body is ``Event.canonical()``'s, without an unsealed Event to make it
    (tests/unit/test_event_seal.py checks that both give the same bytes and hash)."""
    seq, prev = workflow.event_seq + 1, workflow.last_hash
    body = {
        "workflow_id": workflow.id, "seq": seq, "at": at.isoformat(), "trigger": trigger,
        "from": workflow.state.value, "to": dest.value, "data": data, "prev": prev,
    }  # fmt: skip
    digest = hashlib.sha256(_canonical_json(body).encode()).hexdigest()
    return Event(
        workflow_id=workflow.id, seq=seq, at=at, trigger=trigger, from_state=workflow.state.value,
        to_state=dest.value, data=data, prev_hash=prev, hash=digest,
    )  # fmt: skip


_SKIP = frozenset({"exchange_uuid", "reason", "evidence", "body"})


def _brief(data: Mapping[str, Any]) -> dict[str, Any]:
    """Event data for the log line, minus what the line already has and minus bulky evidence."""
    return {f"data_{k}": v for k, v in data.items() if k not in _SKIP}
