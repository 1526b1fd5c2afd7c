"""Acceptance fixtures: the CLI as a subprocess, a sandbox in a background thread, ``run`` as a service.

Everything binds 127.0.0.1 on free ports, every subprocess has a timeout, and every process started
here is stopped by its own handle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.demo import demo_seed
from engine.sandbox import SandboxSeed, SandboxServer
from engine.sandbox.model import Timings

TOKEN = "acceptance-token-0123456789abcdef"
TOKEN_ENV = "UPBIT_WITHDRAW_API_TOKEN"
BTC_ADDRESS = "bc1qsandbox0demo0wallet0000000000000000000"
DOGE_ADDRESS = "DH5yaieqoZN36fDVciNyRueRGvGLR3mr7L"
FAST_TIMINGS = Timings(waiting_seconds=0.05, waiting_jitter=0.0, processing_seconds=0.05, processing_jitter=0.0)
_SCRIPT = Path(sys.executable).with_name("upbit-withdraw")
#: The console script when installed (as the README uses it), else the module.
CLI: list[str] = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "engine.cli"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: no exchange keys or engine settings leak in from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPBIT_", "COLUMNS"))}
    env.update(extra)
    return env


@dataclass
class Result:
    """A finished CLI run."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(
    args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 60.0, cwd: Path | None = None
) -> Result:
    """Run ``upbit-withdraw ARGS`` to completion; no traceback may ever reach stderr."""
    proc = subprocess.run(
        [*CLI, *args],
        check=False,
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        timeout=timeout,
        cwd=cwd,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return Result(proc.returncode, proc.stdout, proc.stderr)


def http_json(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    """A small blocking JSON client (for the sandbox's admin routes and the service's API)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


class ThreadSandbox:
    """The sandbox exchange served from a background thread's own event loop."""

    def __init__(self, seed: SandboxSeed) -> None:
        self.seed = seed
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True, name="sandbox")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with SandboxServer(seed=self.seed) as server:
            self.url = server.url
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ThreadSandbox:
        self._thread.start()
        assert self._ready.wait(10), "the sandbox did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = http_json(method, f"{self.url}/sandbox/{path}", body)
        assert status < 300, payload
        return payload

    def posts(self) -> int:
        """How many POST /v1/withdraws/coin the sandbox received."""
        return int(self.admin("GET", "stats")["by_endpoint"].get("POST /v1/withdraws/coin", 0))


def fast_seed(timings: Timings = FAST_TIMINGS) -> SandboxSeed:
    """The demo seed (demo keys, DOGE paused) with the given withdrawal timings."""
    return dataclasses.replace(demo_seed(), timings=timings)


CONFIG_TEMPLATE = """\
[engine]
database = "sqlite:///{db}"
log_level = "INFO"
log_format = "json"

[gateway]
allowlist_ttl = 5.0
wallet_ttl = 0.05
chance_ttl = 0.05
poll_window = 0.01

[workflow]
preflight_deadline = 60.0
wallet_recheck_initial = 0.05
wallet_recheck_max = 0.2
read_retry_initial = 0.05
read_retry_max = 0.3
poll_initial = 0.05
poll_max = 0.2
poll_jitter = 0.01
reconcile_delay = 0.05
reconcile_grace = 0.5
clock_skew = 5.0
lane_retry = 0.05
lane_watch = 1.0

[accounts.default]
base_url = "{sandbox}"
demo = true

[api]
port = {port}
"""


def write_config(directory: Path, sandbox_url: str, *, port: int | None = None, extra: str = "") -> Path:
    """A service config for the sandbox at ``sandbox_url`` with fast timings."""
    path = directory / "config.toml"
    db = directory / "workflows.sqlite3"
    path.write_text(CONFIG_TEMPLATE.format(db=db, sandbox=sandbox_url, port=port or free_port()) + extra)
    return path


class Service:
    """``upbit-withdraw --config FILE run`` as a subprocess."""

    def __init__(self, config: Path, port: int, *, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [*CLI, "--config", str(config), "run", "--port", str(port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=clean_env(**{TOKEN_ENV: TOKEN, **(env or {})}),
        )  # fmt: skip
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"run exited with {self.proc.returncode}: {self.logs()}")
            try:
                if http_json("GET", f"{self.url}/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"run did not become healthy: {self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http_json(method, f"{self.url}{path}", body, TOKEN)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        """Signal the service and wait for it; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise
        self._log.close()
        return int(self.proc.returncode)


@dataclass
class Stack:
    """A sandbox, a service on it, and how to reach both (from the store or over HTTP)."""

    sandbox: ThreadSandbox
    service: Service
    config: Path

    def args(self, mode: str) -> list[str]:
        """Global options for talking to the store (``store``) or to the service (``api``)."""
        return ["--config", str(self.config)] if mode == "store" else ["--api", self.service.url]

    def env(self) -> dict[str, str]:
        return clean_env(**{TOKEN_ENV: TOKEN})

    def cli(self, mode: str, *args: str, timeout: float = 60.0) -> Result:
        return run_cli([*self.args(mode), *args], env=self.env(), timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One sandbox and one ``run`` service for a whole test module."""
    directory = tmp_path_factory.mktemp("stack")
    with ThreadSandbox(fast_seed()) as sandbox:
        port = free_port()
        config = write_config(directory, sandbox.url, port=port)
        service = Service(config, port, log=directory / "run.log")
        try:
            yield Stack(sandbox, service, config)
        finally:
            code = service.stop()
            assert code == 0, service.logs()
