"""A withdrawal's future, drawn at creation: which end it reaches, when, and its txid.

Pure functions of the random numbers the exchange draws (always the same five per withdrawal, so a
seed replays exactly whatever the outcome) and of the current settings.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

from engine.sandbox.model import OutcomeRule, Timings, WithdrawalState
from engine.sandbox.validation import WithdrawRequest

__all__ = ["draw_delays", "draw_outcome", "make_txid"]

_OUTCOME_ORDER = (
    WithdrawalState.DONE,
    WithdrawalState.FAILED,
    WithdrawalState.CANCELLED,
    WithdrawalState.REJECTED,
)


def draw_outcome(
    request: WithdrawRequest,
    roll: float,
    weights: Mapping[WithdrawalState, float],
    rules: Sequence[OutcomeRule],
) -> WithdrawalState:
    """The first outcome rule matching currency and amount (numerically) wins; else the weights decide."""
    for rule in rules:
        if rule.currency == request.currency and rule.amount == request.amount:
            return rule.outcome
    point = roll * sum(weights.get(s, 0.0) for s in _OUTCOME_ORDER)
    for state in _OUTCOME_ORDER:
        point -= weights.get(state, 0.0)
        if point < 0:
            return state
    return WithdrawalState.DONE


def draw_delays(timings: Timings, first: float, second: float, *, internal: bool) -> tuple[float, float]:
    """Seconds from creation to PROCESSING and to the end; ``first``/``second`` are uniform in [0, 1)."""
    factor = timings.internal_factor if internal else 1.0
    to_next = (timings.waiting_seconds + first * timings.waiting_jitter) * factor
    return to_next, to_next + (timings.processing_seconds + second * timings.processing_jitter) * factor


def make_txid(bits: int, *, internal: bool) -> str:
    """A chain-hash-looking hex id, or a UUID-like one for internal transfers (as in Upbit's examples)."""
    if internal:
        return str(uuid.UUID(int=bits >> 128, version=4))
    return f"{bits:064x}"
