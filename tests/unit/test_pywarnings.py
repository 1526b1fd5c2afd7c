"""engine.pywarnings: Python warnings become structlog events while logging is configured, never raw lines."""

from __future__ import annotations

import io
import json
import warnings

import structlog

from engine.logging import configure_logging, register_secret
from engine.pywarnings import route_warnings, unroute_warnings


def test_warning_becomes_one_event() -> None:
    """A warning that the filters let through is one ``python.warning`` event with its category, message,
    module and line, and nothing else (no source line, no locals)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        route_warnings()
        route_warnings()  # idempotent
        try:
            with structlog.testing.capture_logs() as logs:
                warnings.warn("careful", UserWarning, stacklevel=1)
        finally:
            unroute_warnings()
        assert warnings.showwarning is not None
    [event] = logs
    assert event.pop("lineno") > 0
    assert event == {
        "event": "python.warning",
        "log_level": "warning",
        "category": "UserWarning",
        "message": "careful",
        "module": "test_pywarnings",
    }


def test_unroute_restores_previous_hook() -> None:
    """unroute_warnings puts back the hook that was there before."""
    with warnings.catch_warnings():
        before = warnings.showwarning
        route_warnings()
        assert warnings.showwarning is not before
        unroute_warnings()
        assert warnings.showwarning is before


def test_configure_logging_routes_and_redacts() -> None:
    """configure_logging routes warnings: the JSON log gets the event, and a registered secret inside a
    warning's text is masked like in any other event."""
    secret = "Zq8" + "x" * 37
    register_secret(secret)
    out = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        configure_logging(json=True, stream=out, level="INFO")
        try:
            warnings.warn(f"a library printed {secret}", RuntimeWarning, stacklevel=1)
        finally:
            structlog.reset_defaults()
    [line] = out.getvalue().splitlines()
    event = json.loads(line)
    assert (event["event"], event["category"]) == ("python.warning", "RuntimeWarning")
    assert secret not in line and "***" in event["message"]
