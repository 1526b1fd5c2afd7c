"""The demo's payout batch (``upbit-withdraw demo``): five items and how each is expected to end.

Three are paid (``DONE``), one is rejected by the exchange (the sandbox's outcome rule for XRP 13.13) and
one is not in the allowlist (``aborted``, nothing sent). Amounts differ from the demo's single
withdrawals so that no item waits for a lane held by one of them.
"""

from __future__ import annotations

from engine.sandbox import SandboxSeed
from workflows.withdrawal_model import State

__all__ = ["demo_batch"]

_BOGUS = "bc1qnotinthe0allowlist000000000000000000000"


def demo_batch(seed: SandboxSeed) -> tuple[list[dict[str, str]], dict[str, str]]:
    """The batch's items (as a payout file has them) and each reference's expected outcome."""
    addresses = {(a.currency, a.net_type): a.withdraw_address for a in seed.accounts[0].addresses}
    rows = [
        ("payroll-001", "BTC", "BTC", "0.0031", addresses[("BTC", "BTC")], State.DONE),
        ("payroll-002", "USDT", "TRX", "31.5", addresses[("USDT", "TRX")], State.DONE),
        ("payroll-003", "XRP", "XRP", "31.5", addresses[("XRP", "XRP")], State.DONE),
        ("payroll-004", "XRP", "XRP", "13.13", addresses[("XRP", "XRP")], State.REJECTED),
        ("payroll-005", "BTC", "BTC", "0.0032", _BOGUS, State.ABORTED),
    ]
    items = [{"reference": r, "currency": c, "net_type": n, "amount": a, "address": to} for r, c, n, a, to, _ in rows]
    return items, {row[0]: str(row[5]) for row in rows}
