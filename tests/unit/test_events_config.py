"""``[api] events_keepalive``: the keep-alive period of GET /v1/events, read and checked like every key."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_config
from engine.errors import ConfigError


def test_default_and_file_value(tmp_path: Path) -> None:
    assert load_config(environ={}).api.events_keepalive == 15.0
    path = tmp_path / "config.toml"
    path.write_text("[api]\nevents_keepalive = 2.5\n")
    assert load_config(path, environ={}).api.events_keepalive == 2.5
    assert load_config(environ={"UPBIT_WITHDRAW_API_EVENTS_KEEPALIVE": "4"}).api.events_keepalive == 4.0


@pytest.mark.parametrize("value", ["0", "-1", "nan", "3601", '"often"'])
def test_refused_values_name_the_key(tmp_path: Path, value: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"[api]\nevents_keepalive = {value}\n")
    with pytest.raises(ConfigError, match=r"api\.events_keepalive"):
        load_config(path, environ={})
