"""Configuration: frozen dataclasses loaded from TOML, validated once; every error names its key.

Precedence: defaults < file < environment (``UPBIT_WITHDRAW_<SECTION>_<KEY>``, e.g.
``UPBIT_WITHDRAW_ENGINE_DATABASE``) < flags (the CLI passes them as ``overrides``). Secrets never live
in the file: each account names the environment variables (default ``UPBIT_ACCESS_KEY`` /
``UPBIT_SECRET_KEY``) or a secret file that holds them; a secret file readable by group or others is
refused. ``config.example.toml`` documents every key below with its default.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.policy import AutoResolve, CurrencyPolicy, Policy, WorkflowSettings
from engine.upbit.auth import Algorithm, Credentials
from engine.upbit.client import REGIONS

__all__ = [
    "AccountConfig",
    "ApiConfig",
    "Config",
    "EngineConfig",
    "GatewayConfig",
    "load_config",
    "read_secret_file",
]

ENV_PREFIX = "UPBIT_WITHDRAW_"


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """[engine]: the store, the runner, logs."""

    database: str = "sqlite:///upbit-withdraw.sqlite3"
    concurrency: int = 200
    lease_seconds: float = 30.0
    workers: int = 1
    """Runner processes sharing each account (PostgreSQL): each takes rate_limit / workers."""
    log_level: str = "INFO"
    log_format: str = "auto"
    dry_run: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """[gateway]: shared caches and poll batching."""

    allowlist_ttl: float = 60.0
    wallet_ttl: float = 10.0
    chance_ttl: float = 2.0
    poll_window: float = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountConfig:
    """[accounts.NAME]: one Upbit account (keys, region or base URL, its rate budget)."""

    name: str
    region: str | None = "kr"
    base_url: str | None = None
    access_key_env: str = "UPBIT_ACCESS_KEY"
    secret_key_env: str = "UPBIT_SECRET_KEY"  # noqa: S105 - the variable's name, not a secret
    secret_file: str | None = None
    rate_limit: int = 30
    timeout: float = 10.0
    algorithm: str = "HS512"
    demo: bool = False

    def __repr__(self) -> str:
        return f"AccountConfig(name={self.name!r}, region={self.region!r}, base_url={self.base_url!r})"

    def credentials(self, environ: Mapping[str, str] | None = None) -> Credentials:
        """The key pair: the demo pair, a secret file, or the named environment variables."""
        env = os.environ if environ is None else environ
        key = f"accounts.{self.name}"
        if self.demo:
            return Credentials.demo()
        if self.secret_file:
            pair = read_secret_file(Path(self.secret_file), key=f"{key}.secret_file")
            return Credentials(pair["access_key"], pair["secret_key"])
        access, secret = env.get(self.access_key_env), env.get(self.secret_key_env)
        if not access or not secret:
            raise ConfigError(
                f"set {self.access_key_env} and {self.secret_key_env} in the environment, or secret_file",
                key=key,
            )
        return Credentials(access, secret)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiConfig:
    """[api]: the HTTP service."""

    host: str = "127.0.0.1"
    port: int = 8080
    token_env: str = "UPBIT_WITHDRAW_API_TOKEN"  # noqa: S105 - the variable's name, not a secret
    token_file: str | None = None
    max_body_bytes: int = 65536

    def token(self, environ: Mapping[str, str] | None = None) -> str:
        """The bearer token clients must present (from the environment or a private file)."""
        env = os.environ if environ is None else environ
        if self.token_file:
            return read_secret_file(Path(self.token_file), key="api.token_file")["token"]
        value = env.get(self.token_env)
        if not value or len(value) < 16:
            raise ConfigError(f"set {self.token_env} (at least 16 characters) or token_file", key="api.token")
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    workflow: WorkflowSettings = field(default_factory=WorkflowSettings)
    accounts: Mapping[str, AccountConfig] = field(default_factory=dict)
    policy: Policy = field(default_factory=Policy)
    api: ApiConfig = field(default_factory=ApiConfig)
    source: str = "defaults"


def read_secret_file(path: Path, *, key: str) -> dict[str, str]:
    """``KEY=value`` lines (or one bare line: a token). Refused when group/world can read it."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key=key) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} is readable by group or others; chmod 600 it", key=key)
    text = path.read_text(encoding="utf-8").strip()
    pairs: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line:
            name, _, value = line.partition("=")
            pairs[name.strip().lower()] = value.strip()
    if not pairs and text:
        pairs["token"] = text
    return pairs


# -- loading -----------------------------------------------------------------------------------------


def _coerce(value: Any, default: Any, key: str, annotation: str) -> Any:
    """Convert a TOML/env value to the type of the field it sets, or say which key is wrong."""
    try:
        if "bool" in annotation:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if "int" in annotation and "float" not in annotation:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if "float" in annotation:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if isinstance(value, str) or (value is None and "None" in annotation):
            return value
        raise ValueError(value)
    except (TypeError, ValueError):
        raise ConfigError(f"expected {annotation}, got {value!r}", key=key) from None


def _build(cls: Any, section: Mapping[str, Any], prefix: str, extra: Mapping[str, Any] | None = None) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ConfigError(f"unknown key (known: {', '.join(sorted(known))})", key=f"{prefix}.{unknown[0]}")
    kwargs = dict(extra or {})
    for name, value in section.items():
        kwargs[name] = _coerce(value, known[name].default, f"{prefix}.{name}", str(known[name].type))
    return cls(**kwargs)


def _section(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError("must be a table", key=name)
    return dict(value)


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or var == "UPBIT_WITHDRAW_API_TOKEN":
            continue
        section, _, key = var[len(ENV_PREFIX) :].lower().partition("_")
        if section in ("engine", "gateway", "workflow", "api") and key:
            data.setdefault(section, {})[key] = value


def _apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError("overrides are section.key", key=dotted)
        data.setdefault(section, {})[key] = value


def _decimal(value: Any, key: str) -> Decimal:
    if isinstance(value, float):
        raise ConfigError('write amounts as strings ("1.5"), never as floats', key=key)
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"not a decimal: {value!r}", key=key) from None
    if not result.is_finite() or result <= 0:
        raise ConfigError("must be a positive amount", key=key)
    return result


def _policy(data: Mapping[str, Any], dry_run: bool) -> Policy:
    sections = {
        name: section.get("policy", {})
        for name, section in _section(data, "accounts").items()
        if isinstance(section, dict) and section.get("policy")
    }
    accounts = {
        name: _currency_policies(
            {k: v for k, v in policy.items() if k != "auto_resolve"} if isinstance(policy, dict) else policy,
            f"accounts.{name}.policy",
        )
        for name, policy in sections.items()
    }
    auto = {
        name: _auto_resolve(policy["auto_resolve"], f"accounts.{name}.policy.auto_resolve")
        for name, policy in sections.items()
        if isinstance(policy, dict) and "auto_resolve" in policy
    }
    currencies = _currency_policies(_section(data, "policy"), "policy")
    return Policy(currencies=currencies, dry_run=dry_run, accounts=accounts, auto_resolve=auto)


def _auto_resolve(section: Any, where: str) -> AutoResolve:
    """``[accounts.NAME.policy.auto_resolve]``: enabled (bool), listings (int >= 2: a span needs two ends),
    minutes (> 0)."""
    if not isinstance(section, dict):
        raise ConfigError("must be a table", key=where)
    unknown = set(section) - {"enabled", "listings", "minutes"}
    if unknown:
        raise ConfigError("unknown key", key=f"{where}.{sorted(unknown)[0]}")
    rule = AutoResolve(**section)
    if not isinstance(rule.enabled, bool):
        raise ConfigError("must be true or false", key=f"{where}.enabled")
    if isinstance(rule.listings, bool) or not isinstance(rule.listings, int) or rule.listings < 2:
        raise ConfigError("must be a whole number >= 2", key=f"{where}.listings")
    minutes = rule.minutes
    if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not 0 < minutes < float("inf"):
        raise ConfigError("must be a positive number of minutes", key=f"{where}.minutes")
    return AutoResolve(enabled=rule.enabled, listings=rule.listings, minutes=float(minutes))


def _currency_policies(section: Any, where: str) -> dict[str, CurrencyPolicy]:
    if not isinstance(section, dict):
        raise ConfigError("must be a table", key=where)
    currencies: dict[str, CurrencyPolicy] = {}
    for currency, rules in section.items():
        prefix = f"{where}.{currency}"
        if not isinstance(rules, dict):
            raise ConfigError("must be a table", key=prefix)
        unknown = set(rules) - {"max_per_withdrawal", "max_per_day", "pinned_addresses"}
        if unknown:
            raise ConfigError("unknown key", key=f"{prefix}.{sorted(unknown)[0]}")
        pins = rules.get("pinned_addresses")
        if pins is not None and (not isinstance(pins, list) or not all(isinstance(p, str) for p in pins)):
            raise ConfigError("must be a list of addresses", key=f"{prefix}.pinned_addresses")
        currencies[currency.upper()] = CurrencyPolicy(
            max_per_withdrawal=_decimal(rules["max_per_withdrawal"], f"{prefix}.max_per_withdrawal")
            if "max_per_withdrawal" in rules
            else None,
            max_per_day=_decimal(rules["max_per_day"], f"{prefix}.max_per_day") if "max_per_day" in rules else None,
            pinned_addresses=frozenset(pins) if pins is not None else None,
        )
    return currencies


def _accounts(data: Mapping[str, Any]) -> dict[str, AccountConfig]:
    raw = _section(data, "accounts") or {"default": {}}
    accounts: dict[str, AccountConfig] = {}
    for name, section in raw.items():
        if not isinstance(section, dict):
            raise ConfigError("must be a table", key=f"accounts.{name}")
        fields_only = {k: v for k, v in section.items() if k != "policy"}
        account = _build(AccountConfig, fields_only, f"accounts.{name}", {"name": name})
        _check_account(account)
        accounts[name] = account
    return accounts


def _check_account(account: AccountConfig) -> None:
    key = f"accounts.{account.name}"
    if not account.base_url and (account.region or "").lower() not in REGIONS:
        raise ConfigError(f"region must be one of {sorted(REGIONS)} (or set base_url)", key=f"{key}.region")
    if account.algorithm not in {a.value for a in Algorithm}:
        raise ConfigError("must be HS512 or HS256", key=f"{key}.algorithm")
    if not 1 <= account.rate_limit <= 1000:
        raise ConfigError("must be between 1 and 1000 calls per second", key=f"{key}.rate_limit")
    if account.timeout <= 0:
        raise ConfigError("must be positive", key=f"{key}.timeout")


def _check(config: Config) -> None:
    e = config.engine
    if not e.database.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigError("must start with sqlite:/// or postgresql://", key="engine.database")
    if not 1 <= e.workers <= 64:
        raise ConfigError("must be between 1 and 64", key="engine.workers")
    if e.workers > 1 and e.database.startswith("sqlite:///"):
        raise ConfigError("several runner processes need PostgreSQL (one runner per SQLite file)", key="engine.workers")
    if not 1 <= e.concurrency <= 100_000:
        raise ConfigError("must be between 1 and 100000", key="engine.concurrency")
    if e.log_format not in ("auto", "json", "console"):
        raise ConfigError("must be auto, json or console", key="engine.log_format")
    if e.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("must be DEBUG, INFO, WARNING or ERROR", key="engine.log_level")
    if not 0 < config.api.port < 65536:
        raise ConfigError("must be a TCP port", key="api.port")
    for f in fields(WorkflowSettings):
        value = getattr(config.workflow, f.name)
        if isinstance(value, float | int) and not isinstance(value, bool) and value < 0:
            raise ConfigError("must not be negative", key=f"workflow.{f.name}")


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Defaults < ``path`` (TOML) < environment < ``overrides`` ({"engine.database": ...})."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}", key="config") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}", key="config") from None
        source = str(path)
    unknown = sorted(set(data) - {"engine", "gateway", "workflow", "accounts", "policy", "api"})
    if unknown:
        raise ConfigError("unknown section", key=unknown[0])
    _apply_env(data, os.environ if environ is None else environ)
    _apply_overrides(data, overrides or {})
    engine = _build(EngineConfig, _section(data, "engine"), "engine")
    config = Config(
        engine=engine,
        gateway=_build(GatewayConfig, _section(data, "gateway"), "gateway"),
        workflow=_build(WorkflowSettings, _section(data, "workflow"), "workflow"),
        accounts=_accounts(data),
        policy=_policy(data, engine.dry_run),
        api=_build(ApiConfig, _section(data, "api"), "api"),
        source=source,
    )
    _check(config)
    return config
