"""Auto-resolution's refusals at the step level: a real SQLite store and the real step, with a gateway
whose listing fails (the sandbox cannot fail exactly the one listing between two others on cue)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.bootstrap import standard_kinds
from engine.clock import FakeClock
from engine.context import StepContext
from engine.errors import ExchangeServerError
from engine.models import Event, State, WithdrawalRequest, Workflow
from engine.policy import AutoResolve, Policy
from engine.store.sqlite import SQLiteStore
from engine.upbit.skew import SkewEstimator
from tests.conftest import FAST
from workflows.withdrawal import step_needs_review

pytestmark = pytest.mark.asyncio


@dataclass
class _Client:
    skew: SkewEstimator = field(default_factory=SkewEstimator)


@dataclass
class FailingListings:
    """A gateway whose withdrawal listing always fails with a 500, and which must never POST."""

    client: _Client = field(default_factory=_Client)
    listings: int = 0

    async def recent_withdrawals(self, currency: str, since: datetime, *, max_pages: int = 5) -> list[Any]:
        self.listings += 1
        raise ExchangeServerError("500 from the exchange", status=500, endpoint="GET /v1/withdraws")

    def submit_slot(self) -> Any:
        raise AssertionError("no POST may follow a failed listing")


async def in_review(store: SQLiteStore, clock: FakeClock, listings: list[dict[str, Any]]) -> Workflow:
    now = clock.now()
    request = WithdrawalRequest(currency="BTC", net_type="BTC", amount=Decimal("0.01"), address="bc1qdest0")
    event = Event(
        workflow_id="wd_review_1", seq=1, at=now, trigger="create", from_state=None, to_state="needs_review"
    ).sealed("")
    wf = Workflow(
        id="wd_review_1", state=State.NEEDS_REVIEW, request=request, created_at=now, updated_at=now,
        submitted_at=now, submit_count=1, lane_held=True, event_seq=1, last_hash=event.hash, next_run_at=now,
        data={"absence": {"listings": listings}, "uncertain_posts": 1},
    )  # fmt: skip
    stored, _ = await store.create(wf, event)
    return stored


async def test_a_failed_listing_stops_auto_resolution_for_good(tmp_path: Path) -> None:
    """Two empty listings so far, then one fails: no resubmit, ever; an event keeps all three."""
    clock = FakeClock()
    gateway = FailingListings()
    rule = AutoResolve(enabled=True, listings=3, minutes=0.01)
    async with SQLiteStore(tmp_path / "db.sqlite3") as store:
        ctx = StepContext(
            store=store, kinds=standard_kinds(), gateways={"default": gateway}, clock=clock,  # type: ignore[dict-item]
            settings=FAST, policy=Policy(auto_resolve={"default": rule}), owner=None,
        )  # fmt: skip
        empty = {"complete": True, "candidates": [], "searched": 0}
        earlier = [{"at": clock.now().isoformat(), **empty}]
        clock.advance(0.3)
        earlier.append({"at": clock.now().isoformat(), **empty})
        clock.advance(0.3)
        wf = await in_review(store, clock, earlier)
        wf = await step_needs_review(wf, ctx)
        assert (wf.state, wf.next_run_at, wf.submit_count) == (State.NEEDS_REVIEW, None, 1)
        assert wf.data["absence"]["stopped"] == "a listing failed"
        stop = (await store.events(wf.id))[-1]
        assert stop.data["note"] == "auto_resolve_stopped" and stop.data["why"] == "a listing failed"
        assert [x.get("complete") for x in stop.data["evidence"]["listings"]] == [True, True, False]
        assert stop.data["evidence"]["listings"][-1]["error"]["status"] == 500
        again = await step_needs_review(wf, ctx)  # due again for any reason: it does not list again
        assert again.state is State.NEEDS_REVIEW and gateway.listings == 1
