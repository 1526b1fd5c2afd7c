"""The console's login rules, cookies and CSRF checks (pure decisions; the middleware in :mod:`.app` does I/O).

- The session cookie holds only a random session token; the store keeps its hash, the operator and the last
  request's time (``OperatorStore.open_session``/``session``), so a stolen database holds no usable cookie.
  It is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it) and
  ``Secure`` when the request came over TLS or ``[console] behind_tls_proxy`` says a TLS proxy is in front.
- Every form carries the session's CSRF token in a hidden field; every POST without the right one is refused
  (403) before its handler runs. The login form, made before any session exists, carries a random token
  that must match a short-lived cookie of its own (double submit).
- A login over plain HTTP from an address that is not loopback is refused unless a TLS proxy is declared:
  a password or a token must never cross a network unencrypted.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

__all__ = [
    "COOKIE_PATH",
    "CSRF_FIELD",
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "cookie_options",
    "csrf_matches",
    "is_loopback",
    "login_allowed",
    "safe_next",
]

#: The session cookie (only the session token; the store holds its hash).
SESSION_COOKIE = "upbit_console"
#: The login form's own CSRF cookie (double submit: no session exists yet).
LOGIN_COOKIE = "upbit_console_login"
#: The hidden form field holding the CSRF token.
CSRF_FIELD = "csrf"
#: Where the cookies are sent: the console only, never the API's routes.
COOKIE_PATH = "/console"
#: Where a login goes when it names nowhere (or somewhere outside the console).
HOME = "/console/"


def is_loopback(remote: str | None) -> bool:
    """Whether ``remote`` (the peer's address as aiohttp reports it) is a loopback address."""
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def login_allowed(*, secure: bool, remote: str | None, behind_tls_proxy: bool) -> bool:
    """A login may be sent over TLS, through a declared TLS proxy, or over plain HTTP from this machine."""
    return secure or behind_tls_proxy or is_loopback(remote)


def csrf_matches(expected: str | None, presented: object) -> bool:
    """Constant-time comparison of the form's token with the session's (False when either is missing)."""
    if not expected or not isinstance(presented, str) or not presented:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "replace"))


def cookie_options(*, secure: bool, max_age: int | None = None) -> dict[str, Any]:
    """The attributes of every console cookie (aiohttp's ``set_cookie`` keywords)."""
    options: dict[str, Any] = {"path": COOKIE_PATH, "httponly": True, "samesite": "Strict", "secure": secure}
    if max_age is not None:
        options["max_age"] = max_age
    return options


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a console path only (never another site: ``//evil``, ``/\\evil``)."""
    if not target or not target.startswith(HOME) or "//" in target or "\\" in target:
        return HOME
    return target
