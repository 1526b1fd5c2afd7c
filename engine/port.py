"""What a step sees: a narrow port, not the whole store.

A step may read the exchange (through its account's gateway), move its own workflow (``transition``,
``note``, ``reschedule``), create other workflows and read its children, and make the few reads and
writes a workflow needs besides (which workflow owns an exchange uuid, record an attribution, the amount
already submitted today). It cannot ``commit`` rows, claim, lease or flag workflows: those are the
runner's and the operators' business, and a step that could reach them could break the rules the store
enforces for them. :class:`engine.context.StepContext` is the implementation the runner hands in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from engine.models import Workflow
from engine.policy import Policy, WorkflowSettings
from engine.upbit.gateway import Gateway

if TYPE_CHECKING:
    from engine.kinds import ChildCounts, WorkflowKind

__all__ = ["StepPort"]


class StepPort(Protocol):
    """Everything a step may read and do."""

    @property
    def settings(self) -> WorkflowSettings:
        """The engine's workflow timings."""
        ...

    @property
    def policy(self) -> Policy:
        """Local policy (limits, dry run, automatic resolution)."""
        ...

    def kind(self, workflow: Workflow) -> WorkflowKind:
        """The workflow's kind."""
        ...

    def gateway(self, workflow: Workflow) -> Gateway:
        """The gateway of the workflow's account."""
        ...

    def now(self) -> datetime:
        """Current aware UTC time (the engine's clock)."""
        ...

    def after(self, seconds: float) -> datetime:
        """Now plus ``seconds``."""
        ...

    def park(self) -> AbstractContextManager[None]:
        """Around a wait for shared work (a batched poll): the runner lends the slot out meanwhile."""
        ...

    async def transition(
        self, workflow: Workflow, trigger: str, *, event_data: Mapping[str, Any] | None = None,
        unflagged: bool = False, **changes: Any,
    ) -> Workflow:  # fmt: skip
        """Fire ``trigger`` and persist the new state with its event (the one way a state changes)."""
        ...

    async def note(
        self, workflow: Workflow, what: str, *, changes: Mapping[str, Any] | None = None, **data: Any
    ) -> Workflow:
        """An event without a state change."""
        ...

    async def reschedule(self, workflow: Workflow, delay: float | None, **changes: Any) -> Workflow:
        """Sleep the workflow (no event) for ``delay`` seconds (None: until something wakes it)."""
        ...

    async def create(
        self, request: Any, *, idempotency_key: str, parent: Workflow | None = None
    ) -> tuple[Workflow, bool]:
        """Create another workflow durably (idempotent by key); True if it was created now."""
        ...

    async def children(self, parent: Workflow) -> ChildCounts:
        """The parent's children counted by state and settledness."""
        ...

    async def list_children(
        self, parent: Workflow, *, after_id: str | None = None, limit: int = 1000
    ) -> list[Workflow]:
        """The parent's children in creation order, a page at a time."""
        ...

    async def read(self, workflow_id: str) -> Workflow:
        """Another workflow as stored now (read-only)."""
        ...

    async def owners_of(self, exchange_uuids: Sequence[str]) -> dict[str, str]:
        """Which workflow owns each exchange uuid (absent: none)."""
        ...

    async def attribute(self, workflow: Workflow, exchange_uuids: Sequence[str]) -> None:
        """Record withdrawals that appeared for ``workflow`` beside its own (idempotent)."""
        ...

    async def sum_submitted(self, *, account: str, currency: str, since: datetime, not_paid: Sequence[str]) -> Decimal:
        """The amount of ``currency`` submitted from ``account`` since ``since`` (see the store's rule)."""
        ...

    async def cancel_child(self, parent: Workflow, child: Workflow) -> Workflow:
        """Ask one of ``parent``'s own children to cancel: the flag an operator's cancel sets, which the
        child's next step acts on (a parent cancelling what it started; no other workflow's flags)."""
        ...
