"""``[accounts.NAME.policy.auto_resolve]``: read into ``Policy.auto_resolve``; bad values name their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_config
from engine.errors import ConfigError
from engine.policy import AutoResolve


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text("[accounts.hot]\ndemo = true\nbase_url = 'http://127.0.0.1:1'\n" + body)
    return path


def test_off_unless_configured(tmp_path: Path) -> None:
    policy = load_config(write(tmp_path, ""), environ={}).policy
    assert policy.auto_resolve_for("hot") == AutoResolve() and not AutoResolve().enabled


def test_read_per_account_next_to_currency_limits(tmp_path: Path) -> None:
    body = (
        "[accounts.hot.policy.auto_resolve]\nenabled = true\nlistings = 4\nminutes = 2\n"
        "[accounts.hot.policy.USDT]\nmax_per_withdrawal = '5'\n"
    )
    policy = load_config(write(tmp_path, body), environ={}).policy
    assert policy.auto_resolve_for("hot") == AutoResolve(enabled=True, listings=4, minutes=2.0)
    assert policy.auto_resolve_for("other") == AutoResolve()
    assert str(policy.for_currency("USDT", "hot").max_per_withdrawal) == "5"


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("enabled = 'yes'", "enabled"),
        ("listings = 0", "listings"),
        ("listings = 1", "listings"),
        ("listings = 2.5", "listings"),
        ("minutes = 0", "minutes"),
        ("minutes = inf", "minutes"),
        ("minutes = nan", "minutes"),
        ("after = 3", "after"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, line: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, f"[accounts.hot.policy.auto_resolve]\n{line}\n"), environ={})
    assert caught.value.key == f"accounts.hot.policy.auto_resolve.{key}"
