"""Prometheus metrics of one engine, in their own registry (never the process-global one).

What is measured, and where it comes from:

- ``upbit_withdraw_transitions_total{from_state,to_state}``: every committed state change, fed by the
  :data:`~engine.context.TransitionObserver` hook (notes, which keep the state, are not counted).
- ``upbit_withdraw_time_to_terminal_seconds{state}``: from creation to the terminal state, observed when
  a transition lands in one (``event.at - workflow.created_at``).
- ``upbit_withdraw_exchange_calls_total{endpoint,status}`` and
  ``upbit_withdraw_exchange_call_seconds{endpoint}``: every exchange call, fed by the client's
  :data:`~engine.upbit.client.CallObserver` hook (status ``0``: no answer).
- ``upbit_withdraw_ratelimit_*_total{account}``: each account's rate limiter counters (calls granted,
  calls that had to wait, seconds waited, 429s, 418 blocks), read from ``limiter.stats`` at scrape time.
- ``upbit_withdraw_workflows{state}``: how many workflows are in each non-terminal state, refreshed from
  ``store.count_by_state()`` by :meth:`Metrics.refresh` (the HTTP ``/metrics`` route calls it per scrape).
- ``upbit_withdraw_webhook_deliveries_pending``: webhook deliveries not yet delivered nor given up (all
  subscriptions), refreshed the same way when :meth:`Metrics.bind_webhooks` was called: a backlog that
  only grows means a receiver is down (alert on it, beside the attempts counter of
  :mod:`engine.webhook_delivery`).

Counters and histograms are rendered without their ``*_created`` series (the time each label set was
first seen): they double the series count and nothing here reads them. The filter is per registry
(:class:`_WithoutCreated`), not the process-global ``disable_created_metrics()``.

Only the process that runs the runner sees transitions and exchange calls; an API-only process still
reports the workflow gauge, which is read from the shared store.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from engine.kinds import KindRegistry, default_kinds
from engine.models import Event, Workflow

if TYPE_CHECKING:
    from engine.core import Engine
    from engine.store.base import Store
    from engine.store.webhooks import WebhookStore
    from engine.upbit.gateway import Gateway

__all__ = ["CONTENT_TYPE", "Metrics"]

#: The ``Content-Type`` of :meth:`Metrics.render`'s output (Prometheus text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds from submission to a terminal state: pre-flight aborts take milliseconds, a paused wallet
#: up to the pre-flight deadline (30 min by default), a slow chain hours.
TERMINAL_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _RateLimitCollector(Collector):
    """Reads every gateway's ``client.limiter.stats`` when Prometheus scrapes."""

    def __init__(self, gateways: Mapping[str, Gateway]) -> None:
        self._gateways = gateways

    def collect(self) -> Iterator[Metric]:
        families = {
            "granted": CounterMetricFamily(
                "upbit_withdraw_ratelimit_granted", "Exchange calls let through the limiter.", labels=["account"]
            ),
            "waited": CounterMetricFamily(
                "upbit_withdraw_ratelimit_waits", "Exchange calls that had to wait for a slot.", labels=["account"]
            ),
            "wait_seconds": CounterMetricFamily(
                "upbit_withdraw_ratelimit_wait_seconds", "Seconds spent waiting for a slot.", labels=["account"]
            ),
            "throttles": CounterMetricFamily(
                "upbit_withdraw_ratelimit_throttles", "429 answers (too many requests).", labels=["account"]
            ),
            "blocks": CounterMetricFamily(
                "upbit_withdraw_ratelimit_blocks", "418 answers (the account was blocked).", labels=["account"]
            ),
        }
        for account, gateway in sorted(self._gateways.items()):
            stats = gateway.client.limiter.stats
            for attr, family in families.items():
                family.add_metric([account], float(getattr(stats, attr)))
        yield from families.values()


class _WithoutCreated(Collector):
    """A registry's metrics without their ``<name>_created`` samples."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            created = f"{metric.name}_created"
            metric.samples = [sample for sample in metric.samples if sample.name != created]
            yield metric


class Metrics:
    """One engine's metrics. Pass :attr:`observer` and :attr:`call_observer` to ``build_engine``.

    Example::

        metrics = Metrics()
        engine = build_engine(config, observers=[metrics.observer], call_observer=metrics.call_observer)
        metrics.bind(engine)
        ...
        await metrics.refresh()
        body = metrics.render()
    """

    def __init__(self, kinds: KindRegistry | None = None) -> None:
        #: Which states are terminal is each workflow kind's word (default: the standard kinds).
        self.kinds = kinds if kinds is not None else default_kinds()
        self._in_flight = sorted({s for kind in self.kinds.values() for s in kind.states if not kind.is_terminal(s)})
        self.registry = CollectorRegistry()
        self.transitions = Counter(
            "upbit_withdraw_transitions",
            "Committed workflow state changes.",
            ["from_state", "to_state"],
            registry=self.registry,
        )
        self.time_to_terminal = Histogram(
            "upbit_withdraw_time_to_terminal_seconds",
            "Seconds from creation to a terminal state, by terminal state.",
            ["state"],
            buckets=TERMINAL_BUCKETS,
            registry=self.registry,
        )
        self.calls = Counter(
            "upbit_withdraw_exchange_calls",
            "Exchange API calls by endpoint and HTTP status (0: no answer).",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.call_seconds = Histogram(
            "upbit_withdraw_exchange_call_seconds",
            "Duration of exchange API calls.",
            ["endpoint"],
            buckets=CALL_BUCKETS,
            registry=self.registry,
        )
        self.late_withdrawals = Counter(
            "upbit_withdraw_late_withdrawals",
            "Withdrawals that appeared at the exchange for an abandoned workflow (attributed to it; alert on any).",
            registry=self.registry,
        )
        self.workflows = Gauge(
            "upbit_withdraw_workflows",
            "Workflows in each non-terminal state (read from the store).",
            ["state"],
            registry=self.registry,
        )
        self.webhooks_pending = Gauge(
            "upbit_withdraw_webhook_deliveries_pending",
            "Webhook deliveries still pending (read from the store; a growing backlog: a receiver is down).",
            registry=self.registry,
        )
        self._store: Store | None = None
        self._webhooks: WebhookStore | None = None
        self._rate_limits: _RateLimitCollector | None = None

    def __repr__(self) -> str:
        bound = "bound" if self._store is not None else "unbound"
        return f"<Metrics {bound}>"

    def bind(self, engine: Engine) -> None:
        """Read the workflow gauge from ``engine.store`` and rate-limit counters from its gateways."""
        self.bind_store(engine.store)
        self.bind_gateways(engine.gateways)

    def bind_store(self, store: Store) -> None:
        """The store :meth:`refresh` reads the workflow counts from."""
        self._store = store

    def bind_webhooks(self, webhooks: WebhookStore) -> None:
        """The webhook storage :meth:`refresh` reads the pending deliveries from."""
        self._webhooks = webhooks

    def bind_gateways(self, gateways: Mapping[str, Gateway]) -> None:
        """Report these gateways' rate-limiter counters (once; later calls are ignored)."""
        if self._rate_limits is None:
            self._rate_limits = _RateLimitCollector(gateways)
            self.registry.register(self._rate_limits)

    # -- hooks -------------------------------------------------------------------------------------

    def observer(self, before: Workflow, after: Workflow, event: Event) -> None:
        """TransitionObserver: count the state change; time it when it lands in a terminal state."""
        if event.data.get("note") == "late_withdrawal":
            self.late_withdrawals.inc(len(event.data.get("exchange_uuids") or ()))
        if event.from_state is None or event.from_state == event.to_state:
            return
        self.transitions.labels(from_state=event.from_state, to_state=event.to_state).inc()
        if self.kinds[after.kind].is_terminal(after.state):
            seconds = (event.at - after.created_at).total_seconds()
            self.time_to_terminal.labels(state=str(after.state)).observe(max(0.0, seconds))

    def call_observer(self, endpoint: str, status: int, seconds: float) -> None:
        """CallObserver: count the exchange call and its duration."""
        self.calls.labels(endpoint=endpoint, status=str(status)).inc()
        self.call_seconds.labels(endpoint=endpoint).observe(max(0.0, seconds))

    # -- scraping ------------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Re-read the per-state workflow counts and the pending webhook deliveries from the store (each
        a no-op when its store is not bound)."""
        if self._store is not None:
            self.set_workflow_counts((await self._store.count_by_state()).items())
        if self._webhooks is not None:
            self.webhooks_pending.set(await self._webhooks.pending_count())

    def set_workflow_counts(self, counts: Iterable[tuple[str, int]]) -> None:
        """Set the gauge: every non-terminal state gets a value (0 when absent)."""
        by_state = dict(counts)
        for state in self._in_flight:
            self.workflows.labels(state=state).set(by_state.get(state, 0))

    def render(self) -> bytes:
        """The registry in Prometheus text format (see :data:`CONTENT_TYPE`)."""
        return generate_latest(_WithoutCreated(self.registry))
