"""The Python API: :class:`Engine`, an async context manager over a store, gateways and a runner.

``Engine`` either runs the runner in-process (the default: submit and the work happens) or only talks to
the store (``run_runner=False``: a CLI or an API process next to a separate runner). Everything it
returns is a frozen record read from the store; nothing in memory is authoritative.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import timedelta
from typing import Any

import structlog

from engine.clock import Clock, SystemClock
from engine.context import StepContext, TransitionObserver
from engine.errors import IdempotencyConflict, InvalidRequest, InvalidTransition, ReferenceConflict, WorkflowNotFound
from engine.models import Event, State, WithdrawalRequest, Workflow, new_workflow_id
from engine.policy import Policy, WorkflowSettings
from engine.query import DEFAULT_PAGE, MAX_PAGE, ListFilter, Page
from engine.references import check_metadata, check_reference
from engine.runner import Runner
from engine.store.base import Store
from engine.upbit.gateway import Gateway

__all__ = ["Engine"]

log = structlog.get_logger("engine")
RESOLUTIONS = ("resubmit", "abandon")


def _settled(wf: Workflow) -> bool:
    """Terminal, or waiting for an operator who has not decided yet."""
    return wf.state.is_terminal or (wf.state is State.NEEDS_REVIEW and wf.resolution is None)


class Engine:
    """Submit withdrawals and follow them. Use ``async with Engine(...) as engine``."""

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
    ) -> None:
        self.store = store
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
        # Imported here, not at module top: workflows import engine modules, and engine/__init__ exports
        # Engine, so a top-level import would make "import workflows.withdrawal" first a circular import.
        from workflows.withdrawal import MACHINE, STEPS

        self.ctx = StepContext(
            store=store,
            machine=MACHINE,
            gateways=self.gateways,
            clock=self.clock,
            settings=self.settings,
            policy=self.policy,
            owner=owner,
            steps=STEPS,
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
        request: WithdrawalRequest,
        *,
        idempotency_key: str | None = None,
        reference: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Workflow:
        """Persist a new withdrawal workflow (or return the one already under ``idempotency_key``).

        ``reference`` is the caller's own id for the payout (unique per account: another withdrawal with it
        is a :class:`~engine.errors.ReferenceConflict`); ``metadata`` a small JSON object kept as given.
        Both are part of the request an idempotency key stands for."""
        workflow, _ = await self.intake(
            request, idempotency_key=idempotency_key, reference=reference, metadata=metadata
        )
        return workflow

    async def intake(
        self,
        request: WithdrawalRequest,
        *,
        idempotency_key: str | None = None,
        reference: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[Workflow, bool]:
        """Like :meth:`submit`, and says whether the workflow was created now (False: a replay)."""
        if request.account not in self.accounts:
            raise InvalidRequest(f"no account named {request.account!r} is configured", field="account")
        reference = check_reference(reference)
        extra = check_metadata(dict(metadata) if isinstance(metadata, Mapping) else metadata)
        if idempotency_key is not None:
            if not 0 < len(idempotency_key) <= 200:
                raise InvalidRequest("must be 1-200 characters", field="idempotency_key")
            existing = await self.store.get_by_idempotency_key(idempotency_key)
            if existing is not None:
                return self._replay(existing, request, idempotency_key, reference, extra), False
        workflow, event = self._new(request, idempotency_key, reference, extra)
        try:
            if reference is not None:
                await self._reference_free(reference, request.account)
            stored, created = await self.store.create(workflow, event)
        except ReferenceConflict:
            # A concurrent submit took the reference since the key was looked up; under the same idempotency
            # key it is this very request (a client's retry racing its first try): answer it as a replay.
            raced = None if idempotency_key is None else await self.store.get_by_idempotency_key(idempotency_key)
            if raced is None:
                raise
            stored, created = raced, False
        if not created:
            return self._replay(stored, request, idempotency_key or "", reference, extra), False
        log.info("workflow.created", workflow_id=stored.id, lane=stored.lane, idempotency_key=idempotency_key)
        self.runner.wake()
        return stored, True

    async def _reference_free(self, reference: str, account: str) -> None:
        """:class:`ReferenceConflict` naming the workflow that already carries ``reference`` on ``account``
        (the store's unique index is the guarantee; this gives the caller the id)."""
        taken = await self.store.list(ListFilter(reference=reference, account=account), limit=1)
        if taken:
            raise ReferenceConflict(
                f"reference {reference!r} is already used on account {account!r} by workflow {taken[0].id}"
            )

    def _new(
        self, request: WithdrawalRequest, key: str | None, reference: str | None, metadata: dict[str, Any] | None
    ) -> tuple[Workflow, Event]:
        now = self.clock.now()
        wf_id = new_workflow_id()
        data = {"request": request.to_dict(), "idempotency_key": key, "reference": reference, "metadata": metadata}
        event = Event(
            workflow_id=wf_id, seq=1, at=now, trigger="create", from_state=None, to_state=State.PENDING.value,
            data=data,
        ).sealed("")  # fmt: skip
        workflow = Workflow(
            id=wf_id,
            state=State.PENDING,
            request=request,
            created_at=now,
            updated_at=now,
            idempotency_key=key,
            next_run_at=now,
            deadline_at=now + timedelta(seconds=self.settings.preflight_deadline),
            event_seq=1,
            last_hash=event.hash,
            reference=reference,
            metadata=metadata,
        )
        return workflow, event

    @staticmethod
    def _replay(
        existing: Workflow, request: WithdrawalRequest, key: str, reference: str | None, metadata: dict[str, Any] | None
    ) -> Workflow:
        same = existing.request.same_as(request) and existing.reference == reference and existing.metadata == metadata
        if not same:
            raise IdempotencyConflict(
                f"idempotency key {key!r} was used for a different request (workflow {existing.id})"
            )
        return existing

    async def get(self, workflow_id: str) -> Workflow:
        """The workflow as stored now."""
        return await self.store.get(workflow_id)

    async def list(
        self,
        where: ListFilter | None = None,
        *,
        state: State | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> builtins.list[Workflow]:
        """Newest first; pass the last id as ``before`` for the next page (:meth:`page` says whether
        there is one, and counts)."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"must be between 1 and {MAX_PAGE}", field="limit")
        return await self.store.list((where or ListFilter()).with_state(state), limit=limit, before_id=before)

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
            accounts = ", ".join(sorted(wf.request.account for wf in found))
            raise InvalidRequest(
                f"reference {reference!r} is used on several accounts ({accounts}): name one", field="account"
            )
        return found[0] if found else None

    async def cancel(self, workflow_id: str) -> Workflow:
        """Ask to cancel: locally before submit, at the exchange after. Terminal workflows refuse."""
        current = await self.store.get(workflow_id)
        if current.state.is_terminal:
            raise InvalidTransition(f"{workflow_id} is already {current.state.value}")
        flagged = await self.store.request_cancel(workflow_id, at=self.clock.now())
        self.runner.wake()
        return flagged

    async def resolve(self, workflow_id: str, action: str) -> Workflow:
        """An operator's decision for a ``needs_review`` workflow: ``resubmit`` or ``abandon``."""
        if action not in RESOLUTIONS:
            raise InvalidRequest(f"must be one of {', '.join(RESOLUTIONS)}", field="action")
        current = await self.store.get(workflow_id)
        if current.state is not State.NEEDS_REVIEW:
            raise InvalidTransition(f"{workflow_id} is {current.state.value}, not needs_review")
        flagged = await self.store.request_resolution(workflow_id, action, at=self.clock.now())
        self.runner.wake()
        return flagged

    async def wait(self, workflow_id: str, *, timeout: float | None = None) -> Workflow:
        """Until the workflow is terminal or needs an operator; raises TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            while True:
                wf = await self.store.get(workflow_id)
                if _settled(wf):
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
            if not follow or _settled(await self.store.get(workflow_id)):
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
