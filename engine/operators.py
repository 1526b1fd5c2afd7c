"""Named operators and their roles: who may do what (pure: no I/O).

Every HTTP call and every console action is made by an :class:`Operator` (a name and a role). A role is a
fixed set of :class:`Permission`: what a role may do is decided here, once, and checked by the API's route
table and the console alike. The credentials themselves (API tokens, passwords, console sessions) live
hashed in the store (:mod:`engine.store.operators`); the helpers here make and check them without I/O.

Token and password handling:

- An API token is ``uwo_`` + 32 random bytes (url-safe base64). It is high-entropy, so its SHA-256 is a
  safe at-rest form and a look-up key: :func:`token_hash`. It is shown once, when made.
- A password is hashed with scrypt, salted, the parameters kept with the hash (:func:`hash_password`), so
  the cost can rise later without invalidating stored hashes; it is checked in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from aiohttp import web

from engine.errors import InvalidRequest

__all__ = [
    "APPROVAL_ACTIONS",
    "MAX_NOTE_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "OPERATOR_KEY",
    "ROLE_PERMISSIONS",
    "SHARED_TOKEN_OPERATOR",
    "TOKEN_PREFIX",
    "Operator",
    "Permission",
    "Role",
    "check_attribution",
    "check_name",
    "check_note",
    "check_password",
    "check_role",
    "hash_password",
    "new_secret",
    "new_token",
    "permission_for_resolution",
    "token_hash",
    "verify_password",
]


class Role(StrEnum):
    """What an operator is for; each role is a fixed set of permissions (:data:`ROLE_PERMISSIONS`)."""

    VIEWER = "viewer"
    SUBMITTER = "submitter"
    APPROVER = "approver"
    ADMIN = "admin"


class Permission(StrEnum):
    """One kind of action; the API's route table names the one each route needs."""

    VIEW = "view"  # read anything (every role)
    SUBMIT = "submit"  # create withdrawals and batches
    CANCEL = "cancel"  # ask to cancel a withdrawal or a batch
    RESOLVE = "resolve"  # needs_review decisions (resubmit, abandon)
    APPROVE = "approve"  # four-eyes approval: approve / reject (never one's own submission)
    ADMIN = "admin"  # operators, webhooks management


_P = Permission
#: Which permissions each role holds. A submitter may cancel (their own mistakes), never decide a review;
#: an approver decides reviews and approvals and may cancel, never submit (maker and checker stay apart).
ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = MappingProxyType({
    Role.VIEWER: frozenset({_P.VIEW}),
    Role.SUBMITTER: frozenset({_P.VIEW, _P.SUBMIT, _P.CANCEL}),
    Role.APPROVER: frozenset({_P.VIEW, _P.CANCEL, _P.RESOLVE, _P.APPROVE}),
    Role.ADMIN: frozenset(_P),
})  # fmt: skip

_NAME = re.compile(r"[a-z0-9._-]{1,64}")
#: API tokens start with this, so a leaked one is recognisable (secret scanners, logs) and the API can
#: tell a per-operator token from the deprecated shared one at a glance.
TOKEN_PREFIX: Final = "uwo_"  # noqa: S105 - a marker, not a secret
MIN_PASSWORD_LENGTH: Final = 12
#: A decision's note is a sentence or a paragraph, not a document: it rides along on events and webhooks.
MAX_NOTE_LENGTH: Final = 1000
#: scrypt cost: n=2**14, r=8, p=1 (about 16 MiB and tens of milliseconds per check).
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def check_name(name: object) -> str:
    """``name`` if it is a valid operator name (1-64 of a-z 0-9 . _ -), else :class:`InvalidRequest`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequest("an operator name is 1 to 64 of a-z, 0-9, '.', '_', '-'", field="name")
    return name


def check_role(role: object) -> Role:
    """The :class:`Role` named ``role``, else :class:`InvalidRequest` listing the roles."""
    try:
        return Role(str(role))
    except ValueError:
        roles = ", ".join(r.value for r in Role)
        raise InvalidRequest(f"unknown role {str(role)[:40]!r} (one of: {roles})", field="role") from None


def check_note(note: object) -> str | None:
    """``note`` stripped (None: no note), else :class:`InvalidRequest`: a note is text of 1 to
    :data:`MAX_NOTE_LENGTH` characters, without control characters other than newlines and tabs."""
    if note is None:
        return None
    if not isinstance(note, str):
        raise InvalidRequest("a note is text", field="note")
    text = note.strip()
    if not text or len(text) > MAX_NOTE_LENGTH:
        raise InvalidRequest(f"a note is 1 to {MAX_NOTE_LENGTH} characters (not blank)", field="note")
    if any((ord(c) < 32 and c not in "\n\t") or c == "\x7f" for c in text):
        raise InvalidRequest("a note has no control characters (newlines and tabs are fine)", field="note")
    return text


def check_attribution(operator: object, note: object) -> tuple[str | None, str | None]:
    """The operator's name and the note of an attributed action, each checked (None: not given)."""
    return (None if operator is None else check_name(operator)), check_note(note)


@dataclass(frozen=True, slots=True)
class Operator:
    """A person (or a program) acting on the engine: a name and a role. Carries no credential."""

    name: str
    role: Role

    def can(self, permission: Permission) -> bool:
        """Whether this operator's role holds ``permission``."""
        return permission in ROLE_PERMISSIONS[self.role]


#: Decisions of four-eyes approval (the approve permission); every other resolution (a needs_review
#: decision: resubmit, abandon) needs the resolve permission.
APPROVAL_ACTIONS: Final = frozenset({"approve", "reject"})


def permission_for_resolution(action: str) -> Permission:
    """The permission an operator needs to ask for ``action`` on a workflow awaiting a decision."""
    return Permission.APPROVE if action in APPROVAL_ACTIONS else Permission.RESOLVE


#: The deprecated single ``[api] token``: it keeps working, as an admin with this name.
SHARED_TOKEN_OPERATOR: Final = Operator("shared-token", Role.ADMIN)
#: Where the authenticated :class:`Operator` sits on an aiohttp request: ``request[OPERATOR_KEY]`` (a
#: typed request key named "operator": aiohttp warns about plain string keys).
OPERATOR_KEY: Final = web.RequestKey("operator", Operator)


def new_token() -> str:
    """A fresh API token (shown once; only :func:`token_hash` of it is stored)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_secret() -> str:
    """A fresh random value for a session cookie or a CSRF token."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The at-rest form of a high-entropy token (API token, session cookie): its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_password(password: object) -> str:
    """``password`` if acceptable (a string of at least 12 characters), else :class:`InvalidRequest`."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidRequest(f"a password has at least {MIN_PASSWORD_LENGTH} characters", field="password")
    return password


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (hex): salted, with the parameters it was made with."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches the stored hash (constant-time compare; False for no or a bad hash)."""
    if stored is None:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = _scrypt(password, bytes.fromhex(salt), int(n), int(r), int(p))
        return hmac.compare_digest(computed, bytes.fromhex(digest))
    except ValueError:
        return False


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)
