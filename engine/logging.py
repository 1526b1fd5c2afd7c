"""structlog setup: the engine's only process-global configuration (structlog's "global state department").

Events are stable dotted names (``workflow.transitioned``, ``exchange.request_refused``) with data as
key/value pairs. JSON lines when stderr is not a terminal, readable console output when it is. The
:func:`redact_secrets` processor runs last before rendering: it masks JWTs, bearer tokens, registered
secrets and any value under a key that names a secret, wherever they hide in the event.
"""

from __future__ import annotations

import json as json_module
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from engine.pywarnings import route_warnings

__all__ = ["configure_logging", "redact_secrets", "register_secret", "transition_level"]

_JWT_RE = re.compile(r"eyJ[\w-]{5,}\.[\w-]{5,}\.[\w-]{5,}")
_BEARER_RE = re.compile(r"(?i)bearer\s+[\w.\-~+/]+=*")
_SECRET_KEYS = re.compile(r"(?i)(secret|token|password|authorization|api[_-]?key|access[_-]?key|jwt)")
_registered: set[str] = set()


#: One search for every registered secret at once (None while there is none).
_registered_re: re.Pattern[str] | None = None


def register_secret(value: str) -> None:
    """Mask this exact string wherever it appears in a log event (keys loaded from config call this)."""
    global _registered_re  # noqa: PLW0603 - the registry is process-wide, like structlog's configuration
    if value and len(value) >= 6:
        _registered.add(value)
        _registered_re = re.compile("|".join(re.escape(s) for s in sorted(_registered, key=len, reverse=True)))


#: key -> "names a secret": log lines reuse a small set of keys, so each is matched by the regex once.
_secret_keys: dict[str, bool] = {}


def _is_secret_key(key: str) -> bool:
    verdict = _secret_keys.get(key)
    if verdict is None:
        if len(_secret_keys) >= 4096:  # bounded: ad-hoc keys (e.g. data_* of odd events) cannot grow it
            _secret_keys.clear()
        verdict = _secret_keys[key] = _SECRET_KEYS.search(key) is not None
    return verdict


def _scrub_text(text: str) -> str:
    # Cheap pre-check (4x cheaper than a regex search): text with neither holds no JWT nor bearer token.
    if "eyJ" in text or "bearer" in text.lower():
        text = _BEARER_RE.sub("Bearer ***", _JWT_RE.sub("***jwt***", text))
    for secret in _registered:
        if secret in text:
            text = text.replace(secret, "***")
    return text


_PLAIN = (int, float, bool, type(None))


def _scrub(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        return _scrub_text(value)
    if kind in _PLAIN:
        return value
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, dict):
        return {k: "***" if _is_secret_key(str(k)) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secrets in every value (recursively) and under secret-named keys.

    Keys are judged once each (cached); a string is searched for a JWT or bearer token only when a cheap
    pre-check finds ``eyJ`` or ``bearer`` in it; numbers and None are left alone."""
    verdicts, registered = _secret_keys, _registered_re
    for key, value in event_dict.items():
        secret = verdicts.get(key)
        if secret is None:
            secret = _is_secret_key(key)
        if secret:
            event_dict[key] = "***"
        elif type(value) is str:  # inlined _scrub_text's pre-checks: most values hold none of these
            if "eyJ" in value or "bearer" in value.lower() or (registered is not None and registered.search(value)):
                event_dict[key] = _scrub_text(value)
        elif type(value) not in _PLAIN:
            event_dict[key] = _scrub(value)
    return event_dict


def _json_serializer() -> Any:
    """``json.dumps`` as structlog's ``JSONRenderer`` calls it (its own fallback for odd values), with the
    encoder built once: ``dumps`` with a ``default`` builds a new one per call (~25% of a line)."""
    encode = json_module.JSONEncoder(default=structlog.processors._json_fallback_handler).encode

    def dumps(obj: Any, **_kw: Any) -> str:
        return encode(obj)

    return dumps


#: The level of the ``workflow.transitioned`` lines (``configure_logging(transitions=...)``).
_transitions = logging.INFO


def transition_level() -> int:
    """The level a transition's ``workflow.transitioned`` line is logged at, unless its state alerts."""
    return _transitions


def configure_logging(
    *, level: str = "INFO", json: bool | None = None, stream: TextIO | None = None, transitions: str = "info"
) -> None:
    """Configure structlog once per process. ``json=None`` picks JSON unless the stream is a terminal.
    ``transitions``: ``info`` or ``debug``, the level of the one line per transition (``engine.log_transitions``;
    the events keep every transition whatever the logs say)."""
    global _transitions  # noqa: PLW0603 - process-wide, as structlog's configuration is
    if transitions.lower() not in ("info", "debug"):
        raise ValueError("transitions must be info or debug")
    _transitions = logging.DEBUG if transitions.lower() == "debug" else logging.INFO
    out = stream or sys.stderr
    use_json = (not out.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json_serializer())
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(out),  # a write and a flush per line (print: two writes)
        cache_logger_on_first_use=False,
    )
    route_warnings()  # library warnings become events, not raw stderr lines
    _route_stdlib_logging(renderer, out, level)


def _route_stdlib_logging(renderer: Any, out: TextIO, level: str) -> None:
    """Libraries log through the standard library (asyncpg's pool warns while the database is down):
    render their records like ours (one JSON line each, secrets masked, the traceback inside the line),
    at WARNING and above. Replaces the handler a previous call installed."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _STDLIB_MARK, False)]:
        root.removeHandler(handler)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    setattr(handler, _STDLIB_MARK, True)
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))


_STDLIB_MARK = "_upbit_withdraw_handler"
