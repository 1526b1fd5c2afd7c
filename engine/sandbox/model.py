"""The sandbox's vocabulary: wallet and withdrawal states, and the frozen seed dataclasses.

A :class:`SandboxSeed` is plain frozen data describing what the sandbox starts from (accounts,
networks, timings, outcomes, rate limits, faults); :mod:`engine.sandbox.seed` builds the default one
and reads TOML files. Money is ``Decimal`` everywhere; cross-field checks run once, on creation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta, timezone
from decimal import Decimal
from enum import StrEnum

from engine.sandbox.faults import FaultRule
from engine.upbit.auth import Credentials

__all__ = [
    "DEFAULT_OUTCOME_WEIGHTS",
    "TERMINAL_STATES",
    "AccountSeed",
    "AddressSeed",
    "BlockState",
    "NetworkSeed",
    "OutcomeRule",
    "RateLimitSettings",
    "Region",
    "SandboxSeed",
    "SeedError",
    "Timings",
    "WalletState",
    "WithdrawalState",
    "derive_wallet_support",
]


class SeedError(ValueError):
    """A seed file or admin payload is invalid; the message names the key."""


class WalletState(StrEnum):
    """``wallet_state`` of ``GET /v1/status/wallet``; only working and withdraw_only may send."""

    WORKING = "working"
    WITHDRAW_ONLY = "withdraw_only"
    DEPOSIT_ONLY = "deposit_only"
    PAUSED = "paused"
    UNSUPPORTED = "unsupported"


class BlockState(StrEnum):
    """``block_state``: inactive blocks withdrawals in the sandbox."""

    NORMAL = "normal"
    DELAYED = "delayed"
    INACTIVE = "inactive"


class WithdrawalState(StrEnum):
    """Upbit's withdrawal states (upper case, as on the wire)."""

    WAITING = "WAITING"
    PROCESSING = "PROCESSING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"

    @property
    def is_terminal(self) -> bool:
        """True for the four end states."""
        return self not in (WithdrawalState.WAITING, WithdrawalState.PROCESSING)


class Region(StrEnum):
    """Which Upbit the sandbox plays: its fiat, its clock, and how it writes timestamps."""

    KR = "kr"
    SG = "sg"
    ID = "id"
    TH = "th"

    @property
    def fiat(self) -> str:
        """The fiat currency of balances, prices and the daily withdrawal limit."""
        return _FIAT[self]

    @property
    def tz(self) -> timezone:
        """The offset withdrawals are stamped with (``+09:00`` in Korea, ``+08:00`` in Singapore, ...)."""
        return _ZONES[self]

    @property
    def milliseconds(self) -> bool:
        """Global sites stamp to the millisecond (our choice, see the README); Korea to the second."""
        return self is not Region.KR


_FIAT = {Region.KR: "KRW", Region.SG: "SGD", Region.ID: "IDR", Region.TH: "THB"}
_ZONES = {
    Region.KR: timezone(timedelta(hours=9), "KST"),
    Region.SG: timezone(timedelta(hours=8), "SGT"),
    Region.ID: timezone(timedelta(hours=7), "WIB"),
    Region.TH: timezone(timedelta(hours=7), "ICT"),
}

TERMINAL_STATES = tuple(s for s in WithdrawalState if s.is_terminal)
_SUPPORT = {
    WalletState.WORKING: ("deposit", "withdraw"),
    WalletState.WITHDRAW_ONLY: ("withdraw",),
    WalletState.DEPOSIT_ONLY: ("deposit",),
    WalletState.PAUSED: (),
    WalletState.UNSUPPORTED: (),
}


def derive_wallet_support(state: WalletState) -> tuple[str, ...]:
    """The ``wallet_support`` list that goes with a wallet state."""
    return _SUPPORT[state]


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkSeed:
    """One (currency, net_type): its fee, limits, precision and status."""

    currency: str
    net_type: str
    network_name: str
    withdraw_fee: Decimal
    minimum: Decimal
    fixed: int
    """Maximum decimal places of an amount."""
    onetime: Decimal | None = None
    """Deprecated per-network limits (Upbit enforces the account's fiat daily limit instead): None,
    the default, means neither reported nor enforced; set, they behave as Upbit KR's used to."""
    daily: Decimal | None = None
    wallet_state: WalletState = WalletState.WORKING
    block_state: BlockState | None = BlockState.NORMAL
    wallet_support: tuple[str, ...] | None = None
    """None means "derived from wallet_state" (see :func:`derive_wallet_support`)."""
    block_height: int | None = None
    cancelable: bool = True
    """Whether a WAITING withdrawal of this network can be cancelled (``is_cancelable``). Upbit's own
    tutorial shows a fresh WAITING withdrawal with ``is_cancelable: false``: set False to play that."""

    @property
    def key(self) -> tuple[str, str]:
        """``(currency, net_type)``."""
        return (self.currency, self.net_type)


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressSeed:
    """One allowlisted destination, with the fields of ``GET /v1/withdraws/coin_addresses``."""

    currency: str
    net_type: str
    network_name: str
    withdraw_address: str
    secondary_address: str | None = None
    beneficiary_name: str | None = None
    beneficiary_type: str | None = None
    beneficiary_company_name: str | None = None
    exchange_name: str | None = None
    wallet_type: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountSeed:
    """One account (Upbit pocket): its keys share one rate bucket, one ledger and one allowlist."""

    name: str
    keys: tuple[Credentials, ...]
    balances: Mapping[str, Decimal] = field(default_factory=dict)
    addresses: tuple[AddressSeed, ...] = ()
    daily_fiat_limit: Decimal = Decimal("5000000000")


@dataclass(frozen=True, slots=True, kw_only=True)
class Timings:
    """How long withdrawals take. Each duration is ``base + uniform(0, jitter)`` seconds."""

    waiting_seconds: float = 2.0
    waiting_jitter: float = 1.0
    processing_seconds: float = 5.0
    processing_jitter: float = 3.0
    internal_factor: float = 0.1
    """``internal`` transfers take this fraction of the time (they also pay no fee)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OutcomeRule:
    """A withdrawal of exactly ``amount`` (numerically) in ``currency`` ends in ``outcome``."""

    currency: str
    amount: Decimal
    outcome: WithdrawalState


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitSettings:
    """The ``default`` group limit: per account, fixed one-second windows, 429 then 418."""

    enabled: bool = True
    per_second: int = 30
    block_after_429s: int = 10
    """This many 429s within ``block_window_seconds`` start a 418 block."""
    block_window_seconds: float = 10.0
    block_seconds: float = 30.0
    block_growth: float = 1.0
    """Each further block of the same account lasts this factor longer (Upbit: "grows on repeat")."""
    block_max_seconds: float = 3600.0
    announce_block: bool = True
    """True: the 418 states its seconds in the message and in ``Retry-After``; False: neither."""


DEFAULT_OUTCOME_WEIGHTS: Mapping[WithdrawalState, float] = {
    WithdrawalState.DONE: 1.0,
    WithdrawalState.FAILED: 0.0,
    WithdrawalState.CANCELLED: 0.0,
    WithdrawalState.REJECTED: 0.0,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxSeed:
    """Everything the sandbox starts from; ``POST /sandbox/reset`` returns to it."""

    accounts: tuple[AccountSeed, ...]
    networks: tuple[NetworkSeed, ...]
    prices: Mapping[str, Decimal] = field(default_factory=dict)
    """Price per currency in the region's fiat: ``avg_buy_price`` and the fiat daily limit use it."""
    timings: Timings = Timings()
    outcome_weights: Mapping[WithdrawalState, float] = field(default_factory=lambda: dict(DEFAULT_OUTCOME_WEIGHTS))
    outcome_rules: tuple[OutcomeRule, ...] = ()
    rate_limit: RateLimitSettings = RateLimitSettings()
    random_seed: int = 1
    faults: tuple[FaultRule, ...] = ()
    region: Region = Region.KR

    def __post_init__(self) -> None:
        _validate(self)


def _validate(seed: SandboxSeed) -> None:
    """Cross-checks a single dataclass cannot do: unique keys, addresses on known networks."""
    if not seed.accounts:
        raise SeedError("accounts: at least one account is required")
    keys = [c.access_key for a in seed.accounts for c in a.keys]
    if len(keys) != len(set(keys)):
        raise SeedError("accounts: an access_key is used twice")
    names = [a.name for a in seed.accounts]
    if len(names) != len(set(names)):
        raise SeedError("accounts: an account name is used twice")
    networks = {n.key for n in seed.networks}
    if len(networks) != len(seed.networks):
        raise SeedError("networks: a (currency, net_type) is listed twice")
    for account in seed.accounts:
        if not account.keys:
            raise SeedError(f"accounts.{account.name}: needs at least one key")
        for address in account.addresses:
            if (address.currency, address.net_type) not in networks:
                raise SeedError(f"accounts.{account.name}.addresses: no network {address.currency}/{address.net_type}")
    for state in seed.outcome_weights:
        if not state.is_terminal:
            raise SeedError(f"outcome_weights: {state} is not a terminal state")
    if sum(seed.outcome_weights.values()) <= 0:
        raise SeedError("outcome_weights: at least one weight must be positive")
