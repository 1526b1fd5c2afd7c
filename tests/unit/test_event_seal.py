"""The transition's fast sealing hashes exactly what ``Event.canonical()`` covers (the audit chain's
verifier recomputes hashes that way)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from engine.context import _sealed
from engine.models import Event, State, WithdrawalRequest, Workflow


def test_fast_seal_equals_event_sealed() -> None:
    request = WithdrawalRequest(
        currency="USDT", net_type="TRX", amount=Decimal("1.5"), address="TJYeasTPa6gpEEfYqGJkbXhBVxBJMEZfUt"
    )
    at = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    wf = Workflow(
        id="wd_0001",
        state=State.SUBMITTING,
        request=request,
        created_at=at,
        updated_at=at,
        event_seq=4,
        last_hash="ab" * 32,
    )
    data = {"how": "accepted", "amount": Decimal("1.5"), "at": at, "nested": {"b": 1, "a": [1, "x"]}, "none": None}
    fast = _sealed(wf, at, "mark_waiting", State.WAITING, data)
    slow = Event(
        workflow_id=wf.id, seq=5, at=at, trigger="mark_waiting", from_state="submitting", to_state="WAITING", data=data
    ).sealed("ab" * 32)
    assert fast == slow and fast.canonical() == slow.canonical()
