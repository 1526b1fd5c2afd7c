"""The poll schedule is a per-account sweep: batched polls cost at most one call per ``within`` however
many withdrawals are in flight, answers still come within ``within``, and workflows poll at a steady
cadence before backing off (the gateway's batching runs on a fake clock; the calls are real HTTP)."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from engine.clock import FakeClock
from engine.policy import WorkflowSettings
from tests.conftest import make_gateway
from workflows.withdrawal import _poll_delay, _poll_slack


async def test_a_sweep_costs_one_call_per_within_however_many_are_in_flight(sandbox: Any) -> None:
    clock = FakeClock()
    gateway = make_gateway(sandbox.url, clock=clock)
    uuids = [str(uuid.uuid4()) for _ in range(250)]
    async with gateway.client:
        answers = await asyncio.wait_for(asyncio.gather(*(gateway.poll(u, within=5.0) for u in uuids)), 60)
        assert answers == [None] * 250  # unknown to the exchange: listed as absent, not an error
        assert gateway.poll_batches == 3  # 100 + 100 + 50, one call each
        assert clock.monotonic() >= 2 * 5.0  # ...spaced by the smallest ``within``, not sent at once

        clock.advance(60.0)  # long after the last batch: a lone poll leaves after the short window
        before = clock.monotonic()
        assert await asyncio.wait_for(gateway.poll(uuids[0], within=5.0), 60) is None
        assert gateway.poll_batches == 4
        assert clock.monotonic() - before < 1.0
    await gateway.aclose()


async def test_with_the_limiter_off_full_batches_leave_at_once(sandbox: Any) -> None:
    """No budget to spare: full batches do not wait for the sweep's spacing (only the rest does)."""
    clock = FakeClock()
    gateway = make_gateway(sandbox.url, clock=clock)
    gateway.client.limiter.enabled = False
    sent_at: list[float] = []
    list_withdraws = gateway.client.list_withdraws

    async def spy(**kwargs: Any) -> Any:
        sent_at.append(clock.monotonic())
        return await list_withdraws(**kwargs)

    gateway.client.list_withdraws = spy  # type: ignore[method-assign]
    async with gateway.client:
        uuids = [str(uuid.uuid4()) for _ in range(250)]
        await asyncio.wait_for(asyncio.gather(*(gateway.poll(u, within=5.0) for u in uuids)), 60)
    assert gateway.poll_batches == 3
    assert sent_at[1] - sent_at[0] < 1.0 <= 5.0 <= sent_at[2] - sent_at[0]
    await gateway.aclose()


def _ctx(**settings: Any) -> Any:
    return SimpleNamespace(settings=WorkflowSettings(**settings))


@pytest.mark.parametrize("attempt", [0, 1, 10, 599])
def test_polls_are_steady_for_poll_steady_seconds(attempt: int) -> None:
    ctx = _ctx(poll_initial=0.5, poll_jitter=0.0, poll_steady=300.0)
    assert _poll_delay(ctx, attempt) == 0.5
    assert _poll_slack(ctx, attempt) == 1.0  # the sweep's period


def test_then_they_back_off_to_poll_max() -> None:
    ctx = _ctx(poll_initial=0.5, poll_jitter=0.0, poll_steady=300.0, poll_max=60.0)
    delays = [_poll_delay(ctx, attempt) for attempt in range(600, 610)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert delays[-1] == 60.0
    assert _poll_slack(ctx, 609) == 30.0
