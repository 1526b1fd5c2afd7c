"""The simulated exchange, pure: accounts, ledger, allowlists, wallets and withdrawal lifecycles.

No I/O, no sleeping, no global state: time comes from two injected callables (monotonic seconds for
scheduling, aware UTC datetimes for timestamps) and chance from one seeded ``random.Random``, so a
seed replays exactly. Lifecycles are lazy: at creation each withdrawal draws its whole future (time
to PROCESSING, time to its end, which end), and :meth:`Exchange.advance`, called at the start of
every request, applies whatever fell due, from a heap, so 10,000 live withdrawals cost nothing
between requests.

Ledger: creating holds ``amount + fee`` (``balance -= total; locked += total``); DONE releases the
hold (the funds left); FAILED, CANCELLED and REJECTED give it back to ``balance``. REJECTED and
CANCELLED end from WAITING (no txid, never broadcast); DONE and FAILED pass through PROCESSING, where
the txid appears. ``internal`` transfers pay no fee and take ``timings.internal_factor`` of the time.

Validation order of ``POST /v1/withdraws/coin`` (the first failing check answers):

==  =========================================================  ====  ==================================
#   check                                                      HTTP  error.name
==  =========================================================  ====  ==================================
1   currency, net_type, amount, address present                400   ``validation_error``
2   currency known                                             404   ``currency_not_found``
3   amount is a positive plain decimal string or JSON number   400   ``invalid_parameter``
4   transaction_type is ``default`` or ``internal``            400   ``validation_error``
5   (address, secondary_address) allowlisted for (currency,    400   ``withdraw_address_not_registered``
    net_type) on this account; the tag must match exactly
6   wallet may send                                            400   ``sandbox_wallet_unavailable``
7   amount >= minimum                                          400   ``sandbox_under_min_amount``
8   decimal places <= ``fixed``                                400   ``sandbox_too_many_decimals``
9   balance >= amount + fee                                    400   ``withdraw_insufficient_balance``
10  amount <= onetime (only if the network sets one)          400   ``sandbox_over_onetime_limit``
11  amount <= remaining daily (only if the network sets one)   400   ``sandbox_over_daily_limit``
12  amount x price <= the account's fiat left today            400   ``sandbox_over_daily_fiat_limit``
==  =========================================================  ====  ==================================

Error names of the sandbox's own. upbit-api.md §4.3 knows no official name for these cases, so
they start with ``sandbox_`` (or, for the 418, say what they are) and nobody mistakes them for
Upbit's:

====  =================================  =========================================================
HTTP  error.name                         when
====  =================================  =========================================================
400   ``sandbox_wallet_unavailable``     wallet_state not working/withdraw_only, block_state
                                         inactive, or "withdraw" missing from wallet_support
400   ``sandbox_under_min_amount``       amount < withdraw_limit.minimum
400   ``sandbox_too_many_decimals``      more decimal places than withdraw_limit.fixed
400   ``sandbox_over_onetime_limit``     amount > withdraw_limit.onetime
400   ``sandbox_over_daily_limit``       amount > withdraw_limit.remaining_daily
400   ``sandbox_over_daily_fiat_limit``  amount x price > withdraw_limit.remaining_daily_fiat
418   ``too_many_requests_blocked``      rate-limit block; message and Retry-After give seconds
400   ``sandbox_invalid_admin_request``  admin route: bad payload (the message names the key)
404   ``sandbox_account_not_found``      admin route: unknown access key or account name
404   ``sandbox_network_not_found``      admin route: unknown (currency, net_type)
5xx   ``server_error``                   injected ``error`` fault with a JSON body
====  =================================  =========================================================
"""

from __future__ import annotations

import heapq
import random
import uuid as uuid_module
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from engine.sandbox import views
from engine.sandbox.errors import SandboxError, invalid_value, missing
from engine.sandbox.fate import draw_delays, draw_outcome, make_txid
from engine.sandbox.listing import ListQuery, select_page
from engine.sandbox.model import (
    BlockState,
    OutcomeRule,
    SandboxSeed,
    Timings,
    WalletState,
    WithdrawalState,
    derive_wallet_support,
)
from engine.sandbox.records import Account, Network, Withdrawal
from engine.sandbox.validation import (
    Allowance,
    WithdrawRequest,
    check_destination,
    check_limits,
    parse_withdraw_request,
)

__all__ = ["Exchange"]

_SKIPS_PROCESSING = (WithdrawalState.REJECTED, WithdrawalState.CANCELLED)
_TO_NEXT, _TO_END = 0, 1


class Exchange:
    """The simulated exchange's whole state, and the operations the endpoints call."""

    def __init__(
        self,
        seed: SandboxSeed,
        *,
        monotonic: Callable[[], float],
        now: Callable[[], datetime],
        rng: random.Random | None = None,
    ) -> None:
        self.seed = seed
        self._monotonic = monotonic
        self._now = now
        # A replayable simulation, not security: the standard PRNG is the point.
        self._rng = rng if rng is not None else random.Random(seed.random_seed)  # noqa: S311
        self.timings: Timings = seed.timings
        self.outcome_weights: dict[WithdrawalState, float] = dict(seed.outcome_weights)
        self.outcome_rules: tuple[OutcomeRule, ...] = seed.outcome_rules
        started = now()
        self.networks = {n.key: Network.from_seed(n, started) for n in seed.networks}
        self.accounts = {a.name: Account.from_seed(a) for a in seed.accounts}
        self._secrets = {c.access_key: c.secret_key for a in seed.accounts for c in a.keys}
        self._by_key = {c.access_key: self.accounts[a.name] for a in seed.accounts for c in a.keys}
        self.currencies = {seed.region.fiat} | {n.currency for n in seed.networks}
        self.currencies |= {c for a in seed.accounts for c in a.balances}
        self._withdrawals: list[Withdrawal] = []
        self._by_uuid: dict[str, Withdrawal] = {}
        self._heap: list[tuple[float, int, int]] = []
        self.state_counts: Counter[WithdrawalState] = Counter()

    def __repr__(self) -> str:
        counts = ", ".join(f"{s.value}={n}" for s, n in self.state_counts.items() if n)
        return f"Exchange(accounts={len(self.accounts)}, withdrawals={len(self._withdrawals)} [{counts}])"

    # --- keys ---------------------------------------------------------------------------------------

    def account_for_key(self, access_key: str) -> Account | None:
        """The account an access key belongs to."""
        return self._by_key.get(access_key)

    def secret_for(self, access_key: str) -> str | None:
        """The secret of an access key (the JWT verifier asks)."""
        return self._secrets.get(access_key)

    def account(self, access_key: str | None = None) -> Account:
        """The account of ``access_key`` (or its name); the first account when None."""
        if access_key is None:
            return next(iter(self.accounts.values()))
        found = self._by_key.get(access_key) or self.accounts.get(access_key)
        if found is None:
            raise SandboxError(404, "sandbox_account_not_found", "no account with that access key or name")
        return found

    # --- lifecycle ----------------------------------------------------------------------------------

    def advance(self, now: float | None = None) -> int:
        """Apply every lifecycle step due by ``now`` (monotonic seconds); returns how many."""
        now = self._monotonic() if now is None else now
        applied = 0
        while self._heap and self._heap[0][0] <= now:
            due, seq, step = heapq.heappop(self._heap)
            applied += self._step(self._withdrawals[seq], step, due)
        return applied

    def _step(self, withdrawal: Withdrawal, step: int, due: float) -> int:
        """One scheduled move; a stale entry (the withdrawal was cancelled meanwhile) is skipped."""
        if step == _TO_NEXT and withdrawal.state is WithdrawalState.WAITING:
            if withdrawal.outcome in _SKIPS_PROCESSING:
                self._finish(withdrawal, withdrawal.outcome, due)
            else:
                self._set_state(withdrawal, WithdrawalState.PROCESSING, due)
                withdrawal.txid = withdrawal.planned_txid
                self.accounts[withdrawal.account].by_txid[withdrawal.txid] = withdrawal
                end = withdrawal.created_mono + withdrawal.terminal_delay
                heapq.heappush(self._heap, (end, withdrawal.seq, _TO_END))
            return 1
        if step == _TO_END and withdrawal.state is WithdrawalState.PROCESSING:
            self._finish(withdrawal, withdrawal.outcome, due)
            return 1
        return 0

    def _set_state(self, withdrawal: Withdrawal, state: WithdrawalState, due: float) -> None:
        self.state_counts[withdrawal.state] -= 1
        self.state_counts[state] += 1
        withdrawal.state = state
        at = withdrawal.created_at + timedelta(seconds=due - withdrawal.created_mono)
        withdrawal.state_changes.append((state.value, at))

    def _finish(self, withdrawal: Withdrawal, state: WithdrawalState, due: float) -> None:
        """Terminal move: stamp ``done_at`` at the due time (not the time we noticed) and settle."""
        self._set_state(withdrawal, state, due)
        withdrawal.done_at = withdrawal.state_changes[-1][1]
        account = self.accounts[withdrawal.account]
        account.move(withdrawal.currency, locked=-withdrawal.total)
        if state is WithdrawalState.DONE:
            done = account.done_totals.get(withdrawal.currency, Decimal(0))
            account.done_totals[withdrawal.currency] = done + withdrawal.total
            return
        account.move(withdrawal.currency, balance=withdrawal.total)
        self._count_daily(account, withdrawal, -withdrawal.amount)

    # --- creating -----------------------------------------------------------------------------------

    def create_withdrawal(self, account: Account, body: Mapping[str, Any]) -> Withdrawal:
        """``POST /v1/withdraws/coin``: validate in Upbit's order, hold the funds, schedule the future."""
        request = parse_withdraw_request(body, self.currencies)
        network = check_destination(account, self.networks, request)
        fee = Decimal(0) if request.internal else network.seed.withdraw_fee
        check_limits(account, network, request, fee=fee, allowance=self._allowance(account, network))
        return self._open(account, request, network, fee, dict(body))

    def _open(
        self, account: Account, request: WithdrawRequest, network: Network, fee: Decimal, body: dict[str, Any]
    ) -> Withdrawal:
        created_at, created_mono = self._now(), self._monotonic()
        rng = self._rng  # always the same five draws per withdrawal, so a seed replays exactly
        uid = str(uuid_module.UUID(int=rng.getrandbits(128), version=4))
        first, second, roll, txbits = rng.random(), rng.random(), rng.random(), rng.getrandbits(256)
        outcome = draw_outcome(request, roll, self.outcome_weights, self.outcome_rules)
        to_next, to_end = draw_delays(self.timings, first, second, internal=request.internal)
        if outcome in _SKIPS_PROCESSING:
            to_end = to_next
        withdrawal = Withdrawal(
            seq=len(self._withdrawals),
            uuid=uid,
            account=account.name,
            currency=request.currency,
            net_type=request.net_type,
            amount=request.amount,
            amount_text=request.amount_text,
            fee=fee,
            address=request.address,
            secondary_address=request.secondary_address,
            transaction_type=request.transaction_type,
            body=body,
            created_at=created_at,
            created_mono=created_mono,
            day=created_at.astimezone(self.seed.region.tz).date(),
            outcome=outcome,
            processing_delay=to_next,
            terminal_delay=to_end,
            planned_txid=make_txid(txbits, internal=request.internal),
            cancelable=network.seed.cancelable,
            region=self.seed.region,
        )
        self._register(account, withdrawal)
        return withdrawal

    def _register(self, account: Account, withdrawal: Withdrawal) -> None:
        self._withdrawals.append(withdrawal)
        self._by_uuid[withdrawal.uuid] = withdrawal
        account.record(withdrawal)
        account.move(withdrawal.currency, balance=-withdrawal.total, locked=withdrawal.total)
        self._count_daily(account, withdrawal, withdrawal.amount)
        self.state_counts[WithdrawalState.WAITING] += 1
        withdrawal.state_changes.append((WithdrawalState.WAITING.value, withdrawal.created_at))
        due = withdrawal.created_mono + withdrawal.processing_delay
        heapq.heappush(self._heap, (due, withdrawal.seq, _TO_NEXT))

    def _count_daily(self, account: Account, withdrawal: Withdrawal, amount: Decimal) -> None:
        key = (withdrawal.currency, withdrawal.net_type, withdrawal.day)
        account.daily_used[key] = account.daily_used.get(key, Decimal(0)) + amount
        fiat = amount * self.seed.prices.get(withdrawal.currency, Decimal(0))
        account.fiat_used[withdrawal.day] = account.fiat_used.get(withdrawal.day, Decimal(0)) + fiat

    def _today(self) -> Any:
        return self._now().astimezone(self.seed.region.tz).date()

    def _allowance(self, account: Account, network: Network) -> Allowance:
        """What the day leaves: the network's deprecated daily limit (if set) and the account's fiat."""
        daily = network.seed.daily
        used = account.daily_used.get((*network.seed.key, self._today()), Decimal(0))
        fiat_used = account.fiat_used.get(self._today(), Decimal(0))
        return Allowance(
            network_daily=None if daily is None else max(Decimal(0), daily - used),
            fiat=max(Decimal(0), account.daily_fiat_limit - fiat_used),
            fiat_currency=self.seed.region.fiat,
            price=self.seed.prices.get(network.seed.currency, Decimal(0)),
        )

    # --- reading ------------------------------------------------------------------------------------

    def coin_addresses(self, account: Account) -> list[dict[str, Any]]:
        """``GET /v1/withdraws/coin_addresses``."""
        return [views.address_row(a) for a in account.addresses]

    def wallet_status(self) -> list[dict[str, Any]]:
        """``GET /v1/status/wallet``: one row per (currency, net_type)."""
        now = self._now()
        return [network.status_row(now) for network in self.networks.values()]

    def balances(self, account: Account) -> list[dict[str, Any]]:
        """``GET /v1/accounts``: the fiat first, then every currency the account holds or has held."""
        fiat = self.seed.region.fiat
        currencies = sorted(set(account.balances) | set(account.locked), key=lambda c: (c != fiat, c))
        return [views.balance_row(account, c, self.seed.prices, self.seed.region.fiat) for c in currencies]

    def chance(self, account: Account, currency: str | None, net_type: str | None) -> dict[str, Any]:
        """``GET /v1/withdraws/chance`` (the object of upbit-api.md §5.3)."""
        if not currency:
            raise missing("currency")
        if not net_type:
            raise missing("net_type")
        if currency not in self.currencies:
            raise SandboxError(404, "currency_not_found", f"unknown currency: {currency}")
        network = self.networks.get((currency, net_type))
        if network is None:
            raise invalid_value("net_type")
        return views.chance(account, network, self.seed.prices, self._allowance(account, network))

    def find_withdrawal(
        self, account: Account, *, uuid: str | None, txid: str | None, currency: str | None
    ) -> Withdrawal:
        """``GET /v1/withdraw``: by uuid, by txid, else the most recent (of ``currency``)."""
        found: Withdrawal | None
        if uuid:
            found = self._by_uuid.get(uuid)
        elif txid:
            found = account.by_txid.get(txid)
        else:
            items = account.by_currency.get(currency, []) if currency else account.withdrawals
            found = items[-1] if items else None
        if found is None or found.account != account.name or (currency and found.currency != currency):
            raise SandboxError(404, "withdraw_not_found", "withdrawal not found")
        if txid and found.txid != txid:
            raise SandboxError(404, "withdraw_not_found", "withdrawal not found")
        return found

    def list_withdrawals(self, account: Account, query: ListQuery) -> list[Withdrawal]:
        """``GET /v1/withdraws``: see :mod:`engine.sandbox.listing`."""
        candidates: list[Withdrawal]
        if query.uuids or query.txids:
            found = [self._by_uuid.get(u) for u in query.uuids] + [account.by_txid.get(t) for t in query.txids]
            unique = {w.seq: w for w in found if w is not None and w.account == account.name}
            candidates = [unique[seq] for seq in sorted(unique)]
        elif query.currency:
            candidates = account.by_currency.get(query.currency, [])
        else:
            candidates = account.withdrawals
        after = self._cursor(account, query.from_uuid)
        before = self._cursor(account, query.to_uuid)
        return select_page(candidates, query, after_seq=after, before_seq=before)

    def _cursor(self, account: Account, uuid: str | None) -> int | None:
        if uuid is None:
            return None
        found = self._by_uuid.get(uuid)
        if found is None or found.account != account.name:
            raise SandboxError(404, "withdraw_not_found", "cursor withdrawal not found")
        return found.seq

    def cancel_withdrawal(self, account: Account, uuid: str | None) -> dict[str, Any]:
        """``DELETE /v1/withdraws/coin``: cancel while WAITING; ``is_cancelable`` says if it was."""
        if not uuid:
            raise missing("uuid")
        found = self._by_uuid.get(uuid)
        if found is None or found.account != account.name:
            raise SandboxError(404, "withdraw_not_found", "withdrawal not found")
        if not found.is_cancelable:
            return found.to_upbit()
        self._finish(found, WithdrawalState.CANCELLED, self._monotonic())
        return found.to_upbit(is_cancelable=True)

    # --- admin --------------------------------------------------------------------------------------

    def withdrawals(self) -> list[Withdrawal]:
        """Every withdrawal, in creation order."""
        return list(self._withdrawals)

    def by_uuid(self, uuid: str) -> Withdrawal | None:
        """Direct lookup, across accounts (for tests and admin)."""
        return self._by_uuid.get(uuid)

    def set_wallet(
        self,
        currency: str,
        net_type: str,
        *,
        wallet_state: WalletState | None = None,
        block_state: BlockState | None = None,
        wallet_support: tuple[str, ...] | None = None,
    ) -> dict[str, Any]:
        """Change a network's status live; a new wallet_state re-derives wallet_support unless given."""
        network = self.networks.get((currency, net_type))
        if network is None:
            raise SandboxError(404, "sandbox_network_not_found", f"no network {currency}/{net_type}")
        if wallet_state is not None:
            network.wallet_state = wallet_state
            network.wallet_support = derive_wallet_support(wallet_state)
        if wallet_support is not None:
            network.wallet_support = wallet_support
        if block_state is not None and block_state is not network.block_state:
            network.block_state = block_state
            network.block_changed_at = self._now()
        return network.status_row(self._now()) | {"wallet_support": list(network.wallet_support)}

    def set_balance(self, access_key: str | None, currency: str, balance: Decimal) -> Account:
        """Overwrite an available balance (the held part is untouched)."""
        account = self.account(access_key)
        account.balances[currency] = balance
        self.currencies.add(currency)
        return account

    def configure(
        self,
        *,
        timings: Timings | None = None,
        outcome_weights: Mapping[WithdrawalState, float] | None = None,
        outcome_rules: tuple[OutcomeRule, ...] | None = None,
    ) -> None:
        """Change lifecycle settings; they apply to withdrawals created from now on."""
        if outcome_weights is not None and sum(outcome_weights.values()) <= 0:
            raise SandboxError(400, "validation_error", "at least one outcome weight must be positive")
        if timings is not None:
            self.timings = timings
        if outcome_weights is not None:
            self.outcome_weights = dict(outcome_weights)
        if outcome_rules is not None:
            self.outcome_rules = outcome_rules
