"""engine.machine with the withdrawal table: every (state, trigger) pair checked as data, guards on both sides."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest

from engine import machine as machine_module
from engine.errors import GuardRejected, InvalidTransition
from engine.models import State, Workflow
from workflows.withdrawal import MACHINE, TABLE

S = State
MakeWorkflow = Callable[..., Workflow]
REFUSED = "refused"

TRIGGERS = (
    "start", "verify", "submit", "abort", "cancel", "refuse", "lose_track", "resubmit", "escalate", "abandon",
    "mark_waiting", "mark_processing", "mark_done", "mark_failed", "mark_cancelled", "mark_rejected", "note",
    "auto_resubmit", "watch", "await_approval", "approve", "reject", "expire_approval",
)  # fmt: skip

#: Every allowed move, spelled out per state; any pair not listed here must be refused.
ALLOWED: dict[State, dict[str, State]] = {
    S.PENDING: {"start": S.VERIFYING_ADDRESS, "abort": S.ABORTED, "cancel": S.CANCELLED, "note": S.PENDING},
    S.VERIFYING_ADDRESS: {
        "verify": S.CHECKING_WALLET, "abort": S.ABORTED, "cancel": S.CANCELLED, "note": S.VERIFYING_ADDRESS,
    },
    S.CHECKING_WALLET: {
        "submit": S.SUBMITTING, "await_approval": S.AWAITING_APPROVAL, "abort": S.ABORTED, "cancel": S.CANCELLED,
        "note": S.CHECKING_WALLET,
    },
    # Nothing sent yet: an approver's decision, the approval's expiry or a cancel; no other abort.
    S.AWAITING_APPROVAL: {
        "approve": S.CHECKING_WALLET, "reject": S.ABORTED, "expire_approval": S.ABORTED, "cancel": S.CANCELLED,
        "note": S.AWAITING_APPROVAL,
    },
    S.SUBMITTING: {
        "refuse": S.ABORTED, "lose_track": S.RECONCILING, "mark_waiting": S.WAITING, "mark_processing": S.PROCESSING,
        "mark_done": S.DONE, "mark_failed": S.FAILED, "mark_cancelled": S.CANCELLED, "mark_rejected": S.REJECTED,
        "note": S.SUBMITTING,
    },
    S.RECONCILING: {
        "resubmit": S.SUBMITTING, "escalate": S.NEEDS_REVIEW, "mark_waiting": S.WAITING,
        "mark_processing": S.PROCESSING, "mark_done": S.DONE, "mark_failed": S.FAILED,
        "mark_cancelled": S.CANCELLED, "mark_rejected": S.REJECTED, "note": S.RECONCILING,
    },
    S.WAITING: {
        "mark_processing": S.PROCESSING, "mark_done": S.DONE, "mark_failed": S.FAILED,
        "mark_cancelled": S.CANCELLED, "mark_rejected": S.REJECTED, "note": S.WAITING,
    },
    S.PROCESSING: {
        "mark_done": S.DONE, "mark_failed": S.FAILED, "mark_cancelled": S.CANCELLED, "mark_rejected": S.REJECTED,
        "note": S.PROCESSING,
    },
    S.NEEDS_REVIEW: {
        "resubmit": S.SUBMITTING, "auto_resubmit": S.SUBMITTING, "abandon": S.ABORTED, "note": S.NEEDS_REVIEW,
    },
    # A settled workflow watching its lane (abandoned, or resubmitted and answered) notes what it sees.
    S.DONE: {"watch": S.DONE},
    S.FAILED: {"watch": S.FAILED},
    S.CANCELLED: {"watch": S.CANCELLED},
    S.REJECTED: {"watch": S.REJECTED},
    S.ABORTED: {"watch": S.ABORTED},
}  # fmt: skip

#: The full 14 x 23 table: destination state, or "refused".
EXPECTED: dict[tuple[State, str], State | str] = {
    (state, trigger): ALLOWED[state].get(trigger, REFUSED) for state in State for trigger in TRIGGERS
}


#: Trigger data that makes the automatic resubmit's guard say yes: 3 empty listings over 10 minutes.
PROVEN: dict[str, Any] = {
    "evidence": {
        "rule": {"listings": 3, "minutes": 10.0},
        "listings": [{"at": f"2026-05-01T03:{m:02d}:00+00:00", "complete": True, "candidates": []} for m in (0, 5, 10)],
    }
}


def guard_data(trigger: str) -> dict[str, Any]:
    """Trigger data that makes the guard of ``trigger`` say yes."""
    return PROVEN if trigger == "auto_resubmit" else {}


def guards_satisfied(trigger: str) -> dict[str, Any]:
    """Workflow fields that make every guard of ``trigger`` say yes."""
    return {
        "data": {"reconcile": {"mode": "throttled"}},
        "resolution": trigger if trigger in ("resubmit", "abandon", "approve", "reject") else None,
    }


class TestTable:
    """The withdrawal transition table, pair by pair."""

    def test_expected_table_is_complete(self) -> None:
        """The expected table covers all 14 states and exactly the machine's 23 triggers."""
        assert len(State) == 14
        assert set(TRIGGERS) == MACHINE.triggers
        assert len(EXPECTED) == 14 * 23
        assert set(ALLOWED) == set(State)

    @pytest.mark.parametrize(("state", "trigger"), list(EXPECTED), ids=[f"{s.value}-{t}" for s, t in EXPECTED])
    def test_pair(self, make_workflow: MakeWorkflow, state: State, trigger: str) -> None:
        """Firing the trigger from the state reaches the expected state, or is refused as an invalid transition."""
        workflow = make_workflow(state, **guards_satisfied(trigger))
        expected = EXPECTED[(state, trigger)]
        if expected == REFUSED:
            with pytest.raises(InvalidTransition) as caught:
                MACHINE.fire(workflow, trigger, **guard_data(trigger))
            assert type(caught.value) is InvalidTransition
        else:
            assert MACHINE.fire(workflow, trigger, **guard_data(trigger)) is expected
        assert workflow.state is state

    @pytest.mark.parametrize("state", list(State))
    def test_allowed_lists_the_row(self, state: State) -> None:
        """allowed(state) names exactly the triggers of that state's row."""
        assert MACHINE.allowed(state) == sorted(ALLOWED[state])

    def test_terminal_states_are_dead_ends(self) -> None:
        """No trigger leaves a terminal state: the only one they have, ``watch``, stays (a settled workflow
        recording a late withdrawal in its lane and the end of its watch)."""
        assert all(MACHINE.allowed(s) == ["watch"] for s in State if s.is_terminal)
        assert all(spec.dest is None for spec in TABLE if any(s.is_terminal for s in spec.source))


class TestGuards:
    """Guarded transitions, on both sides of the guard."""

    @pytest.mark.parametrize(
        ("state", "trigger", "fields", "expected"),
        [
            (S.RECONCILING, "resubmit", {"data": {"reconcile": {"mode": "throttled"}}}, S.SUBMITTING),
            (S.RECONCILING, "resubmit", {"data": {"reconcile": {"mode": "unknown"}}}, REFUSED),
            (S.RECONCILING, "resubmit", {"data": {"reconcile": {"mode": "interrupted"}}}, REFUSED),
            (S.RECONCILING, "resubmit", {"data": {}}, REFUSED),
            (S.RECONCILING, "resubmit", {"data": {"reconcile": {}}}, REFUSED),
            (S.RECONCILING, "resubmit", {"resolution": "resubmit", "data": {"reconcile": {"mode": "unknown"}}},
             REFUSED),
            (S.NEEDS_REVIEW, "resubmit", {"resolution": "resubmit"}, S.SUBMITTING),
            (S.NEEDS_REVIEW, "resubmit", {"resolution": None}, REFUSED),
            (S.NEEDS_REVIEW, "resubmit", {"resolution": "abandon"}, REFUSED),
            (S.NEEDS_REVIEW, "resubmit", {"resolution": None, "data": {"reconcile": {"mode": "throttled"}}}, REFUSED),
            (S.NEEDS_REVIEW, "abandon", {"resolution": "abandon"}, S.ABORTED),
            (S.NEEDS_REVIEW, "abandon", {"resolution": None}, REFUSED),
            (S.NEEDS_REVIEW, "abandon", {"resolution": "resubmit"}, REFUSED),
            (S.AWAITING_APPROVAL, "approve", {"resolution": "approve"}, S.CHECKING_WALLET),
            (S.AWAITING_APPROVAL, "approve", {"resolution": None}, REFUSED),
            (S.AWAITING_APPROVAL, "approve", {"resolution": "reject"}, REFUSED),
            (S.AWAITING_APPROVAL, "reject", {"resolution": "reject"}, S.ABORTED),
            (S.AWAITING_APPROVAL, "reject", {"resolution": None}, REFUSED),
            (S.AWAITING_APPROVAL, "reject", {"resolution": "approve"}, REFUSED),
        ],
        ids=[
            "reconcile-throttled", "reconcile-unknown", "reconcile-interrupted", "reconcile-no-data",
            "reconcile-no-mode", "reconcile-operator-word-does-not-count", "review-resubmit", "review-undecided",
            "review-said-abandon", "review-throttle-does-not-count", "abandon-yes", "abandon-undecided",
            "abandon-said-resubmit", "approve-yes", "approve-undecided", "approve-said-reject", "reject-yes",
            "reject-undecided", "reject-said-approve",
        ],
    )  # fmt: skip
    def test_guard(
        self, make_workflow: MakeWorkflow, state: State, trigger: str, fields: dict[str, Any], expected: State | str
    ) -> None:
        """The transition happens when its guard holds, and raises GuardRejected otherwise."""
        workflow = make_workflow(state, **fields)
        if expected == REFUSED:
            with pytest.raises(GuardRejected, match=workflow.id):
                MACHINE.fire(workflow, trigger)
        else:
            assert MACHINE.fire(workflow, trigger) is expected

    @pytest.mark.parametrize(
        ("change", "expected"),
        [
            ({}, S.SUBMITTING),
            ({"drop": 0}, REFUSED),  # two listings where three are required
            ({"candidate": 1}, REFUSED),
            ({"incomplete": 2}, REFUSED),
            ({"minutes": 10.01}, REFUSED),  # the listings span less than the rule asks
            ({"no_evidence": True}, REFUSED),
        ],
        ids=["proven", "too-few", "a-candidate", "a-failed-listing", "too-soon", "no-evidence"],
    )
    def test_auto_resubmit_needs_its_proof(
        self, make_workflow: MakeWorkflow, change: dict[str, Any], expected: State | str
    ) -> None:
        """The automatic resubmit's guard re-checks the evidence it is fired with (not the workflow's word)."""
        listings = [dict(x) for x in PROVEN["evidence"]["listings"]]
        rule = dict(PROVEN["evidence"]["rule"])
        if "drop" in change:
            del listings[change["drop"]]
        if "candidate" in change:
            listings[change["candidate"]]["candidates"] = ["uuid-1"]
        if "incomplete" in change:
            listings[change["incomplete"]]["complete"] = False
        if "minutes" in change:
            rule["minutes"] = change["minutes"]
        data = {} if change.get("no_evidence") else {"evidence": {"listings": listings, "rule": rule}}
        workflow = make_workflow(S.NEEDS_REVIEW, resolution="resubmit")
        if expected == REFUSED:
            with pytest.raises(GuardRejected):
                MACHINE.fire(workflow, "auto_resubmit", **data)
        else:
            assert MACHINE.fire(workflow, "auto_resubmit", **data) is expected


class TestMachine:
    """WorkflowMachine mechanics."""

    def test_unknown_trigger(self, make_workflow: MakeWorkflow) -> None:
        """A trigger the table does not know is an invalid transition naming it."""
        with pytest.raises(InvalidTransition, match="'fly'") as caught:
            MACHINE.fire(make_workflow(), "fly")
        assert type(caught.value) is InvalidTransition

    @pytest.mark.parametrize("state", list(State))
    def test_no_auto_transitions(self, make_workflow: MakeWorkflow, state: State) -> None:
        """There is no ``to_<state>`` trigger, under either spelling of the state."""
        for name in {f"to_{state.value}", f"to_{state.name}", f"to_{state.name.lower()}"}:
            with pytest.raises(InvalidTransition):
                MACHINE.fire(make_workflow(S.PENDING), name)

    def test_underlying_events_are_the_table(self) -> None:
        """The compiled machine holds exactly the table's triggers (no generated ones)."""
        events = set(MACHINE._machine.events)
        assert events == {spec.trigger for spec in TABLE}
        assert not any(name.startswith("to_") for name in events)

    def test_mermaid_mentions_every_state(self) -> None:
        """The diagram names every state and every non-note edge."""
        diagram = MACHINE.mermaid()
        assert diagram.startswith("stateDiagram-v2")
        for state in State:
            assert state.value in diagram
        for (state, trigger), dest in EXPECTED.items():
            if dest != REFUSED and trigger not in ("note", "watch"):  # internal: no edge
                assert f"    {state.value} --> {dest.value}: {trigger}" in diagram  # type: ignore[union-attr]

    def test_firing_adds_no_models(self, make_workflow: MakeWorkflow) -> None:
        """Firing keeps nothing alive: the machine has no models and no throwaway model survives."""
        workflow = make_workflow(S.WAITING)
        for _ in range(500):
            MACHINE.fire(workflow, "note")
            MACHINE.fire(workflow, "mark_done")
            with pytest.raises(InvalidTransition):
                MACHINE.fire(workflow, "start")
        gc.collect()
        assert MACHINE._machine.models == []
        assert sum(1 for obj in gc.get_objects() if type(obj) is machine_module._Model) == 0

    def test_fire_does_not_touch_workflow(self, make_workflow: MakeWorkflow) -> None:
        """fire only answers; the workflow keeps its state."""
        workflow = make_workflow(S.PENDING)
        assert MACHINE.fire(workflow, "start") is S.VERIFYING_ADDRESS
        assert workflow.state is S.PENDING

    def test_repr(self) -> None:
        """The repr counts triggers and transitions."""
        assert repr(MACHINE) == f"<WorkflowMachine withdrawal: 23 triggers, {len(TABLE)} transitions>"
