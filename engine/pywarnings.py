"""Python ``warnings`` as structlog events, so no library warning reaches stderr as a raw line.

A library that warns (PyJWT's ``InsecureKeyLengthWarning`` when an HS512 key is shorter than 64 bytes,
a deprecation in a dependency) writes through :func:`warnings.showwarning`: by default a two-line text
on stderr, in the middle of a JSON log that a collector then cannot parse. While logging is configured,
:func:`route_warnings` replaces that hook with one that logs a ``python.warning`` event (category,
message, module and line; never the source line, never a local variable), which passes the same secret
redaction as every other event. Python's filters still decide whether a warning is shown at all (once
per location by default), and ``-W error`` / pytest's ``filterwarnings = error`` still raise, since
filters act before the hook is called.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, TextIO

import structlog

__all__ = ["route_warnings", "unroute_warnings"]

log = structlog.get_logger("engine.warnings")
_original: Any = None


def _show(  # noqa: PLR0917 - the signature warnings.showwarning is called with
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` replacement: one structured event per warning shown."""
    log.warning(
        "python.warning",
        category=category.__name__,
        message=str(message),
        module=Path(filename).stem,
        lineno=lineno,
    )


def route_warnings() -> None:
    """Send warnings that Python's filters let through to structlog (idempotent)."""
    global _original  # noqa: PLW0603 - warnings.showwarning is process-global by design
    if warnings.showwarning is not _show:
        _original = warnings.showwarning
        warnings.showwarning = _show


def unroute_warnings() -> None:
    """Restore the hook that was in place before :func:`route_warnings` (tests)."""
    global _original  # noqa: PLW0603
    if warnings.showwarning is _show and _original is not None:
        warnings.showwarning = _original
    _original = None
