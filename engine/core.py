"""The Python API: :class:`Engine`, an async context manager over a store, gateways and a runner.

``Engine`` either runs the runner in-process (the default: submit and the work happens) or only talks to
the store (``run_runner=False``: a CLI or an API process next to a separate runner). Everything it
returns is a frozen record read from the store; nothing in memory is authoritative.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, cast

import structlog

from engine.batch_ops import BATCH_KIND, BatchOps
from engine.clock import Clock, SystemClock
from engine.context import StepContext, TransitionObserver, create_workflow
from engine.errors import Forbidden, InvalidRequest, InvalidTransition, WorkflowNotFound
from engine.kinds import KindRegistry, WorkflowKind, default_kinds
from engine.models import Event, Workflow
from engine.operators import check_attribution
from engine.policy import Policy, WorkflowSettings
from engine.query import DEFAULT_PAGE, MAX_PAGE, ListFilter, Page
from engine.references import check_metadata, check_reference
from engine.runner import Runner
from engine.store.base import FeedItem, Store
from engine.upbit.gateway import Gateway

__all__ = ["Engine"]

log = structlog.get_logger("engine")


class Engine:
    """Submit workflows (withdrawals, or any registered kind) and follow them.
    Use ``async with Engine(...) as engine``.

    ``kinds`` are the workflow kinds it runs (default: those ``engine.bootstrap`` registers); the engine
    knows a workflow only through its kind (:class:`engine.kinds.WorkflowKind`)."""

    def __init__(
        self,
        *,
        store: Store,
        gateways: Mapping[str, Gateway],
        clock: Clock | None = None,
        settings: WorkflowSettings | None = None,
        policy: Policy | None = None,
        run_runner: bool = True,
        concurrency: int = 200,
        lease_seconds: float = 30.0,
        exclusive: bool = True,
        owner: str | None = None,
        observers: list[TransitionObserver] | None = None,
        accounts: Iterable[str] | None = None,
        kinds: KindRegistry | None = None,
    ) -> None:
        self.store = store
        self.kinds = kinds if kinds is not None else default_kinds()
        self.gateways = dict(gateways)
        #: The accounts a submission may name: the gateways' by default. A store-only engine (the CLI's
        #: store path, ``run_runner=False``) passes the configured names and no gateways: it never calls
        #: the exchange, so it holds no keys at all.
        self.accounts = frozenset(self.gateways if accounts is None else accounts)
        self.clock = clock or SystemClock()
        self.settings = settings or WorkflowSettings()
        self.policy = policy or Policy()
        self._changed = asyncio.Condition()
        self._notifications: set[asyncio.Task[None]] = set()
        self.ctx = StepContext(
            store=store,
            kinds=self.kinds,
            gateways=self.gateways,
            clock=self.clock,
            settings=self.settings,
            policy=self.policy,
            owner=owner,
            observers=[*(observers or []), self._on_transition],
        )
        self.runner = Runner(self.ctx, concurrency=concurrency, lease_seconds=lease_seconds, exclusive=exclusive)
        self._run_runner = run_runner
        self._runner_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Engine store={self.store!r} accounts={sorted(self.gateways)} runner={self._run_runner}>"

    async def __aenter__(self) -> Engine:
        await self.store.open()
        if self._run_runner:
            self._runner_task = asyncio.create_task(self.runner.run(), name="engine-runner")
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.stop()
            for gateway in self.gateways.values():
                await gateway.aclose()
        finally:
            await self.store.close()

    @property
    def runner_failed(self) -> BaseException | None:
        """The exception that ended the background runner, if it died (None while healthy or not run)."""
        task = self._runner_task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()

    async def stop(self) -> None:
        """Stop the runner gracefully (steps in flight finish)."""
        if self._runner_task is not None:
            self.runner.stop()
            await self._runner_task
            self._runner_task = None

    async def run_until_idle(self, *, timeout: float = 60.0) -> None:
        """Run the runner until nothing is scheduled (for tests and batch jobs; needs run_runner=False)."""
        if self._runner_task is not None:
            raise RuntimeError("the runner already runs in the background; use wait() instead")
        self.runner = Runner(self.ctx, concurrency=self.runner.concurrency, lease_seconds=self.runner.lease_seconds)
        await self.runner.run_until_idle(timeout=timeout)

    # -- the API -----------------------------------------------------------------------------------

    async def submit(
        self,
        request: Any,
        *,
        idempotency_key: str | None = None,
        reference: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        operator: str | None = None,
    ) -> Workflow:
        """Persist a new workflow of the request's kind (or return the one already under ``idempotency_key``).

        ``reference`` is the caller's own id for the payout (unique per account: another workflow with it
        is a :class:`~engine.errors.ReferenceConflict`); ``metadata`` a small JSON object kept as given.
        Both are part of the request an idempotency key stands for. ``operator``: who submits it (stored as
        ``created_by`` and recorded in the first event; a replay keeps the first submitter)."""
        workflow, _ = await self.intake(
            request, idempotency_key=idempotency_key, reference=reference, metadata=metadata, operator=operator
        )
        return workflow

    async def intake(
        self,
        request: Any,
        *,
        idempotency_key: str | None = None,
        reference: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        operator: str | None = None,
    ) -> tuple[Workflow, bool]:
        """Like :meth:`submit`, and says whether the workflow was created now (False: a replay)."""
        stored, created = await create_workflow(
            self.store, self.kinds, request, now=self.clock.now(), settings=self.settings,
            idempotency_key=idempotency_key, accounts=self.accounts, reference=check_reference(reference),
            metadata=check_metadata(dict(metadata) if isinstance(metadata, Mapping) else metadata),
            created_by=check_attribution(operator, None)[0],
        )  # fmt: skip
        if created:
            log.info(
                "workflow.created", workflow_id=stored.id, lane=stored.lane, idempotency_key=idempotency_key,
                operator=operator,
            )  # fmt: skip
            self.runner.wake()
        return stored, created

    def settled(self, wf: Workflow) -> bool:
        """Terminal, or waiting for an operator who has not decided yet (by the workflow's kind)."""
        return self.kinds.is_settled(wf)

    async def get(self, workflow_id: str) -> Workflow:
        """The workflow as stored now."""
        return await self.store.get(workflow_id)

    async def list(
        self,
        where: ListFilter | None = None,
        *,
        state: str | None = None,
        limit: int = 100,
        before: str | None = None,
        kind: str | None = None,
    ) -> builtins.list[Workflow]:
        """Newest first; pass the last id as ``before`` for the next page (:meth:`page` says whether
        there is one, and counts); ``kind``: only that kind's."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"must be between 1 and {MAX_PAGE}", field="limit")
        where = (where or ListFilter()).with_state(state)
        if kind is not None:
            where = replace(where, kind=kind)
        return await self.store.list(where, limit=limit, before_id=before)

    async def page(
        self, where: ListFilter | None = None, *, limit: int = DEFAULT_PAGE, cursor: str | None = None
    ) -> Page:
        """One page of what ``where`` selects, newest first, with the total count. ``cursor`` must be the
        ``next_cursor`` of a previous page (an id that is no stored workflow is refused, never read as a
        position: it used to answer all or nothing without a word)."""
        where = where or ListFilter()
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"must be between 1 and {MAX_PAGE}", field="limit")
        if cursor is not None:
            try:
                await self.store.get(cursor)
            except WorkflowNotFound:
                raise InvalidRequest(
                    f"no workflow {cursor} (use the next_cursor of the previous page)", field="cursor"
                ) from None
        rows = await self.store.list(where, limit=limit + 1, before_id=cursor)  # one more: is there a next page?
        items = rows[:limit]
        more = len(rows) > limit
        return Page(items=items, next_cursor=items[-1].id if more else None, total=await self.store.count(where))

    async def count(self, where: ListFilter | None = None) -> int:
        """How many workflows ``where`` selects."""
        return await self.store.count(where or ListFilter())

    async def find(
        self, *, reference: str | None = None, account: str | None = None, idempotency_key: str | None = None
    ) -> Workflow | None:
        """The workflow with this reference (on ``account``; any account when None) or idempotency key.

        A reference is unique per account only: without ``account`` and used on several, the answer
        would be a guess, so it is an :class:`~engine.errors.InvalidRequest` naming the accounts."""
        if reference is None and idempotency_key is None:
            raise InvalidRequest("give a reference or an idempotency key", field="reference")
        where = ListFilter(reference=reference, account=account, idempotency_key=idempotency_key)
        found = await self.store.list(where, limit=2)
        if len(found) > 1:
            accounts = ", ".join(sorted(self.kinds.of(wf).index(wf.request).account for wf in found))
            raise InvalidRequest(
                f"reference {reference!r} is used on several accounts ({accounts}): name one", field="account"
            )
        return found[0] if found else None

    async def cancel(self, workflow_id: str, *, operator: str | None = None, note: str | None = None) -> Workflow:
        """Ask to cancel: locally before submit, at the exchange after. Terminal workflows refuse.

        ``operator`` and ``note`` (who asks, and why) are kept with the flag and recorded by the event of
        the step that acts on it; a repeated request keeps the first one's."""
        operator, note = check_attribution(operator, note)
        current = await self.store.get(workflow_id)
        if self.kinds[current.kind].is_terminal(current.state):
            raise InvalidTransition(f"{workflow_id} is already {current.state}")
        flagged = await self.store.request_cancel(workflow_id, at=self.clock.now(), operator=operator, note=note)
        log.info("workflow.cancel_requested", workflow_id=workflow_id, operator=operator)
        self.runner.wake()
        return flagged

    async def resolve(
        self, workflow_id: str, action: str, *, operator: str | None = None, note: str | None = None
    ) -> Workflow:
        """An operator's decision for a workflow that awaits one; the kind says which actions each state
        accepts (a withdrawal: ``resubmit``/``abandon`` in ``needs_review``, ``approve``/``reject`` in
        ``awaiting_approval``), its next step applies it. ``operator`` and ``note`` are stored with the
        decision and recorded by the event that applies it.

        A four-eyes action (approve, reject) needs a ``note`` and a named ``operator`` who is not the
        workflow's submitter (``Forbidden`` otherwise); it is refused past the approval's expiry."""
        operator, note = check_attribution(operator, note)
        self.kinds.check_resolution(action)  # before the read: a bad action is refused as before
        current = await self.store.get(workflow_id)
        kind = self.kinds[current.kind]
        kind.check_resolution(action)
        _check_accepted(kind, current, action, now=self.clock.now())
        if kind.is_four_eyes(action):
            _check_four_eyes(current, action, operator, note)
        flagged = await self.store.request_resolution(
            workflow_id, action, at=self.clock.now(), operator=operator, note=note
        )
        if kind.is_four_eyes(action) and (flagged.resolution, flagged.resolution_by) != (action, operator):
            # Another approver's decision landed first (the store keeps it): this one was not recorded.
            _check_accepted(kind, flagged, action, now=self.clock.now())
            raise InvalidTransition(f"{workflow_id} is {flagged.state}: {action} was not recorded")
        log.info("workflow.resolution_requested", workflow_id=workflow_id, action=action, operator=operator)
        self.runner.wake()
        return flagged

    async def wait(self, workflow_id: str, *, timeout: float | None = None) -> Workflow:
        """Until the workflow is terminal or needs an operator; raises TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            while True:
                wf = await self.store.get(workflow_id)
                if self.kinds.is_settled(wf):
                    return wf
                await self._changed_or(0.5)

    async def events(self, workflow_id: str, *, follow: bool = True) -> AsyncIterator[Event]:
        """The workflow's events in order; with ``follow``, live until it settles."""
        await self.store.get(workflow_id)
        seen = 0
        while True:
            for event in await self.store.events(workflow_id, after_seq=seen):
                seen = event.seq
                yield event
            if not follow or self.kinds.is_settled(await self.store.get(workflow_id)):
                for event in await self.store.events(workflow_id, after_seq=seen):
                    seen = event.seq
                    yield event
                return
            await self._changed_or(0.5)

    async def _changed_or(self, seconds: float) -> None:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), seconds)

    def _on_transition(self, before: Workflow, after: Workflow, event: Event) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        task = asyncio.get_running_loop().create_task(notify())
        self._notifications.add(task)
        task.add_done_callback(self._notifications.discard)

    def stats(self) -> dict[str, Any]:
        """Exchange calls per endpoint, per account, and the gateways' batching counters."""
        return {
            name: {
                "calls": dict(gw.client.calls),
                "poll_batches": gw.poll_batches,
                "polls": gw.polls,
                "limiter": repr(gw.client.limiter),
            }
            for name, gw in self.gateways.items()
        }

    # -- payout batches (the "batch" kind, workflows/batch; reached through the registry) ----------------

    #: [batches] max_total: the most one batch may pay per currency (set by ``engine.bootstrap``).
    batch_max_total: Mapping[str, Decimal] = MappingProxyType({})
    #: [batches] max_body_bytes: the largest batch the HTTP API reads.
    batch_max_body_bytes: int = 8 * 1024 * 1024

    def _batch_kind(self) -> BatchOps:
        """The registered batch kind (its batch-only operations are pure; this engine does the I/O)."""
        return cast(BatchOps, self.kinds[BATCH_KIND])

    async def _batch(self, batch_id: str) -> Workflow:
        wf = await self.store.get(batch_id)
        if wf.kind != BATCH_KIND:
            raise WorkflowNotFound(f"no batch has the id {batch_id}")
        return wf

    def read_batch(self, text: str | object, fmt: str) -> tuple[builtins.list[Any], dict[str, Decimal]]:
        """A payout file's items and its own per-currency caps (``fmt``: ``csv`` or ``json``; JSON may
        come parsed)."""
        return self._batch_kind().read(text, fmt)

    async def submit_batch(
        self,
        items: object,
        *,
        skip_invalid: bool = False,
        max_total: Mapping[str, Decimal] | None = None,
        idempotency_key: str | None = None,
        operator: str | None = None,
    ) -> Workflow:
        """Validate a payout batch whole and persist it as one workflow (see :meth:`intake_batch`).

        ``items``: a list of item objects (withdrawal request fields plus ``reference``), or a batch request
        the batch kind built (``workflows.batch.intake.build_batch``). ``operator``: who submits it (its
        children are attributed to the same operator)."""
        workflow, _ = await self.intake_batch(
            items, skip_invalid=skip_invalid, max_total=max_total, idempotency_key=idempotency_key,
            operator=operator,
        )  # fmt: skip
        return workflow

    async def intake_batch(
        self,
        items: object,
        *,
        skip_invalid: bool = False,
        max_total: Mapping[str, Decimal] | None = None,
        idempotency_key: str | None = None,
        operator: str | None = None,
    ) -> tuple[Workflow, bool]:
        """Every item validated first (``InvalidBatch`` names each bad item and field; ``skip_invalid``
        accepts the rest and lists them), then the per-currency caps; only then is the batch stored. Its
        children are created by its own steps. Returns (workflow, created now)."""
        # Off the event loop: validating 10,000 items takes about a second of CPU, and the runner's steps
        # and the API's other requests share this loop (a thread lets them interleave meanwhile).
        request = await asyncio.to_thread(
            self._batch_kind().accept, items, skip_invalid=skip_invalid, max_total=max_total,
            accounts=self.accounts, limits=dict(self.batch_max_total),
        )  # fmt: skip
        return await self.intake(request, idempotency_key=idempotency_key, operator=operator)

    async def get_batch(self, batch_id: str) -> dict[str, Any]:
        """The batch's view and its children's counts by state."""
        wf = await self._batch(batch_id)
        by_state: dict[str, int] = {}
        for (_kind, state, _resolved), n in (await self.store.count_children(wf.id)).items():
            by_state[state] = by_state.get(state, 0) + n
        return self._batch_kind().status(wf, by_state)

    async def batch_children(self, batch_id: str) -> AsyncIterator[Workflow]:
        """The batch's children, a page at a time from the store, in creation order."""
        after: str | None = None
        while True:
            page = await self.store.children(batch_id, after_id=after, limit=1000)
            for child in page:
                yield child
            if len(page) < 1000:
                return
            after = page[-1].id

    async def batch_report(self, batch_id: str) -> dict[str, Any]:
        """The settlement report: per item reference, outcome, exchange uuid, txid, fee, reason; totals."""
        wf = await self._batch(batch_id)
        children = [child async for child in self.batch_children(wf.id)]
        return self._batch_kind().report(wf, children)

    def batch_report_csv(self, report: Mapping[str, Any]) -> str:
        """A report's items as CSV."""
        return self._batch_kind().render_csv(report)

    async def cancel_batch(self, batch_id: str, *, operator: str | None = None, note: str | None = None) -> Workflow:
        """Cancel a batch: no more children are created, every child not yet submitted is cancelled, and
        the exchange is asked to cancel the cancelable ones (each through the withdrawal's cancel, attributed
        to the same operator and note)."""
        await self._batch(batch_id)
        return await self.cancel(batch_id, operator=operator, note=note)

    async def stream(
        self,
        *,
        after: str | None = None,
        from_start: bool = False,
        workflow_id: str | None = None,
        batch_id: str | None = None,
        account: str | None = None,
        event_types: Collection[str] | None = None,
        poll_interval: float = 1.0,
    ) -> AsyncIterator[FeedItem]:
        """Every committed event across workflows, live, in the store's one total order (:meth:`Store.feed`).

        Starts behind the cursor ``after`` (an item's ``cursor``: resuming there loses and repeats
        nothing), else at the first stored event with ``from_start``, else now (only what commits from
        here on). Filters: one workflow, one batch (its own events and its children's), one account, a set
        of triggers (``event_types``). It wakes at once
        on this engine's own transitions and reads the store every ``poll_interval`` seconds otherwise,
        which is how it hears other processes (a PostgreSQL store's other workers, a CLI's submits).
        Endless: stop by leaving the loop (or cancelling). ``InvalidCursor`` for an unknown ``after``; a
        store failure ends it with the store's error (resume from the last item's cursor).
        """
        cursor = after if after is not None or from_start else await self.store.feed_head()
        if cursor is not None:
            await self.store.feed(after=cursor, limit=1)  # an unknown cursor fails now, not at the first event
        wanted = frozenset(event_types or ())
        while True:
            page = await self.store.feed(after=cursor, limit=FEED_PAGE)
            for item in page:
                cursor = item.cursor
                if _matches(item, workflow_id, account, wanted) and (
                    batch_id is None or batch_id in (item.event.workflow_id, item.parent_id)
                ):
                    yield item
            if len(page) < FEED_PAGE:
                await self._changed_or(poll_interval)


#: Events read from the store per feed query by :meth:`Engine.stream`.
FEED_PAGE = 500


def _check_accepted(kind: WorkflowKind, wf: Workflow, action: str, *, now: datetime) -> None:
    """``InvalidTransition`` unless the workflow's state accepts ``action`` now (naming the actions it
    does accept), and, for a decision with a deadline (an approval's expiry), before that deadline."""
    accepted = kind.resolutions_in(wf.state)
    if action not in accepted:
        if accepted:
            raise InvalidTransition(f"{wf.id} is {wf.state}: it accepts {' or '.join(accepted)}, not {action}")
        waiting = sorted(state for state in kind.awaiting_operator if action in kind.resolutions_in(state))
        raise InvalidTransition(f"{wf.id} is {wf.state}, not {'/'.join(waiting) or 'awaiting an operator'}")
    if kind.past_deadline(wf, now):
        raise InvalidTransition(f"{wf.id} is past its deadline ({wf.deadline_at}): too late to {action}")
    if wf.resolution is not None and kind.is_four_eyes(wf.resolution):
        # An approver's decision stands: a second one may not silently replace it before it is carried out.
        by = f" by {wf.resolution_by}" if wf.resolution_by else ""
        raise InvalidTransition(f"{wf.id} already has a decision: {wf.resolution}{by}, being carried out")


def _check_four_eyes(wf: Workflow, action: str, operator: str | None, note: str | None) -> None:
    """Maker-checker: an approval or rejection is a named operator's, never the submitter's, and says why."""
    if operator is None:
        raise Forbidden(f"to {action} {wf.id} takes a named operator (four eyes): say who decides")
    if operator == wf.created_by:
        raise Forbidden(f"{operator} submitted {wf.id}: another operator must {action} it (four eyes)")
    if note is None:
        raise InvalidRequest(f"is required: say why you {action} it (recorded with the decision)", field="note")


def _matches(item: FeedItem, workflow_id: str | None, account: str | None, triggers: frozenset[str]) -> bool:
    """Whether a feed item passes :meth:`Engine.stream`'s filters (each one unset passes everything)."""
    return (
        (workflow_id is None or item.event.workflow_id == workflow_id)
        and (account is None or item.account == account)
        and (not triggers or item.event.trigger in triggers)
    )
