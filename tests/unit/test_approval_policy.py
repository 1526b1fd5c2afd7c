"""The four-eyes approval's pure parts: the policy's decisions (tables and properties), the configuration
keys that feed them, what each kind's states accept, and the deadline rule of a workflow awaiting approval."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.config import load_config
from engine.errors import ConfigError, InvalidTransition
from engine.models import Workflow
from engine.policy import DEFAULT_APPROVAL_EXPIRY, CurrencyPolicy, Policy, batch_over_approval, needs_approval
from engine.views import describe_approval
from engine.webhooks import (
    ALL_EVENTS,
    AWAITING_APPROVAL,
    EVENT_TYPES,
    NEEDS_REVIEW,
    TERMINAL,
    TRANSITION,
    event_types,
    primary_type,
)
from workflows.batch.kind import KIND as BATCH
from workflows.batch.machine import MACHINE as BATCH_MACHINE
from workflows.batch.machine import BatchState
from workflows.withdrawal import KIND, past_deadline
from workflows.withdrawal_model import State

D = Decimal
amounts = st.decimals(min_value=D("0.00000001"), max_value=D("1e12"), allow_nan=False, allow_infinity=False, places=8)


class TestNeedsApproval:
    @pytest.mark.parametrize(
        ("amount", "threshold", "approved", "expected"),
        [
            ("0.02", "0.01", False, True),
            ("0.01", "0.01", False, False),  # strictly above
            ("0.0100000001", "0.01", False, True),
            ("0.005", "0.01", False, False),
            ("5", None, False, False),  # no threshold: never
            ("0.02", "0.01", True, False),  # an approval is recorded
        ],
    )
    def test_table(self, amount: str, threshold: str | None, approved: bool, expected: bool) -> None:
        """Only strictly above a configured threshold, and only while no approval is recorded."""
        limit = None if threshold is None else D(threshold)
        assert needs_approval(D(amount), limit, approved=approved) is expected

    @given(amount=amounts, threshold=amounts)
    def test_exactly_above_the_threshold(self, amount: Decimal, threshold: Decimal) -> None:
        """For any amounts: held iff amount > threshold; an approval always lets it through."""
        assert needs_approval(amount, threshold) is (amount > threshold)
        assert not needs_approval(amount, threshold, approved=True)
        assert not needs_approval(amount, None)

    @given(amount=amounts, low=amounts, extra=amounts)
    def test_a_lower_threshold_holds_at_least_as_much(self, amount: Decimal, low: Decimal, extra: Decimal) -> None:
        """Monotone: whatever a threshold holds, every lower threshold holds too."""
        if needs_approval(amount, low + extra):
            assert needs_approval(amount, low)


class TestThresholdLookup:
    def test_account_table_wins_and_inherits_when_silent(self) -> None:
        """An account's approval_above replaces the global one; an account table that does not set it keeps
        the global one (unlike the limits: a safety control is never dropped by omission)."""
        policy = Policy(
            currencies={"BTC": CurrencyPolicy(approval_above=D("1"))},
            accounts={
                "hot": {"BTC": CurrencyPolicy(approval_above=D("0.1"))},
                "cold": {"BTC": CurrencyPolicy(max_per_withdrawal=D("5"))},
            },
        )
        assert policy.approval_above("BTC") == D("1")
        assert policy.approval_above("BTC", "hot") == D("0.1")
        assert policy.approval_above("BTC", "cold") == D("1")
        assert policy.approval_above("BTC", "other") == D("1")
        assert policy.approval_above("ETH", "hot") is None
        assert Policy().approval_expires_after == DEFAULT_APPROVAL_EXPIRY == 4 * 3600


class TestBatchOverApproval:
    def test_table(self) -> None:
        """Each currency over its own threshold, with (total, threshold); others and unlisted ones: none."""
        thresholds = {"BTC": D("2"), "ETH": D("10")}
        assert batch_over_approval({"BTC": D("2.5"), "ETH": D("10"), "XRP": D("1e9")}, thresholds) == {
            "BTC": (D("2.5"), D("2"))
        }
        assert batch_over_approval({"BTC": D("2")}, thresholds) == {}
        assert batch_over_approval({"BTC": D("3")}, {}) == {}

    @given(totals=st.dictionaries(st.sampled_from(["BTC", "ETH", "XRP"]), amounts), limit=amounts)
    def test_exactly_the_currencies_above(self, totals: dict[str, Decimal], limit: Decimal) -> None:
        """For any totals under one shared threshold: exactly those above it, in currency order."""
        over = batch_over_approval(totals, dict.fromkeys(totals, limit))
        assert list(over) == sorted(cur for cur, total in totals.items() if total > limit)
        assert all(over[cur] == (totals[cur], limit) for cur in over)


def _config(tmp_path: Path, text: str) -> Policy:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path, environ={}).policy


class TestConfig:
    def test_keys_reach_the_policy(self, tmp_path: Path) -> None:
        """[policy] approval_expires_after, [policy.CUR] and [accounts.NAME.policy.CUR] approval_above, and
        [batches] approval_above (currency codes upper-cased), as exact decimals."""
        policy = _config(
            tmp_path,
            '[policy]\napproval_expires_after = 600\n[policy.btc]\napproval_above = "0.5"\n'
            '[accounts.default.policy.BTC]\napproval_above = "0.25"\n[batches]\napproval_above = {btc = "2"}\n',
        )
        assert policy.approval_expires_after == 600.0
        assert policy.approval_above("BTC") == D("0.5") and policy.approval_above("BTC", "default") == D("0.25")
        assert policy.batch_approval_above == {"BTC": D("2")}

    def test_defaults(self, tmp_path: Path) -> None:
        """Nothing configured: no threshold anywhere, 4 hours to decide."""
        policy = _config(tmp_path, "")
        assert policy.approval_above("BTC") is None and policy.batch_approval_above == {}
        assert policy.approval_expires_after == 4 * 3600

    @pytest.mark.parametrize(
        ("text", "key"),
        [
            ("[policy.BTC]\napproval_above = 0.5\n", "policy.BTC.approval_above"),  # a float: refused
            ('[policy.BTC]\napproval_above = "-1"\n', "policy.BTC.approval_above"),
            ("[policy]\napproval_expires_after = 0\n", "policy.approval_expires_after"),
            ("[policy]\napproval_expires_after = true\n", "policy.approval_expires_after"),
            ('[batches]\napproval_above = {BTC = "zero"}\n', "batches.approval_above.BTC"),
            ("[policy]\napproval_expire_after = 60\n", "policy.approval_expire_after"),  # a typo: not a currency
        ],
    )
    def test_bad_values_name_their_key(self, tmp_path: Path, text: str, key: str) -> None:
        """Each bad value stops the load with an error naming its key."""
        with pytest.raises(ConfigError) as caught:
            _config(tmp_path, text)
        assert caught.value.key == key


class TestKinds:
    def test_withdrawal_states_accept_their_own_actions(self) -> None:
        """needs_review takes resubmit/abandon, awaiting_approval approve/reject, nothing else takes any;
        approve and reject are the four-eyes actions."""
        assert KIND.resolutions_in("needs_review") == ("resubmit", "abandon")
        assert KIND.resolutions_in("awaiting_approval") == ("approve", "reject")
        assert all(
            KIND.resolutions_in(s) == () for s in State if s not in (State.NEEDS_REVIEW, State.AWAITING_APPROVAL)
        )
        assert KIND.is_four_eyes("approve") and KIND.is_four_eyes("reject") and not KIND.is_four_eyes("resubmit")
        assert KIND.awaits_approval("awaiting_approval") and not KIND.awaits_approval("needs_review")
        assert KIND.states_accepting("approve") == {"awaiting_approval"}
        assert KIND.settles_in("awaiting_approval")

    def test_batch_states(self) -> None:
        """A batch takes approve/reject in awaiting_approval; needs_attention takes none (its children do)."""
        assert BATCH.resolutions_in("awaiting_approval") == ("approve", "reject")
        assert BATCH.resolutions_in("needs_attention") == ()
        assert BATCH.awaits_approval("awaiting_approval") and BATCH.is_terminal("aborted")


def _held(**fields: Any) -> Workflow:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    base: dict[str, Any] = {
        "id": "wd_1", "state": State.AWAITING_APPROVAL, "request": None, "created_at": now, "updated_at": now,
        "deadline_at": now + timedelta(hours=4),
    }  # fmt: skip
    return Workflow(**(base | fields))


class TestDeadline:
    def test_only_past_the_expiry_and_without_a_decision(self) -> None:
        """Awaiting approval, the deadline is the approval's expiry: before it nothing ends it; after it an
        undecided workflow expires, a decided one is carried out."""
        wf = _held()
        assert wf.deadline_at is not None
        assert not past_deadline(wf, wf.deadline_at - timedelta(seconds=1))
        assert past_deadline(wf, wf.deadline_at)
        assert not past_deadline(_held(resolution="approve"), wf.deadline_at + timedelta(hours=1))
        assert not past_deadline(_held(deadline_at=None), wf.deadline_at + timedelta(days=9))

    def test_the_preflight_rule_still_holds_elsewhere(self) -> None:
        """checking_wallet past its deadline (not waiting on the wallet) still expires."""
        wf = _held(state=State.CHECKING_WALLET)
        assert wf.deadline_at is not None and past_deadline(wf, wf.deadline_at)


class TestWebhookTypes:
    def test_awaiting_approval_reaches_integrators(self) -> None:
        """Entering awaiting_approval (a withdrawal's or a batch's) is a workflow.awaiting_approval event, not
        a needs_review one; it is delivered as that type to whoever asked for it (or for everything)."""
        for kind, before in (("withdrawal", "checking_wallet"), ("batch", "accepted")):
            types = event_types(kind=kind, from_state=before, to_state="awaiting_approval")
            assert types == {ALL_EVENTS, TRANSITION, AWAITING_APPROVAL}
            assert primary_type(types, [AWAITING_APPROVAL, TRANSITION]) == AWAITING_APPROVAL
            assert primary_type(types, [ALL_EVENTS]) == AWAITING_APPROVAL
            assert primary_type(types, [NEEDS_REVIEW]) is None
        assert AWAITING_APPROVAL not in event_types(
            kind="withdrawal", from_state="reconciling", to_state="needs_review"
        )
        rejected = event_types(kind="withdrawal", from_state="awaiting_approval", to_state="aborted")
        assert rejected == {ALL_EVENTS, TRANSITION, TERMINAL}
        assert AWAITING_APPROVAL in EVENT_TYPES


class TestStatusLine:
    def test_the_approval_row(self) -> None:
        """status shows who approved and why, or that it was asked and until when; nothing when never asked."""
        asked = {
            "threshold": "0.05",
            "expires_at": "2026-01-01T04:00:00+00:00",
            "approved_by": None,
            "approved_at": None,
        }
        assert describe_approval({"approval": None}) is None
        waiting = describe_approval({"approval": asked})
        assert waiting is not None and "above 0.05" in waiting and "2026-01-01T04:00" in waiting
        given = {**asked, "approved_by": "bob", "approved_at": "2026-01-01T01:00:00+00:00", "note": "ok"}
        assert describe_approval({"approval": given}) == "approved by bob at 2026-01-01T01:00:00+00:00: ok"
        inherited = {**given, "batch_id": "bt_1"}
        assert describe_approval({"approval": inherited}) == "approved with batch bt_1 by bob: ok"


class TestBatchTable:
    @pytest.mark.parametrize(
        ("state", "trigger", "resolution", "expected"),
        [
            (BatchState.ACCEPTED, "await_approval", None, BatchState.AWAITING_APPROVAL),
            (BatchState.AWAITING_APPROVAL, "approve", "approve", BatchState.DISPATCHING),
            (BatchState.AWAITING_APPROVAL, "approve", None, "refused"),
            (BatchState.AWAITING_APPROVAL, "approve", "reject", "refused"),
            (BatchState.AWAITING_APPROVAL, "reject", "reject", BatchState.ABORTED),
            (BatchState.AWAITING_APPROVAL, "reject", "approve", "refused"),
            (BatchState.AWAITING_APPROVAL, "expire_approval", None, BatchState.ABORTED),
            (BatchState.AWAITING_APPROVAL, "cancel", None, BatchState.CANCELLING),
            (BatchState.AWAITING_APPROVAL, "dispatch", None, "refused"),  # no child before the approval
            (BatchState.RUNNING, "approve", "approve", "refused"),
            (BatchState.ABORTED, "approve", "approve", "refused"),
        ],
    )
    def test_the_approval_moves(self, state: BatchState, trigger: str, resolution: str | None, expected: Any) -> None:
        """A batch leaves awaiting_approval only by its approver's word (guarded), its expiry or a cancel;
        nothing dispatches it before the approval."""
        now = datetime(2026, 1, 1, tzinfo=UTC)
        wf = Workflow(
            id="bt_1", kind="batch", state=state, request=None, created_at=now, updated_at=now, resolution=resolution
        )
        if expected == "refused":
            with pytest.raises(InvalidTransition):
                BATCH_MACHINE.fire(wf, trigger)
        else:
            assert BATCH_MACHINE.fire(wf, trigger) == expected
