"""Configuration: frozen pydantic models loaded from TOML, validated once; every error names its key.

Precedence: defaults < file < environment (``UPBIT_WITHDRAW_<SECTION>_<KEY>``, e.g.
``UPBIT_WITHDRAW_ENGINE_DATABASE``) < flags (the CLI passes them as ``overrides``). pydantic-settings
merges the layers (:class:`ConfigFile` is the root model; its JSON schema describes the file) and
pydantic checks every value: a wrong type, a number out of range, ``nan``/``inf``, ``1.9`` for an
integer, an unknown key all stop the load with a :class:`ConfigError` that names the key and the rule.

Paths: a relative SQLite path, ``secret_file`` or ``token_file`` written in the config file (or left at
its default while a config file is used) is relative to the config file's directory, so every command
finds the same store wherever it runs from; a relative path from the environment or a flag is relative
to the current directory. Both are made absolute at load.

Secrets never live in the file: each account names the environment variables (default
``UPBIT_ACCESS_KEY`` / ``UPBIT_SECRET_KEY``) or a secret file that holds them; a secret file readable by
group or others is refused. ``config.example.toml`` documents every key below with its default.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin, get_type_hints

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from engine.errors import ConfigError
from engine.policy import DEFAULT_APPROVAL_EXPIRY, AutoResolve, CurrencyPolicy, Policy, WorkflowSettings
from engine.upbit.auth import Credentials
from engine.upbit.budget import min_lease
from engine.upbit.client import REGIONS
from engine.webhooks import EVENT_TYPES, target_problem

__all__ = [
    "AccountConfig",
    "ApiConfig",
    "BatchesConfig",
    "Config",
    "ConfigFile",
    "ConsoleConfig",
    "EngineConfig",
    "GatewayConfig",
    "WebhookConfig",
    "WebhookDeliveryConfig",
    "load_config",
    "read_secret_file",
]

ENV_PREFIX = "UPBIT_WITHDRAW_"
#: Sections the environment may set (``UPBIT_WITHDRAW_<SECTION>_<KEY>``); accounts and policies are file-only.
ENV_SECTIONS = ("engine", "gateway", "workflow", "api", "console")
#: Variables under the prefix that are not configuration keys.
_ENV_NOT_KEYS = frozenset({"UPBIT_WITHDRAW_API_TOKEN"})
DEFAULT_DATABASE = "sqlite:///upbit-withdraw.sqlite3"
_SQLITE = "sqlite:///"


class _Rule(ValueError):
    """A cross-field rule broken by one field: the error names ``section.field``, not just the section."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _not_bool(value: object) -> object:
    """TOML ``true`` must not pass as 1 (pydantic's lax mode would take it for a number)."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


# The bound comes before the validator so that the JSON schema shows it as minimum/maximum.
_NUMBER = BeforeValidator(_not_bool)
Seconds = Annotated[float, Field(ge=0), _NUMBER]
"""A finite, non-negative duration (``nan`` and ``inf`` are refused by every section's config)."""
Port = Annotated[int, Field(ge=1, le=65535), _NUMBER]

_SECTION = ConfigDict(
    frozen=True, extra="forbid", allow_inf_nan=False, validate_default=True, use_attribute_docstrings=True
)


class EngineConfig(BaseModel):
    """[engine]: the store, the runner, logs."""

    model_config = _SECTION

    database: str = DEFAULT_DATABASE
    concurrency: Annotated[int, Field(ge=1, le=100_000), _NUMBER] = 200
    lease_seconds: Annotated[float, Field(ge=1), _NUMBER] = 30.0
    """Below a second the runner spends its time renewing leases (it renews every third of one)."""
    workers: Annotated[int, Field(ge=1, le=64), _NUMBER] = 1
    """Runner processes sharing each account (PostgreSQL): the live ones share its rate_limit by demand."""
    store_wait: Annotated[float, Field(ge=0), _NUMBER] = 300.0
    """Seconds ``run`` keeps retrying to reach the store at start (database down) before exiting."""
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_transitions: Literal["info", "debug"] = "info"
    """The level of the ``workflow.transitioned`` lines (alerting states stay WARNING). ``debug`` drops them
    at the INFO level (some 5-20% of the CPU at high volume); every transition stays an event."""
    dry_run: bool = False

    @field_validator("database")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if not value.startswith((_SQLITE, "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value

    @model_validator(mode="after")
    def _one_runner_per_sqlite_file(self) -> EngineConfig:
        if self.workers > 1 and self.database.startswith(_SQLITE):
            raise _Rule("workers", "several runner processes need PostgreSQL (one runner per SQLite file)")
        return self


class GatewayConfig(BaseModel):
    """[gateway]: shared caches and poll batching."""

    model_config = _SECTION

    allowlist_ttl: Seconds = 60.0
    wallet_ttl: Seconds = 10.0
    chance_ttl: Seconds = 2.0
    poll_window: Annotated[float, Field(ge=0, le=10), _NUMBER] = 0.05


class _AccountSettings(BaseModel):
    """The keys of an [accounts.NAME] table (without its name or its policy)."""

    model_config = _SECTION

    region: str | None = "kr"
    base_url: str | None = None
    access_key_env: str = "UPBIT_ACCESS_KEY"
    secret_key_env: str = "UPBIT_SECRET_KEY"  # noqa: S105 - the variable's name, not a secret
    secret_file: str | None = None
    rate_limit: Annotated[int, Field(ge=1, le=1000), _NUMBER] = 30
    """Calls per second."""
    timeout: Annotated[float, Field(gt=0), _NUMBER] = 10.0
    algorithm: Literal["HS256", "HS512"] = "HS256"
    demo: bool = False

    @model_validator(mode="after")
    def _region_or_base_url(self) -> _AccountSettings:
        if not self.base_url and (self.region or "").lower() not in REGIONS:
            raise _Rule("region", f"must be one of {sorted(REGIONS)} (or set base_url)")
        return self


class AccountConfig(_AccountSettings):
    """[accounts.NAME]: one Upbit account (keys, region or base URL, its rate budget)."""

    name: str

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
            if not pair.get("access_key") or not pair.get("secret_key"):
                raise ConfigError(
                    f"{self.secret_file} must hold the lines access_key=... and secret_key=...",
                    key=f"{key}.secret_file",
                )
            return Credentials(pair["access_key"], pair["secret_key"])
        access, secret = env.get(self.access_key_env), env.get(self.secret_key_env)
        if not access or not secret:
            raise ConfigError(
                f"set {self.access_key_env} and {self.secret_key_env} in the environment, or secret_file",
                key=key,
            )
        return Credentials(access, secret)


class ApiConfig(BaseModel):
    """[api]: the HTTP service, its connection limits, the optional unauthenticated metrics listener."""

    model_config = _SECTION

    host: str = "127.0.0.1"
    port: Port = 8080
    token_env: str = "UPBIT_WITHDRAW_API_TOKEN"  # noqa: S105 - the variable's name, not a secret
    token_file: str | None = None
    max_body_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024), _NUMBER] = 65536
    header_timeout: Annotated[float, Field(gt=0), _NUMBER] = 10.0
    """Seconds a new connection has to send a complete request head (slowloris)."""
    keepalive_timeout: Annotated[float, Field(gt=0), _NUMBER] = 30.0
    """Seconds an idle connection stays open after an answer."""
    max_connections_per_client: Annotated[int, Field(ge=1), _NUMBER] = 256
    events_keepalive: Annotated[float, Field(gt=0, le=3600), _NUMBER] = 15.0
    """Seconds between keep-alive comments on a quiet ``GET /v1/events`` stream."""
    metrics_host: str = "127.0.0.1"
    metrics_port: Port | None = None
    """A second listener serving only ``GET /metrics`` without a token; off when not set."""

    def token(self, environ: Mapping[str, str] | None = None) -> str:
        """The bearer token clients must present (from the environment or a private file)."""
        env = os.environ if environ is None else environ
        if self.token_file:
            value = read_secret_file(Path(self.token_file), key="api.token_file").get("token", "")
            if len(value) < 16:
                message = f"{self.token_file} must hold one line: the token (at least 16 characters)"
                raise ConfigError(message, key="api.token_file")
            return value
        value = env.get(self.token_env) or ""
        if len(value) < 16:
            raise ConfigError(f"set {self.token_env} (at least 16 characters) or token_file", key="api.token")
        return value


class ConsoleConfig(BaseModel):
    """[console]: the operator console under ``/console/`` on the API's listener (engine/console/)."""

    model_config = _SECTION

    enabled: bool = True
    """false: ``/console/`` is not served at all (404)."""
    idle_minutes: Annotated[float, Field(gt=0, le=7 * 24 * 60), _NUMBER] = 30.0
    """A console session that made no request for this long is over (log in again)."""
    behind_tls_proxy: bool = False
    """true: a TLS proxy is in front, so plain HTTP arriving here is the proxy's: logins from any address
    are accepted and the session cookie is always ``Secure``. false: logins over plain HTTP are accepted
    only from loopback addresses."""


class WebhookDeliveryConfig(BaseModel):
    """[webhook_delivery]: how the webhook worker sends (it never uses an exchange budget or a runner slot)."""

    model_config = _SECTION

    allow_private_targets: bool = False
    """true: webhook URLs may target loopback and private addresses (tests, a receiver on the same host)."""
    concurrency: Annotated[int, Field(ge=1, le=1000), _NUMBER] = 16
    """Requests in flight at once (the worker's own connection pool)."""
    timeout: Annotated[float, Field(gt=0, le=300), _NUMBER] = 10.0
    """Seconds one delivery request may take, connect to last byte."""
    retry_period: Annotated[float, Field(gt=0), _NUMBER] = 86400.0
    """Seconds a delivery is retried before it is marked failed (visible in the delivery log)."""
    retry_initial: Annotated[float, Field(gt=0), _NUMBER] = 1.0
    """First retry delay in seconds; doubles per attempt, with up to as much random jitter again."""
    retry_max_interval: Annotated[float, Field(gt=0), _NUMBER] = 600.0
    """Longest delay between two attempts, in seconds."""
    poll_interval: Annotated[float, Field(gt=0, le=60), _NUMBER] = 0.5
    """Seconds between looks for new events and due retries when nothing wakes the worker earlier."""
    lease_seconds: Annotated[float, Field(ge=1), _NUMBER] = 60.0
    """A claimed delivery's lease; another worker may retry it once it lapses (keep it above timeout)."""


class WebhookConfig(BaseModel):
    """[[webhooks]]: one subscription from the file (the API manages its own ones beside these)."""

    model_config = _SECTION

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    """Its id is ``cfg_<name>``."""
    url: str
    events: list[str] = Field(default_factory=lambda: ["workflow.transition"])
    secret_env: str | None = None
    """Environment variable holding the signing secret (a second, ``previous_secret_env``, during rotation)..."""
    previous_secret_env: str | None = None
    secret_file: str | None = None
    """...or a chmod-600 file with the line ``secret=...`` (and ``previous_secret=...`` while rotating)."""

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(EVENT_TYPES))
        if not value or unknown:
            raise ValueError(f"must be a non-empty list of {list(EVENT_TYPES)} (unknown: {unknown})")
        return value

    @model_validator(mode="after")
    def _one_secret_source(self) -> WebhookConfig:
        if (self.secret_env is None) == (self.secret_file is None):
            raise _Rule("secret_env", "set exactly one of secret_env and secret_file")
        return self

    def secrets(self, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
        """The signing secrets, current first (read at start, like the accounts' keys)."""
        env = os.environ if environ is None else environ
        key = f"webhooks.{self.name}"
        if self.secret_file:
            pairs = read_secret_file(Path(self.secret_file), key=f"{key}.secret_file")
            found = [pairs.get("secret", ""), pairs.get("previous_secret", "")]
        else:
            assert self.secret_env is not None
            found = [env.get(self.secret_env, ""), env.get(self.previous_secret_env or "", "")]
        if len(found[0]) < 16:
            raise ConfigError("the signing secret must be set and at least 16 characters", key=key)
        return tuple(secret for secret in found if secret)


def _amount(value: object) -> Decimal:
    """A policy amount: a positive, finite decimal written as a string (a TOML float would be rounded)."""
    if isinstance(value, float | bool):
        raise ValueError('write amounts as strings ("1.5"), never as floats')
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise ValueError("not a decimal number") from None
    if not result.is_finite() or result <= 0:
        raise ValueError("must be a positive amount")
    return result


Amount = Annotated[Decimal, BeforeValidator(_amount)]


class _CurrencyRules(BaseModel):
    """[policy.CURRENCY] and [accounts.NAME.policy.CURRENCY]."""

    model_config = _SECTION

    max_per_withdrawal: Amount | None = None
    max_per_day: Amount | None = None
    pinned_addresses: list[str] | None = None
    approval_above: Amount | None = None
    """A withdrawal above this amount waits for an approver who is not its submitter (four eyes)."""

    def policy(self) -> CurrencyPolicy:
        """The engine's frozen rule object."""
        pins = frozenset(self.pinned_addresses) if self.pinned_addresses is not None else None
        return CurrencyPolicy(
            max_per_withdrawal=self.max_per_withdrawal, max_per_day=self.max_per_day, pinned_addresses=pins,
            approval_above=self.approval_above,
        )  # fmt: skip


class BatchesConfig(BaseModel):
    """[batches]: payout batches. ``max_total``: the most one batch may pay per currency, e.g.
    ``{BTC = "1.5"}`` (exact decimal strings); a batch may lower it for itself, never raise it."""

    model_config = _SECTION

    max_total: dict[str, Amount] = Field(default_factory=dict)
    #: The largest body ``POST /v1/batches`` reads (a 10,000-item JSON batch is about 2 MB).
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024), _NUMBER] = 8 * 1024 * 1024
    approval_above: dict[str, Amount] = Field(default_factory=dict)
    """Per currency, e.g. ``{BTC = "2"}``: a batch whose total of it is above waits for an approver."""

    @field_validator("max_total", "approval_above")
    @classmethod
    def _currency_codes(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        return {currency.upper(): amount for currency, amount in value.items()}


class _AutoResolveRules(BaseModel):
    """[accounts.NAME.policy.auto_resolve]: resolve this account's needs_review by proven absence."""

    model_config = _SECTION

    enabled: Annotated[bool, Field(strict=True)] = False
    """true or false, nothing else (a file-only key: no environment string to coerce)."""
    listings: Annotated[int, Field(ge=2), _NUMBER] = 3
    """Consecutive empty listings that prove absence (at least 2: a span has two ends)."""
    minutes: Annotated[float, Field(gt=0), _NUMBER] = 10.0
    """Minutes from the first of those listings to the last."""

    def rule(self) -> AutoResolve:
        """The engine's frozen rule object."""
        return AutoResolve(enabled=self.enabled, listings=self.listings, minutes=self.minutes)


class _PolicyTable(BaseModel):
    """[policy]: the approval expiry, and a [policy.CURRENCY] table per currency (limits, approval_above)."""

    model_config = ConfigDict(frozen=True, extra="allow", allow_inf_nan=False, use_attribute_docstrings=True)
    __pydantic_extra__: dict[str, _CurrencyRules] = Field(init=False)  # every other key is a currency

    approval_expires_after: Annotated[float, Field(gt=0), _NUMBER] = DEFAULT_APPROVAL_EXPIRY
    """Seconds an approval request stays open; then the withdrawal (or batch) aborts: approval_expired."""

    def currencies(self) -> dict[str, _CurrencyRules]:
        """The currency tables (every key but ``approval_expires_after``)."""
        return dict(self.__pydantic_extra__ or {})


class _AccountPolicy(BaseModel):
    """[accounts.NAME.policy]: the account's own [.CURRENCY] limits, and its optional [.auto_resolve]."""

    model_config = ConfigDict(frozen=True, extra="allow", allow_inf_nan=False, use_attribute_docstrings=True)
    __pydantic_extra__: dict[str, _CurrencyRules] = Field(init=False)  # every other key is a currency

    auto_resolve: _AutoResolveRules | None = None

    def currencies(self) -> dict[str, _CurrencyRules]:
        """The currency tables (every key but ``auto_resolve``)."""
        return dict(self.__pydantic_extra__ or {})


class _AccountTable(_AccountSettings):
    """An [accounts.NAME] table as written: the account's keys and its own policy tables."""

    policy: _AccountPolicy = Field(default_factory=_AccountPolicy)


class _WorkflowRules(BaseModel):
    """What [workflow] checks beyond each value's type: every ``X_initial`` is at most its ``X_max``."""

    model_config = _SECTION

    @model_validator(mode="after")
    def _initial_at_most_max(self) -> _WorkflowRules:
        fields = type(self).model_fields
        for name in fields:
            top = name.removesuffix("_initial") + "_max"
            if name.endswith("_initial") and top in fields and getattr(self, name) > getattr(self, top):
                raise _Rule(top, f"must be at least {name} ({getattr(self, name)})")
        return self


def _workflow_table() -> type[_WorkflowRules]:
    """[workflow], derived from :class:`WorkflowSettings` so that a new setting is a new key at once.

    Every duration is finite and non-negative, every count an integer >= 0.
    """
    hints = get_type_hints(WorkflowSettings)
    rules: dict[Any, Any] = {float: Seconds, int: Annotated[int, Field(ge=0), _NUMBER], bool: bool}
    fields: dict[str, Any] = {
        f.name: (rules.get(hints[f.name], hints[f.name]), f.default) for f in dataclasses.fields(WorkflowSettings)
    }
    return create_model(
        "WorkflowTable",
        __base__=_WorkflowRules,
        __doc__="[workflow]: timings of the withdrawal workflow, in seconds.",
        **fields,
    )


if TYPE_CHECKING:
    WorkflowTable = _WorkflowRules
else:
    WorkflowTable = _workflow_table()


@dataclasses.dataclass(frozen=True, slots=True)
class _Layers:
    """What one :func:`load_config` call reads below its flags: the file's tables and the environment."""

    file: dict[str, Any]
    environ: Mapping[str, str]


#: Set by :func:`load_config` for the duration of one load (pydantic-settings asks the class for its
#: sources, so per-call inputs travel in a context variable rather than in class state).
_LAYERS: ContextVar[_Layers] = ContextVar("engine_config_layers")


class ConfigFile(BaseSettings):
    """The whole file (its JSON schema describes ``config.example.toml``), merged with environment and flags."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,
    )

    engine: EngineConfig = Field(default_factory=EngineConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    workflow: WorkflowTable = Field(default_factory=WorkflowTable)
    accounts: dict[str, _AccountTable] = Field(default_factory=dict)
    policy: _PolicyTable = Field(default_factory=_PolicyTable)
    api: ApiConfig = Field(default_factory=ApiConfig)
    batches: BatchesConfig = Field(default_factory=BatchesConfig)
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    webhook_delivery: WebhookDeliveryConfig = Field(default_factory=WebhookDeliveryConfig)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)

    @model_validator(mode="after")
    def _webhook_targets(self) -> ConfigFile:
        names: set[str] = set()
        for index, hook in enumerate(self.webhooks):
            if hook.name in names:
                raise _Rule(f"webhooks.{index}.name", f"{hook.name!r} is used twice")
            names.add(hook.name)
            problem = target_problem(hook.url, allow_private=self.webhook_delivery.allow_private_targets)
            if problem is not None:
                raise _Rule(f"webhooks.{index}.url", problem)
        return self

    @model_validator(mode="after")
    def _lease_outlasts_a_call(self) -> ConfigFile:
        """With workers > 1 a worker's share of a budget is booked for one lease after its last heartbeat,
        so the lease must outlast a call (engine.upbit.budget.min_lease)."""
        if self.engine.workers > 1:
            timeouts = [table.timeout for table in self.accounts.values()] or [_AccountSettings().timeout]
            need = min_lease(max(timeouts))
            if self.engine.lease_seconds <= need:
                raise _Rule("engine.lease_seconds", f"must exceed {need:g} with workers > 1 (timeout + 4)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Highest first: flags (the constructor's arguments), the environment, the file. No dotenv, no
        secrets directory: secrets come from their own variables and files, read by the accounts and the API."""
        layers = _LAYERS.get(None) or _Layers({}, os.environ)
        return (
            init_settings,
            _Environment(settings_cls, layers.environ),
            InitSettingsSource(settings_cls, init_kwargs=layers.file),
        )


class _Environment(EnvSettingsSource):
    """``UPBIT_WITHDRAW_<SECTION>_<KEY>`` variables of ``environ`` (not only ``os.environ``), for
    the sections the environment may set."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        sections = tuple(f"{ENV_PREFIX}{section.upper()}_" for section in ENV_SECTIONS)
        return {
            name.lower(): value
            for name, value in self._environ.items()
            if name.upper().startswith(sections) and name.upper() not in _ENV_NOT_KEYS
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration."""

    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    gateway: GatewayConfig = dataclasses.field(default_factory=GatewayConfig)
    workflow: WorkflowSettings = dataclasses.field(default_factory=WorkflowSettings)
    accounts: Mapping[str, AccountConfig] = dataclasses.field(default_factory=dict)
    policy: Policy = dataclasses.field(default_factory=Policy)
    api: ApiConfig = dataclasses.field(default_factory=ApiConfig)
    source: str = "defaults"
    batches: BatchesConfig = dataclasses.field(default_factory=BatchesConfig)
    webhooks: tuple[WebhookConfig, ...] = ()
    webhook_delivery: WebhookDeliveryConfig = dataclasses.field(default_factory=WebhookDeliveryConfig)
    console: ConsoleConfig = dataclasses.field(default_factory=ConsoleConfig)


def read_secret_file(path: Path, *, key: str) -> dict[str, str]:
    """``KEY=value`` lines (or one bare line: a token). Refused when group/world can read it."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path} is readable by group or others; chmod 600 it", key=key)
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key=key) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text", key=key) from None
    pairs: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line:
            name, _, value = line.partition("=")
            pairs[name.strip().lower()] = value.strip()
    if not pairs and text:
        pairs["token"] = text
    return pairs


# -- loading -----------------------------------------------------------------------------------------


def _read_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key="config") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", key="config") from None


def _nested(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"engine.database": url}`` -> ``{"engine": {"database": url}}`` (None: not given)."""
    data: dict[str, Any] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError("overrides are section.key", key=dotted)
        data.setdefault(section, {})[key] = value
    return data


def _absolute(path: str, base: Path) -> str:
    return path if Path(path).is_absolute() else str(base / path)


def _absolute_database(url: str, base: Path) -> str:
    if not url.startswith(_SQLITE) or url == f"{_SQLITE}:memory:":
        return url
    return _SQLITE + _absolute(url.removeprefix(_SQLITE), base)


def _file_paths_absolute(data: dict[str, Any], base: Path) -> None:
    """Make the file's relative paths (and the default store's) relative to ``base``, in place.

    Values of the wrong type are left for validation to name.
    """
    engine = data.setdefault("engine", {})
    if isinstance(engine, dict):
        engine.setdefault("database", DEFAULT_DATABASE)
        if isinstance(engine["database"], str):
            engine["database"] = _absolute_database(engine["database"], base)
    api = data.get("api")
    if isinstance(api, dict) and isinstance(api.get("token_file"), str):
        api["token_file"] = _absolute(api["token_file"], base)
    hooks = data.get("webhooks")
    for table in hooks if isinstance(hooks, list) else ():
        if isinstance(table, dict) and isinstance(table.get("secret_file"), str):
            table["secret_file"] = _absolute(table["secret_file"], base)
    accounts = data.get("accounts")
    for table in accounts.values() if isinstance(accounts, dict) else ():
        if isinstance(table, dict) and isinstance(table.get("secret_file"), str):
            table["secret_file"] = _absolute(table["secret_file"], base)


def _known_keys(table: list[str]) -> list[str]:
    """The keys the model accepts in the table at ``table`` (e.g. ``["accounts", "desk"]``)."""
    model: Any = ConfigFile
    parts = list(table)
    while parts:
        is_model = isinstance(model, type) and issubclass(model, BaseModel)
        field = model.model_fields.get(parts.pop(0)) if is_model else None
        if field is None and model in (_AccountPolicy, _PolicyTable):  # [accounts.NAME.]policy.CURRENCY
            model = _CurrencyRules
            continue
        if field is None:
            return []
        model = field.annotation
        if get_origin(model) is dict:  # accounts.NAME, policy.CURRENCY: skip the name
            model = get_args(model)[1]
            if parts:
                parts.pop(0)
    return sorted(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _error(exc: ValidationError) -> ConfigError:
    """The first problem pydantic found, as ``section.key: rule``."""
    first = exc.errors(include_url=False)[0]
    loc = [str(part) for part in first["loc"]]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, _Rule):
        loc.append(cause.field)
        message = cause.message
    elif first["type"] == "extra_forbidden":
        message = "unknown section" if len(loc) == 1 else "unknown key"
        if known := _known_keys(loc[:-1]):
            message += f" (known: {', '.join(known)})"
    else:
        message = first["msg"].removeprefix("Value error, ")
    return ConfigError(message, key=".".join(loc) or "config")


def _validated(file_data: dict[str, Any], environ: Mapping[str, str], flags: dict[str, Any]) -> ConfigFile:
    """Defaults < file < environment < flags, merged and checked by pydantic-settings."""
    token = _LAYERS.set(_Layers(file_data, environ))
    try:
        return ConfigFile(**flags)
    except ValidationError as exc:
        raise _error(exc) from None
    finally:
        _LAYERS.reset(token)


def _accounts(tables: Mapping[str, _AccountTable], cwd: Path) -> dict[str, AccountConfig]:
    if not tables:
        return {"default": AccountConfig(name="default")}
    accounts: dict[str, AccountConfig] = {}
    for name, table in tables.items():
        fields = table.model_dump(exclude={"policy"})
        if fields["secret_file"]:
            fields["secret_file"] = _absolute(fields["secret_file"], cwd)
        accounts[name] = AccountConfig(name=name, **fields)
    return accounts


def _policy(settings: ConfigFile) -> Policy:
    def currencies(tables: Mapping[str, _CurrencyRules]) -> dict[str, CurrencyPolicy]:
        return {currency.upper(): rules.policy() for currency, rules in tables.items()}

    tables = settings.accounts.items()
    accounts = {name: currencies(table.policy.currencies()) for name, table in tables if table.policy.currencies()}
    auto = {name: table.policy.auto_resolve.rule() for name, table in tables if table.policy.auto_resolve}
    return Policy(
        currencies=currencies(settings.policy.currencies()), dry_run=settings.engine.dry_run, accounts=accounts,
        auto_resolve=auto, approval_expires_after=settings.policy.approval_expires_after,
        batch_approval_above=dict(settings.batches.approval_above),
    )  # fmt: skip


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Defaults < ``path`` (TOML) < environment < ``overrides`` ({"engine.database": ...})."""
    cwd = Path.cwd()
    file_data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        file_data = _read_file(Path(path))
        _file_paths_absolute(file_data, Path(path).resolve().parent)
        source = str(path)
    settings = _validated(file_data, os.environ if environ is None else environ, _nested(overrides or {}))
    engine = settings.engine.model_copy(update={"database": _absolute_database(settings.engine.database, cwd)})
    api = settings.api
    if api.token_file:
        api = api.model_copy(update={"token_file": _absolute(api.token_file, cwd)})
    return Config(
        engine=engine,
        gateway=settings.gateway,
        workflow=WorkflowSettings(**settings.workflow.model_dump()),
        accounts=_accounts(settings.accounts, cwd),
        policy=_policy(settings),
        api=api,
        source=source,
        batches=settings.batches,
        webhooks=tuple(settings.webhooks),
        webhook_delivery=settings.webhook_delivery,
        console=settings.console,
    )
