"""The exchange's live records: accounts, networks and withdrawals, and their wire shapes.

These are mutable on purpose: they are the simulated exchange's own state, changed only by
:class:`engine.sandbox.exchange.Exchange` under the event loop's single thread, and a withdrawal moves
through its lifecycle in place so that every index (by uuid, by txid, per currency) sees the change
without being rebuilt. Seeds and rules, which are inputs rather than state, are frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from engine.sandbox.model import (
    AccountSeed,
    AddressSeed,
    BlockState,
    NetworkSeed,
    Region,
    WalletState,
    WithdrawalState,
    derive_wallet_support,
)

__all__ = ["KST", "Account", "Network", "Withdrawal", "fmt", "fmt_amount", "kst_iso", "region_iso", "utc_iso"]

#: Upbit KR stamps withdrawals in Korea Standard Time (``2026-01-01T09:00:00+09:00``).
KST = timezone(timedelta(hours=9), "KST")
_SENDABLE = (WalletState.WORKING, WalletState.WITHDRAW_ONLY)


def fmt(value: Decimal) -> str:
    """A Decimal as Upbit writes it: a plain string, never exponent notation (``"0.0008"``)."""
    return format(value, "f")


def fmt_amount(value: Decimal) -> str:
    """A balance as Upbit writes one: trailing zeros dropped, at least one decimal (``"2.0"``)."""
    text = format(value.normalize(), "f")
    return text if "." in text else text + ".0"


def kst_iso(moment: datetime) -> str:
    """ISO-8601 to the second with the ``+09:00`` offset, as in Upbit's examples."""
    return moment.astimezone(KST).isoformat(timespec="seconds")


def region_iso(moment: datetime, region: Region) -> str:
    """A timestamp as the region's Upbit writes one: its offset; milliseconds on the global sites."""
    return moment.astimezone(region.tz).isoformat(timespec="milliseconds" if region.milliseconds else "seconds")


def utc_iso(moment: datetime) -> str:
    """ISO-8601 in UTC (``status/wallet`` reports ``block_updated_at`` in UTC)."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


@dataclass(slots=True, eq=False)
class Network:
    """A (currency, net_type) and its live, admin-changeable status."""

    seed: NetworkSeed
    wallet_state: WalletState
    block_state: BlockState | None
    wallet_support: tuple[str, ...]
    block_changed_at: datetime

    @classmethod
    def from_seed(cls, seed: NetworkSeed, now: datetime) -> Network:
        """Live network in the seed's state."""
        support = seed.wallet_support
        if support is None:
            support = derive_wallet_support(seed.wallet_state)
        return cls(seed, seed.wallet_state, seed.block_state, support, now)

    def can_send(self) -> bool:
        """Whether a withdrawal on this network is accepted right now."""
        return (
            self.wallet_state in _SENDABLE
            and self.block_state is not BlockState.INACTIVE
            and "withdraw" in self.wallet_support
        )

    def status_row(self, now: datetime) -> dict[str, Any]:
        """One row of ``GET /v1/status/wallet``; a normal block is fresh, others age since the change."""
        updated = now if self.block_state is BlockState.NORMAL else self.block_changed_at
        elapsed = int((now - updated).total_seconds() // 60)
        return {
            "currency": self.seed.currency,
            "wallet_state": self.wallet_state.value,
            "block_state": None if self.block_state is None else self.block_state.value,
            "block_height": self.seed.block_height,
            "block_updated_at": utc_iso(updated),
            "block_elapsed_minutes": elapsed,
            "net_type": self.seed.net_type,
            "network_name": self.seed.network_name,
        }


@dataclass(slots=True, eq=False)
class Withdrawal:
    """One withdrawal: what was asked, what was drawn for its future, and where it is now."""

    seq: int
    uuid: str
    account: str
    currency: str
    net_type: str
    amount: Decimal
    amount_text: str
    fee: Decimal
    address: str
    secondary_address: str | None
    transaction_type: str
    body: dict[str, Any]
    created_at: datetime
    created_mono: float
    day: date
    outcome: WithdrawalState
    """The terminal state drawn (or ruled) at creation; a cancel overrides it."""
    processing_delay: float
    terminal_delay: float
    planned_txid: str
    state: WithdrawalState = WithdrawalState.WAITING
    txid: str | None = None
    done_at: datetime | None = None
    cancelable: bool = True
    """The network's setting at creation: may a WAITING withdrawal be cancelled at all."""
    region: Region = Region.KR
    state_changes: list[tuple[str, datetime]] = field(default_factory=list)
    """(state, when the exchange reached it), from creation on: benchmarks measure how late clients see it."""

    @property
    def total(self) -> Decimal:
        """What the withdrawal holds from the balance: amount plus fee."""
        return self.amount + self.fee

    @property
    def is_cancelable(self) -> bool:
        """Only a WAITING withdrawal can still be cancelled, and only on a network that allows it."""
        return self.cancelable and self.state is WithdrawalState.WAITING

    def to_upbit(self, *, is_cancelable: bool | None = None) -> dict[str, Any]:
        """The withdrawal object of upbit-api.md §6 (no address: Upbit does not return one)."""
        return {
            "type": "withdraw",
            "uuid": self.uuid,
            "currency": self.currency,
            "net_type": self.net_type,
            "txid": self.txid,
            "state": self.state.value,
            "created_at": region_iso(self.created_at, self.region),
            "done_at": None if self.done_at is None else region_iso(self.done_at, self.region),
            "amount": self.amount_text,
            "fee": "0.0" if self.fee == 0 else fmt(self.fee),
            "transaction_type": self.transaction_type,
            "is_cancelable": self.is_cancelable if is_cancelable is None else is_cancelable,
        }

    def to_admin(self) -> dict[str, Any]:
        """Everything, for ``GET /sandbox/withdrawals``: the Upbit object plus what Upbit hides."""
        return {
            **self.to_upbit(),
            "seq": self.seq,
            "account": self.account,
            "address": self.address,
            "secondary_address": self.secondary_address,
            "planned_outcome": self.outcome.value,
            "body": self.body,
            "state_changes": [[state, at.isoformat()] for state, at in self.state_changes],
        }


@dataclass(slots=True, eq=False)
class Account:
    """One account's ledger, allowlist and withdrawals (with the indexes listing needs)."""

    name: str
    access_keys: tuple[str, ...]
    balances: dict[str, Decimal]
    allowlist: frozenset[tuple[str, str, str, str | None]]
    addresses: tuple[AddressSeed, ...]
    daily_fiat_limit: Decimal
    locked: dict[str, Decimal] = field(default_factory=dict)
    withdrawals: list[Withdrawal] = field(default_factory=list)
    by_currency: dict[str, list[Withdrawal]] = field(default_factory=dict)
    by_txid: dict[str, Withdrawal] = field(default_factory=dict)
    daily_used: dict[tuple[str, str, date], Decimal] = field(default_factory=dict)
    fiat_used: dict[date, Decimal] = field(default_factory=dict)
    done_totals: dict[str, Decimal] = field(default_factory=dict)

    @classmethod
    def from_seed(cls, seed: AccountSeed) -> Account:
        """A fresh account holding the seed's balances."""
        allowlist = frozenset((a.currency, a.net_type, a.withdraw_address, a.secondary_address) for a in seed.addresses)
        return cls(
            name=seed.name,
            access_keys=tuple(c.access_key for c in seed.keys),
            balances=dict(seed.balances),
            allowlist=allowlist,
            addresses=seed.addresses,
            daily_fiat_limit=seed.daily_fiat_limit,
        )

    def balance(self, currency: str) -> Decimal:
        """Available (unlocked) balance."""
        return self.balances.get(currency, Decimal(0))

    def held(self, currency: str) -> Decimal:
        """Locked by pending withdrawals."""
        return self.locked.get(currency, Decimal(0))

    def move(self, currency: str, *, balance: Decimal = Decimal(0), locked: Decimal = Decimal(0)) -> None:
        """Apply a ledger change to available and locked amounts."""
        self.balances[currency] = self.balance(currency) + balance
        self.locked[currency] = self.held(currency) + locked

    def record(self, withdrawal: Withdrawal) -> None:
        """Index a new withdrawal (lists stay in creation order, i.e. sorted by ``seq``)."""
        self.withdrawals.append(withdrawal)
        self.by_currency.setdefault(withdrawal.currency, []).append(withdrawal)

    def __repr__(self) -> str:
        return f"Account(name={self.name!r}, withdrawals={len(self.withdrawals)})"
