"""``upbit-withdraw operator ...`` as an administrator meets it (subprocesses on a real SQLite store): tokens
shown once and stored only hashed, roles, passwords from stdin, clear errors; the store path's cancel
attributed with ``--operator``/``--note``; and ``run`` without the shared token, serving operators only."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli as cli_group
from tests.acceptance.conftest import (
    BTC_ADDRESS,
    CLI,
    TOKEN,
    TOKEN_ENV,
    Result,
    Service,
    ThreadSandbox,
    clean_env,
    fast_seed,
    free_port,
    http_json,
    run_cli,
    write_config,
)

PASSWORD = "a long enough passphrase"


@pytest.fixture
def database(tmp_path: Path) -> Iterator[list[str]]:
    """A migrated store: the ``--database`` arguments naming it."""
    args = ["--database", f"sqlite:///{tmp_path}/w.sqlite3"]
    assert run_cli([*args, "migrate"]).code == 0
    yield args


def cli(database: list[str], *args: str, stdin: str | None = None) -> Result:
    if stdin is None:
        return run_cli([*database, *args])
    proc = subprocess.run(
        [*CLI, *database, *args], input=stdin, capture_output=True, text=True, env=clean_env(), timeout=60, check=False
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return Result(proc.returncode, proc.stdout, proc.stderr)


def token_of(result: Result) -> str:
    lines = [line for line in result.out.splitlines() if line.startswith("uwo_")]
    assert len(lines) == 1, result.out
    return lines[0]


def store_bytes(database: list[str]) -> bytes:
    path = Path(database[1].removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


class TestOperatorCommands:
    def test_add_prints_the_token_once_and_stores_only_its_hash(self, database: list[str]) -> None:
        """add prints the token with a warning on stderr; list never shows it; the store has no copy."""
        added = cli(database, "operator", "add", "alice", "--role", "submitter")
        assert added.code == 0, added.err
        token = token_of(added)
        assert "shown once" in added.err and token not in added.err
        listed = cli(database, "--json", "operator", "list")
        assert listed.json() == [
            {"name": "alice", "role": "submitter", "created_at": listed.json()[0]["created_at"], "password": False}
        ]
        table = cli(database, "operator", "list")
        assert "alice" in table.out and "submitter" in table.out and token not in table.out
        assert token.encode() not in store_bytes(database)
        as_json = cli(database, "--json", "operator", "add", "bob", "--role", "viewer").json()
        assert as_json["name"] == "bob" and as_json["role"] == "viewer" and as_json["token"].startswith("uwo_")

    def test_clear_errors(self, database: list[str]) -> None:
        """A name taken, a bad name, a bad role: exit 2 naming the problem; an unknown operator: exit 3."""
        assert cli(database, "operator", "add", "carol", "--role", "admin").code == 0
        taken = cli(database, "operator", "add", "carol", "--role", "viewer")
        assert taken.code == 2 and "already exists" in taken.err
        bad_name = cli(database, "operator", "add", "Carol Smith", "--role", "viewer")
        assert bad_name.code == 2 and "operator name" in bad_name.err
        bad_role = cli(database, "operator", "add", "dave", "--role", "root")
        assert bad_role.code == 2 and "viewer" in bad_role.err
        for args in (["role", "ghost", "admin"], ["token", "ghost"], ["remove", "ghost"]):
            missing = cli(database, "operator", *args)
            assert missing.code == 3 and "no operator named 'ghost'" in missing.err, args
        over_api = cli(database, "--api", "http://127.0.0.1:1", "operator", "list")
        assert over_api.code == 2 and "drop --api" in over_api.err

    def test_role_passwd_token_remove(self, database: list[str]) -> None:
        """role changes it; passwd refuses short passwords and stores a scrypt hash; token rotates; remove."""
        first = token_of(cli(database, "operator", "add", "erin", "--role", "viewer"))
        assert cli(database, "operator", "role", "erin", "approver").code == 0
        assert cli(database, "--json", "operator", "list").json()[0]["role"] == "approver"
        short = cli(database, "operator", "passwd", "erin", "--password-stdin", stdin="short\n")
        assert short.code == 2 and "at least 12" in short.err
        ok = cli(database, "operator", "passwd", "erin", "--password-stdin", stdin=PASSWORD + "\n")
        assert ok.code == 0, ok.err
        assert cli(database, "--json", "operator", "list").json()[0]["password"] is True
        assert PASSWORD.encode() not in store_bytes(database)
        rotated = cli(database, "operator", "token", "erin")
        assert rotated.code == 0 and "shown once" in rotated.err
        assert token_of(rotated) != first
        assert cli(database, "operator", "remove", "erin").code == 0
        assert cli(database, "--json", "operator", "list").json() == []

    def test_help_explains_roles(self) -> None:
        """The group's help lists the roles and what they may do; every command has help."""
        result = run_cli(["operator", "--help"])
        assert result.code == 0
        for word in ("viewer", "submitter", "approver", "admin", "add", "list", "passwd", "token", "remove"):
            assert word in result.out
        assert "--password-stdin" in run_cli(["operator", "passwd", "--help"]).out


class TestStorePathAttribution:
    def test_cancel_with_operator_and_note(self, database: list[str]) -> None:
        """The store path's cancel is attributed to a known operator whose role may cancel; an unknown
        one (3), a viewer (2) or --operator over --api (2) are refused before anything is flagged."""
        cli(database, "operator", "add", "sam", "--role", "submitter")
        cli(database, "operator", "add", "val", "--role", "viewer")
        submitted = cli(
            database, "--json", "submit", "--currency", "BTC", "--net-type", "BTC", "--amount", "0.01",
            "--address", BTC_ADDRESS,
        )  # fmt: skip
        assert submitted.code == 0, submitted.err
        workflow_id = submitted.json()["id"]
        unknown = cli(database, "cancel", workflow_id, "--operator", "nobody")
        assert unknown.code == 3 and "no operator named 'nobody'" in unknown.err
        viewer = cli(database, "cancel", workflow_id, "--operator", "val")
        assert viewer.code == 8 and "forbidden" in viewer.err and "viewer" in viewer.err  # exit 8: forbidden
        env = clean_env(**{TOKEN_ENV: TOKEN})
        api = run_cli([*database, "--api", "http://127.0.0.1:1", "cancel", workflow_id, "--operator", "sam"], env=env)
        assert api.code == 2 and "--operator is for the store path" in api.err
        path = database[1].removeprefix("sqlite:///")
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT cancel_requested_at FROM workflows").fetchone() == (None,)
        done = cli(database, "cancel", workflow_id, "--operator", "sam", "--note", "wrong amount")
        assert done.code == 0, done.err
        with sqlite3.connect(path) as db:
            row = db.execute("SELECT cancel_by, cancel_note FROM workflows WHERE id = ?", (workflow_id,)).fetchone()
        assert row == ("sam", "wrong amount")

    def test_resolve_needs_a_note(self, database: list[str]) -> None:
        """Every decision says why: resolve without --note is a usage error."""
        result = cli(database, "resolve", "wd_0123", "--action", "abandon")
        assert result.code == 2 and "--note" in result.err


class TestServiceWithoutTheSharedToken:
    def test_run_serves_operators_only(self, tmp_path: Path) -> None:
        """Without [api] token and without operators, run refuses (exit 2, saying how); with one operator
        it starts, the operator's token works, the old token does not, and the log has no token."""
        with ThreadSandbox(fast_seed()) as sandbox:
            port = free_port()
            config = write_config(tmp_path, sandbox.url, port=port)
            args = ["--config", str(config)]
            assert run_cli([*args, "migrate"]).code == 0
            refused = run_cli([*args, "run", "--port", str(free_port())], env=clean_env(), timeout=30)
            assert refused.code == 2 and "operator add" in refused.err and "api.token" in refused.err
            token = token_of(run_cli([*args, "operator", "add", "ops", "--role", "viewer"]))
            service = Service(config, port, log=tmp_path / "run.log", env={TOKEN_ENV: ""})
            try:
                assert http_json("GET", f"{service.url}/v1/withdrawals", token=token)[0] == 200
                assert http_json("GET", f"{service.url}/v1/withdrawals", token=TOKEN)[0] == 401
                status, body = http_json("POST", f"{service.url}/v1/withdrawals", body={}, token=token)
                assert status == 403 and body["error"]["name"] == "forbidden"
            finally:
                assert service.stop() == 0
            logs = service.logs()
            assert token not in logs and "shared_token_deprecated" not in logs


def test_passwd_prompts_twice_without_echo(database: list[str]) -> None:
    """Without --password-stdin the password is asked twice (hidden) and never printed back."""
    assert cli(database, "operator", "add", "pat", "--role", "viewer").code == 0
    result = CliRunner().invoke(cli_group, [*database, "operator", "passwd", "pat"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert "password for pat" in result.output and "Repeat for confirmation" in result.output
    assert PASSWORD not in result.output and "password set for pat" in result.output
    assert cli(database, "--json", "operator", "list").json()[0]["password"] is True
