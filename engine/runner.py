"""The asyncio runner: claim due workflows, step them under a concurrency bound, persist, repeat.

A sleeping workflow costs nothing here: it is a row with ``next_run_at``; no task, no machine object.
The runner runs any registered kind: a claimed workflow goes to its kind's step for its state
(``kinds[wf.kind].step(state)``), after the kind's deadline rule had its say. The loop leases what is
due (up to the free slots), drives each leased workflow through as many steps as are due right away,
and gives the lease back. Between rounds it sleeps until the earliest due time, a wake-up (a new
submission, a cancel) or a freed slot, whichever comes first.

A step that fails does not fail its workflow: a read error reschedules it with tenacity backoff (and
past its kind's deadline the kind ends it: a withdrawal aborts, nothing having been sent); a lost
compare-and-set ends the drive and the workflow is picked up again from the store. Shutdown stops
claiming, lets steps in flight finish (a POST in flight gets its answer recorded) for ``drain_timeout``
seconds, then cancels what remains; the store already says where each of those stands, so the next
start resumes them.

Losing the store is not fatal either. A failed claim, a step whose write could not reach the store, a
database restart or a full disk makes the runner stop claiming and retry after a capped, jittered
exponential backoff (tenacity's shape, :func:`~engine.backoff.backoff_delay`); steps in flight carry on
(their writes fail or succeed on their own). :attr:`Runner.store_ready` is False from the first failure
until a store operation proves it back (a claim with nothing to do, or a step's write), which is what
``/readyz`` reports; the loop itself never ends for it, so ``/healthz`` (liveness) stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping

import structlog

from engine.backoff import backoff_delay
from engine.context import StepContext
from engine.errors import (
    EngineError,
    ExchangeError,
    InvalidTransition,
    StaleVersion,
    StoreError,
    StoreUnavailable,
    WorkflowNotFound,
)
from engine.kinds import Step
from engine.models import Workflow

__all__ = ["Runner"]

log = structlog.get_logger("engine.runner")


class Runner:
    """Drives workflows from the store. One per process (per SQLite file; several on PostgreSQL)."""

    def __init__(
        self,
        ctx: StepContext,
        *,
        concurrency: int = 200,
        lease_seconds: float = 30.0,
        idle_poll: float = 1.0,
        max_chain: int = 12,
        drain_timeout: float = 30.0,
        exclusive: bool = True,
        store_retry_initial: float = 0.1,
        store_retry_max: float = 5.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 0 < store_retry_initial <= store_retry_max:
            raise ValueError("need 0 < store_retry_initial <= store_retry_max")
        self.ctx = ctx
        self.owner = ctx.owner or f"runner-{secrets.token_hex(4)}"
        self.ctx.owner = self.owner
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.idle_poll = idle_poll
        self.max_chain = max_chain
        self.drain_timeout = drain_timeout
        self.exclusive = exclusive
        self.store_retry_initial = store_retry_initial
        self.store_retry_max = store_retry_max
        self._store_failures = 0
        self._store_ready = False
        self.running = False
        self._last_round = time.monotonic()
        self.store_error: str | None = None
        self.store_outages = 0
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._parked = 0
        self._released: list[str] = []
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.steps_run = 0
        self.claims = 0
        self.claimed = 0
        self.ctx.park = self._park
        self.ctx.wake = self.wake

    def __repr__(self) -> str:
        return f"<Runner {self.owner} inflight={len(self._inflight)}/{self.concurrency} steps={self.steps_run}>"

    def wake(self) -> None:
        """Look for due work now (a submission or a cancel just arrived)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming; ``run`` drains and returns."""
        self._stopping.set()
        self._wake.set()

    @property
    def store_ready(self) -> bool:
        """The store answered the runner's last operations (False until started, and during an outage)."""
        return self._store_ready

    def stalled(self, after: float) -> bool:
        """The loop has not started a round for ``after`` seconds while running (it is stuck somewhere).

        A healthy loop starts one at least every ``idle_poll`` seconds, or every backoff step during a
        store outage; every store call it makes is bounded by the store's own timeouts."""
        return self.running and time.monotonic() - self._last_round > after

    @property
    def inflight(self) -> int:
        """Workflows being stepped right now."""
        return len(self._inflight)

    @property
    def parked(self) -> int:
        """Workflows whose step waits for shared work (a batched poll): they hold no concurrency slot."""
        return self._parked

    @contextlib.contextmanager
    def _park(self) -> Iterator[None]:
        """Around a wait for shared work: the slot is lent to other due workflows meanwhile (at most
        ``concurrency`` workflows park at once, so tasks stay bounded)."""
        if self._free() <= 0:  # the runner is full: the lent slot lets it claim another due workflow
            self._wake.set()
        self._parked += 1
        try:
            yield
        finally:
            self._parked -= 1

    def _free(self) -> int:
        return self.concurrency - len(self._inflight) + min(self._parked, self.concurrency)

    # -- the loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop`; then drain. A store outage pauses the loop; it never ends it."""
        heartbeat: asyncio.Task[None] | None = None
        self.running = True
        try:
            if not await self._until_store_answers(self._take_over):
                return
            log.info("runner.started", owner=self.owner, pid=os.getpid(), concurrency=self.concurrency)
            heartbeat = asyncio.create_task(self._heartbeat(), name="runner-heartbeat")
            while not self._stopping.is_set():
                await self._until_store_answers(self._round)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
            await self._drain()
            self.running = False

    async def _take_over(self) -> None:
        """Start-up: an exclusive runner drops the leases a dead predecessor held; listen for new work."""
        if self.exclusive:
            await self.ctx.store.clear_leases()
        listen = getattr(self.ctx.store, "listen", None)
        if listen is not None:  # PostgreSQL: NOTIFY on new work wakes us; polling stays the fallback
            await listen(self.wake)
        self._store_answered()

    async def _until_store_answers(self, operation: Callable[[], Awaitable[None]]) -> bool:
        """Run ``operation``; while the store fails, back off and run it again. False: stopped first."""
        while not self._stopping.is_set():
            self._last_round = time.monotonic()
            if self._store_failures:
                await self._back_off()
                if self._stopping.is_set():
                    break
            try:
                await operation()
            except StoreError as exc:  # StaleVersion and LaneBusy never reach here: steps handle them
                self._store_failed(exc)
            else:
                return True
        return False

    async def _back_off(self) -> None:
        """Sleep the store backoff (capped exponential with jitter); :meth:`stop` cuts it short."""
        delay = backoff_delay(
            min(self._store_failures - 1, 30),
            initial=self.store_retry_initial,
            maximum=self.store_retry_max,
            jitter=min(1.0, self.store_retry_max / 2),
        )
        log.info("runner.store_retry", failures=self._store_failures, delay=round(delay, 3))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    def _store_failed(self, exc: StoreError) -> None:
        """A store operation failed: stop claiming until the backoff has passed."""
        if self._store_ready or self._store_failures == 0:
            self.store_outages += 1
            log.warning("runner.store_unavailable", error=str(exc), kind=type(exc).__name__)
        self._store_failures += 1
        self._store_ready = False
        self.store_error = f"{type(exc).__name__}: {exc}"

    def _store_answered(self) -> None:
        """A store operation succeeded (a claim with nothing to do, a start-up, a step's write)."""
        if self._store_failures:
            log.info("runner.store_recovered", failures=self._store_failures)
        self._store_failures = 0
        self._store_ready = True
        self.store_error = None

    async def run_until_idle(self, *, timeout: float = 60.0) -> None:
        """Run until no workflow is scheduled (all terminal or awaiting an operator), or ``timeout``.

        Deterministic endings for tests and batch jobs (arq's burst mode)."""

        async def watch() -> None:
            while True:
                await asyncio.sleep(0.02)
                with contextlib.suppress(StoreError):
                    if not self._inflight and await self.ctx.store.next_due_at(any_lease=True) is None:
                        self.stop()
                        return

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.wait_for(self.run(), timeout)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _round(self) -> None:
        await self._flush_releases()
        free = self._free()
        claimed: list[Workflow] = []
        if free > 0:
            claimed = await self.ctx.store.claim_due(
                now=self.ctx.now(), limit=free, owner=self.owner, lease_seconds=self.lease_seconds
            )
            self.claims += 1
            self.claimed += len(claimed)
            if claimed:  # a claim is a write that went through: the store is back, whatever the steps meet
                self._store_answered()
            for wf in claimed:
                self._start(wf)
        if claimed and len(claimed) == free:
            await asyncio.sleep(0)
            return
        await self._idle(answered=not claimed)

    async def _idle(self, *, answered: bool) -> None:
        # Clear before looking: a drive that ends (or a submission that lands) while we query must not
        # have its wake-up erased, or a workflow released just now waits a whole ``idle_poll``.
        self._wake.clear()
        due = await self.ctx.store.next_due_at()
        if answered:  # a claim with nothing to do and a read both went through: the store is back
            self._store_answered()
        delay = self.idle_poll
        if due is not None:
            delay = min(delay, max(0.0, (due - self.ctx.now()).total_seconds()))
        if delay <= 0 and self._free() <= 0:
            delay = self.idle_poll
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(delay, 0.001))

    def _start(self, wf: Workflow) -> None:
        task = asyncio.create_task(self._drive(wf), name=f"drive-{wf.id}")
        self._inflight[wf.id] = task
        task.add_done_callback(functools.partial(self._finished, wf.id))

    def _finished(self, workflow_id: str, _task: object = None) -> None:
        self._inflight.pop(workflow_id, None)
        self._released.append(workflow_id)
        self._wake.set()

    async def _flush_releases(self) -> None:
        if self._released:
            ids, self._released = self._released, []
            try:
                await self.ctx.store.release(ids, owner=self.owner)
            except StoreError:
                self._released = ids + self._released  # give them back on the next round
                raise

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            with contextlib.suppress(StoreError):
                await self.ctx.store.renew(
                    list(self._inflight), now=self.ctx.now(), owner=self.owner, lease_seconds=self.lease_seconds
                )

    async def _drain(self) -> None:
        tasks = list(self._inflight.values())
        if tasks:
            log.info("runner.draining", inflight=len(tasks), timeout=self.drain_timeout)
            _, pending = await asyncio.wait(tasks, timeout=self.drain_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        try:
            await self._flush_releases()
        except StoreError as exc:  # the leases expire (or the next exclusive start clears them)
            log.warning("runner.release_failed", error=str(exc), leases=len(self._released))
        log.info("runner.stopped", owner=self.owner, steps=self.steps_run)

    # -- driving one workflow ----------------------------------------------------------------------

    async def _drive(self, wf: Workflow) -> None:
        """Step ``wf`` while it is due at once (up to ``max_chain`` steps). Transitions between the kind's
        chainable states wait for the drive's next write (see :meth:`StepContext.transition`): the last
        of them is written when the drive ends, whatever ended it."""
        # The drive is its own task (its own copy of the context): bind and reset, without the lookups of
        # ``bound_contextvars`` (it reads the whole context to restore keys no task here shares).
        tokens = structlog.contextvars.bind_contextvars(workflow_id=wf.id)
        self.ctx.open_chain(wf.id)
        try:
            last = await self._chain(wf)
            if last is not None:
                await self._flush(last)
        finally:
            self.ctx.close_chain(wf.id)  # after a cancellation: dropped, as a crash would (steps redo them)
            structlog.contextvars.reset_contextvars(**tokens)

    async def _chain(self, wf: Workflow) -> Workflow | None:
        current: Workflow | None = wf
        for _ in range(self.max_chain):
            if current is None or not self._due(current):
                break
            step = self.ctx.kinds[current.kind].step(current.state)
            if step is None:
                break
            current = await self._step(step, current)
        return current

    async def _flush(self, wf: Workflow) -> bool:
        """Write the transitions of ``wf`` still waiting; False if the store refused them (dropped)."""
        try:
            wrote = await self.ctx.flush_chain(wf.id)
        except (StaleVersion, StoreUnavailable) as exc:
            self._step_dropped(wf, exc)
            return False
        except EngineError as exc:  # LaneBusy, a plain StoreError: the store still says where it stands
            log.warning("workflow.chain_not_written", workflow_id=wf.id, state=wf.state, error=str(exc))
            return False
        if wrote:  # a write went through: the store is back (nothing written proves nothing)
            self._store_answered()
        return True

    def _due(self, wf: Workflow) -> bool:
        return wf.next_run_at is not None and wf.next_run_at <= self.ctx.now()

    async def _step(self, step: Step, wf: Workflow) -> Workflow | None:
        self.steps_run += 1
        try:
            kind = self.ctx.kinds[wf.kind]
            if kind.past_deadline(wf, self.ctx.now()):
                return await kind.expire(wf, self.ctx)
            stepped: Workflow | None = await step(wf, self.ctx)
        except (StaleVersion, StoreUnavailable) as exc:  # the store says where it stands: claimed again later
            self.ctx.close_chain(wf.id)
            self._step_dropped(wf, exc)
            return None
        except ExchangeError as exc:
            return await self._retry_later(wf, exc, exc.as_dict())
        except (InvalidTransition, WorkflowNotFound) as exc:
            log.error("workflow.step_refused", workflow_id=wf.id, state=wf.state, error=str(exc))
            return await self._retry_later(wf, exc, {"error": type(exc).__name__, "message": str(exc)})
        except Exception as exc:
            log.exception("workflow.step_crashed", workflow_id=wf.id, state=wf.state)
            return await self._retry_later(wf, exc, {"error": type(exc).__name__, "message": str(exc)})
        self._store_answered()
        return stepped

    def _step_dropped(self, wf: Workflow, exc: StoreError) -> None:
        if isinstance(exc, StoreUnavailable):
            self._store_failed(exc)
            log.info("workflow.store_unavailable", workflow_id=wf.id, state=wf.state)
        else:
            log.info("workflow.moved_elsewhere", workflow_id=wf.id)

    async def _retry_later(self, wf: Workflow, exc: Exception, error: Mapping[str, object]) -> Workflow | None:
        """Reschedule with backoff after a failed step (never an event per retry: they can be many). What the
        drive's earlier steps did is written first (it stands: their transitions are not the failure)."""
        if not await self._flush(wf):
            return None
        settings = self.ctx.settings
        delay = backoff_delay(
            wf.attempt, initial=settings.read_retry_initial, maximum=settings.read_retry_max, jitter=0.5
        )
        log.warning("workflow.retry_later", workflow_id=wf.id, state=wf.state, delay=round(delay, 3), error=str(exc))
        try:
            fresh = await self.ctx.store.get(wf.id)
            if fresh.version != wf.version:
                return None
            return await self.ctx.reschedule(fresh, delay, attempt=wf.attempt + 1, error=dict(error))
        except StoreUnavailable as store_exc:
            self._store_failed(store_exc)
            return None
        except EngineError:
            return None
