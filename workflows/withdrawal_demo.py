"""The demo's script of withdrawals: what it submits, and how each is expected to end.

``engine.demo`` runs it (the sandbox, the engine, the live progress and the report are generic); the
expectations are the withdrawal's own states and abort reasons, so they live here, with the workflow.
A few are built to fail, each for a documented reason:

- an address that is not in the Open API allowlist  -> ``aborted`` / ``address_not_allowed``
- DOGE, whose wallet the seed has *paused*           -> ``aborted`` / ``wallet_unavailable`` once the
  (demo-short) pre-flight deadline passes; nothing is sent
- XRP 13.13, which the sandbox's outcome rule makes the exchange REJECT  -> ``REJECTED``
- ETH 0.131313, which an outcome rule makes FAIL on chain                -> ``FAILED``

Everything else ends ``DONE`` (:data:`SUCCESS`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from decimal import Decimal

from engine.models import Workflow
from engine.sandbox import SandboxSeed
from engine.sandbox.defaults import build_default_seed
from engine.sandbox.model import OutcomeRule, Timings, WithdrawalState
from engine.upbit.auth import Credentials
from workflows.withdrawal_model import AbortReason, State, WithdrawalRequest

__all__ = ["DEMO_TIMINGS", "FAIL_RULE", "REJECT_RULE", "SUCCESS", "Planned", "demo_seed", "plan"]

#: The state of a withdrawal that went through (the demo shows it green).
SUCCESS: str = State.DONE
#: The sandbox moves a withdrawal WAITING -> PROCESSING -> end in about 1.5-3 s.
DEMO_TIMINGS = Timings(waiting_seconds=0.5, waiting_jitter=0.5, processing_seconds=1.0, processing_jitter=1.0)
REJECT_RULE = OutcomeRule(currency="XRP", amount=Decimal("13.13"), outcome=WithdrawalState.REJECTED)
FAIL_RULE = OutcomeRule(currency="ETH", amount=Decimal("0.131313"), outcome=WithdrawalState.FAILED)
_NOT_ALLOWED = AbortReason.ADDRESS_NOT_ALLOWED.value
#: The paused wallet's workflow gives up at the pre-flight deadline. The runner's own deadline check
#: (reason ``deadline_exceeded``) usually fires before the wallet step can say ``wallet_unavailable``;
#: both mean "nothing was sent because the wallet stayed paused" (the event log shows the wallet wait).
_PAUSED_REASONS = (AbortReason.WALLET_UNAVAILABLE.value, AbortReason.DEADLINE_EXCEEDED.value)


@dataclass(frozen=True, slots=True)
class Planned:
    """One scripted withdrawal and how it is expected to end."""

    label: str
    request: WithdrawalRequest
    expected_state: State
    expected_reasons: tuple[str, ...] = ()

    def matches(self, wf: Workflow) -> bool:
        """Did the workflow end as expected?"""
        return wf.state is self.expected_state and (not self.expected_reasons or wf.reason in self.expected_reasons)


def demo_seed() -> SandboxSeed:
    """The built-in seed, keyed with the published demo pair (never the environment's keys), with demo
    timings and the two outcome rules the script relies on."""
    seed = build_default_seed(Credentials.demo())
    rules = tuple(seed.outcome_rules) + tuple(r for r in (REJECT_RULE, FAIL_RULE) if r not in seed.outcome_rules)
    return dataclasses.replace(seed, timings=DEMO_TIMINGS, outcome_rules=rules)


def _addresses(seed: SandboxSeed) -> dict[tuple[str, str], str]:
    return {(a.currency, a.net_type): a.withdraw_address for a in seed.accounts[0].addresses}


def _happy(i: int, addresses: dict[tuple[str, str], str]) -> Planned:
    """The i-th ordinary withdrawal: distinct amounts, so no two share a lane."""
    networks = [
        ("BTC", "BTC", Decimal("0.001") + Decimal("0.0001") * i),
        ("ETH", "ETH", Decimal("0.05") + Decimal("0.001") * i),
        ("USDT", "TRX", Decimal("25") + i),
        ("XRP", "XRP", Decimal("20") + i),
        ("USDT", "ETH", Decimal("40") + i),
    ]
    currency, net, raw = networks[i % len(networks)]
    amount = Decimal(format(raw.normalize(), "f"))
    request = WithdrawalRequest(currency=currency, net_type=net, amount=amount, address=addresses[(currency, net)])
    return Planned("ordinary", request, State.DONE)


def _specials(addresses: dict[tuple[str, str], str]) -> list[Planned]:
    def req(currency: str, net: str, amount: str, address: str | None = None) -> WithdrawalRequest:
        to = address or addresses[(currency, net)]
        return WithdrawalRequest(currency=currency, net_type=net, amount=Decimal(amount), address=to)

    bogus = "bc1qnotinthe0allowlist000000000000000000000"
    return [
        Planned("exchange rejects it", req("XRP", "XRP", "13.13"), State.REJECTED),
        Planned("address not allowlisted", req("BTC", "BTC", "0.002", bogus), State.ABORTED, (_NOT_ALLOWED,)),
        Planned("wallet paused", req("DOGE", "DOGE", "100"), State.ABORTED, _PAUSED_REASONS),
        Planned("fails on chain", req("ETH", "ETH", "0.131313"), State.FAILED),
    ]


def plan(count: int, seed: SandboxSeed) -> list[Planned]:
    """``count`` withdrawals: the four failing cases at positions 1, 3, 5, 7 (as far as they fit)."""
    addresses = _addresses(seed)
    specials = iter(_specials(addresses))
    planned: list[Planned] = []
    ordinary = 0
    for position in range(count):
        special = next(specials, None) if position % 2 == 1 else None
        if special is None:
            special = _happy(ordinary, addresses)
            ordinary += 1
        planned.append(special)
    return planned
