"""upbit-withdraw-engine: crash-safe asyncio withdrawals off Upbit, one persisted state machine each.

The public API is what this module exports; everything else is internal and may change.
"""

import importlib
from typing import Any

from engine.clock import Clock, FakeClock, SystemClock
from engine.core import Engine
from engine.errors import (
    ConfigError,
    EngineError,
    ExchangeBlocked,
    ExchangeError,
    ExchangeRefused,
    ExchangeThrottled,
    Forbidden,
    IdempotencyConflict,
    InvalidRequest,
    InvalidTransition,
    OperatorNotFound,
    OutcomeUnknown,
    ReferenceConflict,
    ServiceUnreachable,
    WaitTimeout,
    WorkflowNotFound,
)
from engine.kinds import KindRegistry, WorkflowKind
from engine.models import Event, Workflow
from engine.policy import CurrencyPolicy, Policy, WorkflowSettings
from engine.query import ListFilter, Page

#: The withdrawal's vocabulary (``workflows.withdrawal_model``), re-exported lazily (PEP 562): importing
#: the engine never imports a workflow, and ``import workflows.withdrawal`` first stays cycle-free.
_WITHDRAWAL_NAMES = frozenset({"AbortReason", "State", "TransactionType", "WithdrawalRequest"})


def __getattr__(name: str) -> Any:
    if name in _WITHDRAWAL_NAMES:
        return getattr(importlib.import_module("workflows.withdrawal_model"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "Forbidden",
    "IdempotencyConflict",
    "InvalidRequest",
    "InvalidTransition",
    "KindRegistry",
    "ListFilter",
    "OperatorNotFound",
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
    "WorkflowKind",
    "WorkflowNotFound",
    "WorkflowSettings",
]
