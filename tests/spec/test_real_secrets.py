"""Real-length Upbit secrets (40 characters), not only the sandbox's 64-character demo secret.

Upbit issues 40-character secret keys: a full-length key for HS256 (32 bytes) but short of HS512's 64, for
which PyJWT emits ``InsecureKeyLengthWarning`` on every signature. HS256 is therefore the default (as in
Upbit's official SDK, ccxt and pyupbit) and HS512 stays selectable. Here both are signed with a 40-character
secret and verified by the sandbox over real HTTP on 127.0.0.1, and a separate process proves that the
warning HS512 causes reaches neither stdout nor stderr as a raw line once logging is configured: it is one
JSON event, without the secret.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jwt
import pytest

from engine.sandbox import SandboxSeed, SandboxServer, default_seed
from engine.upbit.auth import Algorithm, Credentials
from engine.upbit.client import UpbitClient

ROOT = Path(__file__).resolve().parents[2]
#: Shaped like a real key pair: 40-character access key, 40-character secret.
REAL_SHAPED = Credentials("AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd", "s3cr3t" + "Q" * 30 + "9876")


def _seed_with(credentials: Credentials) -> SandboxSeed:
    """The default seed whose demo account also holds ``credentials``."""
    seed = default_seed()
    first, *others = seed.accounts
    account = dataclasses.replace(first, keys=(*first.keys, credentials))
    return dataclasses.replace(seed, accounts=(account, *others))


def test_secret_is_real_length() -> None:
    """The fixture is what Upbit issues: 40 characters."""
    assert len(REAL_SHAPED.secret_key) == 40 and len(REAL_SHAPED.access_key) == 40


async def test_hs256_default_verifies_without_warning() -> None:
    """The default client signs a 40-character secret with HS256; the sandbox verifies every call (GET
    without params, GET with a query hash) and no warning is raised (pytest turns one into an error)."""
    async with (
        SandboxServer(_seed_with(REAL_SHAPED)) as server,
        UpbitClient(REAL_SHAPED, base_url=server.url) as client,
    ):
        assert await client.accounts()
        chance = await client.chance("BTC", "BTC")
        assert chance.currency == "BTC"


async def test_hs512_verifies_and_warns() -> None:
    """HS512 stays selectable: the sandbox verifies its tokens, and PyJWT warns about the key length (which
    the engine routes to its log; see the subprocess test below)."""
    async with (
        SandboxServer(_seed_with(REAL_SHAPED)) as server,
        UpbitClient(REAL_SHAPED, base_url=server.url, algorithm=Algorithm.HS512) as client,
    ):
        with pytest.warns(jwt.InsecureKeyLengthWarning):
            assert await client.accounts()


SCRIPT = textwrap.dedent(
    """
    import asyncio, dataclasses, sys
    from engine.sandbox import SandboxSeed, SandboxServer, default_seed
    from engine.upbit.auth import Algorithm, Credentials
    from engine.upbit.client import UpbitClient

    KEY = Credentials(sys.argv[1], sys.argv[2])

    async def main() -> None:
        if sys.argv[3] == "configured":
            from engine.logging import configure_logging
            configure_logging(level="INFO", json=True, stream=sys.stderr)
        seed = default_seed()
        first, *others = seed.accounts
        seed = dataclasses.replace(seed, accounts=(dataclasses.replace(first, keys=(*first.keys, KEY)), *others))
        async with SandboxServer(seed) as server:
            for algorithm in (Algorithm.HS256, Algorithm.HS512):
                async with UpbitClient(KEY, base_url=server.url, algorithm=algorithm) as client:
                    for _ in range(3):
                        await client.accounts()
                        await client.chance("BTC", "BTC")
        print("calls verified")

    asyncio.run(main())
    """
)


def _run(mode: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONWARNINGS")}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, REAL_SHAPED.access_key, REAL_SHAPED.secret_key, mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_warning_is_a_log_event_not_a_raw_line() -> None:
    """With logging configured, HS256 then HS512 with a 40-character secret against the sandbox: every
    stderr line is a JSON event, PyJWT's key-length warning is one ``python.warning`` event, stdout holds
    only the program's own output, and the secret appears nowhere. Without configured logging, the same
    run prints the raw warning (so this test would see one)."""
    raw = _run("bare")
    assert raw.returncode == 0, raw.stderr
    assert "InsecureKeyLengthWarning" in raw.stderr  # the control: Python's default is a raw stderr line

    run = _run("configured")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "calls verified\n"
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # a raw line would not parse
    warned = [e for e in events if e["event"] == "python.warning"]
    assert len(warned) == 1, events
    assert warned[0]["category"] == "InsecureKeyLengthWarning"
    assert warned[0]["level"] == "warning" and "HMAC key is 40 bytes" in warned[0]["message"]
    for text in (run.stdout, run.stderr):
        assert REAL_SHAPED.secret_key not in text
