"""Local policy and workflow timings: plain data, loaded from the config and handed to the steps.

The four-eyes approval rules are pure functions of this data (:func:`needs_approval`,
:func:`batch_over_approval`): a step asks them, the unit tests read them as tables and properties."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

__all__ = [
    "DEFAULT_APPROVAL_EXPIRY",
    "AutoResolve",
    "CurrencyPolicy",
    "Policy",
    "WorkflowSettings",
    "batch_over_approval",
    "needs_approval",
]

#: Seconds an approval request stays open before the workflow aborts (``approval_expired``): 4 hours.
DEFAULT_APPROVAL_EXPIRY = 4 * 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CurrencyPolicy:
    """Limits for one currency on top of what Upbit enforces."""

    max_per_withdrawal: Decimal | None = None
    max_per_day: Decimal | None = None
    #: When set, only these addresses may receive this currency (a pin-list on top of Upbit's allowlist).
    pinned_addresses: frozenset[str] | None = None
    #: A withdrawal whose amount is above this waits for an approver (four eyes) before it is sent.
    approval_above: Decimal | None = None


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
    #: Seconds an approval request stays open; then the workflow (or batch) aborts, nothing sent.
    approval_expires_after: float = DEFAULT_APPROVAL_EXPIRY
    #: currency -> a batch whose total of that currency is above it waits for an approver.
    batch_approval_above: Mapping[str, Decimal] = field(default_factory=dict)

    def for_currency(self, currency: str, account: str | None = None) -> CurrencyPolicy:
        """The account's policy for the currency, else the global one, else no limits."""
        if account is not None and currency in self.accounts.get(account, {}):
            return self.accounts[account][currency]
        return self.currencies.get(currency, _NO_LIMITS)

    def approval_above(self, currency: str, account: str | None = None) -> Decimal | None:
        """The approval threshold of a withdrawal of ``currency`` from ``account``: the account's own when
        its table sets one, else the global ``[policy.CURRENCY]`` one (unlike the limits, an account table
        that does not mention ``approval_above`` inherits it: a safety control is never dropped by
        accident), else none (no approval needed)."""
        own = self.accounts.get(account, {}).get(currency) if account is not None else None
        if own is not None and own.approval_above is not None:
            return own.approval_above
        return self.currencies.get(currency, _NO_LIMITS).approval_above

    def auto_resolve_for(self, account: str) -> AutoResolve:
        """The account's auto-resolution rule (off when not configured)."""
        return self.auto_resolve.get(account, _AUTO_OFF)


_NO_LIMITS = CurrencyPolicy()
_AUTO_OFF = AutoResolve()


def needs_approval(amount: Decimal, threshold: Decimal | None, *, approved: bool = False) -> bool:
    """Whether a withdrawal of ``amount`` must wait for an approver: only strictly above a configured
    threshold, and only while no approval is recorded for it."""
    return threshold is not None and amount > threshold and not approved


def batch_over_approval(
    totals: Mapping[str, Decimal], thresholds: Mapping[str, Decimal]
) -> dict[str, tuple[Decimal, Decimal]]:
    """The currencies whose batch total is above their ``[batches] approval_above`` threshold, each with
    ``(total, threshold)`` (empty: the batch needs no approval). Sorted by currency, so the event that
    records it reads the same on every run."""
    return {
        currency: (total, thresholds[currency])
        for currency, total in sorted(totals.items())
        if currency in thresholds and total > thresholds[currency]
    }


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
