"""What the overview page shows, gathered from the engine, its gateways and the webhook store.

Every figure says where it comes from and over which window, because the console must never show a number
it cannot stand behind:

- counts by state: the store's count per kind and state (every process sees them);
- withdrawals per minute: those *created* in the last 10 and 60 minutes (the store's ``created_at``);
- the rate budget in use, 429s and 418s: the exchange gateways of *this* process (a process that runs no
  runner has none, and says so). The limiter counts 429/418 since the process started; the console keeps
  samples of those counters (:class:`ThrottleHistory`) and shows the increase over the last hour, or over
  the shorter time it has watched, labelled with that time;
- webhook delivery health: pending deliveries, and per subscription its newest delivery and how many of
  its newest 100 failed;
- anything waiting for a person: workflows in a state awaiting an operator with no decision recorded yet.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from engine.core import Engine
from engine.errors import StoreError
from engine.models import Workflow
from engine.query import ListFilter
from engine.store.webhooks import FAILED, webhook_store

__all__ = ["AccountBudget", "Overview", "ThrottleHistory", "WebhookHealth", "gather"]

#: How far back the 429/418 figures look.
HOUR = 3600.0
#: How many workflows awaiting a person the overview lists (the rest are a link away).
WAITING_SHOWN = 25


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    throttles: int
    blocks: int


@dataclass
class ThrottleHistory:
    """Samples of each account's 429/418 counters, so the increase over the last hour can be told.

    ``sample`` is called on every overview (and once at start); samples older than the newest one at or
    before an hour ago are dropped, so memory stays bounded by how often the page is opened."""

    samples: dict[str, deque[_Sample]] = field(default_factory=dict)

    def sample(self, account: str, throttles: int, blocks: int, *, now: float) -> tuple[int, int, float]:
        """Record the counters now; ``(429s, 418s, seconds)`` over the window they cover (up to an hour)."""
        kept = self.samples.setdefault(account, deque())
        kept.append(_Sample(now, throttles, blocks))
        while len(kept) > 1 and kept[1].at <= now - HOUR:
            kept.popleft()
        base = kept[0]
        return throttles - base.throttles, blocks - base.blocks, now - base.at


@dataclass(frozen=True, slots=True)
class AccountBudget:
    """One account's exchange budget as this process's limiter sees it."""

    account: str
    rate: int
    counted: int
    in_flight: int
    waiting: int
    blocked_for: float
    throttles: int
    blocks: int
    window_seconds: float

    @property
    def percent(self) -> int:
        """Share of the budget in use now, 0-100 (capped: foreign calls can push the count above it)."""
        return min(100, round(100 * self.counted / max(self.rate, 1)))


@dataclass(frozen=True, slots=True)
class WebhookHealth:
    """One subscription's delivery health."""

    id: str
    host: str
    events: tuple[str, ...]
    last_status: str | None
    last_at: datetime | None
    last_error: str | None
    failed_recent: int
    recent: int


@dataclass(frozen=True, slots=True)
class Overview:
    """Everything the overview page shows."""

    counts: dict[str, list[tuple[str, int]]]
    waiting: list[Workflow]
    waiting_total: int
    created_10: int
    created_60: int
    budgets: list[AccountBudget]
    runs_gateways: bool
    webhooks: list[WebhookHealth]
    webhooks_pending: int | None
    at: datetime


async def gather(engine: Engine, history: ThrottleHistory, *, kind_names: tuple[str, ...]) -> Overview:
    """Read everything the overview shows, for the kinds named (in that order)."""
    now = engine.clock.now()
    counts: dict[str, list[tuple[str, int]]] = {}
    waiting: list[Workflow] = []
    waiting_total = 0
    for name in kind_names:
        kind = engine.kinds[name]
        counts[name] = [
            (str(state), await engine.count(ListFilter(kind=name, states={str(state)}))) for state in kind.states
        ]
        if kind.awaiting_operator:
            where = ListFilter(kind=name, states=frozenset(str(s) for s in kind.awaiting_operator))
            waiting_total += await engine.count(where)
            waiting.extend(await engine.list(where, limit=WAITING_SHOWN))
    waiting.sort(key=lambda wf: wf.updated_at)
    withdrawals = kind_names[0]
    created_10 = await engine.count(ListFilter(kind=withdrawals, created_after=now - timedelta(minutes=10)))
    created_60 = await engine.count(ListFilter(kind=withdrawals, created_after=now - timedelta(minutes=60)))
    hooks, pending = await _webhooks(engine)
    return Overview(
        counts=counts, waiting=waiting[:WAITING_SHOWN], waiting_total=waiting_total, created_10=created_10,
        created_60=created_60, budgets=budgets(engine, history), runs_gateways=bool(engine.gateways),
        webhooks=hooks, webhooks_pending=pending, at=now,
    )  # fmt: skip


def budgets(engine: Engine, history: ThrottleHistory, *, now: float | None = None) -> list[AccountBudget]:
    """Each account's limiter now, and its 429/418 over the last hour (or the time watched)."""
    found: list[AccountBudget] = []
    moment = time.monotonic() if now is None else now
    for account, gateway in sorted(engine.gateways.items()):
        limiter = gateway.client.limiter
        throttles, blocks, window = history.sample(account, limiter.stats.throttles, limiter.stats.blocks, now=moment)
        budget = AccountBudget(
            account=account, rate=limiter.rate, counted=limiter.counted, in_flight=limiter.in_flight,
            waiting=limiter.waiting(), blocked_for=limiter.blocked_for, throttles=throttles, blocks=blocks,
            window_seconds=window,
        )  # fmt: skip
        found.append(budget)
    return found


def start_history(gateways: Mapping[str, Any], history: ThrottleHistory) -> None:
    """The first sample of every account's counters (the console's start), so the first overview has a base."""
    now = time.monotonic()
    for account, gateway in gateways.items():
        stats = gateway.client.limiter.stats
        history.sample(account, stats.throttles, stats.blocks, now=now)


async def _webhooks(engine: Engine) -> tuple[list[WebhookHealth], int | None]:
    """Per subscription: newest delivery and failures among its newest 100; pending across all (None when
    the store keeps no webhooks)."""
    try:
        hooks = webhook_store(engine.store)
    except StoreError:
        return [], None
    found: list[WebhookHealth] = []
    for sub in await hooks.list_subscriptions():
        recent = await hooks.deliveries(sub.id, limit=100)
        newest = recent[0] if recent else None
        last_at = newest.last_attempt_at if newest is not None else None
        health = WebhookHealth(
            id=sub.id, host=urlsplit(sub.url).hostname or "?", events=sub.events,
            last_status=newest.status if newest else None,
            last_at=datetime.fromtimestamp(last_at, tz=UTC) if last_at else None,
            last_error=newest.last_error if newest else None,
            failed_recent=sum(1 for d in recent if d.status == FAILED), recent=len(recent),
        )  # fmt: skip
        found.append(health)
    return found, await hooks.pending_count()
