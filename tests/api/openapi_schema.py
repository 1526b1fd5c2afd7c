"""A small validator for the subset of JSON Schema that engine/openapi.json uses.

``jsonschema`` is not among the dev dependencies, so this checks what the document uses: type (with
"null"), enum, pattern, min/max length, minimum/maximum, required, properties, additionalProperties,
items and local $ref. Any other schema keyword fails loudly, so the document cannot grow a construct
that this validator silently ignores.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SPEC_PATH = Path(__file__).resolve().parents[2] / "engine" / "openapi.json"
SPEC: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))

_ANNOTATIONS = {"description", "example", "default", "format", "title"}
_CHECKED = {
    "type", "enum", "pattern", "minLength", "maxLength", "minimum", "maximum", "required", "properties",
    "additionalProperties", "items", "$ref",
}  # fmt: skip
_TYPES: dict[str, Any] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


class SchemaViolation(AssertionError):
    """The instance does not match the schema."""


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref``."""
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        node: Any = SPEC
        for part in ref[2:].split("/"):
            node = node[part]
        schema = node
    return schema


def validate(instance: Any, schema: dict[str, Any], where: str = "$") -> None:
    """Raise :class:`SchemaViolation` naming the first place where ``instance`` breaks ``schema``."""
    schema = resolve(schema)
    unknown = set(schema) - _CHECKED - _ANNOTATIONS
    if unknown:
        raise SchemaViolation(f"{where}: the validator does not support {sorted(unknown)}")
    _check_scalar(instance, schema, where)
    if isinstance(instance, dict):
        _check_object(instance, schema, where)
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            validate(item, schema["items"], f"{where}[{i}]")


def _check_scalar(instance: Any, schema: dict[str, Any], where: str) -> None:
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_TYPES[name](instance) for name in names):
            raise SchemaViolation(f"{where}: {instance!r} is not of type {names}")
    if "enum" in schema and instance not in schema["enum"]:
        raise SchemaViolation(f"{where}: {instance!r} is not one of {schema['enum']}")
    if isinstance(instance, str):
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            raise SchemaViolation(f"{where}: {instance!r} does not match {schema['pattern']}")
        if len(instance) < schema.get("minLength", 0) or len(instance) > schema.get("maxLength", 10**9):
            raise SchemaViolation(f"{where}: length of {instance!r} out of bounds")
    if _TYPES["number"](instance) and not (
        schema.get("minimum", float("-inf")) <= instance <= schema.get("maximum", float("inf"))
    ):
        raise SchemaViolation(f"{where}: {instance!r} out of bounds")


def _check_object(instance: dict[str, Any], schema: dict[str, Any], where: str) -> None:
    for name in schema.get("required", []):
        if name not in instance:
            raise SchemaViolation(f"{where}: required property {name!r} is missing")
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for name, value in instance.items():
        if name in properties:
            validate(value, properties[name], f"{where}.{name}")
        elif extra is False:
            raise SchemaViolation(f"{where}: property {name!r} is not allowed")
        elif isinstance(extra, dict):
            validate(value, extra, f"{where}.{name}")


def operation(method: str, path: str) -> tuple[str, dict[str, Any]]:
    """The (template, operation) documented for ``method path`` (a concrete path)."""
    for template, item in SPEC["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return template, item[method.lower()]
    raise SchemaViolation(f"{method} {path} is not documented in openapi.json")


def check_response(method: str, path: str, status: int, content_type: str, body: bytes) -> str:
    """Validate one answer against the document; returns the path template."""
    template, op = operation(method, path.split("?", maxsplit=1)[0])
    responses = op["responses"]
    documented = responses.get(str(status)) or responses.get("default")
    if documented is None:
        raise SchemaViolation(f"{method} {template}: status {status} is not documented")
    content = documented.get("content", {})
    if content_type not in content:
        raise SchemaViolation(f"{method} {template} {status}: content type {content_type} not documented")
    if content_type == "application/json":
        validate(json.loads(body), content[content_type]["schema"], f"{method} {template} {status}")
    return template
