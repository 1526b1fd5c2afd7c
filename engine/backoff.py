"""Backoff schedules, computed (not slept): a workflow's next try is a time stored in ``next_run_at``.

tenacity decides the shape (exponential with jitter and a cap); the runner and the store decide when
it happens, so no task sleeps on behalf of a waiting workflow.
"""

from __future__ import annotations

from tenacity import RetryCallState, wait_exponential_jitter

__all__ = ["backoff_delay"]


def backoff_delay(attempt: int, *, initial: float, maximum: float, jitter: float = 0.0) -> float:
    """Seconds before try ``attempt`` (0-based): ``initial * 2**attempt`` plus jitter, capped."""
    strategy = wait_exponential_jitter(multiplier=initial, max=maximum, jitter=jitter)
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt + 1
    return float(strategy(state))
