"""Factories shared by the unit tier: valid requests, workflows and exchange objects, varied by keyword."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from engine.models import State, WithdrawalRequest, Workflow
from engine.upbit.types import AllowedAddress, Chance, ExchangeState, WalletStatus, Withdrawal

#: A fixed instant so that tests never read the real clock.
T0 = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)


@pytest.fixture(name="make_request")
def _make_request() -> Callable[..., WithdrawalRequest]:
    """Build a valid XRP request; keywords override single fields."""

    def make(**overrides: Any) -> WithdrawalRequest:
        fields: dict[str, Any] = {
            "currency": "XRP",
            "net_type": "XRP",
            "amount": Decimal("25"),
            "address": "rDestinationAddress1",
        }
        fields.update(overrides)
        return WithdrawalRequest(**fields)

    return make


@pytest.fixture(name="make_workflow")
def _make_workflow(make_request: Callable[..., WithdrawalRequest]) -> Callable[..., Workflow]:
    """Build a workflow in any state; ``request`` defaults to the standard request."""

    def make(state: State = State.PENDING, *, request: WithdrawalRequest | None = None, **overrides: Any) -> Workflow:
        fields: dict[str, Any] = {
            "id": "wd_test_0001",
            "state": state,
            "request": request or make_request(),
            "created_at": T0,
            "updated_at": T0,
        }
        fields.update(overrides)
        return Workflow(**fields)

    return make


@pytest.fixture(name="make_withdrawal")
def _make_withdrawal() -> Callable[..., Withdrawal]:
    """Build an exchange-side withdrawal matching the standard request by default."""

    def make(**overrides: Any) -> Withdrawal:
        fields: dict[str, Any] = {
            "uuid": "uuid-1",
            "currency": "XRP",
            "net_type": "XRP",
            "txid": None,
            "state": ExchangeState.WAITING,
            "raw_state": "WAITING",
            "created_at": T0,
            "done_at": None,
            "amount": Decimal("25"),
            "fee": Decimal("1"),
            "transaction_type": "default",
            "is_cancelable": True,
        }
        fields.update(overrides)
        return Withdrawal(**fields)

    return make


@pytest.fixture(name="make_chance")
def _make_chance() -> Callable[..., Chance]:
    """Build a chance answer that allows the standard request (balance 1000, fee 1, min 20, fixed 6)."""

    def make(**overrides: Any) -> Chance:
        fields: dict[str, Any] = {
            "currency": "XRP",
            "withdraw_fee": Decimal("1"),
            "wallet_support": ("deposit", "withdraw"),
            "wallet_state": "working",
            "member_locked": False,
            "wallet_locked": False,
            "balance": Decimal("1000"),
            "locked": Decimal("0"),
            "minimum": Decimal("20"),
            "fixed": 6,
            "onetime": Decimal("100000"),
            "remaining_daily_fiat": None,
            "can_withdraw": True,
        }
        fields.update(overrides)
        return Chance(**fields)

    return make


@pytest.fixture(name="make_address")
def _make_address() -> Callable[..., AllowedAddress]:
    """Build an allowlist row for the standard request's destination."""

    def make(**overrides: Any) -> AllowedAddress:
        fields: dict[str, Any] = {
            "currency": "XRP",
            "net_type": "XRP",
            "network_name": "Ripple",
            "withdraw_address": "rDestinationAddress1",
            "secondary_address": None,
        }
        fields.update(overrides)
        return AllowedAddress(**fields)

    return make


@pytest.fixture(name="make_wallet")
def _make_wallet() -> Callable[..., WalletStatus]:
    """Build a wallet status row (working, block normal) for XRP."""

    def make(**overrides: Any) -> WalletStatus:
        fields: dict[str, Any] = {
            "currency": "XRP",
            "net_type": "XRP",
            "network_name": "Ripple",
            "wallet_state": "working",
            "block_state": "normal",
            "block_height": 100,
            "block_updated_at": T0,
            "block_elapsed_minutes": 1,
        }
        fields.update(overrides)
        return WalletStatus(**fields)

    return make
