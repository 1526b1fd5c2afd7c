"""The withdrawal workflow: its transition table (data), its pure decisions, and one step per active state.

Path: pending -> verifying_address -> checking_wallet -> submitting -> WAITING -> PROCESSING -> DONE
(or FAILED / CANCELLED / REJECTED as the exchange reports), with ``aborted`` (nothing sent, with a
reason), ``reconciling`` (a POST whose outcome is unknown) and ``needs_review`` (an operator decides).
A withdrawal above its currency's ``approval_above`` waits in ``awaiting_approval`` once its pre-flight
checks passed (four eyes: an approver who is not its submitter approves or rejects it, with a note);
an approval sends it back through ``checking_wallet`` (the checks run again at approval time), a
rejection or the approval's expiry aborts it, nothing sent.

Decisions (``match_address``, ``wallet_verdict``, ``chance_verdict``, ``policy_verdict``,
``choose_candidate``, ``adoption_since``, ``absence_proven``, ``trigger_for``) are pure functions of their
inputs: they are tested as tables.
Steps do I/O and move the workflow only through :meth:`engine.port.StepPort.transition`, in the
order decide -> persist -> act. The POST is sent only by the step that has just committed ``submitting``
in the same run; a workflow *found* in ``submitting`` (after a crash) may have sent it, so it reconciles.

A workflow that settles while a POST of it is unaccounted for (abandoned by an operator; or resubmitted
after an unknown outcome and then answered) keeps its lane reserved and watches it for a while
(``lane_watch``): a withdrawal that appears meanwhile is attributed to it (so no other workflow adopts
it) and raised as an alert (``late_withdrawal``). ``needs_review`` may be resolved
automatically by proven absence when the account's policy says so (``AutoResolve``, off by default).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal, Unpack

import structlog

from engine.backoff import backoff_delay
from engine.context import evolve
from engine.errors import ExchangeError, ExchangeRefused, ExchangeThrottled, LaneBusy, OutcomeUnknown
from engine.kinds import RowIndex, Step, WorkflowKind
from engine.machine import TransitionSpec, WorkflowMachine
from engine.models import Workflow
from engine.policy import AutoResolve, Policy, WorkflowSettings, needs_approval
from engine.port import StepPort
from engine.upbit.client import MAX_LIST_IDS, WithdrawBody
from engine.upbit.gateway import SubmitSlot
from engine.upbit.types import AllowedAddress, Chance, ExchangeState, WalletStatus, Withdrawal
from workflows.withdrawal_model import (
    AbortReason,
    ApprovalInfo,
    ApprovalRequest,
    ReconcileInfo,
    ReconcileMode,
    Resolution,
    State,
    TransactionType,
    WithdrawalData,
    WithdrawalRequest,
    data_of,
)

#: A key of :class:`WithdrawalData`.
WithdrawalKey = Literal[
    "secondary_address",
    "network_name",
    "wallet_wait",
    "reconcile",
    "uncertain_posts",
    "watch",
    "absence",
    "auto_resubmits",
    "cancel_noted",
    "cancel_sent",
    "approval_request",
    "approved",
]

__all__ = [
    "KIND",
    "MACHINE",
    "NOT_PAID",
    "STEPS",
    "TABLE",
    "AddressMatch",
    "Verdict",
    "absence_proven",
    "adoption_since",
    "backoff_delay",
    "chance_verdict",
    "choose_candidate",
    "match_address",
    "policy_verdict",
    "trigger_for",
    "wallet_verdict",
]

log = structlog.get_logger("engine.workflow")
S = State
_PRE_SUBMIT = (S.PENDING, S.VERIFYING_ADDRESS, S.CHECKING_WALLET)
#: Waiting for a person: an operator's review, or an approver's decision.
_HELD = (S.NEEDS_REVIEW, S.AWAITING_APPROVAL)
#: Nothing of it has been sent yet: a cancel ends it locally.
_UNSENT = (*_PRE_SUBMIT, S.AWAITING_APPROVAL)
_OBSERVABLE = (S.SUBMITTING, S.RECONCILING, S.WAITING, S.PROCESSING)
_ACTIVE = tuple(s for s in State if not s.is_terminal)
_SETTLED = tuple(s for s in State if s.is_terminal)


def _throttled_reconcile(wf: Workflow, _: Mapping[str, Any]) -> bool:
    """Only a throttled POST (429/418: not executed) may be resent after its reconcile found nothing."""
    return bool(data_of(wf.data).get("reconcile", {}).get("mode") == ReconcileMode.THROTTLED)


def _absence_proven_guard(wf: Workflow, data: Mapping[str, Any]) -> bool:
    """An automatic resubmit only with its evidence: enough empty listings over enough time."""
    evidence = data.get("evidence") or {}
    rule = evidence.get("rule") or {}
    return absence_proven(evidence.get("listings") or [], int(rule.get("listings", 0)), float(rule.get("minutes", 0)))


def _operator_said(action: str) -> Callable[[Workflow, Mapping[str, Any]], bool]:
    def guard(wf: Workflow, _: Mapping[str, Any]) -> bool:
        return wf.resolution == action

    guard.__name__ = f"operator_said_{action}"
    return guard


TABLE: tuple[TransitionSpec, ...] = (
    TransitionSpec("start", (S.PENDING,), S.VERIFYING_ADDRESS),
    TransitionSpec("verify", (S.VERIFYING_ADDRESS,), S.CHECKING_WALLET),
    TransitionSpec("submit", (S.CHECKING_WALLET,), S.SUBMITTING),
    TransitionSpec("await_approval", (S.CHECKING_WALLET,), S.AWAITING_APPROVAL),
    TransitionSpec("approve", (S.AWAITING_APPROVAL,), S.CHECKING_WALLET, _operator_said(Resolution.APPROVE)),
    TransitionSpec("reject", (S.AWAITING_APPROVAL,), S.ABORTED, _operator_said(Resolution.REJECT)),
    TransitionSpec("expire_approval", (S.AWAITING_APPROVAL,), S.ABORTED),
    TransitionSpec("abort", _PRE_SUBMIT, S.ABORTED),
    TransitionSpec("cancel", _UNSENT, S.CANCELLED),
    TransitionSpec("refuse", (S.SUBMITTING,), S.ABORTED),
    TransitionSpec("lose_track", (S.SUBMITTING,), S.RECONCILING),
    TransitionSpec("resubmit", (S.RECONCILING,), S.SUBMITTING, _throttled_reconcile),
    TransitionSpec("resubmit", (S.NEEDS_REVIEW,), S.SUBMITTING, _operator_said(Resolution.RESUBMIT)),
    TransitionSpec("auto_resubmit", (S.NEEDS_REVIEW,), S.SUBMITTING, _absence_proven_guard),
    TransitionSpec("escalate", (S.RECONCILING,), S.NEEDS_REVIEW),
    TransitionSpec("abandon", (S.NEEDS_REVIEW,), S.ABORTED, _operator_said(Resolution.ABANDON)),
    TransitionSpec("mark_waiting", (S.SUBMITTING, S.RECONCILING), S.WAITING),
    TransitionSpec("mark_processing", (S.SUBMITTING, S.RECONCILING, S.WAITING), S.PROCESSING),
    TransitionSpec("mark_done", _OBSERVABLE, S.DONE),
    TransitionSpec("mark_failed", _OBSERVABLE, S.FAILED),
    TransitionSpec("mark_cancelled", _OBSERVABLE, S.CANCELLED),
    TransitionSpec("mark_rejected", _OBSERVABLE, S.REJECTED),
    TransitionSpec("note", _ACTIVE, None),
    TransitionSpec("watch", _SETTLED, None),
)

MACHINE = WorkflowMachine("withdrawal", State, TABLE, initial=S.PENDING, terminal=_SETTLED)
#: Ended states whose withdrawal was never paid (refused, abandoned): the daily limit's sum leaves them
#: out, unless an exchange uuid shows the withdrawal happened after all.
NOT_PAID: tuple[str, ...] = (S.ABORTED,)

_TRIGGERS = {
    ExchangeState.WAITING: "mark_waiting",
    ExchangeState.PROCESSING: "mark_processing",
    ExchangeState.DONE: "mark_done",
    ExchangeState.FAILED: "mark_failed",
    ExchangeState.CANCELLED: "mark_cancelled",
    ExchangeState.REJECTED: "mark_rejected",
}


def _data(wf: Workflow, **changes: Unpack[WithdrawalData]) -> WithdrawalData:
    """The workflow's data with ``changes`` (keys checked against :class:`WithdrawalData`)."""
    return {**data_of(wf.data), **changes}


def _data_without(wf: Workflow, *keys: WithdrawalKey) -> WithdrawalData:
    """The workflow's data without ``keys``."""
    data: WithdrawalData = {**data_of(wf.data)}
    for key in keys:
        data.pop(key, None)
    return data


# -- pure decisions ------------------------------------------------------------------------------------


class Verdict(StrEnum):
    """What a pre-flight check says: go on, wait and look again, or stop for good."""

    SEND = "send"
    WAIT = "wait"
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class Check:
    """A verdict with its reason code and a sentence for people."""

    verdict: Verdict
    reason: AbortReason | None = None
    detail: str = ""


SEND = Check(Verdict.SEND)


@dataclass(frozen=True, slots=True)
class AddressMatch:
    """Whether the destination is allowlisted, and the secondary address to send."""

    ok: bool
    secondary_address: str | None = None
    registered: AllowedAddress | None = None
    detail: str = ""


def match_address(request: WithdrawalRequest, allowlist: Sequence[AllowedAddress]) -> AddressMatch:
    """The destination must be registered for (currency, net_type[, exchange_name]) with its tag/memo.

    An omitted secondary address takes the registered one; a given one must equal it exactly.
    """
    rows = [
        a
        for a in allowlist
        if a.currency == request.currency
        and a.net_type == request.net_type
        and a.withdraw_address == request.address
        and (request.exchange_name is None or a.exchange_name == request.exchange_name)
    ]
    where = f"{request.currency}/{request.net_type}"
    if not rows:
        return AddressMatch(False, detail=f"address is not in the Open API allowlist for {where}")
    if request.secondary_address is not None:
        exact = [a for a in rows if a.secondary_address == request.secondary_address]
        if not exact:
            return AddressMatch(False, detail=f"secondary_address differs from the one registered for {where}")
        return AddressMatch(True, request.secondary_address, exact[0])
    registered = {a.secondary_address for a in rows}
    if len(registered) > 1:
        return AddressMatch(False, detail="several secondary addresses are registered; name one")
    return AddressMatch(True, rows[0].secondary_address, rows[0])


def wallet_verdict(status: WalletStatus | None, *, hold_on_delayed: bool = False) -> Check:
    """May this network send now? ``working``/``withdraw_only`` yes; paused-like states: wait."""
    if status is None:
        return Check(Verdict.ABORT, AbortReason.WALLET_UNAVAILABLE, "the exchange lists no wallet for it")
    state, block = status.wallet_state, status.block_state
    if state == "unsupported":
        return Check(Verdict.ABORT, AbortReason.WALLET_UNAVAILABLE, "wallet is unsupported")
    if state not in ("working", "withdraw_only"):
        return Check(Verdict.WAIT, AbortReason.WALLET_UNAVAILABLE, f"wallet_state is {state}")
    if block == "inactive" or (block == "delayed" and hold_on_delayed):
        return Check(Verdict.WAIT, AbortReason.WALLET_UNAVAILABLE, f"block_state is {block}")
    return SEND


def _decimals(amount: Decimal) -> int:
    exponent = amount.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def chance_verdict(request: WithdrawalRequest, chance: Chance) -> Check:
    """The exchange's own limits: locks, support, minimum, decimals, one-time limit, balance + fee.

    A limit the answer leaves unknown (``None``: the official spec marks ``minimum``, ``fixed`` and
    ``can_withdraw`` optional) is not checked here: the exchange still enforces it, and its refusal of the
    POST is a clean abort with nothing sent. An unknown ``can_withdraw`` defers to ``wallet_support``,
    which Upbit documents as the authoritative "can withdraw now" flag (checked just before it)."""
    amount = request.amount
    fee = Decimal(0) if request.transaction_type is TransactionType.INTERNAL else chance.withdraw_fee
    minimum, fixed, onetime = chance.minimum, chance.fixed, chance.onetime
    abort, wait = Verdict.ABORT, Verdict.WAIT
    rules: list[tuple[bool, Check]] = [
        (chance.member_locked or chance.wallet_locked,
         Check(abort, AbortReason.CHANCE_DENIED, "account or wallet is locked")),
        ("withdraw" not in chance.wallet_support,
         Check(wait, AbortReason.WALLET_UNAVAILABLE, "withdrawals are not supported right now")),
        (chance.can_withdraw is False,
         Check(abort, AbortReason.CHANCE_DENIED, "the exchange says can_withdraw is false")),
        (minimum is not None and amount < minimum,
         Check(abort, AbortReason.BELOW_MINIMUM, f"amount is below the minimum {minimum}")),
        (fixed is not None and _decimals(amount) > fixed,
         Check(abort, AbortReason.TOO_MANY_DECIMALS, f"amount has more than {fixed} decimals")),
        (onetime is not None and onetime > 0 and amount > onetime,
         Check(abort, AbortReason.POLICY_DENIED, f"amount is over the one-time limit {onetime}")),
        (chance.balance < amount + fee,
         Check(abort, AbortReason.INSUFFICIENT_BALANCE, f"balance {chance.balance} < amount + fee {amount + fee}")),
    ]  # fmt: skip
    return next((check for failed, check in rules if failed), SEND)


def policy_verdict(request: WithdrawalRequest, policy: Policy, spent_today: Decimal | None = None) -> Check:
    """Local limits on top of Upbit's: per withdrawal, per day, and an optional address pin-list."""
    rules = policy.for_currency(request.currency, request.account)
    if rules.pinned_addresses is not None and request.address not in rules.pinned_addresses:
        return Check(Verdict.ABORT, AbortReason.POLICY_DENIED, "address is not on the pin-list")
    if rules.max_per_withdrawal is not None and request.amount > rules.max_per_withdrawal:
        return Check(Verdict.ABORT, AbortReason.POLICY_DENIED, f"over max_per_withdrawal {rules.max_per_withdrawal}")
    if rules.max_per_day is not None and spent_today is not None and spent_today + request.amount > rules.max_per_day:
        return Check(Verdict.ABORT, AbortReason.POLICY_DENIED, f"over max_per_day {rules.max_per_day}")
    return SEND


@dataclass(frozen=True, slots=True)
class Candidates:
    """What a reconciliation found: the one to adopt, or why there is none."""

    adopt: Withdrawal | None
    matches: tuple[str, ...]
    searched: int


def choose_candidate(
    workflow: Workflow, withdrawals: Sequence[Withdrawal], owners: Mapping[str, str], since: datetime
) -> Candidates:
    """Adopt the single withdrawal with our currency, network, amount and type, created after our intent
    (minus skew) and owned by no other workflow. Zero or several: no adoption."""
    req = workflow.request
    matches = [
        w
        for w in withdrawals
        if w.currency == req.currency
        and (w.net_type or w.currency) == req.net_type
        and w.amount == req.amount
        and w.transaction_type == req.transaction_type.value
        and w.created_at >= since
        and owners.get(w.uuid, workflow.id) == workflow.id
    ]
    only = matches[0] if len(matches) == 1 else None
    return Candidates(only, tuple(w.uuid for w in matches), len(withdrawals))


def adoption_since(
    submitted_at: datetime, offset_low: float | None, *, fallback_skew: float, margin: float
) -> datetime:
    """The earliest exchange ``created_at`` our own withdrawal can carry, so the earliest one we may adopt.

    ``offset_low`` is a proven lower bound of ``exchange clock - our clock`` (``engine.upbit.skew``). Our
    POST leaves after ``submitted_at``, so the exchange creates it at its time ``> submitted_at +
    offset``; ``created_at`` truncates to whole seconds (hence the 1 s); ``margin`` covers drift since
    the bound was measured. Unmeasured: the configured allowance ``fallback_skew``.

    Residual window: a reconciliation may still adopt a foreign same-lane withdrawal created at most
    ``1 s + margin + (offset_high - offset_low)`` before its intent (about 2-3 s with a sub-second round
    trip), or after it; another workflow's late POST is kept out of that window by the lane watch."""
    if offset_low is None:
        return submitted_at - timedelta(seconds=fallback_skew)
    return submitted_at + timedelta(seconds=offset_low - 1.0 - margin)


def absence_proven(listings: Sequence[Mapping[str, Any]], required: int, minutes: float) -> bool:
    """True when at least ``required`` consecutive listings, spanning ``minutes`` or more, all answered
    completely and none showed a candidate. Anything else (a failure, a candidate, too few, too soon): no."""
    if required < 1 or len(listings) < required:
        return False
    if any(not entry.get("complete") or entry.get("candidates") for entry in listings):
        return False
    first, last = (datetime.fromisoformat(str(listings[i]["at"])) for i in (0, -1))
    return (last - first).total_seconds() >= minutes * 60.0


def trigger_for(state: ExchangeState) -> str | None:
    """The trigger that records an exchange state; None for an unknown one (kept in flight)."""
    return _TRIGGERS.get(state)


# -- steps ---------------------------------------------------------------------------------------------


async def step_pending(wf: Workflow, ctx: StepPort) -> Workflow:
    """Start, unless cancelled first, or unless the account's write budget is booked for a while: then
    wait for this workflow's turn as a row (``next_run_at``), not as a task queued at the rate limiter,
    so polls and cancels of other workflows never queue behind a backlog of new ones."""
    if wf.cancel_requested:
        return await _cancel_locally(wf, ctx)
    gateway = ctx.gateway(wf)
    if wf.attempt == 0:
        delay = gateway.submit_delay()
        if delay > 0:
            return await ctx.reschedule(wf, delay, attempt=1)
    else:  # back at its turn: it goes now
        gateway.admit()
    return await ctx.transition(wf, "start", next_run_at=ctx.now(), attempt=0)


async def step_verifying_address(wf: Workflow, ctx: StepPort) -> Workflow:
    """Local policy (cheap, no I/O) first, then the exchange's allowlist."""
    if wf.cancel_requested:
        return await _cancel_locally(wf, ctx)
    check = policy_verdict(wf.request, ctx.policy)
    if check.verdict is Verdict.ABORT:
        return await _abort(wf, ctx, check)
    match = match_address(wf.request, await ctx.gateway(wf).allowlist())
    if not match.ok:
        return await _abort(wf, ctx, Check(Verdict.ABORT, AbortReason.ADDRESS_NOT_ALLOWED, match.detail))
    data = _data(wf, secondary_address=match.secondary_address)
    if match.registered is not None:
        data["network_name"] = match.registered.network_name
    return await ctx.transition(wf, "verify", data=data, attempt=0, next_run_at=ctx.now())


async def step_checking_wallet(wf: Workflow, ctx: StepPort) -> Workflow:
    """Wallet status, then chance, then the daily policy; all pass: hold it for an approver when the policy
    asks for one and none is recorded, else persist the intent and POST."""
    if wf.cancel_requested:
        return await _cancel_locally(wf, ctx)
    gateway = ctx.gateway(wf)
    checks: list[Callable[[], Awaitable[Check]]] = [
        lambda: _wallet_check(wf, ctx),
        lambda: _chance_check(wf, ctx),
        lambda: _daily_check(wf, ctx),
    ]
    for run_check in checks:
        check = await run_check()
        if check.verdict is Verdict.ABORT:
            return await _abort(wf, ctx, check)
        if check.verdict is Verdict.WAIT:
            gateway.forget_wallets()
            return await _wait_for_wallet(wf, ctx, check)
    threshold = ctx.policy.approval_above(wf.request.currency, wf.request.account)
    if needs_approval(wf.request.amount, threshold, approved="approved" in data_of(wf.data)):
        assert threshold is not None
        batch_approval = await _batch_approval(wf, ctx)
        if batch_approval is None:
            return await _await_approval(wf, ctx, threshold)
        wf = await ctx.note(
            wf, "approval_inherited", changes={"data": _data(wf, approved=batch_approval)},
            batch_id=batch_approval.get("batch_id"), operator=batch_approval.get("by"),
        )  # fmt: skip
    if ctx.policy.dry_run:
        body = _body(wf)
        return await _abort(
            wf, ctx, Check(Verdict.ABORT, AbortReason.DRY_RUN, "dry run: not sent"), body=dict(body.params())
        )
    return await _submit(wf, ctx, "submit")


async def _batch_approval(wf: Workflow, ctx: StepPort) -> ApprovalInfo | None:
    """The approval of the batch this withdrawal belongs to, if it was approved: a child of an approved
    batch is not held again (its batch's approver saw it in the batch's total)."""
    if wf.parent_id is None:
        return None
    parent = await ctx.read(wf.parent_id)
    approval = parent.data.get("approved")
    if not isinstance(approval, dict):
        return None
    return ApprovalInfo(
        by=approval.get("by"), note=approval.get("note"), at=str(approval.get("at")), batch_id=parent.id
    )


async def _await_approval(wf: Workflow, ctx: StepPort, threshold: Decimal) -> Workflow:
    """``awaiting_approval`` until an approver decides or the approval expires (its deadline; the step
    sleeps until then). Nothing is sent, and the lane is not held."""
    now = ctx.now()
    expires = now + timedelta(seconds=ctx.policy.approval_expires_after)
    request = ApprovalRequest(
        at=now.isoformat(), expires_at=expires.isoformat(), amount=format(wf.request.amount, "f"),
        threshold=format(threshold, "f"),
    )  # fmt: skip
    return await ctx.transition(
        wf, "await_approval", event_data=dict(request), deadline_at=expires, next_run_at=expires, attempt=0,
        data=_data_without(evolve(wf, data=_data(wf, approval_request=request)), "wallet_wait"),
    )  # fmt: skip


async def step_awaiting_approval(wf: Workflow, ctx: StepPort) -> Workflow:
    """Carry out the approver's decision (a cancel comes first: nothing was sent); past the expiry with no
    decision, abort; else sleep until the expiry."""
    if wf.cancel_requested:
        return await _cancel_locally(wf, ctx)
    if wf.resolution == Resolution.APPROVE:
        return await _approve(wf, ctx)
    if wf.resolution == Resolution.REJECT:
        return await ctx.transition(
            wf, "reject", event_data=_decided_by(wf), reason=AbortReason.APPROVAL_REJECTED.value, resolution=None
        )
    if wf.deadline_at is None or ctx.now() >= wf.deadline_at:
        return await _expire_approval(wf, ctx)
    return await ctx.reschedule(wf, (wf.deadline_at - ctx.now()).total_seconds())


def _decided_by(wf: Workflow) -> dict[str, Any]:
    """Who decided the pending resolution, with their note (the event records both)."""
    return {"operator": wf.resolution_by, "note": wf.resolution_note}


async def _approve(wf: Workflow, ctx: StepPort) -> Workflow:
    """Back to ``checking_wallet`` with the approval recorded: the wallet, chance and daily checks run again
    now (hours may have passed), with a fresh pre-flight deadline, and then it is sent without asking again."""
    now = ctx.now()
    ctx.gateway(wf).forget_wallets()  # the wallet as it is now, not as cached before the wait
    decided = _decided_by(wf)
    approval = ApprovalInfo(by=decided["operator"], note=decided["note"], at=now.isoformat())
    return await ctx.transition(
        wf, "approve", event_data=_decided_by(wf), resolution=None, data=_data(wf, approved=approval),
        deadline_at=now + timedelta(seconds=ctx.settings.preflight_deadline), next_run_at=now, attempt=0,
    )  # fmt: skip


async def _expire_approval(wf: Workflow, ctx: StepPort) -> Workflow:
    expires = data_of(wf.data).get("approval_request", {}).get("expires_at")
    return await ctx.transition(
        wf, "expire_approval", event_data={"detail": "no approver decided before the approval expired",
                                           "expires_at": expires},
        reason=AbortReason.APPROVAL_EXPIRED.value,
    )  # fmt: skip


async def _wallet_check(wf: Workflow, ctx: StepPort) -> Check:
    status = await ctx.gateway(wf).wallet_status(wf.request.currency, wf.request.net_type)
    return wallet_verdict(status, hold_on_delayed=ctx.settings.hold_on_block_delayed)


async def _chance_check(wf: Workflow, ctx: StepPort) -> Check:
    gateway, req = ctx.gateway(wf), wf.request
    check = chance_verdict(req, await gateway.chance(req.currency, req.net_type))
    if check.reason is AbortReason.INSUFFICIENT_BALANCE:  # perhaps only our local holds: ask the exchange
        check = chance_verdict(req, await gateway.chance(req.currency, req.net_type, fresh=True))
    return check


async def _daily_check(wf: Workflow, ctx: StepPort) -> Check:
    if ctx.policy.for_currency(wf.request.currency, wf.request.account).max_per_day is None:
        return SEND
    spent = await ctx.sum_submitted(
        account=wf.request.account,
        currency=wf.request.currency,
        since=ctx.now() - timedelta(days=1),
        not_paid=NOT_PAID,
    )
    return policy_verdict(wf.request, ctx.policy, spent)


async def _wait_for_wallet(wf: Workflow, ctx: StepPort, check: Check) -> Workflow:
    """Look again later with backoff; past the deadline, give up (nothing was sent)."""
    if wf.deadline_at is not None and ctx.now() >= wf.deadline_at:
        return await _abort(wf, ctx, Check(Verdict.ABORT, check.reason, f"{check.detail} until the deadline"))
    delay = backoff_delay(
        wf.attempt, initial=ctx.settings.wallet_recheck_initial, maximum=ctx.settings.wallet_recheck_max, jitter=0.5
    )
    if wf.deadline_at is not None:
        delay = min(delay, max(0.0, (wf.deadline_at - ctx.now()).total_seconds()))
    if not data_of(wf.data).get("wallet_wait"):
        changes = {
            "next_run_at": ctx.after(delay),
            "attempt": wf.attempt + 1,
            "data": _data(wf, wallet_wait=check.detail),
        }
        return await ctx.note(wf, "wallet_wait", changes=changes, detail=check.detail)
    return await ctx.reschedule(wf, delay, attempt=wf.attempt + 1)


def _body(wf: Workflow) -> WithdrawBody:
    req = wf.request
    return WithdrawBody(
        currency=req.currency,
        net_type=req.net_type,
        amount=req.amount,
        address=req.address,
        secondary_address=data_of(wf.data).get("secondary_address", req.secondary_address),
        transaction_type=req.transaction_type.value,
    )


async def _submit(wf: Workflow, ctx: StepPort, trigger: str, **event_data: Any) -> Workflow:
    """Take a rate-limit slot, persist the intent through it (state ``submitting``, exact body, time, lane
    held), then send it once with that slot; the gateway refuses a POST whose intent was not recorded,
    and a slot left unused (the lane was busy, an error, a cancellation) goes back as the block exits."""
    body = _body(wf)
    async with ctx.gateway(wf).submit_slot() as slot:

        async def persist() -> Workflow:
            return await ctx.transition(
                wf,
                trigger,
                event_data={"body": dict(body.params()), **event_data},
                # An automatic resubmit must not overrule (and clear) an operator's abandon or cancel that
                # arrived while its proof was being gathered: the store refuses it if any flag is set.
                unflagged=trigger == "auto_resubmit",
                lane_held=True,
                submit_body=json.dumps(dict(body.params())),
                submitted_at=ctx.now(),
                submit_count=wf.submit_count + 1,
                resolution=None,
                reason=None,
                error=None,
                attempt=0,
                next_run_at=ctx.now(),
                data=_data_without(wf, "reconcile", "wallet_wait", "absence"),
            )

        try:
            intent = await slot.record_intent(body, persist)
        except LaneBusy:
            pass  # another submit holds the lane: come back later (the slot goes back as the block exits)
        else:
            return await _send(intent, ctx, body, slot)
    return await ctx.reschedule(wf, ctx.settings.lane_retry)


async def _send(wf: Workflow, ctx: StepPort, body: WithdrawBody, slot: SubmitSlot) -> Workflow:
    """The only place a POST leaves. Its error type says what is known of the outcome."""
    try:
        withdrawal = await ctx.gateway(wf).submit(body, slot=slot)
    except ExchangeThrottled as exc:
        return await _lose_track(wf, ctx, ReconcileMode.THROTTLED, exc, delay=exc.retry_after)
    except ExchangeRefused as exc:
        return await ctx.transition(
            wf, "refuse", event_data={"error": exc.as_dict()}, reason=AbortReason.SUBMIT_REFUSED.value,
            error=exc.as_dict(),
        )  # fmt: skip
    except OutcomeUnknown as exc:
        return await _lose_track(wf, ctx, ReconcileMode.UNKNOWN, exc, delay=ctx.settings.reconcile_delay)
    if wf.submitted_at is not None:  # created between our intent and now: a sample of the created_at clock
        ctx.gateway(wf).client.skew.observe_created(wf.submitted_at, ctx.now(), withdrawal.created_at)
    return await _record(wf, ctx, withdrawal, how="accepted")


async def _lose_track(
    wf: Workflow, ctx: StepPort, mode: ReconcileMode, exc: Exception | None, *, delay: float
) -> Workflow:
    """``reconciling``; a POST that may have executed (all but a throttle) is counted in ``uncertain_posts``:
    an abandon watches the lane until that many withdrawals are accounted for."""
    error = exc.as_dict() if isinstance(exc, ExchangeError) else None
    reconcile = ReconcileInfo(mode=mode, since=ctx.now().isoformat())
    uncertain = int(data_of(wf.data).get("uncertain_posts", 0)) + (0 if mode == ReconcileMode.THROTTLED else 1)
    return await ctx.transition(
        wf, "lose_track", event_data={"mode": mode, "error": error}, error=error,
        data=_data(wf, reconcile=reconcile, uncertain_posts=uncertain), attempt=0,
        next_run_at=ctx.after(delay),
    )  # fmt: skip


async def _record(
    wf: Workflow, ctx: StepPort, withdrawal: Withdrawal, *, how: str, attempt: int = 0, **extra: Any
) -> Workflow:
    """Move to the exchange's state, keeping its uuid; an unknown state is kept in flight as WAITING.

    ``attempt`` is where the poll backoff goes on from (a poll that saw WAITING -> PROCESSING keeps
    backing off: the withdrawal is no nearer its end for having moved)."""
    trigger = trigger_for(withdrawal.state)
    if trigger is None:
        log.warning("exchange.unknown_state", workflow_id=wf.id, raw_state=withdrawal.raw_state)
        trigger = "mark_waiting" if wf.state is not S.PROCESSING else "note"
    terminal = withdrawal.state.is_terminal
    data, watch = data_of(wf.data), _open_watch(wf)
    if watch is None and wf.exchange_uuid is None:  # first answer: earlier uncertain POSTs left to watch for?
        unaccounted = int(data_of(wf.data).get("uncertain_posts", 0)) - (1 if how == "adopted" else 0)
        if unaccounted > 0 and ctx.settings.lane_watch > 0:
            watch = _new_watch(ctx, unaccounted)
            data = _data(wf, watch=watch)
            extra = {**extra, "watch_until": watch["until"]}
    next_run_at = None if terminal else ctx.after(_poll_delay(ctx, attempt))
    if terminal and watch is not None:
        next_run_at = datetime.fromisoformat(watch["next_at"])
    return await ctx.transition(
        wf, trigger,
        event_data={"how": how, "exchange_state": withdrawal.raw_state, **extra},
        exchange_uuid=withdrawal.uuid, txid=withdrawal.txid, exchange_state=withdrawal.raw_state,
        lane_held=watch is not None, attempt=attempt, next_run_at=next_run_at, data=data,
    )  # fmt: skip


def _poll_delay(ctx: StepPort, attempt: int) -> float:
    """Seconds before the next poll: ``poll_initial`` (plus jitter) while steady, then exponential backoff.

    Polls are batched per account and a batch leaves at most once per the slack below, so the steady
    cadence is a sweep: everything in flight is looked at about every ``2 * poll_initial`` seconds (the
    most overdue first, 100 a call), whatever the number in flight; long-running withdrawals then fade
    to ``poll_max``."""
    s = ctx.settings
    steady = _steady_polls(s)
    if attempt < steady:
        return backoff_delay(0, initial=s.poll_initial, maximum=s.poll_max, jitter=s.poll_jitter)
    return backoff_delay(attempt - steady + 1, initial=s.poll_initial, maximum=s.poll_max, jitter=s.poll_jitter)


def _poll_slack(ctx: StepPort, attempt: int) -> float:
    """How late a poll's answer may come: the sweep period while steady, then half the backoff interval."""
    s = ctx.settings
    steady = _steady_polls(s)
    sweep = 2 * s.poll_initial
    if attempt < steady:
        return sweep
    return max(sweep, float(min(s.poll_max, s.poll_initial * 2 ** min(attempt - steady + 1, 30))) / 2)


def _steady_polls(s: WorkflowSettings) -> int:
    """How many polls (attempts) run at the steady cadence."""
    return int(s.poll_steady / s.poll_initial) if s.poll_initial > 0 else 0


async def step_submitting(wf: Workflow, ctx: StepPort) -> Workflow:
    """Found in ``submitting``: a previous run may have sent the POST. Never resend: reconcile."""
    return await _lose_track(wf, ctx, ReconcileMode.INTERRUPTED, None, delay=0.0)


async def step_reconciling(wf: Workflow, ctx: StepPort) -> Workflow:
    """Adopt the one matching withdrawal; resend only after a throttle; else wait, then escalate."""
    mode = data_of(wf.data).get("reconcile", {}).get("mode", ReconcileMode.UNKNOWN)
    assert wf.submitted_at is not None
    found, since, skew = await _list_lane(wf, ctx, wf.submitted_at)
    owners = await ctx.owners_of([w.uuid for w in found])
    result = choose_candidate(wf, found, owners, since)
    evidence = {
        "mode": mode, "searched": result.searched, "since": since.isoformat(), "skew": skew,
        "matches": list(result.matches),
    }  # fmt: skip
    if result.adopt is not None:
        return await _record(wf, ctx, result.adopt, how="adopted", evidence=evidence)
    if result.matches:
        return await _escalate(wf, ctx, "several withdrawals match", evidence, absent=False)
    if mode == ReconcileMode.THROTTLED:
        return await _submit(wf, ctx, "resubmit", evidence=evidence)
    started = datetime.fromisoformat(data_of(wf.data)["reconcile"]["since"])
    if (ctx.now() - started).total_seconds() < ctx.settings.reconcile_grace:
        delay = backoff_delay(wf.attempt, initial=ctx.settings.reconcile_delay, maximum=30.0)
        return await ctx.reschedule(wf, delay, attempt=wf.attempt + 1)
    return await _escalate(wf, ctx, "no matching withdrawal within the grace window", evidence, absent=True)


async def _list_lane(
    wf: Workflow, ctx: StepPort, after: datetime, *, wide: bool = False
) -> tuple[list[Withdrawal], datetime, dict[str, Any]]:
    """The currency's recent withdrawals and the earliest ``created_at`` that may be ours (``after`` our
    intent, minus the measured skew; ``wide``: minus the configured ``clock_skew`` too, whichever is
    earlier). It lists first and measures after, so even the first look after a restart has a sample
    (the listing's own ``Date``)."""
    gateway, s = ctx.gateway(wf), ctx.settings
    fallback = after - timedelta(seconds=s.clock_skew)
    found = await gateway.recent_withdrawals(
        wf.request.currency, min(fallback, _since(gateway, after, ctx)), max_pages=s.recent_pages
    )
    since = _since(gateway, after, ctx)
    if wide:
        since = min(since, fallback)
    skew = {**gateway.client.skew.describe(ctx.now()), "complete": len(found) < s.recent_pages * MAX_LIST_IDS}
    return [w for w in found if w.created_at >= since], since, skew


def _since(gateway: Any, after: datetime, ctx: StepPort) -> datetime:
    low = gateway.client.skew.lower_bound(ctx.now())
    return adoption_since(after, low, fallback_skew=ctx.settings.clock_skew, margin=ctx.settings.skew_margin)


async def _escalate(wf: Workflow, ctx: StepPort, why: str, evidence: dict[str, Any], *, absent: bool) -> Workflow:
    """``needs_review`` with the evidence. With the account's auto-resolution on, a POST that left no trace
    (``absent``) and was never resubmitted automatically starts listing for proof of absence."""
    rule = ctx.policy.auto_resolve_for(wf.request.account)
    auto = rule.enabled and absent and not data_of(wf.data).get("auto_resubmits") and rule.listings >= 1
    data = _data(wf, absence={"listings": []}) if auto else wf.data
    return await ctx.transition(
        wf, "escalate", event_data={"why": why, "evidence": evidence, "auto_resolve": auto}, reason=why,
        data=data, next_run_at=ctx.after(_absence_interval(rule)) if auto else None,
    )  # fmt: skip


def _absence_interval(rule: AutoResolve) -> float:
    """Seconds between listings: ``listings`` of them spread over ``minutes``."""
    return rule.minutes * 60.0 / max(1, rule.listings - 1)


async def step_needs_review(wf: Workflow, ctx: StepPort) -> Workflow:
    """Carry out the operator's decision: resubmit (a fresh intent, then one POST) or abandon."""
    if wf.resolution == Resolution.RESUBMIT:
        return await _submit(wf, ctx, "resubmit", **_resolved_by(wf))
    if wf.resolution == Resolution.ABANDON:
        return await _abandon(wf, ctx)
    if wf.cancel_requested and not data_of(wf.data).get("cancel_noted"):
        changes = {"next_run_at": None, "data": _data(wf, cancel_noted=True)}
        return await ctx.note(wf, "cancel_requested", changes=changes, detail="an operator must resolve this first")
    absence = data_of(wf.data).get("absence")
    rule = ctx.policy.auto_resolve_for(wf.request.account)
    if absence and not absence.get("stopped") and rule.enabled and not wf.cancel_requested:
        return await _look_for_absence(wf, ctx, rule)
    return await ctx.reschedule(wf, None)


async def _abandon(wf: Workflow, ctx: StepPort) -> Workflow:
    """Aborted (abandoned). If a POST of it may have executed, keep its lane reserved and watch it."""
    uncertain = int(data_of(wf.data).get("uncertain_posts", wf.submit_count))
    window = ctx.settings.lane_watch
    if window <= 0 or uncertain <= 0:
        return await ctx.transition(
            wf, "abandon", event_data=_resolved_by(wf), reason=AbortReason.ABANDONED.value, resolution=None
        )
    watch = _new_watch(ctx, uncertain)
    return await ctx.transition(
        wf, "abandon", event_data={**_resolved_by(wf), "watch_until": watch["until"]},
        reason=AbortReason.ABANDONED.value, resolution=None, lane_held=True, next_run_at=ctx.now(),
        data=_data_without(evolve(wf, data=_data(wf, watch=watch)), "absence"),
    )  # fmt: skip


def _resolved_by(wf: Workflow) -> dict[str, Any]:
    """The event data of an operator's decision being applied: ``operator`` (their name; ``True`` when the
    decision came unnamed, as from the Python API without one) and their ``note`` when they gave one."""
    return {"operator": wf.resolution_by or True, "note": wf.resolution_note}


def _cancelled_by(wf: Workflow) -> dict[str, Any]:
    """The event data of an operator's cancel being acted on: who asked (``True``: unnamed) and their note."""
    return {"operator": wf.cancel_by or True, "note": wf.cancel_note}


def _new_watch(ctx: StepPort, unaccounted: int) -> dict[str, Any]:
    """A lane watch for ``unaccounted`` POSTs that may still execute, until ``lane_watch`` from now."""
    now = ctx.now()
    until = now + timedelta(seconds=ctx.settings.lane_watch)
    return {"until": until.isoformat(), "uncertain_posts": unaccounted, "found": [], "listings": 0,
            "next_at": now.isoformat()}  # fmt: skip


def _open_watch(wf: Workflow) -> dict[str, Any] | None:
    watch = data_of(wf.data).get("watch")
    return watch if isinstance(watch, dict) and not watch.get("ended") else None


async def step_watching(wf: Workflow, ctx: StepPort) -> Workflow:
    """A settled workflow (abandoned, or resubmitted and answered) watching its lane: see
    :func:`_watch_lane`; then sleep until its next look (none once the watch has ended)."""
    if _open_watch(wf) is None:
        return await ctx.reschedule(wf, None)
    wf = await _watch_lane(wf, ctx)
    watch = _open_watch(wf)
    if watch is None:
        return wf
    delay = max(0.0, (datetime.fromisoformat(watch["next_at"]) - ctx.now()).total_seconds())
    return await ctx.reschedule(wf, delay)


async def _watch_lane(wf: Workflow, ctx: StepPort) -> Workflow:
    """One look at the lane: attribute any withdrawal that appeared (an alert), and release the lane when
    every uncertain POST is accounted for or the watch's time is up.

    The result may carry uncommitted progress (``data.watch``): the caller's next commit stores it. A
    failed listing changes nothing but the time of the next look: the watch ends only after a listing
    that answered at or after its deadline, and the lane stays reserved until then."""
    watch = _open_watch(wf)
    assert watch is not None
    watch = {**watch, "next_at": _next_look(ctx, watch).isoformat()}
    try:
        found, since, skew = await _list_lane(wf, ctx, wf.created_at, wide=True)
    except ExchangeError as exc:
        log.warning("watch.listing_failed", workflow_id=wf.id, error=str(exc))
        return evolve(wf, data=_data(wf, watch=watch))
    owners = await ctx.owners_of([w.uuid for w in found])
    matches = set(choose_candidate(wf, found, owners, since).matches)
    new = [w for w in found if w.uuid in matches and w.uuid not in watch["found"] and w.uuid != wf.exchange_uuid]
    watch = {**watch, "listings": int(watch.get("listings", 0)) + 1}
    if new:
        wf = await _attribute(wf, ctx, new, watch, {"since": since.isoformat(), "skew": skew, "searched": len(found)})
        watch = data_of(wf.data)["watch"]
    # Attribution looks as wide as reconciliation may (an alert costs nothing), but only a withdrawal
    # created after this workflow existed (minus the measured skew) can be one of its own POSTs and end the
    # watch early: an older unowned one in the wide window must not release the lane for the real one.
    narrow = _since(ctx.gateway(wf), wf.created_at, ctx)
    after_creation = {w.uuid for w in found if w.created_at >= narrow}
    accounted = sum(uuid in after_creation for uuid in watch["found"]) >= int(watch["uncertain_posts"])
    if not accounted and ctx.now() < datetime.fromisoformat(watch["until"]):
        return evolve(wf, data=_data(wf, watch=watch))
    changes: dict[str, Any] = {"lane_held": False, "data": _data(wf, watch={**watch, "ended": True})}
    if State(wf.state).is_terminal:
        changes["next_run_at"] = None
    return await ctx.transition(
        wf, _watch_trigger(wf),
        event_data={"note": "watch_ended", "why": "accounted" if accounted else "deadline",
                    "found": watch["found"], "listings": watch["listings"]},
        **changes,
    )  # fmt: skip


def _watch_trigger(wf: Workflow) -> str:
    """``watch`` notes on a settled workflow, ``note`` on one still in flight (polling its own)."""
    return "watch" if State(wf.state).is_terminal else "note"


def _next_look(ctx: StepPort, watch: Mapping[str, Any]) -> datetime:
    """Backoff from ``reconcile_delay`` up to 30 s between looks, the last one at the deadline."""
    delay = backoff_delay(int(watch.get("listings", 0)), initial=ctx.settings.reconcile_delay, maximum=30.0)
    until = datetime.fromisoformat(watch["until"])
    now = ctx.now()
    return min(now + timedelta(seconds=delay), until) if now < until else now + timedelta(seconds=delay)


async def _attribute(
    wf: Workflow, ctx: StepPort, new: Sequence[Withdrawal], watch: dict[str, Any], evidence: dict[str, Any]
) -> Workflow:
    """A withdrawal appeared in the lane of a workflow with unaccounted POSTs: it is this workflow's, and an
    operator must know: an event, an error-level log line, the ``error`` flag. The store records the
    attribution first (idempotent: a crash before the event finds and records it again), so from then on
    no other workflow adopts it; an abandoned workflow also takes the first one as its own uuid."""
    uuids = [w.uuid for w in new]
    await ctx.attribute(wf, uuids)
    found = [*watch["found"], *uuids]
    first = new[0] if wf.exchange_uuid is None else None
    flag = {
        "error": "late_withdrawal",
        "message": "a withdrawal appeared for a POST of this workflow that was given up: it was paid; "
        "check before paying again",
        "exchange_uuids": found,
    }
    log.error(
        "workflow.late_withdrawal", workflow_id=wf.id, lane=wf.lane, state=wf.state, exchange_uuids=uuids,
        created_at=[w.created_at.isoformat() for w in new],
    )  # fmt: skip
    changes: dict[str, Any] = {"error": flag, "lane_held": True, "next_run_at": wf.next_run_at}
    if first is not None:
        changes.update(exchange_uuid=first.uuid, txid=first.txid, exchange_state=first.raw_state)
    return await ctx.transition(
        wf, _watch_trigger(wf),
        event_data={
            "note": "late_withdrawal", "exchange_uuids": uuids,
            "withdrawals": [
                {"uuid": w.uuid, "created_at": w.created_at.isoformat(), "state": w.raw_state, "txid": w.txid}
                for w in new
            ],
            "evidence": evidence,
        },
        data=_data(wf, watch={**watch, "found": found}), **changes,
    )  # fmt: skip


async def _look_for_absence(wf: Workflow, ctx: StepPort, rule: AutoResolve) -> Workflow:
    """One listing towards proof of absence. A failed or incomplete listing, or any candidate, stops the
    auto-resolution for good (an event with the listings); enough empty ones resubmit (an event too)."""
    listings: list[dict[str, Any]] = list(data_of(wf.data)["absence"]["listings"])
    try:
        found, since, skew = await _list_lane(wf, ctx, wf.created_at, wide=True)
    except ExchangeError as exc:
        listings.append({"at": ctx.now().isoformat(), "complete": False, "error": exc.as_dict()})
        return await _stop_absence(wf, ctx, "a listing failed", listings, rule)
    owners = await ctx.owners_of([w.uuid for w in found])
    candidates = list(choose_candidate(wf, found, owners, since).matches)
    listing = {
        "at": ctx.now().isoformat(), "since": since.isoformat(), "searched": len(found),
        "complete": bool(skew["complete"]), "candidates": candidates,
    }  # fmt: skip
    listings.append(listing)
    if candidates or not listing["complete"]:
        why = "a listing showed a candidate" if candidates else "a listing was incomplete"
        return await _stop_absence(wf, ctx, why, listings, rule)
    evidence = {"listings": listings, "rule": {"listings": rule.listings, "minutes": rule.minutes}}
    if absence_proven(listings, rule.listings, rule.minutes):
        count = int(data_of(wf.data).get("auto_resubmits", 0)) + 1
        proven = evolve(wf, data=_data(wf, auto_resubmits=count))
        log.warning("workflow.auto_resubmit", workflow_id=wf.id, listings=len(listings))
        return await _submit(proven, ctx, "auto_resubmit", evidence=evidence, auto=True)
    data = _data(wf, absence={"listings": listings})
    return await ctx.reschedule(wf, _absence_interval(rule), data=data)


async def _stop_absence(
    wf: Workflow, ctx: StepPort, why: str, listings: list[dict[str, Any]], rule: AutoResolve
) -> Workflow:
    evidence = {"listings": listings, "rule": {"listings": rule.listings, "minutes": rule.minutes}}
    changes = {"next_run_at": None, "data": _data(wf, absence={"listings": listings, "stopped": why})}
    return await ctx.note(wf, "auto_resolve_stopped", changes=changes, why=why, evidence=evidence)


async def step_polling(wf: Workflow, ctx: StepPort) -> Workflow:
    """WAITING/PROCESSING: send a requested cancel once, then poll (batched) with backoff."""
    assert wf.exchange_uuid is not None
    watch = _open_watch(wf)
    if watch is not None and ctx.now() >= datetime.fromisoformat(watch["next_at"]):
        wf = await _watch_lane(wf, ctx)
    if wf.cancel_requested and not data_of(wf.data).get("cancel_sent"):
        wf = await _send_cancel(wf, ctx)
        if State(wf.state).is_terminal:
            return wf
    assert wf.exchange_uuid is not None
    with ctx.park():  # waiting for a shared batch: the runner lends this slot out meanwhile
        current = await ctx.gateway(wf).poll(wf.exchange_uuid, within=_poll_slack(ctx, wf.attempt))
    if current is None or current.raw_state == wf.exchange_state:
        return await ctx.reschedule(wf, _poll_delay(ctx, wf.attempt + 1), attempt=wf.attempt + 1)
    if trigger_for(current.state) is None or (current.state is ExchangeState.WAITING and wf.state is S.PROCESSING):
        log.warning("exchange.unexpected_state", workflow_id=wf.id, raw_state=current.raw_state)
        return await ctx.reschedule(wf, _poll_delay(ctx, wf.attempt + 1), attempt=wf.attempt + 1)
    return await _record(wf, ctx, current, how="polled", attempt=wf.attempt + 1)


async def _send_cancel(wf: Workflow, ctx: StepPort) -> Workflow:
    assert wf.exchange_uuid is not None
    changes = {"data": _data(wf, cancel_sent=True)}
    # A note event's own "note" key names the note: the operator's note goes as "operator_note" here.
    by = {"operator": wf.cancel_by or True, "operator_note": wf.cancel_note}
    try:
        answer = await ctx.gateway(wf).cancel(wf.exchange_uuid)
    except ExchangeRefused as exc:
        return await ctx.note(wf, "cancel_refused", changes=changes, error=exc.as_dict(), **by)
    wf = await ctx.note(wf, "cancel_sent", changes=changes, is_cancelable=answer.is_cancelable, **by)
    if (
        answer.raw_state != wf.exchange_state
        and trigger_for(answer.state) is not None
        and answer.state is not ExchangeState.WAITING
    ):
        return await _record(wf, ctx, answer, how="cancel_answer")
    return wf


async def _cancel_locally(wf: Workflow, ctx: StepPort) -> Workflow:
    return await ctx.transition(
        wf, "cancel", event_data={"local": True, "detail": "cancelled before submit", **_cancelled_by(wf)}
    )


async def _abort(wf: Workflow, ctx: StepPort, check: Check, **extra: Any) -> Workflow:
    reason = (check.reason or AbortReason.POLICY_DENIED).value
    return await ctx.transition(wf, "abort", event_data={"detail": check.detail, **extra}, reason=reason)


STEPS: dict[str, Step] = {
    S.PENDING: step_pending,
    S.VERIFYING_ADDRESS: step_verifying_address,
    S.CHECKING_WALLET: step_checking_wallet,
    S.AWAITING_APPROVAL: step_awaiting_approval,
    S.SUBMITTING: step_submitting,
    S.RECONCILING: step_reconciling,
    S.NEEDS_REVIEW: step_needs_review,
    **{state: step_watching for state in _SETTLED},
    S.WAITING: step_polling,
    S.PROCESSING: step_polling,
}


# -- the kind ------------------------------------------------------------------------------------------


def past_deadline(wf: Workflow, now: datetime) -> bool:
    """Pre-flight did not pass before the deadline, or no approver decided before the approval expired
    (nothing was sent yet): the runner ends it first.

    A workflow waiting for its wallet takes one last look at the deadline itself, so it ends with the
    reason that kept it (wallet_unavailable), or goes through if the wallet came back. In
    ``awaiting_approval`` the deadline is the approval's expiry (set on entry, replacing the pre-flight
    one; an approval sets a fresh pre-flight deadline); a decision recorded before it is still carried
    out (``Engine.resolve`` refuses one after it)."""
    if wf.deadline_at is None or now < wf.deadline_at:
        return False
    if wf.state is S.AWAITING_APPROVAL:
        return wf.resolution is None
    waiting_for_wallet = wf.state is S.CHECKING_WALLET and bool(data_of(wf.data).get("wallet_wait"))
    return wf.state in _PRE_SUBMIT and not waiting_for_wallet


async def expire(wf: Workflow, ctx: StepPort) -> Workflow:
    """End a workflow past its deadline: aborted, nothing sent (``approval_expired`` when it was waiting
    for an approver, else ``deadline_exceeded``)."""
    if wf.state is S.AWAITING_APPROVAL:
        return await _expire_approval(wf, ctx)
    return await ctx.transition(
        wf, "abort", event_data={"detail": "pre-flight did not pass before the deadline"},
        reason=AbortReason.DEADLINE_EXCEEDED.value,
    )  # fmt: skip


def _index(request: WithdrawalRequest) -> RowIndex:
    return RowIndex(
        account=request.account,
        currency=request.currency,
        amount=format(request.amount, "f"),
        lane=request.lane,
        net_type=request.net_type,
    )


def _same(a: WithdrawalRequest, b: WithdrawalRequest) -> bool:
    return a.same_as(b)


def _dump(request: WithdrawalRequest) -> dict[str, Any]:
    return dict(request.to_dict())


def view(wf: Workflow) -> dict[str, Any]:
    """The one JSON view of a withdrawal workflow (API answers, ``--json`` CLI output)."""
    return {
        "id": wf.id,
        "state": str(wf.state),
        "request": wf.request.to_dict(),
        "reference": wf.reference,
        "metadata": wf.metadata,
        "exchange_uuid": wf.exchange_uuid,
        "txid": wf.txid,
        "exchange_state": wf.exchange_state,
        "reason": wf.reason,
        "error": wf.error,
        "submit_count": wf.submit_count,
        "cancel_requested": wf.cancel_requested,
        "resolution": wf.resolution,
        "created_at": wf.created_at.isoformat(),
        "updated_at": wf.updated_at.isoformat(),
        "lane": wf.lane,
        "approval": _approval_view(wf),
    }


def _approval_view(wf: Workflow) -> dict[str, Any] | None:
    """The four-eyes approval as callers see it (None: the withdrawal never needed one)."""
    data = data_of(wf.data)
    asked, approval = data.get("approval_request"), data.get("approved")
    if asked is None and approval is None:
        return None
    asked_at: dict[str, Any] = dict(asked or {})
    given: dict[str, Any] = dict(approval or {})
    return {
        "threshold": asked_at.get("threshold"), "requested_at": asked_at.get("at"),
        "expires_at": asked_at.get("expires_at"), "approved_by": given.get("by"), "approved_at": given.get("at"),
        "note": given.get("note"), "batch_id": given.get("batch_id"),
    }  # fmt: skip


#: The withdrawal as a workflow kind: what the engine knows of it.
KIND = WorkflowKind(
    name="withdrawal",
    request_type=WithdrawalRequest,
    states=tuple(State),
    initial=S.PENDING,
    parse_state=State,
    parse_request=lambda data: WithdrawalRequest.from_dict(dict(data)),
    dump_request=_dump,
    same_request=_same,
    machine=MACHINE,
    steps=STEPS,
    terminal=frozenset(_SETTLED),
    awaiting_operator=frozenset(_HELD),
    resolutions=tuple(Resolution),
    accepts={
        S.NEEDS_REVIEW: (Resolution.RESUBMIT, Resolution.ABANDON),
        S.AWAITING_APPROVAL: (Resolution.APPROVE, Resolution.REJECT),
    },
    four_eyes=frozenset({Resolution.APPROVE, Resolution.REJECT}),
    urgent=frozenset({S.SUBMITTING}),
    alerting=frozenset({S.NEEDS_REVIEW, S.RECONCILING}),
    past_deadline=past_deadline,
    expire=expire,
    deadline_after=lambda settings: settings.preflight_deadline,
    index=_index,
    accounts=lambda request: (request.account,),
    id_prefix="wd",
    view=view,
    path=(S.PENDING, S.VERIFYING_ADDRESS, S.CHECKING_WALLET, S.SUBMITTING, S.WAITING, S.PROCESSING),
    success=frozenset({S.DONE}),
    styles={S.DONE: "green", S.ABORTED: "red", S.FAILED: "red", S.REJECTED: "red", **dict.fromkeys(_HELD, "yellow")},
)
