"""JWT verification as Upbit does it, written independently of the client's signing code.

The sandbox must catch client signing bugs, so it shares nothing with :mod:`engine.upbit.auth` but
the published demo keys: it decodes the token itself (base64url, JSON), checks the HMAC with
``hmac.compare_digest``, and rebuilds the hashed string from the request *as received*:

- GET/DELETE: ``urllib.parse.unquote(raw_query_string)``, order preserved, nothing re-encoded;
- POST: the JSON body's keys in body order, ``unquote(urlencode(pairs))``, where the pairs are written
  either as the official SDK writes them (a ``null`` or empty value left out, booleans ``true``/``false``,
  arrays as ``key[]``) or as Upbit's documented Python recipe and ccxt write them
  (``urlencode(body.items(), doseq=True)``: ``None``, ``True``); a token matching either is accepted.
  A JSON number is hashed as the text it was sent as (``0.01``), which is what both a Python and a
  JavaScript client hash, since their JSON encoders and ``str()`` agree.

Checks, in order, each a 401 with Upbit's name: no ``Authorization: Bearer`` header
(``no_authorization_token``); undecodable token or an ``alg`` other than HS256/HS384/HS512
(``jwt_verification``); unknown ``access_key`` (``invalid_access_key``); bad signature
(``jwt_verification``); missing or reused nonce (``jwt_verification`` / ``nonce_used``); a
``query_hash`` that is missing while there are parameters, present while there are none, not
SHA512 (``query_hash_alg``) or simply different (``invalid_query_payload``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode

from engine.sandbox.errors import SandboxError

__all__ = [
    "JwtVerifier",
    "NonceRegistry",
    "Token",
    "claimed_access_key",
    "hashed_body",
    "hashed_query",
    "parse_token",
]

_HASHES: dict[str, Callable[..., Any]] = {
    "HS256": hashlib.sha256,
    "HS384": hashlib.sha384,
    "HS512": hashlib.sha512,
}
DEFAULT_NONCE_CAPACITY = 200_000


def _refuse(name: str, message: str) -> SandboxError:
    return SandboxError(401, name, message)


def hashed_query(raw_query: str) -> tuple[str, ...]:
    """The string a GET/DELETE token must hash: the raw query, percent-decoded, order kept (none: no params)."""
    return (unquote(raw_query),) if raw_query else ()


class _Number(str):
    """A JSON number, kept as the text it was sent as."""


def hashed_body(raw: bytes) -> tuple[str, ...]:
    """The strings a POST token may hash (see the module docstring); () when the body has no parameters."""
    try:
        pairs = json.loads(raw, parse_float=_Number, parse_int=_Number, object_pairs_hook=list)
    except (ValueError, UnicodeDecodeError):
        return ()
    if not isinstance(pairs, list) or not pairs:
        return ()
    sdk = unquote(urlencode([item for key, value in pairs for item in _sdk_items(key, value)]))
    recipe = unquote(urlencode([item for key, value in pairs for item in _recipe_items(key, value)]))
    return (sdk,) if sdk == recipe else (sdk, recipe)


def _sdk_items(key: str, value: Any) -> list[tuple[str, str]]:
    """As ``upbit._qs.Querystring(array_format="brackets")`` writes one body value."""
    if isinstance(value, list) and value and all(isinstance(p, tuple) for p in value):  # a nested object
        return [item for sub, inner in value for item in _sdk_items(f"{key}[{sub}]", inner)]
    if isinstance(value, list):
        return [item for element in value for item in _sdk_items(f"{key}[]", element)]
    text = "true" if value is True else "false" if value is False else "" if value is None else str(value)
    return [(key, text)] if text else []


def _recipe_items(key: str, value: Any) -> list[tuple[str, str]]:
    """As ``urlencode(body.items(), doseq=True)`` writes one body value (Upbit's Python recipe)."""
    if isinstance(value, list) and not (value and all(isinstance(p, tuple) for p in value)):
        return [(key, str(element)) for element in value]
    return [(key, str(dict(value)) if isinstance(value, list) else str(value))]


@dataclass(frozen=True, slots=True)
class Token:
    """A decoded, not yet verified, JWT."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def parse_token(authorization: str | None) -> Token:
    """Split ``Bearer <jwt>`` into header, claims and signature; nothing is trusted yet."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _refuse("no_authorization_token", "Authorization: Bearer <token> is required")
    parts = token.strip().split(".")
    try:
        if len(parts) != 3:
            raise ValueError("a JWT has three parts")
        header, claims = json.loads(_b64decode(parts[0])), json.loads(_b64decode(parts[1]))
        signature = _b64decode(parts[2])
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise _refuse("jwt_verification", "the token cannot be decoded") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise _refuse("jwt_verification", "the token cannot be decoded")
    return Token(header, claims, f"{parts[0]}.{parts[1]}".encode(), signature)


def claimed_access_key(authorization: str | None) -> str | None:
    """The access key a request claims, unverified (to pick its rate bucket); None if unreadable."""
    try:
        key = parse_token(authorization).claims.get("access_key")
    except SandboxError:
        return None
    return key if isinstance(key, str) else None


class NonceRegistry:
    """Nonces seen per access key, each key keeping only its most recent ``capacity`` (bounded memory)."""

    def __init__(self, capacity: int = DEFAULT_NONCE_CAPACITY) -> None:
        self.capacity = capacity
        self._seen: dict[str, tuple[set[str], deque[str]]] = {}

    def __repr__(self) -> str:
        return f"NonceRegistry(keys={len(self._seen)}, capacity={self.capacity})"

    def __contains__(self, item: tuple[str, str]) -> bool:
        key, nonce = item
        entry = self._seen.get(key)
        return entry is not None and nonce in entry[0]

    def add(self, key: str, nonce: str) -> None:
        """Remember a nonce, forgetting the oldest one of this key beyond capacity."""
        seen, order = self._seen.setdefault(key, (set(), deque()))
        seen.add(nonce)
        order.append(nonce)
        if len(order) > self.capacity:
            seen.discard(order.popleft())

    def clear(self) -> None:
        """Forget every nonce."""
        self._seen.clear()


class JwtVerifier:
    """Verifies one request's token; ``secret_for`` maps an access key to its secret (or None)."""

    def __init__(
        self, secret_for: Callable[[str], str | None], *, nonce_capacity: int = DEFAULT_NONCE_CAPACITY
    ) -> None:
        self._secret_for = secret_for
        self.nonces = NonceRegistry(nonce_capacity)

    def __repr__(self) -> str:
        return f"JwtVerifier({self.nonces!r})"

    def verify(self, authorization: str | None, *, hashed: tuple[str, ...]) -> str:
        """Check the token against the request's hashed strings (any may match); returns the access key."""
        token = parse_token(authorization)
        digest = _HASHES.get(str(token.header.get("alg")))
        if digest is None:
            raise _refuse("jwt_verification", "alg must be HS256, HS384 or HS512")
        access_key = token.claims.get("access_key")
        secret = self._secret_for(access_key) if isinstance(access_key, str) else None
        if secret is None or not isinstance(access_key, str):
            raise _refuse("invalid_access_key", "unknown access key")
        expected = hmac.new(secret.encode(), token.signing_input, digest).digest()
        if not hmac.compare_digest(expected, token.signature):
            raise _refuse("jwt_verification", "signature verification failed")
        nonce = token.claims.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            raise _refuse("jwt_verification", "nonce is required")
        if (access_key, nonce) in self.nonces:
            raise _refuse("nonce_used", "this nonce was already used")
        _check_query_hash(token.claims, hashed)
        self.nonces.add(access_key, nonce)
        return access_key


def _check_query_hash(claims: Mapping[str, Any], hashed: tuple[str, ...]) -> None:
    given = claims.get("query_hash")
    if given is None and (not hashed or "" in hashed):
        return
    if not hashed or not isinstance(given, str):
        raise _refuse("invalid_query_payload", "query_hash does not match the request's parameters")
    if claims.get("query_hash_alg", "SHA512") != "SHA512":
        raise _refuse("invalid_query_payload", "query_hash_alg must be SHA512")
    expected = [hashlib.sha512(text.encode()).hexdigest().encode() for text in hashed]
    if not any(hmac.compare_digest(digest, given.lower().encode()) for digest in expected):
        raise _refuse("invalid_query_payload", "query_hash does not match the request's parameters")
