"""The Store contract: what the runner, the engine and the API need from durable storage.

Rules every implementation keeps (the contract suite in ``tests/integration/test_store_contract.py``
checks them against each one):

- ``commit`` is a compare-and-set on ``version`` (and, with an ``owner``, on the lease): the workflow row
  and its event are written in one transaction, or neither is.
- A store holds workflows of any registered kind (``kinds``: it parses each row's request and state with
  the row's kind). No state is named in a store: per-state rules (terminal, awaiting an operator, urgent,
  not paid) are the kinds' answers, passed in as values or parameters.
- At most one workflow per lane has ``lane_held`` (a unique index, not memory): ``LaneBusy``.
- An exchange uuid belongs to at most one workflow (a unique index; an attribution, too, has one owner).
- A ``reference`` is unique per account when given (a partial unique index): ``ReferenceConflict``.
- Events are append-only, numbered 1..n per workflow, each hash-chained to the one before.
- Only the lease owner (the runner stepping a workflow) writes states and events. Operators' requests
  (cancel, resolve) set flag columns the owner reads, so they never race a step's compare-and-set.
- Every failure leaves a store as an error of the engine's tree (``engine.errors.StoreError``), never as
  a driver exception (:mod:`engine.store.boundary` translates them): ``StoreUnavailable`` when the store
  cannot be reached or written now (the caller may retry later), a plain ``StoreError`` otherwise.

Optional capability (not part of the protocol; check with ``hasattr(store, "listen")``):
``async def listen(self, callback: Callable[[], None]) -> None`` asks the store to call ``callback`` (no
arguments, on the event loop) whenever any process creates a workflow or flags one for cancel or
resolution, so a runner wakes without waiting for its next poll. ``close()`` removes the listeners.
Notifications can be missed (a dropped connection), so a runner must still poll. ``PostgresStore``
implements it with ``LISTEN``/``NOTIFY``; ``SQLiteStore`` has no other processes to hear and does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from engine.kinds import KindRegistry
from engine.models import Event, Workflow
from engine.query import ListFilter

WorkflowList = list[Workflow]
EventList = list[Event]

__all__ = ["FeedItem", "FeedList", "Store"]


@dataclass(frozen=True, slots=True)
class FeedItem:
    """One committed event in the store-wide feed, with where it stands and whose it is.

    ``cursor`` is opaque to callers: pass it back as ``after`` to resume right behind this event (no gap,
    no repeat). ``kind``, ``account``, ``reference`` and ``parent_id`` come from the event's workflow, so a
    consumer can filter without a second read."""

    cursor: str
    event: Event
    kind: str
    account: str
    #: The workflow's caller reference and its parent (a batch child's batch), when it has them.
    reference: str | None = None
    parent_id: str | None = None


FeedList = list[FeedItem]


class Store(Protocol):
    """Durable home of workflows and their events."""

    kinds: KindRegistry

    async def open(self) -> None:
        """Connect and migrate the schema to the current version."""
        ...

    async def close(self) -> None:
        """Flush pending writes and disconnect."""
        ...

    async def ping(self) -> None:
        """One cheap round trip (readiness); ``StoreUnavailable`` when the store does not answer."""
        ...

    async def create(self, workflow: Workflow, event: Event) -> tuple[Workflow, bool]:
        """Insert a new workflow with its first event; for a known idempotency key return
        ``(existing, False)`` instead."""
        ...

    async def get(self, workflow_id: str) -> Workflow:
        """The workflow, or ``WorkflowNotFound``."""
        ...

    async def get_by_idempotency_key(self, key: str) -> Workflow | None:
        """The workflow submitted under ``key``, if any."""
        ...

    async def list(
        self, where: ListFilter | None = None, *, limit: int = 100, before_id: str | None = None
    ) -> WorkflowList:
        """What ``where`` selects (None: everything; :meth:`ListFilter.matches` is the rule), newest first;
        ``before_id`` is the cursor (ids sort by creation time)."""
        ...

    async def count(self, where: ListFilter | None = None) -> int:
        """How many workflows ``where`` selects (the ``total`` of a page)."""
        ...

    async def commit(
        self, workflow: Workflow, event: Event | None, *, owner: str | None, unflagged: bool = False
    ) -> Workflow:
        """Write ``workflow`` (whose ``version`` is the one read) and ``event``; returns the stored
        workflow with ``version + 1``. Raises ``StaleVersion`` or ``LaneBusy``.

        ``unflagged``: also ``StaleVersion`` if the row carries an operator's cancel flag or resolution,
        whenever it arrived. For a decision the engine takes on its own (an automatic resubmit): an
        operator's word that came in while it was being made wins, and is never silently cleared."""
        ...

    async def claim_due(self, *, now: datetime, limit: int, owner: str, lease_seconds: float) -> WorkflowList:
        """Lease up to ``limit`` workflows whose ``next_run_at`` has come, oldest due first."""
        ...

    async def renew(self, workflow_ids: Sequence[str], *, now: datetime, owner: str, lease_seconds: float) -> None:
        """Extend the leases this owner holds."""
        ...

    async def release(self, workflow_ids: Sequence[str], *, owner: str) -> None:
        """Give these leases back (those this owner still holds)."""
        ...

    async def clear_leases(self) -> None:
        """Drop every lease (an exclusive runner taking over after a crash)."""
        ...

    async def next_due_at(self, *, any_lease: bool = False) -> datetime | None:
        """When the earliest unleased sleeping workflow falls due (``any_lease``: leased ones too)."""
        ...

    async def request_cancel(
        self, workflow_id: str, *, at: datetime, operator: str | None = None, note: str | None = None
    ) -> Workflow:
        """Flag the workflow for cancellation and make it due now. The first request's ``operator`` and
        ``note`` are kept with the flag (``cancel_by``, ``cancel_note``); a repeat changes nothing."""
        ...

    async def request_resolution(
        self, workflow_id: str, action: str, *, at: datetime, operator: str | None = None, note: str | None = None
    ) -> Workflow:
        """Record an operator's decision (``resolution``, with ``resolution_by`` and ``resolution_note``) for
        a workflow whose state awaits one (by its kind's ``awaiting_operator``) and make it due now; any other
        workflow is returned unchanged. A commit that leaves the awaiting state clears all three."""
        ...

    async def events(self, workflow_id: str, *, after_seq: int = 0) -> EventList:
        """The workflow's events after ``after_seq``, in order."""
        ...

    async def owners_of(self, exchange_uuids: Sequence[str]) -> dict[str, str]:
        """Which workflow owns each of these exchange uuids (absent: none): by its ``exchange_uuid``, or
        by an attribution (:meth:`attribute`)."""
        ...

    async def attribute(self, workflow_id: str, exchange_uuids: Sequence[str], *, at: datetime) -> None:
        """Record withdrawals that appeared for ``workflow_id`` beside its own (a POST it had given up
        executed late): from then on :meth:`owners_of` names it, so no other workflow adopts them.
        Idempotent; a uuid keeps its first owner."""
        ...

    async def sum_submitted(self, *, account: str, currency: str, since: datetime, not_paid: Sequence[str]) -> Decimal:
        """Total amount of this account's workflows of ``currency`` submitted since ``since``, except those
        ended in a ``not_paid`` state without an exchange uuid (the daily policy limit reads this; the
        withdrawal names its refused/abandoned state)."""
        ...

    async def count_by_state(self) -> dict[str, int]:
        """How many workflows are in each state."""
        ...

    async def count_children(self, parent_id: str) -> dict[tuple[str, str, bool], int]:
        """``(kind, state, carries a resolution)`` -> how many workflows have ``parent_id`` as parent."""
        ...

    async def children(self, parent_id: str, *, after_id: str | None = None, limit: int = 1000) -> WorkflowList:
        """The workflows whose parent is ``parent_id``, in id (creation) order after ``after_id``."""

    async def feed(self, *, after: str | None, limit: int = 500) -> FeedList:
        """Up to ``limit`` committed events of every workflow after the cursor ``after`` (``None``: from the
        first), in one total order that never changes: reading on from the last item's cursor never skips
        an event that commits later and never repeats one. ``InvalidCursor`` for a malformed cursor or one
        that names no event of this store.

        SQLite: the order is the events' rowid (one writer, append-only: rowid order is commit order).
        PostgreSQL: the order is (inserting transaction id, sequence); only events of transactions older
        than every one still running are served (the snapshot's ``xmin`` horizon), so an event whose
        transaction started earlier but commits later can never land behind a cursor already handed out.
        The horizon is the server's: while any transaction that wrote is still open (in any database of
        the cluster), newer events wait for it (delayed, never lost), so keep transactions short."""
        ...

    async def feed_head(self) -> str | None:
        """The cursor of the newest event the feed serves now (``None``: no event yet); ``feed(after=head)``
        then yields only what commits from now on."""
        ...
