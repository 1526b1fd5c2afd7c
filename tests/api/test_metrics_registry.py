"""engine.metrics on its own: hooks feed the right series, per-engine registries never mix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from prometheus_client import REGISTRY

from engine.metrics import Metrics
from engine.models import Event, State, WithdrawalRequest, Workflow
from engine.upbit.auth import Credentials
from engine.upbit.client import UpbitClient
from engine.upbit.gateway import Gateway

T0 = datetime(2026, 1, 1, tzinfo=UTC)
REQUEST = WithdrawalRequest(currency="BTC", net_type="BTC", amount=Decimal("0.01"), address="bc1qexample")


def _wf(state: State) -> Workflow:
    return Workflow(id="wd_01", state=state, request=REQUEST, created_at=T0, updated_at=T0)


def _event(src: str | None, dst: str, seconds: float, trigger: str = "t") -> Event:
    return Event(
        workflow_id="wd_01", seq=2, at=T0 + timedelta(seconds=seconds), trigger=trigger, from_state=src, to_state=dst
    )


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


class FakeStore:
    """Only what Metrics.refresh reads."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    async def count_by_state(self) -> dict[str, int]:
        return dict(self.counts)


class TestHooks:
    def test_transition_counted_by_from_and_to(self) -> None:
        """Each committed state change increments its (from, to) series."""
        metrics = Metrics()
        metrics.observer(_wf(State.PENDING), _wf(State.VERIFYING_ADDRESS), _event("pending", "verifying_address", 0.1))
        metrics.observer(_wf(State.PENDING), _wf(State.VERIFYING_ADDRESS), _event("pending", "verifying_address", 0.2))
        labels = {"from_state": "pending", "to_state": "verifying_address"}
        assert _value(metrics, "upbit_withdraw_transitions_total", **labels) == 2.0

    def test_notes_and_creation_are_not_transitions(self) -> None:
        """A note keeps the state and the create event has no source: neither is counted."""
        metrics = Metrics()
        wf = _wf(State.CHECKING_WALLET)
        metrics.observer(wf, wf, _event("checking_wallet", "checking_wallet", 1, trigger="note"))
        metrics.observer(wf, _wf(State.PENDING), _event(None, "pending", 0, trigger="create"))
        assert "upbit_withdraw_transitions_total{" not in metrics.render().decode()

    def test_time_to_terminal_observed_on_terminal_states_only(self) -> None:
        """event.at - created_at lands in the histogram of the terminal state reached."""
        metrics = Metrics()
        metrics.observer(_wf(State.PROCESSING), _wf(State.DONE), _event("PROCESSING", "DONE", 42.0))
        metrics.observer(_wf(State.WAITING), _wf(State.PROCESSING), _event("WAITING", "PROCESSING", 10.0))
        assert _value(metrics, "upbit_withdraw_time_to_terminal_seconds_count", state="DONE") == 1.0
        assert _value(metrics, "upbit_withdraw_time_to_terminal_seconds_sum", state="DONE") == 42.0
        assert _value(metrics, "upbit_withdraw_time_to_terminal_seconds_count", state="PROCESSING") is None

    def test_exchange_calls_by_endpoint_and_status(self) -> None:
        """The client's call hook counts calls per (endpoint, status) and times them."""
        metrics = Metrics()
        metrics.call_observer("POST /v1/withdraws/coin", 201, 0.03)
        metrics.call_observer("GET /v1/withdraws", 0, 10.0)
        assert (
            _value(metrics, "upbit_withdraw_exchange_calls_total", endpoint="POST /v1/withdraws/coin", status="201")
            == 1.0
        )
        assert _value(metrics, "upbit_withdraw_exchange_calls_total", endpoint="GET /v1/withdraws", status="0") == 1.0
        assert _value(metrics, "upbit_withdraw_exchange_call_seconds_count", endpoint="GET /v1/withdraws") == 1.0


class TestScrape:
    async def test_workflow_gauge_from_store(self) -> None:
        """refresh() sets every non-terminal state, 0 for absent ones; terminal states are not in flight."""
        metrics = Metrics()
        metrics.bind_store(FakeStore({"WAITING": 3, "DONE": 7}))  # type: ignore[arg-type]
        await metrics.refresh()
        assert _value(metrics, "upbit_withdraw_workflows", state="WAITING") == 3.0
        assert _value(metrics, "upbit_withdraw_workflows", state="pending") == 0.0
        assert _value(metrics, "upbit_withdraw_workflows", state="DONE") is None

    async def test_pending_webhook_deliveries_gauge(self) -> None:
        """refresh() reads the pending deliveries from the bound webhook storage; unbound, the gauge stays 0."""
        metrics = Metrics()
        await metrics.refresh()
        assert _value(metrics, "upbit_withdraw_webhook_deliveries_pending") == 0.0

        class Backlog:
            async def pending_count(self) -> int:
                return 42

        metrics.bind_webhooks(Backlog())  # type: ignore[arg-type]
        await metrics.refresh()
        assert _value(metrics, "upbit_withdraw_webhook_deliveries_pending") == 42.0

    async def test_rate_limit_counters_read_at_scrape_time(self) -> None:
        """The limiter's stats are read when scraped, per account."""
        gateway = Gateway(UpbitClient(Credentials("k", "s"), base_url="http://127.0.0.1:9"))
        metrics = Metrics()
        metrics.bind_gateways({"desk": gateway})
        stats = gateway.client.limiter.stats
        stats.waited, stats.wait_seconds, stats.throttles, stats.blocks = 4, 1.5, 2, 1
        assert _value(metrics, "upbit_withdraw_ratelimit_waits_total", account="desk") == 4.0
        assert _value(metrics, "upbit_withdraw_ratelimit_wait_seconds_total", account="desk") == 1.5
        assert _value(metrics, "upbit_withdraw_ratelimit_throttles_total", account="desk") == 2.0
        assert _value(metrics, "upbit_withdraw_ratelimit_blocks_total", account="desk") == 1.0
        stats.waited = 5
        assert _value(metrics, "upbit_withdraw_ratelimit_waits_total", account="desk") == 5.0
        metrics.bind_gateways({"other": gateway})  # a second bind is ignored, not a duplicate registration
        await gateway.aclose()

    def test_registries_are_per_engine(self) -> None:
        """Two Metrics never share series, and nothing lands in prometheus_client's global registry."""
        first, second = Metrics(), Metrics()
        first.call_observer("GET /v1/withdraws", 200, 0.01)
        assert _value(second, "upbit_withdraw_exchange_calls_total", endpoint="GET /v1/withdraws", status="200") is None
        assert (
            REGISTRY.get_sample_value(
                "upbit_withdraw_exchange_calls_total", {"endpoint": "GET /v1/withdraws", "status": "200"}
            )
            is None
        )

    def test_render_is_prometheus_text(self) -> None:
        """render() is the text exposition format, with HELP and TYPE lines."""
        text = Metrics().render().decode()
        assert "# TYPE upbit_withdraw_transitions_total counter" in text
        assert "# TYPE upbit_withdraw_time_to_terminal_seconds histogram" in text
        assert "# TYPE upbit_withdraw_workflows gauge" in text

    def test_render_has_no_created_series(self) -> None:
        """Counters and histograms are rendered without their *_created series, which the registry still
        has (the filter is per render, not prometheus_client's process-global switch)."""
        metrics = Metrics()
        metrics.call_observer("GET /v1/withdraws", 200, 0.01)
        metrics.observer(_wf(State.PENDING), _wf(State.DONE), _event("pending", "done", 1.0))
        text = metrics.render().decode()
        assert 'upbit_withdraw_exchange_calls_total{endpoint="GET /v1/withdraws",status="200"} 1.0' in text
        assert "upbit_withdraw_time_to_terminal_seconds_count" in text
        assert "_created" not in text
        labels = {"endpoint": "GET /v1/withdraws", "status": "200"}
        assert _value(metrics, "upbit_withdraw_exchange_calls_created", **labels) is not None

    def test_repr(self) -> None:
        """The repr says whether a store is bound."""
        metrics = Metrics()
        assert repr(metrics) == "<Metrics unbound>"
        metrics.bind_store(FakeStore({}))  # type: ignore[arg-type]
        assert repr(metrics) == "<Metrics bound>"
