"""Fixtures for the sandbox tests: a running sandbox and a tiny, independent Upbit signer.

The signer follows upbit-api.md §2 with PyJWT and hashlib only; it deliberately does not use
``engine.upbit`` so the sandbox is checked against the written spec, not against our own client.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode

import aiohttp
import jwt
import pytest
from yarl import URL

from engine.sandbox import SandboxSeed, SandboxServer, default_seed
from engine.sandbox.model import Timings

Pairs = Sequence[tuple[str, str]]


def sign(
    access_key: str,
    secret: str,
    hashed: str | None,
    *,
    alg: str = "HS512",
    nonce: str | None = None,
    **extra: Any,
) -> str:
    """A JWT as upbit-api.md §2.2 describes: access_key, nonce, and query_hash when there are params."""
    claims: dict[str, Any] = {"access_key": access_key, "nonce": nonce or str(uuid.uuid4())}
    if hashed:
        claims["query_hash"] = hashlib.sha512(hashed.encode()).hexdigest()
        claims["query_hash_alg"] = "SHA512"
    claims.update(extra)
    return jwt.encode(claims, secret, algorithm=alg)


def query_of(pairs: Pairs) -> tuple[str, str]:
    """(URL query with [] left as-is, the unencoded string to hash) from the same ordered pairs."""
    return urlencode(list(pairs)).replace("%5B%5D=", "[]="), unquote(urlencode(list(pairs)))


@dataclass
class Reply:
    """What came back."""

    status: int
    headers: Any
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def error(self) -> str:
        return self.json["error"]["name"]


class Client:
    """Signs and sends Exchange API calls to a sandbox."""

    def __init__(self, session: aiohttp.ClientSession, base: str, access_key: str, secret: str) -> None:
        self.session, self.base, self.access_key, self.secret = session, base, access_key, secret
        self.alg = "HS512"

    def as_key(self, access_key: str, secret: str) -> Client:
        return Client(self.session, self.base, access_key, secret)

    async def get(self, path: str, pairs: Pairs = (), **kw: Any) -> Reply:
        return await self.call("GET", path, pairs, **kw)

    async def delete(self, path: str, pairs: Pairs = (), **kw: Any) -> Reply:
        return await self.call("DELETE", path, pairs, **kw)

    async def call(self, method: str, path: str, pairs: Pairs = (), *, token: str | None = None, **kw: Any) -> Reply:
        query, hashed = query_of(pairs)
        token = token or sign(self.access_key, self.secret, hashed or None, alg=self.alg)
        url = URL(self.base + path + (f"?{query}" if query else ""), encoded=True)
        return await self.send(method, url, headers={"Authorization": f"Bearer {token}"}, **kw)

    async def post(self, path: str, body: dict[str, Any], *, token: str | None = None, **kw: Any) -> Reply:
        hashed = unquote(urlencode(list(body.items()), doseq=True))
        token = token or sign(self.access_key, self.secret, hashed or None, alg=self.alg)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=utf-8"}
        return await self.send("POST", URL(self.base + path), headers=headers, data=json.dumps(body), **kw)

    async def send(self, method: str, url: URL, **kw: Any) -> Reply:
        async with self.session.request(method, url, **kw) as response:
            return Reply(response.status, response.headers, await response.text())

    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(method, self.base + path, json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def withdraw(self, *, timeout: aiohttp.ClientTimeout | None = None, **overrides: Any) -> Reply:
        """POST the BTC body with ``overrides`` (None removes a key)."""
        body = {k: v for k, v in {**BTC_BODY, **overrides}.items() if v is not None}
        extra = {} if timeout is None else {"timeout": timeout}
        return await self.post("/v1/withdraws/coin", body, **extra)


BTC_ADDRESS = "bc1qsandbox0demo0wallet0000000000000000000"
XRP_ADDRESS = "rN7n7otQDd6FczFgLdSqtcsAUxDkw6fzRH"
BTC_BODY = {"currency": "BTC", "net_type": "BTC", "amount": "0.01", "address": BTC_ADDRESS}
#: Secrets of extra test accounts: 64 bytes, so HS512 gets a full-length key (no PyJWT warning).
LONG_SECRET_A = "a" * 64
LONG_SECRET_B = "b" * 64


def fast(seed: SandboxSeed, seconds: float = 0.05) -> SandboxSeed:
    """The seed with short, jitter-free timings."""
    timings = Timings(waiting_seconds=seconds, waiting_jitter=0.0, processing_seconds=seconds, processing_jitter=0.0)
    return dataclasses.replace(seed, timings=timings)


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default seed must use the demo keys in tests, whatever the developer's shell exports."""
    monkeypatch.delenv("UPBIT_ACCESS_KEY", raising=False)
    monkeypatch.delenv("UPBIT_SECRET_KEY", raising=False)


@pytest.fixture(name="seed")
def _seed() -> SandboxSeed:
    """The default seed with slow timings: withdrawals stay WAITING during a test unless it waits."""
    timings = Timings(waiting_seconds=60.0, waiting_jitter=0.0, processing_seconds=60.0, processing_jitter=0.0)
    return dataclasses.replace(default_seed(), timings=timings)


@pytest.fixture(name="server")
async def _server(seed: SandboxSeed) -> AsyncIterator[SandboxServer]:
    async with SandboxServer(seed) as server:
        yield server


@pytest.fixture(name="client")
async def _client(server: SandboxServer) -> AsyncIterator[Client]:
    key = server.seed.accounts[0].keys[0]
    async with aiohttp.ClientSession() as session:
        yield Client(session, server.url, key.access_key, key.secret_key)
