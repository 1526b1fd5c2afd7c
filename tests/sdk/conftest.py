"""Fixtures for driving the sandbox with other people's Upbit clients (the official SDK, ccxt).

The sandbox runs on a thread of its own (:class:`engine.sandbox.thread.SandboxThread`) so that blocking
clients (the SDK's ``Upbit``, ccxt) can call it; admin calls go through plain ``httpx``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from engine.sandbox import SandboxSeed, default_seed
from engine.sandbox.model import Timings
from engine.sandbox.thread import SandboxThread

#: Withdrawals stay WAITING for the whole test unless the test settles them through the admin routes.
SLOW = Timings(waiting_seconds=600.0, waiting_jitter=0.0, processing_seconds=600.0, processing_jitter=0.0)


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo keys, whatever the shell exports (the SDK also reads UPBIT_BASE_URL: drop it)."""
    for name in ("UPBIT_ACCESS_KEY", "UPBIT_SECRET_KEY", "UPBIT_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(name="seed")
def _seed() -> SandboxSeed:
    return dataclasses.replace(default_seed(), timings=SLOW)


@pytest.fixture(name="sandbox")
def _sandbox(seed: SandboxSeed) -> Iterator[SandboxThread]:
    with SandboxThread(seed) as sandbox:
        yield sandbox


def admin(sandbox: SandboxThread, method: str, path: str, body: Any = None) -> Any:
    """One admin call; it must succeed."""
    response = httpx.request(method, sandbox.url + path, json=body, timeout=10.0)
    assert response.status_code == 200, response.text
    return response.json()
