"""The sandbox's one error type: an Upbit-style refusal (HTTP status, ``error.name``, message).

The pure exchange and the JWT verifier raise :class:`SandboxError`; the HTTP layer turns it into
``{"error": {"name": ..., "message": ...}}`` with the status, exactly as Upbit answers. Keeping the
status inside the error means no layer keeps a second table mapping names to codes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SandboxError", "invalid_value", "missing"]


class SandboxError(Exception):
    """A request the simulated exchange refuses, in Upbit's error vocabulary."""

    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(f"{status} {name}: {message}")
        self.status = status
        self.name = name
        self.message = message

    def body(self) -> dict[str, Any]:
        """The JSON object Upbit sends for an Exchange API error."""
        return {"error": {"name": self.name, "message": self.message}}


def missing(field: str) -> SandboxError:
    """Upbit's wording for an absent required parameter."""
    return SandboxError(400, "validation_error", f'"{field}" is missing')


def invalid_value(field: str) -> SandboxError:
    """Upbit's wording for a parameter that is present but unusable."""
    return SandboxError(400, "validation_error", f'"{field}" does not have a valid value')
