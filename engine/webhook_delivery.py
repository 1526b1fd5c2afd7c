"""The webhook delivery worker: fans committed events out to subscriptions and sends them, signed.

It runs as its own asyncio task beside the runner (``upbit-withdraw run`` starts it), with its own
aiohttp session, its own connection limit and a timeout on every request. It takes no exchange budget
and no runner slot: a slow or dead receiver costs the withdrawals nothing.

Each round:

1. **Fan out.** For every live subscription, read the global feed after its stored cursor and, in one
   store transaction, move the cursor and insert one delivery row per wanted event
   (:meth:`~engine.store.webhooks.WebhookStore.fan_out`, a compare-and-set: with several workers only
   one fans out a given range). Events are the outbox: they commit with their transition, so none is
   lost and none is sent for a transition that did not commit.
2. **Deliver.** Claim due deliveries with a lease (one worker each; in order per workflow per
   subscription), POST each signed body, and record the attempt. A 2xx answer delivers it; anything
   else (an error status, a refused connection, a timeout) schedules a retry after tenacity's
   exponential backoff with jitter, until ``retry_period`` has passed since the first attempt: then the
   delivery is marked ``failed`` (listed in the delivery log; it can be redelivered).

A crash at any point loses nothing: an unfinished attempt's lease lapses and the delivery is sent again
(at least once, with the same ``Upbit-Withdraw-Event-Id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from prometheus_client import CollectorRegistry, Counter, Histogram
from tenacity import RetryCallState, wait_exponential_jitter

from engine.config import WebhookDeliveryConfig
from engine.errors import EngineError, InvalidCursor
from engine.models import Event, Workflow
from engine.store.base import FeedItem, Store
from engine.store.webhooks import DELIVERED, FAILED, PENDING, Delivery, NewDelivery, Subscription, webhook_store
from engine.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    event_id,
    event_types,
    is_public_address,
    payload,
    primary_type,
    sign,
    target_problem,
)

__all__ = ["DeliverySettings", "WebhookDispatcher", "WebhookMetrics", "deliveries_for"]

log = structlog.get_logger("engine.webhooks")

LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """The worker's knobs (``[webhook_delivery]`` in the configuration)."""

    allow_private_targets: bool = False
    concurrency: int = 16
    timeout: float = 10.0
    retry_period: float = 86400.0
    retry_initial: float = 1.0
    retry_max_interval: float = 600.0
    poll_interval: float = 0.5
    lease_seconds: float = 60.0
    page: int = 500

    @classmethod
    def from_config(cls, config: WebhookDeliveryConfig) -> DeliverySettings:
        """From a :class:`~engine.config.WebhookDeliveryConfig`."""
        return cls(
            allow_private_targets=config.allow_private_targets, concurrency=config.concurrency,
            timeout=config.timeout, retry_period=config.retry_period, retry_initial=config.retry_initial,
            retry_max_interval=config.retry_max_interval, poll_interval=config.poll_interval,
            lease_seconds=config.lease_seconds,
        )  # fmt: skip


class WebhookMetrics:
    """Delivery outcomes and lag, in the engine's registry (``Metrics().registry``) or a new one."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.attempts = Counter(
            "upbit_withdraw_webhook_deliveries",
            "Webhook delivery attempts by outcome (delivered, retry: will be tried again, failed: gave up).",
            ["outcome"],
            registry=self.registry,
        )
        self.lag = Histogram(
            "upbit_withdraw_webhook_delivery_lag_seconds",
            "Seconds from an event's commit time to its successful delivery.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )


def deliveries_for(sub: Subscription, items: Sequence[FeedItem]) -> list[NewDelivery]:
    """The delivery rows a page of the feed makes for ``sub`` (only the event types it wants)."""
    rows: list[NewDelivery] = []
    for item in items:
        ev = item.event
        types = event_types(kind=item.kind, from_state=ev.from_state, to_state=ev.to_state)
        chosen = primary_type(types, sub.events)
        if chosen is None:
            continue
        body = payload(
            type_=chosen, types=types, workflow_id=ev.workflow_id, seq=ev.seq, kind=item.kind, account=item.account,
            at=ev.at, trigger=ev.trigger, from_state=ev.from_state, to_state=ev.to_state, data=ev.data,
            hash_=ev.hash, reference=item.reference, batch_id=item.parent_id,
        )  # fmt: skip
        the_id = event_id(ev.workflow_id, ev.seq)
        rows.append(NewDelivery(the_id, ev.workflow_id, ev.seq, chosen, body, ev.at.timestamp()))
    return rows


class _PublicOnlyResolver(AbstractResolver):
    """Resolves names like aiohttp does, but refuses any that resolves to a private or loopback address,
    so a name cannot be pointed at an internal service after it was accepted."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if any(not is_public_address(r["host"]) for r in results):
            raise OSError(f"{host} resolves to a loopback or private address")
        return results

    async def close(self) -> None:
        await self._inner.close()


class WebhookDispatcher:
    """Fans out and delivers webhooks for one store; :meth:`run` until ``stop`` is set.

    ``observer`` (a transition observer) wakes it as soon as the runner commits, so a delivery does not
    wait for the next poll. Several dispatchers (processes) may share a PostgreSQL store.
    """

    def __init__(
        self,
        store: Store,
        *,
        settings: DeliverySettings | None = None,
        metrics: WebhookMetrics | None = None,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.hooks = webhook_store(store)
        self.settings = settings or DeliverySettings()
        self.metrics = metrics or WebhookMetrics()
        self.owner = owner or f"webhooks-{socket.gethostname()}-{id(self):x}"
        self._clock = clock
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._wait = wait_exponential_jitter(
            multiplier=self.settings.retry_initial, max=self.settings.retry_max_interval, exp_base=2,
            jitter=self.settings.retry_initial,
        )  # fmt: skip
        self._subs: dict[str, Subscription] = {}
        #: Read the feed in the next round (set by a commit here, a redelivery, a full page, the poll
        #: timer); a round woken only by a finished delivery just claims, sparing the feed reads.
        self._new_events = True
        self._fanned_at = float("-inf")
        self.sent = 0

    def __repr__(self) -> str:
        return f"<WebhookDispatcher owner={self.owner} in_flight={len(self._in_flight)}>"

    def observer(self, before: Workflow, after: Workflow, event: Event) -> None:
        """TransitionObserver: an event committed; look for work now."""
        self.wake()

    def wake(self) -> None:
        """Look for new events and due deliveries now (e.g. after a commit or a redelivery request)."""
        self._new_events = True
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Fan out and deliver until ``stop``; in-flight requests are then abandoned (their leases lapse
        and they are sent again later: at least once)."""
        resolver = None if self.settings.allow_private_targets else _PublicOnlyResolver()
        connector = aiohttp.TCPConnector(limit=self.settings.concurrency, resolver=resolver)
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        stopper = asyncio.create_task(self._wake_on(stop))
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                while not stop.is_set():
                    self._wake.clear()
                    busy = await self._round(session)
                    if busy or stop.is_set():
                        await asyncio.sleep(0)
                        continue
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)
                await self._drain()
        finally:
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopper

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _drain(self) -> None:
        tasks = list(self._in_flight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _round(self, session: aiohttp.ClientSession) -> bool:
        """One fan-out pass and one claim; True when there may be more to do at once."""
        try:
            fanned = 0
            now = time.monotonic()
            if self._new_events or now - self._fanned_at >= self.settings.poll_interval:
                self._new_events, self._fanned_at = False, now
                fanned = await self.fan_out_once()
                self._new_events = fanned >= self.settings.page  # a full page: read on at once
            started = self._start_deliveries(session, await self._claim())
        except EngineError as exc:  # the store is down or refused: back off, never die
            log.warning("webhooks.store_error", error=type(exc).__name__, message=exc.message)
            self._new_events = True
            await asyncio.sleep(min(5.0, self.settings.poll_interval * 4))
            return False
        return fanned > 0 or started > 0

    async def fan_out_once(self) -> int:
        """Turn new events into delivery rows for every live subscription; how many feed items were consumed."""
        consumed = 0
        subs = await self.hooks.list_subscriptions()
        self._subs = {sub.id: sub for sub in subs}
        for sub in subs:
            try:
                items = await self.store.feed(after=sub.feed_cursor, limit=self.settings.page)
            except InvalidCursor:
                log.error("webhooks.cursor_invalid", subscription=sub.id)
                continue
            if not items:
                continue
            rows = deliveries_for(sub, items)
            moved = await self.hooks.fan_out(
                sub.id, read=sub.feed_cursor, to=items[-1].cursor, deliveries=rows, at=self._clock()
            )
            if moved:
                consumed += len(items)
                if rows:
                    self._wake.set()
        return consumed

    async def _claim(self) -> list[Delivery]:
        free = self.settings.concurrency - len(self._in_flight)
        if free <= 0:
            return []
        return await self.hooks.claim_deliveries(
            now=self._clock(), limit=free, owner=self.owner, lease_seconds=self.settings.lease_seconds
        )

    def _start_deliveries(self, session: aiohttp.ClientSession, claimed: list[Delivery]) -> int:
        for delivery in claimed:
            task = asyncio.create_task(self._deliver(session, delivery))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)
        return len(claimed)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhooks.delivery_crashed", error=repr(task.exception()))
        self._wake.set()

    async def deliver_once(self, session: aiohttp.ClientSession) -> int:
        """Claim and send what is due now, waiting for the answers (tests, the CLI); how many were sent."""
        claimed = await self._claim()
        await asyncio.gather(*(self._deliver(session, delivery) for delivery in claimed))
        return len(claimed)

    async def _deliver(self, session: aiohttp.ClientSession, delivery: Delivery) -> None:
        sub = self._subs.get(delivery.subscription_id)
        if sub is None:
            try:
                sub = await self.hooks.get_subscription(delivery.subscription_id)
            except EngineError:
                return  # deleted meanwhile (its lease lapses; it is never claimed again) or the store is down
        http_status, error = await self._send(session, sub, delivery)
        now = self._clock()
        if error is None:
            outcome, status, next_at = "delivered", DELIVERED, None
        else:
            next_at = now + self._backoff(delivery.attempts + 1)
            if next_at > delivery.retry_from + self.settings.retry_period:
                outcome, status, next_at = "failed", FAILED, None
            else:
                outcome, status = "retry", PENDING
        try:
            recorded = await self.hooks.finish_attempt(
                delivery.id, owner=self.owner, at=now, status=status, http_status=http_status, error=error,
                next_attempt_at=next_at,
            )  # fmt: skip
        except EngineError as exc:
            log.warning("webhooks.record_failed", delivery=delivery.event_id, error=type(exc).__name__)
            return
        self.metrics.attempts.labels(outcome=outcome).inc()
        if outcome == "delivered":
            self.sent += 1
            self.metrics.lag.observe(max(0.0, now - delivery.event_at))
        if outcome == "failed":
            log.warning("webhooks.delivery_failed", subscription=sub.id, event_id=delivery.event_id, error=error)
        if not recorded:
            log.info("webhooks.lease_lost", subscription=sub.id, event_id=delivery.event_id)

    def _backoff(self, attempt: int) -> float:
        """tenacity's exponential wait with jitter for this attempt number (the schedule is stored, so it
        survives a restart; tenacity computes it, nothing sleeps in process)."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return float(self._wait(state))

    async def _send(
        self, session: aiohttp.ClientSession, sub: Subscription, delivery: Delivery
    ) -> tuple[int | None, str | None]:
        """POST the signed body; (HTTP status, error or None). Never raises for the receiver's faults."""
        problem = target_problem(sub.url, allow_private=self.settings.allow_private_targets)
        if problem is not None:
            return None, f"target refused: {problem}"
        body = delivery.body.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "upbit-withdraw-webhooks/1",
            SIGNATURE_HEADER: sign(body, sub.secrets, timestamp=int(self._clock())),
            EVENT_ID_HEADER: delivery.event_id,
            "Upbit-Withdraw-Delivery-Attempt": str(delivery.attempts + 1),
        }
        try:
            async with session.post(sub.url, data=body, headers=headers, allow_redirects=False) as response:
                await response.content.readany()  # let the receiver finish; ignore what it says
                status = response.status
        except TimeoutError:
            return None, "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            return None, f"{type(exc).__name__}: connection failed"
        if 200 <= status < 300:
            return status, None
        return status, f"HTTP {status}"
