"""The caller's own handles on a withdrawal: a ``reference`` (their payout id) and free ``metadata``.

Both are stored beside the workflow (columns of their own, not inside the step data), shown in every view
and carried by the submission event, and neither is ever interpreted by the engine. The rules here are the
only place that decides what is acceptable, so the Python API, the HTTP API and the CLI refuse the same
values with the same words.

- ``reference``: 1-128 printable ASCII characters without spaces (it ends up in URLs, CSV reports and log
  searches, where whitespace and look-alike characters only cause trouble). Unique per account when given:
  the database enforces it with a partial unique index on ``(account, reference)``.
- ``metadata``: a JSON object of at most :data:`MAX_METADATA_KEYS` string keys (each 1-64 characters),
  JSON values only (no ``Decimal``, ``datetime`` or ``NaN``: what is stored must read back the same in any
  JSON parser), nested at most :data:`MAX_METADATA_DEPTH` deep, and at most :data:`MAX_METADATA_BYTES`
  bytes serialized (compact UTF-8). Small on purpose: it rides along on every view, event and webhook.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from engine.errors import InvalidRequest

__all__ = [
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_METADATA_KEYS",
    "MAX_METADATA_KEY_LEN",
    "MAX_REFERENCE_LEN",
    "REFERENCE_PATTERN",
    "check_metadata",
    "check_reference",
    "dump_metadata",
]

MAX_REFERENCE_LEN = 128
#: The OpenAPI document carries the same pattern, so the two cannot disagree.
REFERENCE_PATTERN = "[!-~]{1,128}"
_REFERENCE_RE = re.compile(REFERENCE_PATTERN)
MAX_METADATA_BYTES = 4096
MAX_METADATA_KEYS = 32
MAX_METADATA_KEY_LEN = 64
MAX_METADATA_DEPTH = 4


def check_reference(value: object) -> str | None:
    """``value`` if it is an acceptable reference (None: no reference); :class:`InvalidRequest` otherwise."""
    if value is None:
        return None
    if not isinstance(value, str) or not _REFERENCE_RE.fullmatch(value):
        raise InvalidRequest(
            f"must be 1-{MAX_REFERENCE_LEN} printable ASCII characters without spaces", field="reference"
        )
    return value


def check_metadata(value: object) -> dict[str, Any] | None:
    """A copy of ``value`` if it is acceptable metadata (None or ``{}``: none); :class:`InvalidRequest`
    naming the broken rule otherwise."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest("must be a JSON object", field="metadata")
    if len(value) > MAX_METADATA_KEYS:
        raise InvalidRequest(f"has more than {MAX_METADATA_KEYS} keys", field="metadata")
    for key in value:
        if not isinstance(key, str) or not 0 < len(key) <= MAX_METADATA_KEY_LEN:
            raise InvalidRequest(f"keys must be strings of 1-{MAX_METADATA_KEY_LEN} characters", field="metadata")
    _check_values(value, depth=1)
    dumped = dump_metadata(value)
    if len(dumped.encode()) > MAX_METADATA_BYTES:
        raise InvalidRequest(f"is larger than {MAX_METADATA_BYTES} bytes serialized as JSON", field="metadata")
    # A copy, as it will read back from the store: the caller changing its dict later changes nothing here.
    copy: dict[str, Any] = json.loads(dumped)
    return copy or None


def _check_values(value: object, *, depth: int) -> None:
    """JSON values only, nested at most ``MAX_METADATA_DEPTH`` deep (checked before serializing, so a
    deeply nested object can never reach ``json.dumps``' recursion)."""
    if isinstance(value, dict | list) and depth > MAX_METADATA_DEPTH:
        raise InvalidRequest(f"is nested more than {MAX_METADATA_DEPTH} levels deep", field="metadata")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidRequest("keys must be strings", field="metadata")
            _check_values(item, depth=depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_values(item, depth=depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest("numbers must be finite (no NaN or Infinity)", field="metadata")
    elif value is not None and not isinstance(value, str | int | bool):
        raise InvalidRequest(
            f"values must be JSON (string, number, boolean, null, array, object), not {type(value).__name__}",
            field="metadata",
        )


def dump_metadata(value: dict[str, Any]) -> str:
    """Compact JSON, as stored and as measured against :data:`MAX_METADATA_BYTES`."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
