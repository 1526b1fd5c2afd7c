"""Short timings for tests and harnesses: workflows that retry, poll and reconcile within fractions of a
second, and a sandbox whose withdrawals settle as fast."""

from __future__ import annotations

from engine.policy import WorkflowSettings

__all__ = ["FAST", "FAST_EXCHANGE"]

FAST = WorkflowSettings(
    preflight_deadline=20.0,
    wallet_recheck_initial=0.02,
    wallet_recheck_max=0.1,
    read_retry_initial=0.02,
    read_retry_max=0.2,
    poll_initial=0.02,
    poll_max=0.1,
    poll_jitter=0.01,
    reconcile_delay=0.05,
    reconcile_grace=0.6,
    clock_skew=5.0,
    lane_retry=0.02,
    lane_watch=1.0,
)

#: Sandbox timings for tests: withdrawals settle within a fraction of a second.
FAST_EXCHANGE = {"waiting_seconds": 0.05, "processing_seconds": 0.05, "jitter": 0.0}
