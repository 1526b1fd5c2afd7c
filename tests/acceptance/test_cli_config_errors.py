"""Configuration and connection errors: exit 2 (naming the key) or 5, one line on stderr, no secret."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.acceptance.conftest import TOKEN_ENV, Result, clean_env, free_port, run_cli

SECRET = "very-secret-value-0123456789abcdef"


def one_line(result: Result) -> str:
    """The single error line."""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("upbit-withdraw: error:"), result.err
    return lines[0]


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[engine]\ncolour = 'blue'\n", "engine.colour"),
        ("[engine]\nconcurrency = 'many'\n", "engine.concurrency"),
        ("[engine]\nlog_format = 'xml'\n", "engine.log_format"),
        ("[workflow]\npoll_initial = -1.0\n", "workflow.poll_initial"),
        ("[accounts.default]\nregion = 'mars'\n", "accounts.default.region"),
        ("[policy.BTC]\nmax_per_day = 1.5\n", "policy.BTC.max_per_day"),
        ("[api]\nport = 70000\n", "api.port"),
        ("[exchange]\nx = 1\n", "exchange"),
        ("[engine\n", "config"),
    ],
)
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    """A wrong key or value stops the command at start; the message names the key."""
    result = run_cli(["--config", str(config(tmp_path, text)), "status", "wd_0000"])
    assert result.code == 2
    assert key in one_line(result)


@pytest.mark.parametrize(
    ("text", "key", "rule"),
    [
        ("[engine]\nlease_seconds = 0\n", "engine.lease_seconds", "greater than or equal to 1"),
        ("[engine]\nlease_seconds = nan\n", "engine.lease_seconds", "finite number"),
        ("[engine]\nlease_seconds = inf\n", "engine.lease_seconds", "finite number"),
        ("[api]\nmax_body_bytes = -1\n", "api.max_body_bytes", "greater than or equal to 1024"),
        ("[engine]\nconcurrency = 1.9\n", "engine.concurrency", "fractional part"),
        ("[engine]\nconcurrency = true\n", "engine.concurrency", "got a boolean"),
        ("[gateway]\npoll_window = -0.05\n", "gateway.poll_window", "greater than or equal to 0"),
        ("[workflow]\npoll_initial = inf\n", "workflow.poll_initial", "finite number"),
        ("[workflow]\npoll_initial = 10.0\npoll_max = 5.0\n", "workflow.poll_max", "at least poll_initial"),
        ("[workflow]\nreconcile_grace = -nan\n", "workflow.reconcile_grace", "finite number"),
        ("[engine]\nworkers = 2\n", "engine.workers", "PostgreSQL"),
        ("[engine]\ndry_run = 'maybe'\n", "engine.dry_run", "boolean"),
        ("[accounts.desk]\nrate_limit = 0\n", "accounts.desk.rate_limit", "greater than or equal to 1"),
        ("[accounts.desk]\ntimeout = 0\n", "accounts.desk.timeout", "greater than 0"),
        ("[accounts.desk]\nalgorithm = 'none'\n", "accounts.desk.algorithm", "HS512"),
        ("[policy.BTC]\nmax_per_day = '-1'\n", "policy.BTC.max_per_day", "positive amount"),
        ("[accounts.desk.policy.BTC]\nmax_per_day = 'NaN'\n", "accounts.desk.policy.BTC.max_per_day", "positive"),
        ("[api]\nheader_timeout = 0\n", "api.header_timeout", "greater than 0"),
        ("[api]\nmax_connections_per_client = 0\n", "api.max_connections_per_client", "greater than or equal to 1"),
        ("[api]\nmetrics_port = 0\n", "api.metrics_port", "greater than or equal to 1"),
    ],
)
def test_bad_value_exits_2_naming_the_key_and_the_rule(tmp_path: Path, text: str, key: str, rule: str) -> None:
    """Values that used to start a broken service (a 0 lease, nan, a negative body limit, 1.9 taken as 1,
    inf polls, poll_max below poll_initial) stop the command with exit 2 naming the key and the rule."""
    result = run_cli(["--config", str(config(tmp_path, text)), "status", "wd_0000"])
    line = one_line(result)
    assert result.code == 2 and f"{key}:" in line and rule in line, line


@pytest.mark.parametrize(
    ("var", "value", "key", "rule"),
    [
        ("UPBIT_WITHDRAW_ENGINE_LEASE_SECONDS", "nan", "engine.lease_seconds", "finite number"),
        ("UPBIT_WITHDRAW_ENGINE_CONCURRENCY", "1.9", "engine.concurrency", "integer"),
        ("UPBIT_WITHDRAW_WORKFLOW_POLL_MAX", "0.2", "workflow.poll_max", "at least poll_initial"),
        ("UPBIT_WITHDRAW_API_MAX_BODY_BYTES", "-1", "api.max_body_bytes", "greater than or equal to 1024"),
        ("UPBIT_WITHDRAW_GATEWAY_COLOUR", "blue", "gateway.colour", "unknown key"),
    ],
)
def test_bad_environment_value_exits_2_naming_the_key_and_the_rule(
    tmp_path: Path, var: str, value: str, key: str, rule: str
) -> None:
    """The environment layer is checked by the same rules."""
    result = run_cli(["status", "wd_0000"], env=clean_env(**{var: value}), cwd=tmp_path)
    line = one_line(result)
    assert result.code == 2 and f"{key}:" in line and rule in line, line


@pytest.mark.parametrize("content", ["secret_key=abc\n", "access_key=\nsecret_key=abc\n", "just-one-line\n", ""])
def test_secret_file_without_both_keys_exits_2(tmp_path: Path, content: str) -> None:
    """A key file without access_key= (or secret_key=) names the key and what the file must hold (it was
    exit 70, "internal error (KeyError)"); its content is not printed."""
    secret = tmp_path / "keys"
    secret.write_text(content.replace("abc", SECRET))
    secret.chmod(0o600)
    path = config(tmp_path, f"[accounts.default]\nbase_url = 'http://127.0.0.1:1'\nsecret_file = '{secret}'\n")
    result = run_cli(["--config", str(path), "addresses"])
    line = one_line(result)
    assert result.code == 2 and "accounts.default.secret_file" in line and "access_key=" in line, line
    assert SECRET not in result.err + result.out


def test_token_file_without_a_token_exits_2(tmp_path: Path) -> None:
    """A token file of KEY=value lines (no bare token) is a configuration error, not exit 70."""
    token = tmp_path / "token"
    token.write_text(f"token_value={SECRET}\n")
    token.chmod(0o600)
    path = config(tmp_path, f"[engine]\ndatabase = 'sqlite:///{tmp_path}/w.sqlite3'\n[api]\ntoken_file = '{token}'\n")
    result = run_cli(["--config", str(path), "run", "--port", str(free_port())], timeout=30)
    assert result.code == 2 and "api.token_file" in one_line(result)
    assert SECRET not in result.err + result.out


def test_bad_environment_value_names_the_key(tmp_path: Path) -> None:
    """Environment overrides are validated like the file."""
    result = run_cli(["list"], env=clean_env(UPBIT_WITHDRAW_ENGINE_CONCURRENCY="lots"), cwd=tmp_path)
    assert result.code == 2 and "engine.concurrency" in one_line(result)


def test_missing_config_file(tmp_path: Path) -> None:
    """A config file that is not there is a usage error."""
    result = run_cli(["--config", str(tmp_path / "nope.toml"), "list"])
    assert result.code == 2 and "nope.toml" in one_line(result)


def test_bad_database_override(tmp_path: Path) -> None:
    """--database is checked like engine.database."""
    result = run_cli(["--database", "mysql://db/x", "list"], cwd=tmp_path)
    assert result.code == 2 and "engine.database" in one_line(result)


def test_group_readable_secret_file_is_refused(tmp_path: Path) -> None:
    """A key file others can read is refused (chmod 600), without printing its content."""
    secret = tmp_path / "keys"
    secret.write_text(f"access_key=abc\nsecret_key={SECRET}\n")
    secret.chmod(0o640)
    path = config(tmp_path, f"[accounts.default]\nbase_url = 'http://127.0.0.1:1'\nsecret_file = '{secret}'\n")
    result = run_cli(["--config", str(path), "addresses"])
    line = one_line(result)
    assert result.code == 2 and "accounts.default.secret_file" in line and "chmod 600" in line
    assert SECRET not in result.err + result.out


def test_group_readable_token_file_is_refused(tmp_path: Path) -> None:
    """The service will not start with a token file others can read."""
    token = tmp_path / "token"
    token.write_text(SECRET)
    token.chmod(0o644)
    path = config(tmp_path, f"[engine]\ndatabase = 'sqlite:///{tmp_path}/w.sqlite3'\n[api]\ntoken_file = '{token}'\n")
    result = run_cli(["--config", str(path), "run", "--port", str(free_port())], timeout=30)
    assert result.code == 2 and "api.token_file" in one_line(result)
    assert SECRET not in result.err + result.out


def test_run_without_token_exits_2(tmp_path: Path) -> None:
    """run refuses to start without an API token when the store has no operator either (nobody could call
    the API), saying both ways out."""
    path = config(tmp_path, f"[engine]\ndatabase = 'sqlite:///{tmp_path}/w.sqlite3'\n")
    keys = clean_env(UPBIT_ACCESS_KEY="access-0123456789", UPBIT_SECRET_KEY="secret-0123456789abcdef")
    result = run_cli(["--config", str(path), "run", "--port", str(free_port())], env=keys, timeout=30)
    line = result.err.strip().splitlines()[-1]  # the store is opened to look for operators: its log lines come first
    assert result.code == 2 and "api.token" in line and "operator add" in line, result.err


def test_run_without_exchange_keys_exits_2(tmp_path: Path) -> None:
    """run refuses to start when an account has no keys, naming the account and the variables."""
    path = config(tmp_path, f"[engine]\ndatabase = 'sqlite:///{tmp_path}/w.sqlite3'\n")
    env = clean_env(**{TOKEN_ENV: "token-0123456789abcdef"})
    result = run_cli(["--config", str(path), "run", "--port", str(free_port())], env=env, timeout=30)
    line = one_line(result)
    assert result.code == 2 and "accounts.default" in line and "UPBIT_ACCESS_KEY" in line


def test_demo_keys_are_refused_for_real_hosts(tmp_path: Path) -> None:
    """The sandbox's published keys are never sent to a real Upbit host."""
    path = config(tmp_path, "[accounts.default]\nregion = 'kr'\ndemo = true\n")
    result = run_cli(["--config", str(path), "addresses"])
    assert result.code == 2 and "demo keys" in one_line(result)


def test_store_commands_need_no_exchange_keys(tmp_path: Path) -> None:
    """status/list read the store only: no exchange key needs to be present."""
    assert run_cli(["--database", f"sqlite:///{tmp_path}/w.sqlite3", "migrate"]).code == 0  # the store must exist
    result = run_cli(["--database", f"sqlite:///{tmp_path}/w.sqlite3", "--json", "list"])
    assert result.code == 0 and result.json() == {"withdrawals": [], "next_cursor": None, "total": 0}


def test_api_without_token_exits_2() -> None:
    """--api needs UPBIT_WITHDRAW_API_TOKEN."""
    result = run_cli(["--api", "http://127.0.0.1:1", "list"])
    assert result.code == 2 and TOKEN_ENV in one_line(result)


def test_unreachable_service_exits_5() -> None:
    """A service that does not answer is exit 5."""
    result = run_cli(["--api", f"http://127.0.0.1:{free_port()}", "list"], env=clean_env(**{TOKEN_ENV: SECRET}))
    assert result.code == 5 and "cannot reach" in one_line(result)
    assert SECRET not in result.err


def test_unreachable_exchange_exits_5(tmp_path: Path) -> None:
    """An exchange that does not answer is exit 5."""
    path = config(
        tmp_path, f"[accounts.default]\nbase_url = 'http://127.0.0.1:{free_port()}'\ndemo = true\ntimeout = 2.0\n"
    )
    result = run_cli(["--config", str(path), "wallet-status"])
    assert result.code == 5 and "exchange error" in one_line(result)


def test_wait_timeout_exits_6(tmp_path: Path) -> None:
    """With no runner on the store, submit --wait gives up after --timeout with exit 6; the workflow stays."""
    database = ["--database", f"sqlite:///{tmp_path}/w.sqlite3"]
    submit = ["submit", "--currency", "BTC", "--net-type", "BTC", "--amount", "0.01", "--address", "bc1qx", "--wait"]
    assert run_cli([*database, "migrate"]).code == 0  # the store must exist
    result = run_cli([*database, *submit, "--timeout", "1"])
    assert result.code == 6 and "still not finished after 1 s" in result.err
    listed = run_cli([*database, "--json", "list"]).json()["withdrawals"]
    assert [v["state"] for v in listed] == ["pending"]


def test_port_in_use_exits_2_naming_api_port(tmp_path: Path) -> None:
    """run on a port that is taken fails at start, naming api.port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        account = "[accounts.default]\nbase_url = 'http://127.0.0.1:1'\ndemo = true\n"
        path = config(tmp_path, f"[engine]\ndatabase = 'sqlite:///{tmp_path}/w.sqlite3'\n{account}")
        env = clean_env(**{TOKEN_ENV: "token-0123456789abcdef"})
        result = run_cli(["--config", str(path), "run", "--port", str(port)], env=env, timeout=30)
    last = result.err.strip().splitlines()[-1]  # the service logged its runner's start and stop before
    assert result.code == 2 and last.startswith("upbit-withdraw: error:") and "api.port" in last
