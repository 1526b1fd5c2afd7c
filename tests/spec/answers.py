"""Hypothesis strategies for Upbit's answers, built from the official SDK's response models.

``upbit-sdk`` (Upbit's Python SDK, generated from its OpenAPI spec) describes every answer as a pydantic
model; :func:`answers` turns a model's JSON schema (``TypeAdapter(model).json_schema()``) into a strategy:
required properties always present, optional ones absent, ``null`` or present, enums from their values,
unknown extra keys now and then (the models allow them). The schema says "string" for money and times;
``well_formed=True`` fills those by the field's name with what Upbit sends (decimal strings, ISO-8601
times), so the test can demand a clean parse; ``well_formed=False`` puts arbitrary text there too, and
then only our typed error may come out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st
from pydantic import TypeAdapter

#: String fields that carry a decimal amount in Upbit's answers.
DECIMAL_FIELDS = frozenset({
    "amount", "fee", "balance", "locked", "avg_buy_price", "withdraw_fee", "minimum", "remaining_daily_fiat",
    "withdraw_delayed_fiat",
})  # fmt: skip
#: String fields that carry a time.
TIME_FIELDS = frozenset({"created_at", "done_at", "block_updated_at"})
#: String fields that carry a currency or network code (a few values, so that rows and requests meet).
CODE_FIELDS = frozenset({"currency", "net_type", "code", "unit_currency", "fiat_currency"})
CODES = ("BTC", "XRP", "ETH", "KRW", "SGD")


def decimal_strings() -> st.SearchStrategy[str]:
    """Decimal strings as Upbit writes them ("0.0008", "25.0", "1000000"), within realistic bounds."""
    values = st.decimals(min_value=0, max_value=Decimal(10) ** 15, allow_nan=False, allow_infinity=False, places=8)
    return values.map(lambda d: format(d, "f")) | st.sampled_from(["0", "0.0", "25", "0.00001", "50.0"])


def time_strings() -> st.SearchStrategy[str]:
    """ISO-8601 times in the notations seen: KST offset, UTC offset, Z, milliseconds."""
    instants = st.datetimes(min_value=datetime(2017, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC))
    kst = timezone(timedelta(hours=9))
    return st.one_of(
        instants.map(lambda t: t.astimezone(kst).isoformat(timespec="seconds")),
        instants.map(lambda t: t.isoformat(timespec="milliseconds")),
        instants.map(lambda t: t.isoformat(timespec="seconds").replace("+00:00", "Z")),
    )


def _string(name: str | None, well_formed: bool) -> st.SearchStrategy[Any]:
    if name in DECIMAL_FIELDS:
        good: st.SearchStrategy[str] = decimal_strings()
    elif name in TIME_FIELDS:
        good = time_strings()
    elif name in CODE_FIELDS:
        good = st.sampled_from(CODES)
    else:
        good = st.text(max_size=20)
    return good if well_formed else good | st.text(max_size=20)


def _from_schema(schema: dict[str, Any], defs: dict[str, Any], name: str | None, well_formed: bool) -> Any:
    if "$ref" in schema:
        return _from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, name, well_formed)
    if "anyOf" in schema:
        return st.one_of(*(_from_schema(s, defs, name, well_formed) for s in schema["anyOf"]))
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "object":
        return _object(schema, defs, well_formed)
    if kind == "array":
        return st.lists(_from_schema(schema.get("items", {}), defs, name, well_formed), max_size=3)
    if kind == "string":
        return _string(name, well_formed)
    if kind == "integer":
        return st.integers(min_value=0, max_value=18) if name == "fixed" else st.integers(-(2**31), 2**53)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    raise AssertionError(f"schema construct not handled: {schema}")


def _object(schema: dict[str, Any], defs: dict[str, Any], well_formed: bool) -> st.SearchStrategy[dict[str, Any]]:
    properties: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", ()))
    fields = {k: _from_schema(v, defs, k, well_formed) for k, v in properties.items()}
    optional = {k: v for k, v in fields.items() if k not in required}
    if schema.get("additionalProperties", True):
        optional["x_unknown_field"] = st.text(max_size=5) | st.integers() | st.none()
    return st.fixed_dictionaries({k: v for k, v in fields.items() if k in required}, optional=optional)


def json_schema(model: Any) -> dict[str, Any]:
    """The JSON schema of a model or a type alias (``List[Item]``) of the SDK."""
    return dict(TypeAdapter(model).json_schema())


def answers(model: Any, *, well_formed: bool) -> st.SearchStrategy[Any]:
    """JSON answers the model allows (see the module docstring)."""
    schema = json_schema(model)
    return _from_schema(schema, schema.get("$defs", {}), None, well_formed)


def optional_fields(model: Any) -> set[str]:
    """Dotted names of the properties the model marks optional (for the report of what was exercised)."""
    schema = json_schema(model)
    defs = schema.get("$defs", {})
    found: set[str] = set()

    def walk(node: dict[str, Any], prefix: str) -> None:
        if "$ref" in node:
            walk(defs[node["$ref"].rsplit("/", 1)[-1]], prefix)
        elif node.get("type") == "array":
            walk(node.get("items", {}), prefix)
        elif node.get("type") == "object":
            required = set(node.get("required", ()))
            for key, child in node.get("properties", {}).items():
                if key not in required:
                    found.add(prefix + key)
                walk(child, f"{prefix}{key}.")

    walk(schema, "")
    return found
