"""The withdrawal workflow: its transition table (data), its pure decisions, and one step per active state.

Path: pending -> verifying_address -> checking_wallet -> submitting -> WAITING -> PROCESSING -> DONE
(or FAILED / CANCELLED / REJECTED as the exchange reports), with ``aborted`` (nothing sent, with a
reason), ``reconciling`` (a POST whose outcome is unknown) and ``needs_review`` (an operator decides).

Decisions (``match_address``, ``wallet_verdict``, ``chance_verdict``, ``policy_verdict``,
``choose_candidate``, ``trigger_for``) are pure functions of their inputs: they are tested as tables.
Steps do I/O and move the workflow only through :meth:`engine.context.StepContext.transition`, in the
order decide -> persist -> act. The POST is sent only by the step that has just committed ``submitting``
in the same run; a workflow *found* in ``submitting`` (after a crash) may have sent it, so it reconciles.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

import structlog

from engine.backoff import backoff_delay
from engine.context import StepContext
from engine.errors import ExchangeError, ExchangeRefused, ExchangeThrottled, LaneBusy, OutcomeUnknown
from engine.machine import TransitionSpec, WorkflowMachine
from engine.models import AbortReason, State, TransactionType, WithdrawalRequest, Workflow
from engine.policy import Policy, WorkflowSettings
from engine.upbit.client import WithdrawBody
from engine.upbit.types import AllowedAddress, Chance, ExchangeState, WalletStatus, Withdrawal

__all__ = [
    "MACHINE",
    "STEPS",
    "TABLE",
    "AddressMatch",
    "Verdict",
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
_OBSERVABLE = (S.SUBMITTING, S.RECONCILING, S.WAITING, S.PROCESSING)
_ACTIVE = tuple(s for s in State if not s.is_terminal)


def _throttled_reconcile(wf: Workflow, _: Mapping[str, Any]) -> bool:
    """Only a throttled POST (429/418: not executed) may be resent after its reconcile found nothing."""
    return bool(wf.data.get("reconcile", {}).get("mode") == "throttled")


def _operator_said(action: str) -> Callable[[Workflow, Mapping[str, Any]], bool]:
    def guard(wf: Workflow, _: Mapping[str, Any]) -> bool:
        return wf.resolution == action

    guard.__name__ = f"operator_said_{action}"
    return guard


TABLE: tuple[TransitionSpec, ...] = (
    TransitionSpec("start", (S.PENDING,), S.VERIFYING_ADDRESS),
    TransitionSpec("verify", (S.VERIFYING_ADDRESS,), S.CHECKING_WALLET),
    TransitionSpec("submit", (S.CHECKING_WALLET,), S.SUBMITTING),
    TransitionSpec("abort", _PRE_SUBMIT, S.ABORTED),
    TransitionSpec("cancel", _PRE_SUBMIT, S.CANCELLED),
    TransitionSpec("refuse", (S.SUBMITTING,), S.ABORTED),
    TransitionSpec("lose_track", (S.SUBMITTING,), S.RECONCILING),
    TransitionSpec("resubmit", (S.RECONCILING,), S.SUBMITTING, _throttled_reconcile),
    TransitionSpec("resubmit", (S.NEEDS_REVIEW,), S.SUBMITTING, _operator_said("resubmit")),
    TransitionSpec("escalate", (S.RECONCILING,), S.NEEDS_REVIEW),
    TransitionSpec("abandon", (S.NEEDS_REVIEW,), S.ABORTED, _operator_said("abandon")),
    TransitionSpec("mark_waiting", (S.SUBMITTING, S.RECONCILING), S.WAITING),
    TransitionSpec("mark_processing", (S.SUBMITTING, S.RECONCILING, S.WAITING), S.PROCESSING),
    TransitionSpec("mark_done", _OBSERVABLE, S.DONE),
    TransitionSpec("mark_failed", _OBSERVABLE, S.FAILED),
    TransitionSpec("mark_cancelled", _OBSERVABLE, S.CANCELLED),
    TransitionSpec("mark_rejected", _OBSERVABLE, S.REJECTED),
    TransitionSpec("note", _ACTIVE, None),
)

MACHINE = WorkflowMachine("withdrawal", State, TABLE)

_TRIGGERS = {
    ExchangeState.WAITING: "mark_waiting",
    ExchangeState.PROCESSING: "mark_processing",
    ExchangeState.DONE: "mark_done",
    ExchangeState.FAILED: "mark_failed",
    ExchangeState.CANCELLED: "mark_cancelled",
    ExchangeState.REJECTED: "mark_rejected",
}


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
    """The exchange's own limits: locks, support, minimum, decimals, one-time limit, balance + fee."""
    amount = request.amount
    fee = Decimal(0) if request.transaction_type is TransactionType.INTERNAL else chance.withdraw_fee
    abort, wait = Verdict.ABORT, Verdict.WAIT
    rules: list[tuple[bool, Check]] = [
        (chance.member_locked or chance.wallet_locked,
         Check(abort, AbortReason.CHANCE_DENIED, "account or wallet is locked")),
        ("withdraw" not in chance.wallet_support,
         Check(wait, AbortReason.WALLET_UNAVAILABLE, "withdrawals are not supported right now")),
        (not chance.can_withdraw,
         Check(abort, AbortReason.CHANCE_DENIED, "the exchange says can_withdraw is false")),
        (amount < chance.minimum,
         Check(abort, AbortReason.BELOW_MINIMUM, f"amount is below the minimum {chance.minimum}")),
        (_decimals(amount) > chance.fixed,
         Check(abort, AbortReason.TOO_MANY_DECIMALS, f"amount has more than {chance.fixed} decimals")),
        (chance.onetime is not None and chance.onetime > 0 and amount > chance.onetime,
         Check(abort, AbortReason.POLICY_DENIED, f"amount is over the one-time limit {chance.onetime}")),
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


def trigger_for(state: ExchangeState) -> str | None:
    """The trigger that records an exchange state; None for an unknown one (kept in flight)."""
    return _TRIGGERS.get(state)


# -- steps ---------------------------------------------------------------------------------------------

Step = Callable[[Workflow, StepContext], Awaitable[Workflow]]


async def step_pending(wf: Workflow, ctx: StepContext) -> Workflow:
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


async def step_verifying_address(wf: Workflow, ctx: StepContext) -> Workflow:
    """Local policy (cheap, no I/O) first, then the exchange's allowlist."""
    if wf.cancel_requested:
        return await _cancel_locally(wf, ctx)
    check = policy_verdict(wf.request, ctx.policy)
    if check.verdict is Verdict.ABORT:
        return await _abort(wf, ctx, check)
    match = match_address(wf.request, await ctx.gateway(wf).allowlist())
    if not match.ok:
        return await _abort(wf, ctx, Check(Verdict.ABORT, AbortReason.ADDRESS_NOT_ALLOWED, match.detail))
    data = {**wf.data, "secondary_address": match.secondary_address}
    if match.registered is not None:
        data["network_name"] = match.registered.network_name
    return await ctx.transition(wf, "verify", data=data, attempt=0, next_run_at=ctx.now())


async def step_checking_wallet(wf: Workflow, ctx: StepContext) -> Workflow:
    """Wallet status, then chance, then the daily policy; all pass: persist the intent and POST."""
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
    if ctx.policy.dry_run:
        body = _body(wf)
        return await _abort(
            wf, ctx, Check(Verdict.ABORT, AbortReason.DRY_RUN, "dry run: not sent"), body=dict(body.params())
        )
    return await _submit(wf, ctx, "submit")


async def _wallet_check(wf: Workflow, ctx: StepContext) -> Check:
    status = await ctx.gateway(wf).wallet_status(wf.request.currency, wf.request.net_type)
    return wallet_verdict(status, hold_on_delayed=ctx.settings.hold_on_block_delayed)


async def _chance_check(wf: Workflow, ctx: StepContext) -> Check:
    gateway, req = ctx.gateway(wf), wf.request
    check = chance_verdict(req, await gateway.chance(req.currency, req.net_type))
    if check.reason is AbortReason.INSUFFICIENT_BALANCE:  # perhaps only our local holds: ask the exchange
        check = chance_verdict(req, await gateway.chance(req.currency, req.net_type, fresh=True))
    return check


async def _daily_check(wf: Workflow, ctx: StepContext) -> Check:
    if ctx.policy.for_currency(wf.request.currency, wf.request.account).max_per_day is None:
        return SEND
    spent = await ctx.store.sum_submitted(
        account=wf.request.account, currency=wf.request.currency, since=ctx.now() - timedelta(days=1)
    )
    return policy_verdict(wf.request, ctx.policy, spent)


async def _wait_for_wallet(wf: Workflow, ctx: StepContext, check: Check) -> Workflow:
    """Look again later with backoff; past the deadline, give up (nothing was sent)."""
    if wf.deadline_at is not None and ctx.now() >= wf.deadline_at:
        return await _abort(wf, ctx, Check(Verdict.ABORT, check.reason, f"{check.detail} until the deadline"))
    delay = backoff_delay(
        wf.attempt, initial=ctx.settings.wallet_recheck_initial, maximum=ctx.settings.wallet_recheck_max, jitter=0.5
    )
    if wf.deadline_at is not None:
        delay = min(delay, max(0.0, (wf.deadline_at - ctx.now()).total_seconds()))
    if not wf.data.get("wallet_wait"):
        changes = {
            "next_run_at": ctx.after(delay),
            "attempt": wf.attempt + 1,
            "data": {**wf.data, "wallet_wait": check.detail},
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
        secondary_address=wf.data.get("secondary_address", req.secondary_address),
        transaction_type=req.transaction_type.value,
    )


async def _submit(wf: Workflow, ctx: StepContext, trigger: str, **event_data: Any) -> Workflow:
    """Reserve a rate-limit slot, persist the intent (state ``submitting``, exact body, time, lane held),
    then send it once with that slot."""
    body = _body(wf)
    gateway = ctx.gateway(wf)
    await gateway.reserve_submit_slot()
    try:
        wf = await ctx.transition(
            wf,
            trigger,
            event_data={"body": dict(body.params()), **event_data},
            lane_held=True,
            submit_body=json.dumps(dict(body.params())),
            submitted_at=ctx.now(),
            submit_count=wf.submit_count + 1,
            resolution=None,
            reason=None,
            error=None,
            attempt=0,
            next_run_at=ctx.now(),
            data={k: v for k, v in wf.data.items() if k not in ("reconcile", "wallet_wait")},
        )
    except BaseException as exc:
        gateway.release_submit_slot()
        if isinstance(exc, LaneBusy):
            return await ctx.reschedule(wf, ctx.settings.lane_retry)
        raise
    return await _send(wf, ctx, body)


async def _send(wf: Workflow, ctx: StepContext, body: WithdrawBody) -> Workflow:
    """The only place a POST leaves. Its error type says what is known of the outcome."""
    try:
        withdrawal = await ctx.gateway(wf).submit(body, slot_reserved=True)
    except ExchangeThrottled as exc:
        return await _lose_track(wf, ctx, "throttled", exc, delay=exc.retry_after)
    except ExchangeRefused as exc:
        return await ctx.transition(
            wf, "refuse", event_data={"error": exc.as_dict()}, reason=AbortReason.SUBMIT_REFUSED.value,
            error=exc.as_dict(),
        )  # fmt: skip
    except OutcomeUnknown as exc:
        return await _lose_track(wf, ctx, "unknown", exc, delay=ctx.settings.reconcile_delay)
    return await _record(wf, ctx, withdrawal, how="accepted")


async def _lose_track(wf: Workflow, ctx: StepContext, mode: str, exc: Exception | None, *, delay: float) -> Workflow:
    error = exc.as_dict() if isinstance(exc, ExchangeError) else None
    reconcile = {"mode": mode, "since": ctx.now().isoformat()}
    return await ctx.transition(
        wf, "lose_track", event_data={"mode": mode, "error": error}, error=error,
        data={**wf.data, "reconcile": reconcile}, attempt=0, next_run_at=ctx.after(delay),
    )  # fmt: skip


async def _record(
    wf: Workflow, ctx: StepContext, withdrawal: Withdrawal, *, how: str, attempt: int = 0, **extra: Any
) -> Workflow:
    """Move to the exchange's state, keeping its uuid; an unknown state is kept in flight as WAITING.

    ``attempt`` is where the poll backoff goes on from (a poll that saw WAITING -> PROCESSING keeps
    backing off: the withdrawal is no nearer its end for having moved)."""
    trigger = trigger_for(withdrawal.state)
    if trigger is None:
        log.warning("exchange.unknown_state", workflow_id=wf.id, raw_state=withdrawal.raw_state)
        trigger = "mark_waiting" if wf.state is not S.PROCESSING else "note"
    terminal = withdrawal.state.is_terminal
    return await ctx.transition(
        wf, trigger,
        event_data={"how": how, "exchange_state": withdrawal.raw_state, **extra},
        exchange_uuid=withdrawal.uuid, txid=withdrawal.txid, exchange_state=withdrawal.raw_state,
        lane_held=False, attempt=attempt,
        next_run_at=None if terminal else ctx.after(_poll_delay(ctx, attempt)),
    )  # fmt: skip


def _poll_delay(ctx: StepContext, attempt: int) -> float:
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


def _poll_slack(ctx: StepContext, attempt: int) -> float:
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


async def step_submitting(wf: Workflow, ctx: StepContext) -> Workflow:
    """Found in ``submitting``: a previous run may have sent the POST. Never resend: reconcile."""
    return await _lose_track(wf, ctx, "interrupted", None, delay=0.0)


async def step_reconciling(wf: Workflow, ctx: StepContext) -> Workflow:
    """Adopt the one matching withdrawal; resend only after a throttle; else wait, then escalate."""
    mode = wf.data.get("reconcile", {}).get("mode", "unknown")
    assert wf.submitted_at is not None
    since = wf.submitted_at - timedelta(seconds=ctx.settings.clock_skew)
    found = await ctx.gateway(wf).recent_withdrawals(wf.request.currency, since, max_pages=ctx.settings.recent_pages)
    owners = await ctx.store.owners_of([w.uuid for w in found])
    result = choose_candidate(wf, found, owners, since)
    evidence = {"mode": mode, "searched": result.searched, "since": since.isoformat(), "matches": list(result.matches)}
    if result.adopt is not None:
        return await _record(wf, ctx, result.adopt, how="adopted", evidence=evidence)
    if result.matches:
        return await _escalate(wf, ctx, "several withdrawals match", evidence)
    if mode == "throttled":
        return await _submit(wf, ctx, "resubmit", evidence=evidence)
    started = datetime.fromisoformat(wf.data["reconcile"]["since"])
    if (ctx.now() - started).total_seconds() < ctx.settings.reconcile_grace:
        delay = backoff_delay(wf.attempt, initial=ctx.settings.reconcile_delay, maximum=30.0)
        return await ctx.reschedule(wf, delay, attempt=wf.attempt + 1)
    return await _escalate(wf, ctx, "no matching withdrawal within the grace window", evidence)


async def _escalate(wf: Workflow, ctx: StepContext, why: str, evidence: dict[str, Any]) -> Workflow:
    return await ctx.transition(
        wf, "escalate", event_data={"why": why, "evidence": evidence}, reason=why, next_run_at=None
    )


async def step_needs_review(wf: Workflow, ctx: StepContext) -> Workflow:
    """Carry out the operator's decision: resubmit (a fresh intent, then one POST) or abandon."""
    if wf.resolution == "resubmit":
        return await _submit(wf, ctx, "resubmit", operator=True)
    if wf.resolution == "abandon":
        return await ctx.transition(
            wf, "abandon", event_data={"operator": True}, reason=AbortReason.ABANDONED.value, resolution=None
        )
    if wf.cancel_requested and not wf.data.get("cancel_noted"):
        changes = {"next_run_at": None, "data": {**wf.data, "cancel_noted": True}}
        return await ctx.note(wf, "cancel_requested", changes=changes, detail="an operator must resolve this first")
    return await ctx.reschedule(wf, None)


async def step_polling(wf: Workflow, ctx: StepContext) -> Workflow:
    """WAITING/PROCESSING: send a requested cancel once, then poll (batched) with backoff."""
    assert wf.exchange_uuid is not None
    if wf.cancel_requested and not wf.data.get("cancel_sent"):
        wf = await _send_cancel(wf, ctx)
        if wf.state.is_terminal:
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


async def _send_cancel(wf: Workflow, ctx: StepContext) -> Workflow:
    assert wf.exchange_uuid is not None
    changes = {"data": {**wf.data, "cancel_sent": True}}
    try:
        answer = await ctx.gateway(wf).cancel(wf.exchange_uuid)
    except ExchangeRefused as exc:
        return await ctx.note(wf, "cancel_refused", changes=changes, error=exc.as_dict())
    wf = await ctx.note(wf, "cancel_sent", changes=changes, is_cancelable=answer.is_cancelable)
    if (
        answer.raw_state != wf.exchange_state
        and trigger_for(answer.state) is not None
        and answer.state is not ExchangeState.WAITING
    ):
        return await _record(wf, ctx, answer, how="cancel_answer")
    return wf


async def _cancel_locally(wf: Workflow, ctx: StepContext) -> Workflow:
    return await ctx.transition(wf, "cancel", event_data={"local": True, "detail": "cancelled before submit"})


async def _abort(wf: Workflow, ctx: StepContext, check: Check, **extra: Any) -> Workflow:
    reason = (check.reason or AbortReason.POLICY_DENIED).value
    return await ctx.transition(wf, "abort", event_data={"detail": check.detail, **extra}, reason=reason)


STEPS: dict[State, Step] = {
    S.PENDING: step_pending,
    S.VERIFYING_ADDRESS: step_verifying_address,
    S.CHECKING_WALLET: step_checking_wallet,
    S.SUBMITTING: step_submitting,
    S.RECONCILING: step_reconciling,
    S.NEEDS_REVIEW: step_needs_review,
    S.WAITING: step_polling,
    S.PROCESSING: step_polling,
}
