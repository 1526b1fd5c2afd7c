"""Local policy and workflow timings: plain data, loaded from the config and handed to the steps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

__all__ = ["AutoResolve", "CurrencyPolicy", "Policy", "WorkflowSettings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CurrencyPolicy:
    """Limits for one currency on top of what Upbit enforces."""

    max_per_withdrawal: Decimal | None = None
    max_per_day: Decimal | None = None
    #: When set, only these addresses may receive this currency (a pin-list on top of Upbit's allowlist).
    pinned_addresses: frozenset[str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoResolve:
    """Resolve a ``needs_review`` by proven absence, for one account (off unless ``enabled``).

    After the grace window, a workflow whose POST left no trace is listed ``listings`` more times, spread
    over ``minutes``; if every listing answered and none showed a candidate, it is resubmitted once,
    automatically, with the listings as the event's evidence. A failed listing or any candidate stops it
    for good: an operator decides. The risk it accepts: a POST that the exchange executes later than
    ``minutes`` after the last listing would be paid twice (hence off by default).
    """

    enabled: bool = False
    listings: int = 3
    minutes: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """Per-currency limits and the dry-run switch (everything but the POST)."""

    currencies: Mapping[str, CurrencyPolicy] = field(default_factory=dict)
    dry_run: bool = False
    #: Per-account overrides: account -> currency -> policy (wins over ``currencies`` for that account).
    accounts: Mapping[str, Mapping[str, CurrencyPolicy]] = field(default_factory=dict)
    #: Per-account auto-resolution of needs_review by proven absence (absent: off).
    auto_resolve: Mapping[str, AutoResolve] = field(default_factory=dict)

    def for_currency(self, currency: str, account: str | None = None) -> CurrencyPolicy:
        """The account's policy for the currency, else the global one, else no limits."""
        if account is not None and currency in self.accounts.get(account, {}):
            return self.accounts[account][currency]
        return self.currencies.get(currency, _NO_LIMITS)

    def auto_resolve_for(self, account: str) -> AutoResolve:
        """The account's auto-resolution rule (off when not configured)."""
        return self.auto_resolve.get(account, _AUTO_OFF)


_NO_LIMITS = CurrencyPolicy()
_AUTO_OFF = AutoResolve()


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowSettings:
    """Timings of the withdrawal workflow, in seconds."""

    preflight_deadline: float = 1800.0
    """Give up (aborted) if the pre-flight checks cannot pass within this time of submission."""
    wallet_recheck_initial: float = 5.0
    wallet_recheck_max: float = 120.0
    read_retry_initial: float = 1.0
    read_retry_max: float = 60.0
    poll_initial: float = 0.5
    """Wait after a poll's answer before asking again, at the steady cadence (the gateway's sweep, one
    call per ``2 * poll_initial`` at most, sets the real pace: see ``workflows.withdrawal._poll_slack``)."""
    poll_max: float = 60.0
    poll_jitter: float = 0.1
    poll_steady: float = 300.0
    """Poll at the steady cadence this long after the POST; then back off towards ``poll_max``."""
    reconcile_delay: float = 2.0
    """First look for an outcome-unknown POST's withdrawal after this long."""
    reconcile_grace: float = 120.0
    """Keep looking this long before handing the workflow to an operator (needs_review)."""
    clock_skew: float = 120.0
    """Exchange withdrawals created up to this long before our intent still count as candidates, until the
    exchange's clock offset is measured (from its answers' ``Date`` header); then the measured bound is used."""
    skew_margin: float = 1.0
    """Seconds added to the measured clock offset's window (drift since it was measured)."""
    lane_watch: float = 600.0
    """A workflow that settles with a POST of it unaccounted for (abandoned by an operator, or resubmitted
    after an unknown outcome and then answered) keeps its lane reserved and watched this long (or until
    every such POST is accounted for): a withdrawal that appears meanwhile is attributed to it and raised
    as an alert, never adopted by another workflow. 0: no watch."""
    lane_retry: float = 0.5
    hold_on_block_delayed: bool = False
    """Treat a ``delayed`` block state like a paused wallet (wait) instead of sending."""
    recent_pages: int = 40
    """Pages of 100 recent withdrawals a reconciliation reads at most. Listing stops at the adoption window's
    start, so the cap only bites when the window really holds that many: 40 pages cover the 3,600
    withdrawals one account can create at 30/s within the default 120 s ``clock_skew``. 5 pages left
    spurious needs_review when another worker reconciled a busy account's lost POST (benchmark, 3 workers)."""
