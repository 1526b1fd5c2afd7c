"""Reading Upbit's error answers, pure: what a non-2xx body says, and which engine error it is.

Upbit answers an Exchange API error in one of two shapes, and the official SDK (``upbit-sdk``,
``_base_client._parse_error_body``) reads both, so we do too:

- ``{"error": {"name": "...", "message": "..."}}`` (the documented shape), and
- ``{"name": "...", "message": "..."}`` (top level).

A 4xx carrying either shape with a ``name`` is a refusal: the exchange read the request and turned it
down, nothing was created. A 4xx with neither shape is not known to come from Upbit's API at all (a
proxy's page, a truncated body), so on a POST its outcome stays unknown. The Quotation API's integer
names (``"name": 400``) are read as text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from engine.errors import ExchangeBadResponse, ExchangeError, ExchangeNotFound, ExchangeRefused

__all__ = ["UpbitErrorBody", "parse_error_body", "refusal", "seconds_in_text", "snippet"]

_SECONDS_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:s\b|sec|second|초)")


@dataclass(frozen=True, slots=True)
class UpbitErrorBody:
    """Upbit's error name and message (the message may be empty)."""

    name: str
    message: str


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def parse_error_body(raw: bytes) -> UpbitErrorBody | None:
    """The error object of either shape, or None when the body has neither (or no ``name``)."""
    data = _loads(raw)
    if not isinstance(data, dict):
        return None
    nested = data.get("error")
    source = nested if isinstance(nested, dict) else data
    name = source.get("name")
    if name is None or name == "" or isinstance(name, dict | list):
        return None
    message = source.get("message")
    return UpbitErrorBody(str(name), "" if message is None else str(message))


def refusal(status: int, raw: bytes, endpoint: str) -> ExchangeError:
    """A 4xx (other than 418/429): a refusal when it carries an Upbit error object, else unreadable."""
    error = parse_error_body(raw)
    if error is None:
        return ExchangeBadResponse(f"no error object: {snippet(raw)}", status=status, endpoint=endpoint)
    cls = ExchangeNotFound if status == 404 else ExchangeRefused
    return cls(error.message or error.name, status=status, name=error.name, endpoint=endpoint)


def seconds_in_text(raw: bytes) -> float | None:
    """A block time named in a 418's body ("blocked for 12 seconds", "120초"), else None."""
    match = _SECONDS_RE.search(raw.decode("utf-8", "replace"))
    return float(match.group(1)) if match else None


def snippet(raw: bytes, limit: int = 200) -> str:
    """The start of a body, for an error message."""
    return raw[:limit].decode("utf-8", "replace").strip() or "(empty body)"
