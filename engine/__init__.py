"""upbit-withdraw-engine: crash-safe asyncio withdrawals off Upbit, one persisted state machine each.

The public API is what this module exports; everything else is internal and may change.
"""

from engine.clock import Clock, FakeClock, SystemClock
from engine.core import Engine
from engine.errors import (
    ConfigError,
    EngineError,
    ExchangeBlocked,
    ExchangeError,
    ExchangeRefused,
    ExchangeThrottled,
    IdempotencyConflict,
    InvalidRequest,
    InvalidTransition,
    OutcomeUnknown,
    ReferenceConflict,
    ServiceUnreachable,
    WaitTimeout,
    WorkflowNotFound,
)
from engine.models import AbortReason, Event, State, TransactionType, WithdrawalRequest, Workflow
from engine.policy import CurrencyPolicy, Policy, WorkflowSettings
from engine.query import ListFilter, Page

__all__ = [
    "AbortReason",
    "Clock",
    "ConfigError",
    "CurrencyPolicy",
    "Engine",
    "EngineError",
    "Event",
    "ExchangeBlocked",
    "ExchangeError",
    "ExchangeRefused",
    "ExchangeThrottled",
    "FakeClock",
    "IdempotencyConflict",
    "InvalidRequest",
    "InvalidTransition",
    "ListFilter",
    "OutcomeUnknown",
    "Page",
    "Policy",
    "ReferenceConflict",
    "ServiceUnreachable",
    "State",
    "SystemClock",
    "TransactionType",
    "WaitTimeout",
    "WithdrawalRequest",
    "Workflow",
    "WorkflowNotFound",
    "WorkflowSettings",
]
