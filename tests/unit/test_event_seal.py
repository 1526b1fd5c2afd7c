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


def test_fast_seal_escapes_and_orders_as_the_encoder_does() -> None:
    """Non-ASCII, quotes and control characters in every string field; an empty data; a first event."""
    at = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    wf = Workflow(id='wd_"é\\n', state=State.PENDING, request=None, created_at=at, updated_at=at)
    for data in ({}, {"note": 'ü "q"\n\t', "z": 1, "a": {"y": [None, True]}}):
        fast = _sealed(wf, at, "tri\u2028gger", "verifying_address", data)
        slow = Event(
            workflow_id=wf.id, seq=1, at=at, trigger="tri\u2028gger", from_state="pending",
            to_state="verifying_address", data=data,
        ).sealed("")  # fmt: skip
        assert fast.canonical() == slow.canonical() and fast.hash == slow.hash


def test_copy_workflow_copies_every_field_and_applies_changes() -> None:
    from dataclasses import fields, replace

    from engine.context import evolve
    from engine.models import copy_workflow

    at = datetime(2026, 1, 1, tzinfo=UTC)
    values = {f.name: f"v-{f.name}" for f in fields(Workflow)}
    wf = Workflow(**values)  # type: ignore[arg-type]
    copied = copy_workflow(wf, {"version": 7})
    assert copied == replace(wf, version=7) and copied is not wf
    assert evolve(wf, state="x", updated_at=at) == replace(wf, state="x", updated_at=at)
    try:
        evolve(wf, no_such_field=1)
    except TypeError:
        pass
    else:
        raise AssertionError("an unknown field must raise TypeError")
