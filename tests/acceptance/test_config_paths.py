"""Relative paths in a config file are relative to that file, wherever the command runs from.

A relative SQLite path used to follow the current directory: ``submit`` from another directory wrote to a
new, empty store that no runner watched. Now paths written in the file (and the default store, when a file
is used) resolve against the file's directory; paths from the environment or a flag against the current
directory; absolute paths stay as they are.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.config import DEFAULT_DATABASE, load_config
from engine.store.sqlite import SQLiteStore
from tests.acceptance.conftest import run_cli

Dirs = tuple[Path, Path, Path]
SUBMIT = ["submit", "--currency", "BTC", "--net-type", "BTC", "--amount", "0.01", "--address", "bc1qx"]


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The config's directory, and two other working directories."""
    made = tuple(tmp_path / name for name in ("etc", "here", "there"))
    for path in made:
        path.mkdir()
    return made  # type: ignore[return-value]


def _create_store(path: Path) -> None:
    async def create() -> None:
        store = SQLiteStore(str(path))
        await store.open()
        await store.close()

    asyncio.run(create())


def test_cli_from_other_directories_uses_the_store_next_to_the_config(dirs: Dirs) -> None:
    """submit from one directory and list from another reach the same store, the one beside the config."""
    etc, here, there = dirs
    config = etc / "config.toml"
    config.write_text("[engine]\ndatabase = 'sqlite:///w.sqlite3'\n")
    _create_store(etc / "w.sqlite3")
    submitted = run_cli(["--config", str(config), "--json", *SUBMIT], cwd=here)
    assert submitted.code == 0, submitted.err
    listed = run_cli(["--config", str(config), "--json", "list"], cwd=there)
    assert listed.code == 0 and [w["id"] for w in listed.json()["withdrawals"]] == [submitted.json()["id"]]
    assert not (here / "w.sqlite3").exists() and not (there / "w.sqlite3").exists()


def test_relative_config_path_too(dirs: Dirs) -> None:
    """--config itself given relative to the working directory: its directory is still the base."""
    etc, here, _ = dirs
    (etc / "config.toml").write_text("[engine]\ndatabase = 'sqlite:///sub/w.sqlite3'\n")
    (etc / "sub").mkdir()
    _create_store(etc / "sub" / "w.sqlite3")
    submitted = run_cli(["--config", "../etc/config.toml", "--json", *SUBMIT], cwd=here)
    assert submitted.code == 0, submitted.err
    listed = run_cli(["--config", str(etc / "config.toml"), "--json", "list"])
    assert [w["id"] for w in listed.json()["withdrawals"]] == [submitted.json()["id"]]
    assert not (here / "sub").exists()


class TestLoadConfig:
    def test_file_paths_resolve_against_the_file(self, dirs: Dirs, monkeypatch: pytest.MonkeyPatch) -> None:
        """The store, a secret file and a token file written relative in the file are under its directory."""
        etc, here, _ = dirs
        (etc / "config.toml").write_text(
            "[engine]\ndatabase = 'sqlite:///data/w.sqlite3'\n[api]\ntoken_file = 'api.token'\n"
            "[accounts.desk]\nsecret_file = 'keys/desk.keys'\n"
        )
        monkeypatch.chdir(here)
        config = load_config(Path("../etc/config.toml"), environ={})
        assert config.engine.database == f"sqlite:///{etc}/data/w.sqlite3"
        assert config.api.token_file == str(etc / "api.token")
        assert config.accounts["desk"].secret_file == str(etc / "keys" / "desk.keys")

    def test_default_store_is_beside_the_file(self, dirs: Dirs, monkeypatch: pytest.MonkeyPatch) -> None:
        """A config file that does not name a store gets the default one in its own directory."""
        etc, here, _ = dirs
        (etc / "config.toml").write_text("[engine]\nconcurrency = 10\n")
        monkeypatch.chdir(here)
        database = load_config(etc / "config.toml", environ={}).engine.database
        assert database == f"sqlite:///{etc}/{DEFAULT_DATABASE.removeprefix('sqlite:///')}"

    def test_absolute_paths_are_unchanged(self, dirs: Dirs, monkeypatch: pytest.MonkeyPatch) -> None:
        etc, here, there = dirs
        (etc / "config.toml").write_text(
            f"[engine]\ndatabase = 'sqlite:///{there}/w.sqlite3'\n[accounts.default]\nsecret_file = '{there}/k'\n"
        )
        monkeypatch.chdir(here)
        config = load_config(etc / "config.toml", environ={})
        assert config.engine.database == f"sqlite:///{there}/w.sqlite3"
        assert config.accounts["default"].secret_file == f"{there}/k"

    def test_without_a_file_the_current_directory(self, dirs: Dirs, monkeypatch: pytest.MonkeyPatch) -> None:
        _, here, _ = dirs
        monkeypatch.chdir(here)
        assert load_config(environ={}).engine.database == f"sqlite:///{here}/upbit-withdraw.sqlite3"

    def test_environment_and_flags_are_relative_to_the_current_directory(
        self, dirs: Dirs, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """What the user types (a flag) or the service manager sets (the environment) follows the working
        directory, as any command-line path does."""
        etc, here, _ = dirs
        (etc / "config.toml").write_text("[engine]\ndatabase = 'sqlite:///w.sqlite3'\n")
        monkeypatch.chdir(here)
        from_env = load_config(etc / "config.toml", environ={"UPBIT_WITHDRAW_ENGINE_DATABASE": "sqlite:///e.sqlite3"})
        assert from_env.engine.database == f"sqlite:///{here}/e.sqlite3"
        from_flag = load_config(etc / "config.toml", overrides={"engine.database": "sqlite:///f.sqlite3"}, environ={})
        assert from_flag.engine.database == f"sqlite:///{here}/f.sqlite3"

    def test_postgres_urls_are_untouched(self, dirs: Dirs) -> None:
        etc, _, _ = dirs
        (etc / "config.toml").write_text("[engine]\ndatabase = 'postgresql://u@db/x'\n")
        assert load_config(etc / "config.toml", environ={}).engine.database == "postgresql://u@db/x"
