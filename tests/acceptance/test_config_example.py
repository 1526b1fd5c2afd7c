"""config.example.toml against the configuration model: it validates against the model's JSON schema, and it
documents every key of every section with its real default."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from engine.config import ConfigFile, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
SCHEMA = ConfigFile.model_json_schema()
#: Documented [section] of the example -> where its keys live in the schema.
SECTIONS = {
    "engine": SCHEMA["properties"]["engine"],
    "gateway": SCHEMA["properties"]["gateway"],
    "workflow": SCHEMA["properties"]["workflow"],
    "accounts.default": SCHEMA["properties"]["accounts"]["additionalProperties"],
    "policy": SCHEMA["properties"]["policy"],
    "policy.USDT": SCHEMA["$defs"]["_PolicyTable"]["additionalProperties"],
    "batches": SCHEMA["properties"]["batches"],
    "accounts.default.policy.auto_resolve": {"$ref": "#/$defs/_AutoResolveRules"},
    "api": SCHEMA["properties"]["api"],
    "console": SCHEMA["properties"]["console"],
    "webhook_delivery": SCHEMA["properties"]["webhook_delivery"],
    "webhooks": SCHEMA["properties"]["webhooks"]["items"],  # [[webhooks]], an array of tables
}
#: Keys that are sub-tables, documented by their own [section] headers.
TABLES = {"accounts.default": {"policy"}}


def _keys(ref: dict[str, Any]) -> dict[str, Any]:
    """A section's properties (key -> schema, with its default), following its $ref."""
    name = ref["$ref"].rpartition("/")[2]
    return dict(SCHEMA["$defs"][name]["properties"])


def _keys_by_section() -> dict[str, set[str]]:
    """Keys per [section], including commented-out ones (``# key = value``)."""
    found: dict[str, set[str]] = {}
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        header = re.fullmatch(r"#?\s*\[\[?([\w.]+)\]\]?", line.strip())
        if header:  # commented-out headers too: their keys are theirs, not the section above's
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


def test_example_validates_against_the_json_schema() -> None:
    """The model's JSON schema (what an editor or CI can check a config file with) accepts the example,
    and refuses what the loader refuses."""
    data = tomllib.loads(EXAMPLE.read_text())
    jsonschema_rs.validate(SCHEMA, data)
    validator = jsonschema_rs.validator_for(SCHEMA)
    refused = [
        {"engine": {"concurrency": 0}},
        {"engine": {"colour": "blue"}},
        {"exchange": {}},
        {"api": {"port": 70000}},
        {"workflow": {"poll_initial": -1.0}},
        {"engine": {"log_format": "xml"}},
    ]
    for bad in refused:
        assert not validator.is_valid(bad), bad


def test_every_section_of_the_model_is_documented() -> None:
    """Each top-level section of the model has a [section] in the example."""
    documented = {section.partition(".")[0] for section in _keys_by_section()}
    assert documented == set(SCHEMA["properties"])


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_key_is_documented_in_its_section(section: str) -> None:
    """Each key of the model appears (possibly commented out) in its section, and nothing else does."""
    keys = set(_keys(SECTIONS[section])) - TABLES.get(section, set())
    found = _keys_by_section().get(section, set())
    assert not keys - found, f"[{section}] does not document {sorted(keys - found)}"
    assert not found - keys, f"[{section}] documents unknown keys {sorted(found - keys)}"


@pytest.mark.parametrize("section", sorted(set(SECTIONS) - {"policy.USDT", "webhooks"}))
def test_documented_values_are_the_defaults(section: str) -> None:
    """Live values equal the model's defaults; a key is commented out only when its default is unset."""
    data = tomllib.loads(EXAMPLE.read_text())
    table: Any = data
    for part in section.split("."):
        table = table[part]
    found = _keys_by_section()[section]
    for key, schema in _keys(SECTIONS[section]).items():
        if key in TABLES.get(section, set()):
            continue
        if key in table:
            assert table[key] == schema["default"], f"{section}.{key}"
        else:
            assert schema.get("default") is None and key in found, f"{section}.{key}"  # a dict factory: none


def test_every_key_has_a_comment() -> None:
    """Each key line is preceded by a comment line explaining it (directly or for its group)."""
    lines = EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\w+\s*=", line):
            before = lines[i - 1].strip()
            assert before.startswith("#") or re.match(r"\w+\s*=", before), f"line {i + 1}: {line}"
