"""config.example.toml documents every key of engine/config.py, with the real defaults."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from engine.config import AccountConfig, ApiConfig, EngineConfig, GatewayConfig, load_config
from engine.policy import AutoResolve, CurrencyPolicy, WorkflowSettings

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
SECTIONS: dict[str, Any] = {
    "engine": EngineConfig,
    "gateway": GatewayConfig,
    "workflow": WorkflowSettings,
    "accounts.default": AccountConfig,
    "policy.USDT": CurrencyPolicy,
    "accounts.default.policy.auto_resolve": AutoResolve,
    "api": ApiConfig,
}


def _keys_by_section() -> dict[str, set[str]]:
    """Keys per [section], including commented-out ones (``# key = value``)."""
    found: dict[str, set[str]] = {}
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        header = re.fullmatch(r"\[([\w.]+)\]", line.strip())
        if header:
            section = header.group(1)
            continue
        key = re.match(r"#?\s*(\w+)\s*=", line.strip())
        if key and section:
            found.setdefault(section, set()).add(key.group(1))
    return found


def test_example_loads() -> None:
    """The example is a valid configuration."""
    config = load_config(EXAMPLE, environ={})
    assert set(config.accounts) == {"default"}
    assert config.policy.for_currency("USDT").max_per_day is not None


def test_every_field_is_documented_in_its_section() -> None:
    """Each dataclass field appears as a key (possibly commented out) in its section."""
    found = _keys_by_section()
    for section, cls in SECTIONS.items():
        fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
        missing = fields - found.get(section, set())
        assert not missing, f"[{section}] does not document {sorted(missing)}"
        unknown = found[section] - fields
        assert not unknown, f"[{section}] documents unknown keys {sorted(unknown)}"


def test_documented_values_are_the_defaults() -> None:
    """Live values equal the defaults; only keys without a TOML-expressible default are commented out."""
    data = tomllib.loads(EXAMPLE.read_text())
    tables = {"engine": data["engine"], "gateway": data["gateway"], "workflow": data["workflow"],
              "accounts.default": data["accounts"]["default"], "api": data["api"]}  # fmt: skip
    tables["accounts.default.policy.auto_resolve"] = data["accounts"]["default"]["policy"]["auto_resolve"]
    found = _keys_by_section()
    for section, table in tables.items():
        cls = SECTIONS[section]
        for field in dataclasses.fields(cls):
            if field.name == "name":
                continue
            if field.name in table:
                assert table[field.name] == field.default, f"{section}.{field.name}"
            else:
                assert field.default is None and field.name in found[section], f"{section}.{field.name}"


def test_every_key_has_a_comment() -> None:
    """Each key line is preceded by a comment line explaining it (directly or for its group)."""
    lines = EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\w+\s*=", line):
            before = lines[i - 1].strip()
            assert before.startswith("#") or re.match(r"\w+\s*=", before), f"line {i + 1}: {line}"
