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
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog

from engine.clock import Clock
from engine.errors import IdempotencyConflict, InvalidRequest, InvalidTransition, ReferenceConflict
from engine.kinds import ChildCounts, KindRegistry, Step, WorkflowKind, check_idempotency_key, new_workflow
from engine.models import Event, Workflow
from engine.policy import Policy, WorkflowSettings
from engine.query import ListFilter
from engine.store.base import Store
from engine.upbit.gateway import Gateway

__all__ = ["Step", "StepContext", "TransitionObserver", "create_workflow"]

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


async def create_workflow(
    store: Store,
    kinds: KindRegistry,
    request: Any,
    *,
    now: datetime,
    settings: WorkflowSettings,
    idempotency_key: str | None = None,
    parent_id: str | None = None,
    accounts: Collection[str] | None = None,
    reference: str | None = None,
    metadata: dict[str, Any] | None = None,
    created_by: str | None = None,
) -> tuple[Workflow, bool]:
    """Persist a new workflow of the request's kind (with its first event), or return the one already
    stored under ``idempotency_key`` (False: a replay). A replay must be the same request (and the same
    parent): otherwise ``IdempotencyConflict``. With ``accounts`` (the configured ones), a request that
    pays from any other is refused first (``InvalidRequest``): it could never be stepped. The one path by
    which workflows are created, by callers (:meth:`engine.Engine.submit`) and by steps
    (:meth:`StepContext.create`) alike.

    ``reference`` (already checked: :func:`engine.references.check_reference`) is unique per account: one
    already used there is a ``ReferenceConflict`` naming its workflow, unless this is a replay of the same
    request under the same key (a client's retry racing its first try)."""
    kind = kinds.for_request(request)
    if accounts is not None:
        for account in kind.accounts(request):
            if account not in accounts:
                raise InvalidRequest(f"no account named {account!r} is configured", field="account")
    check_idempotency_key(idempotency_key)
    if idempotency_key is not None:
        existing = await store.get_by_idempotency_key(idempotency_key)
        if existing is not None:
            key = idempotency_key
            return _replay(kind, existing, request, key, parent_id, reference=reference, metadata=metadata), False
    workflow, event = new_workflow(
        kind, request, now=now, settings=settings, idempotency_key=idempotency_key, parent_id=parent_id,
        reference=reference, metadata=metadata, created_by=created_by,
    )  # fmt: skip
    try:
        if reference is not None:
            await _reference_free(store, reference, kind.index(request).account)
        stored, created = await store.create(workflow, event)
    except ReferenceConflict:
        # A concurrent submit took the reference since the key was looked up; under the same idempotency
        # key it is this very request (a client's retry racing its first try): answer it as a replay.
        raced = None if idempotency_key is None else await store.get_by_idempotency_key(idempotency_key)
        if raced is None:
            raise
        stored, created = raced, False
    if not created:
        return _replay(
            kind, stored, request, idempotency_key or "", parent_id, reference=reference, metadata=metadata
        ), False
    return stored, True


async def _reference_free(store: Store, reference: str, account: str) -> None:
    """:class:`ReferenceConflict` naming the workflow that already carries ``reference`` on ``account``
    (the store's unique index is the guarantee; this gives the caller the id)."""
    taken = await store.list(ListFilter(reference=reference, account=account), limit=1)
    if taken:
        raise ReferenceConflict(
            f"reference {reference!r} is already used on account {account!r} by workflow {taken[0].id}"
        )


def _replay(
    kind: WorkflowKind, existing: Workflow, request: Any, key: str, parent_id: str | None,
    *, reference: str | None, metadata: dict[str, Any] | None,
) -> Workflow:  # fmt: skip
    same = existing.kind == kind.name and existing.parent_id == parent_id
    same = same and existing.reference == reference and existing.metadata == metadata
    if not same or not kind.same_request(existing.request, request):
        raise IdempotencyConflict(f"idempotency key {key!r} was used for a different request (workflow {existing.id})")
    return existing


@dataclass(slots=True, kw_only=True)
class StepContext:
    """Everything a step needs, injected by the runner. Steps see it as a :class:`engine.port.StepPort`
    (no ``store``): the runner and the engine use the rest."""

    store: Store
    kinds: KindRegistry
    gateways: Mapping[str, Gateway]
    clock: Clock
    settings: WorkflowSettings
    policy: Policy
    owner: str | None
    observers: list[TransitionObserver] = field(default_factory=list)
    #: Set by the runner: a context manager a step wraps around a wait for shared work (a batched poll),
    #: during which its workflow does not count against the runner's concurrency.
    park: Callable[[], AbstractContextManager[None]] = field(default=contextlib.nullcontext, repr=False)
    #: Set by the runner: look for due work now (a step created a workflow that is due at once).
    wake: Callable[[], None] = field(default=lambda: None, repr=False)
    #: (kind, state, trigger) -> destination, for the transitions that have no guard: a machine is static,
    #: so once it answered, the same question has the same answer (saves ~10 us per transition).
    _known: dict[tuple[str, str, str], str] = field(default_factory=dict, repr=False)

    def kind(self, workflow: Workflow) -> WorkflowKind:
        """The workflow's kind."""
        return self.kinds[workflow.kind]

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
        kind = self.kinds[workflow.kind]
        dest = self._fire(kind, workflow, trigger, event_data)
        now = self.clock.now()
        if kind.is_terminal(dest):
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

    def _fire(self, kind: WorkflowKind, workflow: Workflow, trigger: str, event_data: Mapping[str, Any] | None) -> str:
        """The destination by the kind's machine; unguarded answers are remembered (see ``_known``)."""
        key = (kind.name, workflow.state, trigger)
        dest = self._known.get(key)
        if dest is not None:
            return dest
        machine = kind.machine
        dest = machine.fire(workflow, trigger, **dict(event_data or {}))
        if not any(s.guard is not None for s in machine.table if s.trigger == trigger and key[1] in s.source):
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

    async def create(
        self, request: Any, *, idempotency_key: str, parent: Workflow | None = None
    ) -> tuple[Workflow, bool]:
        """Create another workflow (of the request's kind) durably, optionally as ``parent``'s child.

        Idempotent by ``idempotency_key``: a repeat (after a crash mid-way) returns the workflow stored
        the first time (False) instead of creating a second one. Derive the key from the parent's id and
        the child's position so that a resumed step asks with the same key."""
        stored, created = await create_workflow(
            self.store, self.kinds, request, now=self.clock.now(), settings=self.settings,
            idempotency_key=idempotency_key, parent_id=None if parent is None else parent.id,
            accounts=self.gateways.keys(), created_by=None if parent is None else parent.created_by,
        )  # fmt: skip
        if created:
            self.wake()
        return stored, created

    async def list_children(
        self, parent: Workflow, *, after_id: str | None = None, limit: int = 1000
    ) -> list[Workflow]:
        """The parent's children in creation order, a page at a time."""
        return await self.store.children(parent.id, after_id=after_id, limit=limit)

    async def read(self, workflow_id: str) -> Workflow:
        """Another workflow as stored now."""
        return await self.store.get(workflow_id)

    async def owners_of(self, exchange_uuids: Sequence[str]) -> dict[str, str]:
        """Which workflow owns each exchange uuid (see :meth:`engine.store.base.Store.owners_of`)."""
        return await self.store.owners_of(exchange_uuids)

    async def attribute(self, workflow: Workflow, exchange_uuids: Sequence[str]) -> None:
        """Record these exchange uuids as ``workflow``'s, now (see :meth:`engine.store.base.Store.attribute`)."""
        await self.store.attribute(workflow.id, exchange_uuids, at=self.clock.now())

    async def sum_submitted(self, *, account: str, currency: str, since: datetime, not_paid: Sequence[str]) -> Decimal:
        """See :meth:`engine.store.base.Store.sum_submitted`."""
        return await self.store.sum_submitted(account=account, currency=currency, since=since, not_paid=not_paid)

    async def children(self, parent: Workflow) -> ChildCounts:
        """How many children ``parent`` has in each state, and how many are settled (by their kinds)."""
        counts = await self.store.count_children(parent.id)
        by_state: dict[str, int] = {}
        settled = 0
        for (kind_name, state, resolved), n in counts.items():
            by_state[state] = by_state.get(state, 0) + n
            kind = self.kinds[kind_name]
            if kind.is_terminal(state) or (kind.awaits_operator(state) and not resolved):
                settled += n
        return ChildCounts(by_state=by_state, settled=settled)

    async def cancel_child(self, parent: Workflow, child: Workflow) -> Workflow:
        """Flag ``parent``'s child for cancellation (the store's cancel request, as an operator's cancel,
        attributed to whoever cancelled the parent) and wake the runner; refused (``InvalidTransition``)
        for a workflow that is not its child."""
        if child.parent_id != parent.id:
            raise InvalidTransition(f"{child.id} is not a child of {parent.id}")
        flagged = await self.store.request_cancel(
            child.id, at=self.clock.now(), operator=parent.cancel_by, note=parent.cancel_note
        )
        self.wake()
        return flagged

    def _announce(self, before: Workflow, after: Workflow, event: Event) -> None:
        level = _WARNING if after.state in self.kinds[after.kind].alerting else _INFO
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


def _sealed(workflow: Workflow, at: datetime, trigger: str, dest: str, data: dict[str, Any]) -> Event:
    """The transition's event, hash-chained to the workflow's last one: ``Event(...).sealed(last_hash)``
    built directly: the hashed body is ``Event.canonical()``'s, without an unsealed Event to make it
    (tests/unit/test_event_seal.py checks that both give the same bytes and hash)."""
    seq, prev = workflow.event_seq + 1, workflow.last_hash
    body = {
        "workflow_id": workflow.id, "seq": seq, "at": at.isoformat(), "trigger": trigger,
        "from": str(workflow.state), "to": str(dest), "data": data, "prev": prev,
    }  # fmt: skip
    digest = hashlib.sha256(_canonical_json(body).encode()).hexdigest()
    return Event(
        workflow_id=workflow.id, seq=seq, at=at, trigger=trigger, from_state=str(workflow.state),
        to_state=str(dest), data=data, prev_hash=prev, hash=digest,
    )  # fmt: skip


_SKIP = frozenset({"exchange_uuid", "reason", "evidence", "body"})


def _brief(data: Mapping[str, Any]) -> dict[str, Any]:
    """Event data for the log line, minus what the line already has and minus bulky evidence."""
    return {f"data_{k}": v for k, v in data.items() if k not in _SKIP}
