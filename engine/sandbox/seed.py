"""The seed: the built-in default, and reading one from TOML (or from admin JSON, same rules).

:func:`default_seed` builds the built-in seed; ``default_seed.toml`` next to this module is the same
seed as a documented file (a test holds them equal) that users copy and edit; :func:`load_seed` reads
such a file. In files, amounts are strings (``"0.0008"``) or integers, never floats, so no value is
ever rounded through binary floating point. Every error names the key that is wrong.

An account without ``access_key``/``secret_key`` (and without ``keys``) uses the default credentials:
``UPBIT_ACCESS_KEY``/``UPBIT_SECRET_KEY`` when both are set in the environment, else the published
demo pair from :mod:`engine.upbit.auth`. That way one file serves both demo and "my own keys" use.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

from engine.sandbox.defaults import build_default_seed
from engine.sandbox.faults import FaultRule, parse_fault_rule
from engine.sandbox.model import (
    AccountSeed,
    AddressSeed,
    BlockState,
    NetworkSeed,
    OutcomeRule,
    RateLimitSettings,
    Region,
    SandboxSeed,
    SeedError,
    Timings,
    WalletState,
    WithdrawalState,
)
from engine.upbit.auth import DEMO_ACCESS_KEY, DEMO_SECRET_KEY, Credentials

__all__ = [
    "DEFAULT_SEED_PATH",
    "AccountSeed",
    "AddressSeed",
    "BlockState",
    "NetworkSeed",
    "OutcomeRule",
    "RateLimitSettings",
    "SandboxSeed",
    "SeedError",
    "Timings",
    "WalletState",
    "WithdrawalState",
    "default_credentials",
    "default_seed",
    "load_seed",
    "outcome_rules_from",
    "outcome_weights_from",
    "rate_limit_from",
    "seed_from_mapping",
    "timings_from",
    "to_decimal",
]

DEFAULT_SEED_PATH = Path(__file__).with_name("default_seed.toml")
_REQUIRED: Any = object()
_T = TypeVar("_T")


def default_credentials() -> Credentials:
    """The environment's key pair when both variables are set, else the published demo pair."""
    access, secret = os.environ.get("UPBIT_ACCESS_KEY"), os.environ.get("UPBIT_SECRET_KEY")
    if access and secret:
        return Credentials(access, secret)
    return Credentials(DEMO_ACCESS_KEY, DEMO_SECRET_KEY)


def default_seed() -> SandboxSeed:
    """The built-in seed: one well-funded account, six networks (DOGE paused), no faults."""
    return build_default_seed(default_credentials())


def load_seed(path: str | os.PathLike[str]) -> SandboxSeed:
    """Read a seed from a TOML file (``default_seed.toml`` documents every key)."""
    with Path(path).open("rb") as handle:
        try:
            data = tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise SeedError(f"{path}: {exc}") from exc
    return seed_from_mapping(data)


class _Table:
    """A TOML table or JSON object with its dotted path, so that every error names its key."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            raise SeedError(f"{path or 'seed'}: expected a table, got {type(data).__name__}")
        self.data: Mapping[str, Any] = data
        self.path = path

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def only(self, *allowed: str) -> _Table:
        unknown = sorted(set(self.data) - set(allowed))
        if unknown:
            raise SeedError(f"{self.name(unknown[0])}: unknown key")
        return self

    def raw(self, key: str, default: Any) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            raise SeedError(f"{self.name(key)}: required")
        return default

    def typed(self, key: str, kind: type[_T], default: Any = _REQUIRED) -> _T:
        value = self.raw(key, default)
        if value is default and default is not _REQUIRED:
            return value  # type: ignore[no-any-return]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise SeedError(f"{self.name(key)}: expected {kind.__name__}, got {value!r}")
        return value

    def text(self, key: str, default: Any = _REQUIRED) -> Any:
        return self.typed(key, str, default)

    def decimal(self, key: str, default: Any = _REQUIRED) -> Decimal:
        return to_decimal(self.raw(key, default), self.name(key))

    def table(self, key: str) -> _Table:
        return _Table(self.raw(key, {}), self.name(key))

    def tables(self, key: str) -> list[_Table]:
        items = self.raw(key, [])
        if not isinstance(items, Sequence) or isinstance(items, str):
            raise SeedError(f"{self.name(key)}: expected an array of tables")
        return [_Table(item, f"{self.name(key)}[{i}]") for i, item in enumerate(items)]

    def enum(self, key: str, kind: type[_T], default: Any = _REQUIRED) -> Any:
        value = self.raw(key, default)
        try:
            return value if value is None else kind(value)  # type: ignore[call-arg]
        except ValueError as exc:
            raise SeedError(f"{self.name(key)}: {value!r} is not a valid {kind.__name__}") from exc


def to_decimal(value: object, name: str) -> Decimal:
    """A finite Decimal from a string or an integer; floats are refused, they would be rounded."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise SeedError(f'{name}: write decimals as strings (e.g. "0.0008"), got {value!r}')
    try:
        number = Decimal(value)
    except InvalidOperation as exc:
        raise SeedError(f"{name}: not a decimal: {value!r}") from exc
    if not number.is_finite():
        raise SeedError(f"{name}: not a finite decimal: {value!r}")
    return number


def seed_from_mapping(data: Mapping[str, Any]) -> SandboxSeed:
    """Build and validate a seed from parsed TOML (or JSON)."""
    top = _Table(data, "").only(
        "random_seed", "timings", "outcome_weights", "outcome_rules", "rate_limit",
        "prices", "networks", "accounts", "faults", "region",
    )  # fmt: skip
    try:
        return SandboxSeed(
            accounts=tuple(_account(t) for t in top.tables("accounts")),
            networks=tuple(_network(t) for t in top.tables("networks")),
            prices={k: top.table("prices").decimal(k) for k in top.table("prices").data},
            timings=timings_from(top.raw("timings", {})),
            outcome_weights=outcome_weights_from(top.raw("outcome_weights", {"DONE": 1.0})),
            outcome_rules=outcome_rules_from(top.raw("outcome_rules", [])),
            rate_limit=rate_limit_from(top.raw("rate_limit", {})),
            random_seed=top.typed("random_seed", int, 1),
            faults=tuple(_fault(t) for t in top.tables("faults")),
            region=top.enum("region", Region, Region.KR),
        )
    except (TypeError, ValueError) as exc:
        raise exc if isinstance(exc, SeedError) else SeedError(str(exc)) from exc


def _network(t: _Table) -> NetworkSeed:
    t.only(
        "currency", "net_type", "network_name", "withdraw_fee", "minimum", "fixed", "onetime",
        "daily", "wallet_state", "block_state", "wallet_support", "block_height", "cancelable",
    )  # fmt: skip
    support = t.raw("wallet_support", None)
    if support is not None and not (isinstance(support, list) and all(isinstance(s, str) for s in support)):
        raise SeedError(f"{t.name('wallet_support')}: expected a list of strings")
    return NetworkSeed(
        currency=t.text("currency"),
        net_type=t.text("net_type"),
        network_name=t.text("network_name"),
        withdraw_fee=t.decimal("withdraw_fee"),
        minimum=t.decimal("minimum"),
        fixed=t.typed("fixed", int),
        onetime=_optional_decimal(t, "onetime"),
        daily=_optional_decimal(t, "daily"),
        wallet_state=t.enum("wallet_state", WalletState, WalletState.WORKING),
        block_state=t.enum("block_state", BlockState, BlockState.NORMAL),
        wallet_support=None if support is None else tuple(support),
        block_height=t.typed("block_height", int, None),
        cancelable=t.typed("cancelable", bool, True),
    )


def _optional_decimal(t: _Table, key: str) -> Decimal | None:
    return None if t.raw(key, None) is None else t.decimal(key)


def _account(t: _Table) -> AccountSeed:
    t.only("name", "access_key", "secret_key", "keys", "balances", "addresses", "daily_fiat_limit")
    balances = t.table("balances")
    return AccountSeed(
        name=t.text("name"),
        keys=_keys(t),
        balances={currency: balances.decimal(currency) for currency in balances.data},
        addresses=tuple(_address(a) for a in t.tables("addresses")),
        daily_fiat_limit=t.decimal("daily_fiat_limit", "5000000000"),
    )


def _keys(t: _Table) -> tuple[Credentials, ...]:
    """``access_key``+``secret_key``, plus any ``keys`` entries; none at all means the default pair."""
    keys = [_credentials(k) for k in t.tables("keys")]
    if "access_key" in t.data or "secret_key" in t.data:
        keys.insert(0, _credentials(t))
    return tuple(keys) or (default_credentials(),)


def _credentials(t: _Table) -> Credentials:
    return Credentials(t.text("access_key"), t.text("secret_key"))


def _address(t: _Table) -> AddressSeed:
    names = [f.name for f in dataclasses.fields(AddressSeed)]
    t.only(*names)
    required = {"currency", "net_type", "network_name", "withdraw_address"}
    values = {n: t.text(n) if n in required else t.text(n, None) for n in names}
    return AddressSeed(**values)


def _fault(t: _Table) -> FaultRule:
    try:
        return parse_fault_rule(t.data)
    except ValueError as exc:
        raise SeedError(f"{t.path}: {exc}") from exc


def timings_from(data: object, base: Timings | None = None) -> Timings:
    """Timings from a table; keys left out keep ``base``'s values (so admin updates can be partial)."""
    base = base or Timings()
    t = _Table(data, "timings").only(*(f.name for f in dataclasses.fields(Timings)))
    changes = {key: t.typed(key, float) for key in t.data}
    for key, value in changes.items():
        if value < 0:
            raise SeedError(f"timings.{key}: must not be negative")
    return dataclasses.replace(base, **changes)


def rate_limit_from(data: object, base: RateLimitSettings | None = None) -> RateLimitSettings:
    """Rate-limit settings from a table; keys left out keep ``base``'s values."""
    base = base or RateLimitSettings()
    t = _Table(data, "rate_limit").only(*(f.name for f in dataclasses.fields(RateLimitSettings)))
    kinds: dict[str, type] = {"enabled": bool, "announce_block": bool, "per_second": int, "block_after_429s": int}
    changes: dict[str, Any] = {key: t.typed(key, kinds.get(key, float)) for key in t.data}
    for key, value in changes.items():
        if kinds.get(key) is not bool and value <= 0:
            raise SeedError(f"rate_limit.{key}: must be positive")
        if key == "block_growth" and value < 1:
            raise SeedError("rate_limit.block_growth: must be at least 1 (blocks grow, never shrink)")
    return dataclasses.replace(base, **changes)


def outcome_weights_from(data: object) -> dict[WithdrawalState, float]:
    """Terminal state -> relative weight; states left out weigh 0."""
    t = _Table(data, "outcome_weights")
    weights: dict[WithdrawalState, float] = {}
    for key in t.data:
        state = WithdrawalState.__members__.get(str(key))
        if state is None or not state.is_terminal:
            raise SeedError(f"{t.name(key)}: only DONE, FAILED, CANCELLED and REJECTED have weights")
        weights[state] = t.typed(key, float)
        if weights[state] < 0:
            raise SeedError(f"{t.name(key)}: must not be negative")
    if sum(weights.values()) <= 0:
        raise SeedError("outcome_weights: at least one weight must be positive")
    return weights


def outcome_rules_from(data: object) -> tuple[OutcomeRule, ...]:
    """A list of ``{currency, amount, outcome}`` tables."""
    if not isinstance(data, Sequence) or isinstance(data, str):
        raise SeedError("outcome_rules: expected a list of tables")
    rules = []
    for i, item in enumerate(data):
        t = _Table(item, f"outcome_rules[{i}]").only("currency", "amount", "outcome")
        outcome = t.enum("outcome", WithdrawalState)
        if not outcome.is_terminal:
            raise SeedError(f"{t.name('outcome')}: must be DONE, FAILED, CANCELLED or REJECTED")
        rules.append(OutcomeRule(currency=t.text("currency"), amount=t.decimal("amount"), outcome=outcome))
    return tuple(rules)
