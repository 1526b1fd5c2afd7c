"""Upbit request signing, pure: no I/O, no clock, no global state.

Upbit authenticates every Exchange API call with a JWT in ``Authorization: Bearer``. When a request has
query parameters or a body, the token carries ``query_hash``: the hex SHA-512 of the *unencoded* query
string, built in the same order as the request (arrays as repeated ``key[]=v`` pairs). The classic
failure is hashing one string and sending another, so this module derives the URL query, the JSON body
and the hashed string from the same ordered parameters (:func:`encode_params`); callers never build
them separately.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import unquote, urlencode

import jwt

__all__ = [
    "DEMO_ACCESS_KEY",
    "DEMO_SECRET_KEY",
    "Algorithm",
    "Credentials",
    "EncodedParams",
    "Params",
    "TokenSigner",
    "encode_params",
    "hash_string",
    "make_token",
]

#: Published key pair of the sandbox exchange. Never valid on a real Upbit host: the client refuses to
#: send it anywhere but a loopback address. The secret is 64 bytes (a full-length key even for HS512);
#: real Upbit secrets are 40 characters.
DEMO_ACCESS_KEY = "sandbox-demo-access-key-0000000000000000"
DEMO_SECRET_KEY = "sandbox-demo-secret-key-do-not-use-with-real-funds-0000000000000"  # noqa: S105 - published

ParamValue = str | Sequence[str]
#: Ordered request parameters. Values are strings (never floats: amounts travel as decimal strings);
#: a list value is an array parameter whose key ends in ``[]`` and is sent as repeated pairs.
Params = Sequence[tuple[str, ParamValue]]


class Algorithm(StrEnum):
    """JWT signing algorithms Upbit accepts. HS256 is the default, as in Upbit's official SDK
    (``upbit/lib/jwt_auth.py``), ccxt and pyupbit: Upbit's secrets are 40 characters, a full-length key
    for HS256 (32 bytes) but short of HS512's 64, for which PyJWT warns on every signature. HS512 stays
    selectable per account (``algorithm = "HS512"``); its warning is then logged, not printed."""

    HS256 = "HS256"
    HS512 = "HS512"


@dataclass(frozen=True, slots=True)
class Credentials:
    """An access key and its secret. The repr never shows the secret, nor the whole access key."""

    access_key: str
    secret_key: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.access_key or not self.secret_key:
            raise ValueError("access key and secret key must both be non-empty")

    def __repr__(self) -> str:
        return f"Credentials(access_key={self.redacted_access_key!r}, secret_key='***')"

    @property
    def redacted_access_key(self) -> str:
        """The first four characters and a mask (only the mask for a short key): tells keys apart."""
        return (self.access_key[:4] if len(self.access_key) >= 16 else "") + "***"

    @property
    def is_demo(self) -> bool:
        """True for the sandbox's published key pair."""
        return self.access_key == DEMO_ACCESS_KEY or self.secret_key == DEMO_SECRET_KEY

    @classmethod
    def demo(cls) -> Credentials:
        """The sandbox's published key pair."""
        return cls(DEMO_ACCESS_KEY, DEMO_SECRET_KEY)


@dataclass(frozen=True, slots=True)
class EncodedParams:
    """What one request sends, and the string its token hashes: all from the same parameters."""

    query: str
    """Percent-encoded query for the URL (``[]`` left as-is); empty when there are no parameters."""
    body: bytes
    """JSON body for a POST (keys in parameter order); empty for GET/DELETE."""
    hashed: str
    """The unencoded ``k=v&...`` string whose SHA-512 goes into ``query_hash``."""


def _pairs(params: Params) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in params:
        if isinstance(value, str):
            pairs.append((key, value))
        else:
            pairs.extend((key, item) for item in value)
    return pairs


def hash_string(params: Params) -> str:
    """The exact string Upbit hashes: ``unquote(urlencode(params, doseq=True))``.

    Spaces become ``+`` (``urlencode`` does that and ``unquote`` does not undo it); Upbit's own samples
    and the sandbox agree on this, and the value on the wire is encoded the same way.
    """
    return unquote(urlencode(_pairs(params)))


def encode_params(params: Params, *, as_body: bool) -> EncodedParams:
    """Derive URL query (GET/DELETE) or JSON body (POST) and the hashed string from one ordering."""
    pairs = _pairs(params)
    hashed = hash_string(params)
    if as_body:
        if len({key for key, _ in pairs}) != len(pairs):
            raise ValueError("a JSON body cannot carry repeated keys")
        body = json.dumps(dict(pairs), ensure_ascii=False, separators=(",", ":")).encode()
        return EncodedParams(query="", body=body, hashed=hashed)
    query = urlencode(pairs).replace("%5B%5D=", "[]=")
    return EncodedParams(query=query, body=b"", hashed=hashed)


def make_token(
    credentials: Credentials,
    hashed: str | None,
    *,
    algorithm: Algorithm = Algorithm.HS256,
    nonce: str | None = None,
) -> str:
    """Sign one request's JWT. ``hashed`` is None (or empty) for a request without parameters."""
    payload: dict[str, str] = {
        "access_key": credentials.access_key,
        "nonce": nonce or str(uuid.uuid4()),
    }
    if hashed:
        payload["query_hash"] = hashlib.sha512(hashed.encode()).hexdigest()
        payload["query_hash_alg"] = "SHA512"
    return jwt.encode(payload, credentials.secret_key, algorithm=algorithm.value)


class TokenSigner:
    """Signs the JWTs of one key pair: :func:`make_token`'s tokens, byte for byte, at a fraction of its cost.

    PyJWT checks the key on every signature (not a PEM, SSH, DER or JWK key: ~40% of a token's cost) and
    builds the same header each time. The signer lets PyJWT sign the first token (so a bad key fails as it
    always did), then signs HS256 itself: the header's encoding is kept, the payload is one ``json.dumps``,
    the signature one HMAC. HS512, and an HS256 key shorter than 32 bytes (PyJWT warns about those on
    every signature), stay with PyJWT. The secret never shows in the repr."""

    __slots__ = ("_algorithm", "_credentials", "_fast", "_key", "_prefix")

    def __init__(self, credentials: Credentials, algorithm: Algorithm = Algorithm.HS256) -> None:
        self._credentials = credentials
        self._algorithm = algorithm
        self._fast = algorithm is Algorithm.HS256 and len(credentials.secret_key.encode()) >= 32
        self._key: bytes | None = None  # set once PyJWT has accepted the key (its checks run once)
        header = json.dumps({"alg": algorithm.value, "typ": "JWT"}, separators=(",", ":")).encode()
        self._prefix = _b64url(header) + b"."

    def __repr__(self) -> str:
        return f"TokenSigner({self._credentials!r}, {self._algorithm.value})"

    def sign(self, hashed: str | None, *, nonce: str | None = None) -> str:
        """One request's JWT, as :func:`make_token` signs it (``hashed``: None or empty without params)."""
        key = self._key
        if key is None:
            token = make_token(self._credentials, hashed, algorithm=self._algorithm, nonce=nonce)
            if self._fast:
                self._key = self._credentials.secret_key.encode()
            return token
        payload: dict[str, str] = {"access_key": self._credentials.access_key, "nonce": nonce or str(uuid.uuid4())}
        if hashed:
            payload["query_hash"] = hashlib.sha512(hashed.encode()).hexdigest()
            payload["query_hash_alg"] = "SHA512"
        signing = self._prefix + _b64url(json.dumps(payload, separators=(",", ":")).encode())
        return (signing + b"." + _b64url(hmac.new(key, signing, hashlib.sha256).digest())).decode()


def _b64url(data: bytes) -> bytes:
    """Base64url without padding (RFC 7515), as PyJWT encodes a token's parts."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def params_from_mapping(mapping: Mapping[str, ParamValue | None]) -> list[tuple[str, ParamValue]]:
    """Ordered params from a mapping, dropping None values (Upbit wants omitted keys, not nulls)."""
    return [(key, value) for key, value in mapping.items() if value is not None]
