"""SandboxThread: a sandbox for blocking callers, started and stopped by ``with``."""

from __future__ import annotations

import httpx
import pytest

from engine.sandbox import SandboxThread


def test_serves_on_its_own_thread_and_stops() -> None:
    with SandboxThread() as sandbox:
        url = sandbox.url
        assert httpx.get(url + "/sandbox/stats", timeout=10.0).status_code == 200
        assert httpx.get(url + "/v1/market/all", timeout=10.0).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/sandbox/stats", timeout=10.0)


def test_a_port_in_use_is_raised_in_the_caller() -> None:
    with SandboxThread() as first, pytest.raises(OSError):
        SandboxThread(port=first.server.port).start()
