"""The Python API: :class:`Engine`, an async context manager over a store, gateways and a runner.

``Engine`` either runs the runner in-process (the default: submit and the work happens) or only talks to
the store (``run_runner=False``: a CLI or an API process next to a separate runner). Everything it
returns is a frozen record read from the store; nothing in memory is authoritative.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncIterator, Collection, Mapping
from datetime import timedelta
from typing import Any

import structlog

from engine.clock import Clock, SystemClock
from engine.context import StepContext, TransitionObserver
from engine.errors import IdempotencyConflict, InvalidRequest, InvalidTransition
from engine.models import Event, State, WithdrawalRequest, Workflow, new_workflow_id
from engine.policy import Policy, WorkflowSettings
from engine.runner import Runner
from engine.store.base import FeedItem, Store
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
    ) -> None:
        self.store = store
        self.gateways = dict(gateways)
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

    async def submit(self, request: WithdrawalRequest, *, idempotency_key: str | None = None) -> Workflow:
        """Persist a new withdrawal workflow (or return the one already under ``idempotency_key``)."""
        workflow, _ = await self.intake(request, idempotency_key=idempotency_key)
        return workflow

    async def intake(self, request: WithdrawalRequest, *, idempotency_key: str | None = None) -> tuple[Workflow, bool]:
        """Like :meth:`submit`, and says whether the workflow was created now (False: a replay)."""
        if request.account not in self.gateways:
            raise InvalidRequest(f"no account named {request.account!r} is configured", field="account")
        if idempotency_key is not None:
            if not 0 < len(idempotency_key) <= 200:
                raise InvalidRequest("must be 1-200 characters", field="idempotency_key")
            existing = await self.store.get_by_idempotency_key(idempotency_key)
            if existing is not None:
                return self._replay(existing, request, idempotency_key), False
        workflow, event = self._new(request, idempotency_key)
        stored, created = await self.store.create(workflow, event)
        if not created:
            return self._replay(stored, request, idempotency_key or ""), False
        log.info("workflow.created", workflow_id=stored.id, lane=stored.lane, idempotency_key=idempotency_key)
        self.runner.wake()
        return stored, True

    def _new(self, request: WithdrawalRequest, key: str | None) -> tuple[Workflow, Event]:
        now = self.clock.now()
        wf_id = new_workflow_id()
        event = Event(
            workflow_id=wf_id, seq=1, at=now, trigger="create", from_state=None, to_state=State.PENDING.value,
            data={"request": request.to_dict(), "idempotency_key": key},
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
        )
        return workflow, event

    @staticmethod
    def _replay(existing: Workflow, request: WithdrawalRequest, key: str) -> Workflow:
        if not existing.request.same_as(request):
            raise IdempotencyConflict(
                f"idempotency key {key!r} was used for a different request (workflow {existing.id})"
            )
        return existing

    async def get(self, workflow_id: str) -> Workflow:
        """The workflow as stored now."""
        return await self.store.get(workflow_id)

    async def list(
        self, *, state: State | None = None, limit: int = 100, before: str | None = None
    ) -> builtins.list[Workflow]:
        """Newest first; pass the last id as ``before`` for the next page."""
        if not 1 <= limit <= 1000:
            raise InvalidRequest("must be between 1 and 1000", field="limit")
        return await self.store.list(state=state, limit=limit, before_id=before)

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

    async def stream(
        self,
        *,
        after: str | None = None,
        from_start: bool = False,
        workflow_id: str | None = None,
        account: str | None = None,
        event_types: Collection[str] | None = None,
        poll_interval: float = 1.0,
    ) -> AsyncIterator[FeedItem]:
        """Every committed event across workflows, live, in the store's one total order (:meth:`Store.feed`).

        Starts behind the cursor ``after`` (an item's ``cursor``: resuming there loses and repeats
        nothing), else at the first stored event with ``from_start``, else now (only what commits from
        here on). Filters: one workflow, one account, a set of triggers (``event_types``). It wakes at once
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
                if _matches(item, workflow_id, account, wanted):
                    yield item
            if len(page) < FEED_PAGE:
                await self._changed_or(poll_interval)


#: Events read from the store per feed query by :meth:`Engine.stream`.
FEED_PAGE = 500


def _matches(item: FeedItem, workflow_id: str | None, account: str | None, triggers: frozenset[str]) -> bool:
    """Whether a feed item passes :meth:`Engine.stream`'s filters (each one unset passes everything)."""
    return (
        (workflow_id is None or item.event.workflow_id == workflow_id)
        and (account is None or item.account == account)
        and (not triggers or item.event.trigger in triggers)
    )
