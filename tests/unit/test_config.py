"""engine.config.load_config: precedence, the environment's names, the frozen objects the engine uses."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.config import AccountConfig, ApiConfig, EngineConfig, GatewayConfig, load_config
from engine.errors import ConfigError
from engine.policy import WorkflowSettings


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_precedence_defaults_file_environment_flags(tmp_path: Path) -> None:
    """Each layer wins over the ones before it, key by key."""
    path = _file(
        tmp_path, "[engine]\nconcurrency = 10\nlease_seconds = 5.0\nworkers = 1\n[workflow]\npoll_max = 30.0\n"
    )
    environ = {"UPBIT_WITHDRAW_ENGINE_LEASE_SECONDS": "7.5", "UPBIT_WITHDRAW_ENGINE_CONCURRENCY": "20"}
    config = load_config(path, overrides={"engine.concurrency": 30, "api.port": None}, environ=environ)
    assert config.engine.concurrency == 30  # flag > env > file
    assert config.engine.lease_seconds == 7.5  # env > file
    assert config.workflow.poll_max == 30.0  # file > default
    assert config.workflow.poll_initial == WorkflowSettings().poll_initial  # default
    assert config.api.port == 8080  # a flag left unset (None) does not count


def test_environment_names(tmp_path: Path) -> None:
    """UPBIT_WITHDRAW_<SECTION>_<KEY>, keys with underscores included; the token and other variables
    of the prefix are not configuration keys."""
    environ = {
        "UPBIT_WITHDRAW_WORKFLOW_RECONCILE_GRACE": "300",
        "UPBIT_WITHDRAW_GATEWAY_POLL_WINDOW": "0.1",
        "UPBIT_WITHDRAW_API_MAX_CONNECTIONS_PER_CLIENT": "12",
        "UPBIT_WITHDRAW_ENGINE_DRY_RUN": "true",
        "UPBIT_WITHDRAW_API_TOKEN": "not-a-config-key-0123456789",
        "UPBIT_WITHDRAW_CONFIG": "/nowhere.toml",
        "UPBIT_WITHDRAW_DEBUG": "1",
        "UPBIT_WITHDRAW_ACCOUNTS_DEFAULT": "ignored",
    }
    config = load_config(environ=environ)
    assert config.workflow.reconcile_grace == 300.0
    assert config.gateway.poll_window == 0.1
    assert config.api.max_connections_per_client == 12
    assert config.engine.dry_run and config.policy.dry_run


def test_public_types_are_frozen_and_constructible() -> None:
    """The objects the rest of the code builds and reads keep their names, keywords and immutability."""
    config = load_config(environ={})
    assert isinstance(config.engine, EngineConfig) and isinstance(config.gateway, GatewayConfig)
    assert isinstance(config.workflow, WorkflowSettings) and isinstance(config.api, ApiConfig)
    assert isinstance(config.accounts["default"], AccountConfig) and config.accounts["default"].name == "default"
    with pytest.raises(ValidationError):
        config.engine.concurrency = 5  # type: ignore[misc]
    assert GatewayConfig(poll_window=0.01).poll_window == 0.01
    assert AccountConfig(name="x", base_url="http://127.0.0.1:1", demo=True).credentials().access_key


def test_policy_amounts_are_decimals(tmp_path: Path) -> None:
    path = _file(
        tmp_path, '[policy.usdt]\nmax_per_day = "200000.5"\n[accounts.default.policy.BTC]\nmax_per_withdrawal = "1"\n'
    )
    policy = load_config(path, environ={}).policy
    assert policy.for_currency("USDT").max_per_day == Decimal("200000.5")
    assert policy.accounts["default"]["BTC"].max_per_withdrawal == Decimal("1")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[engine]\nlease_seconds = 0.5\n", "engine.lease_seconds"),
        ("[workflow]\nwallet_recheck_initial = 200.0\n", "workflow.wallet_recheck_max"),
        ("[workflow]\nrecent_pages = 2.5\n", "workflow.recent_pages"),
        ("[workflow]\nhold_on_block_delayed = 3\n", "workflow.hold_on_block_delayed"),
        ("[accounts]\ndefault = 3\n", "accounts.default"),
        ("[policy.BTC]\npinned_addresses = 'bc1q'\n", "policy.BTC.pinned_addresses"),
        ("[api]\ntoken = 'x'\n", "api.token"),
        ("engine = 3\n", "engine"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(_file(tmp_path, text), environ={})
    assert error.value.key == key, str(error.value)


def test_secret_file_missing_access_key(tmp_path: Path) -> None:
    """Was a KeyError (exit 70)."""
    secret = tmp_path / "keys"
    secret.write_text("secret_key=s\n")
    secret.chmod(0o600)
    account = AccountConfig(name="desk", secret_file=str(secret))
    with pytest.raises(ConfigError) as error:
        account.credentials(environ={})
    assert error.value.key == "accounts.desk.secret_file" and "access_key=" in str(error.value)


def test_unknown_key_lists_the_known_ones(tmp_path: Path) -> None:
    """A typo's message says what the table accepts."""
    with pytest.raises(ConfigError) as error:
        load_config(_file(tmp_path, "[accounts.desk]\nrate_limt = 5\n"), environ={})
    assert error.value.key == "accounts.desk.rate_limt" and "rate_limit" in str(error.value)
