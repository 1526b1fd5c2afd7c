"""``upbit-withdraw run`` on PostgreSQL through a TCP proxy the test cuts and restores (the shared server
is never touched): the service outlives a database outage, and waits for a database that is down at start.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from engine.sandbox.model import Timings
from tests.acceptance.conftest import (
    BTC_ADDRESS,
    CLI,
    CONFIG_TEMPLATE,
    TOKEN,
    TOKEN_ENV,
    Service,
    ThreadSandbox,
    clean_env,
    fast_seed,
    free_port,
    http_json,
)
from tests.integration.tcp_proxy import ThreadProxy

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SLOW = Timings(waiting_seconds=0.5, waiting_jitter=0.0, processing_seconds=1.5, processing_jitter=0.0)


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; generous deadline (a loaded machine is slow, never wrong)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def via_proxy(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


def pg_config(directory: Path, sandbox_url: str, dsn: str, port: int, extra: str = "") -> Path:
    """The acceptance tests' fast config, on PostgreSQL."""
    text = CONFIG_TEMPLATE.format(db="unused", sandbox=sandbox_url, port=port)
    text = text.replace('database = "sqlite:///unused"', f'database = "{dsn}"')
    path = directory / "config.toml"
    path.write_text(text.replace("[engine]\n", f"[engine]\n{extra}", 1))
    return path


def probe(url: str) -> int:
    try:
        return http_json("GET", url)[0]
    except OSError:
        return 0


def states(service: Service) -> dict[str, str]:
    status, page = service.call("GET", "/v1/withdrawals?limit=1000")
    assert status == 200, page
    return {v["id"]: v["state"] for v in page["withdrawals"]}


def withdrawal(i: int) -> dict[str, str]:
    return {"currency": "BTC", "net_type": "BTC", "amount": f"0.00{i + 1}", "address": BTC_ADDRESS}


def _outage_mid_run(dsn: str, tmp_path: Path) -> None:
    target = urlsplit(dsn)
    with (
        ThreadSandbox(fast_seed(SLOW)) as sandbox,
        ThreadProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy,
    ):
        port = free_port()
        config = pg_config(tmp_path, sandbox.url, via_proxy(dsn, proxy.port), port)
        service = Service(config, port, log=tmp_path / "run.log")
        try:
            for i in range(6):
                assert service.call("POST", "/v1/withdrawals", withdrawal(i))[0] == 201
            wait_until(lambda: sandbox.posts() == 6, what="every withdrawal sent (and settling for ~2 s)")
            assert probe(f"{service.url}/readyz") == 200

            proxy.cut()
            wait_until(lambda: probe(f"{service.url}/readyz") == 503, what="readyz 503 during the cut")
            assert probe(f"{service.url}/healthz") == 200
            status, answer = service.call("POST", "/v1/withdrawals", withdrawal(7))
            assert status == 503 and answer["error"]["name"] == "unavailable", answer
            assert service.call("GET", "/v1/withdrawals")[0] == 503
            wait_until(lambda: "runner.store_unavailable" in service.logs(), what="the runner saw the outage")
            assert service.proc.poll() is None, service.logs()

            proxy.restore()
            wait_until(lambda: probe(f"{service.url}/readyz") == 200, what="readyz 200 after the restore")
            wait_until(lambda: set(states(service).values()) == {"DONE"}, what="every withdrawal DONE")
            assert len(states(service)) == 6
            assert sandbox.posts() == 6
            assert "runner.store_recovered" in service.logs()
            assert service.proc.poll() is None
        finally:
            code = service.stop()
        assert code == 0, service.logs()
        lines = [json.loads(line) for line in service.logs().splitlines() if line.strip()]  # every line JSON
        assert not [e for e in lines if e["level"] == "error" and e["event"] != "api.engine_error"], lines


def _down_at_start(dsn: str, tmp_path: Path) -> None:
    target = urlsplit(dsn)
    with (
        ThreadSandbox(fast_seed()) as sandbox,
        ThreadProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy,
    ):
        proxy.cut()
        port = free_port()
        config = pg_config(tmp_path, sandbox.url, via_proxy(dsn, proxy.port), port)
        log_path = tmp_path / "run.log"
        with log_path.open("ab") as log, subprocess.Popen(
            [*CLI, "--config", str(config), "run", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=clean_env(**{TOKEN_ENV: TOKEN}),
        ) as proc:  # fmt: skip
            try:
                wait_until(lambda: "service.store_unavailable" in log_path.read_text(), what="waiting for the store")
                assert proc.poll() is None
                proxy.restore()
                url = f"http://127.0.0.1:{port}"
                wait_until(lambda: probe(f"{url}/readyz") == 200, what="ready once the database is back")
                status, view = http_json("POST", f"{url}/v1/withdrawals", withdrawal(0), TOKEN)
                assert status == 201, view
                wait_until(
                    lambda: http_json("GET", f"{url}/v1/withdrawals/{view['id']}", None, TOKEN)[1]["state"] == "DONE",
                    what="DONE",
                )
                assert sandbox.posts() == 1
            finally:
                proc.terminate()
                code = proc.wait(40)
        assert code == 0, log_path.read_text()


def _gives_up_after_store_wait(dsn: str, tmp_path: Path) -> None:
    target = urlsplit(dsn)
    with (
        ThreadSandbox(fast_seed()) as sandbox,
        ThreadProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy,
    ):
        proxy.cut()
        port = free_port()
        config = pg_config(tmp_path, sandbox.url, via_proxy(dsn, proxy.port), port, extra="store_wait = 1.0\n")
        result = subprocess.run(
            [*CLI, "--config", str(config), "run", "--port", str(port)],
            capture_output=True, text=True, env=clean_env(**{TOKEN_ENV: TOKEN}), timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 5, result.stderr
    assert "store error" in result.stderr and "Traceback" not in result.stderr


def _sigterm_while_waiting(dsn: str, tmp_path: Path) -> None:
    target = urlsplit(dsn)
    host, port_ = target.hostname or "127.0.0.1", target.port or 5432
    with ThreadSandbox(fast_seed()) as sandbox, ThreadProxy(host, port_) as proxy:
        proxy.cut()
        config = pg_config(tmp_path, sandbox.url, via_proxy(dsn, proxy.port), free_port())
        log_path = tmp_path / "run.log"
        with log_path.open("ab") as log, subprocess.Popen(
            [*CLI, "--config", str(config), "run"],
            stdout=log, stderr=subprocess.STDOUT, env=clean_env(**{TOKEN_ENV: TOKEN}),
        ) as proc:  # fmt: skip
            try:
                wait_until(lambda: "service.store_unavailable" in log_path.read_text(), what="waiting for the store")
            finally:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(40)
    assert code == 0, log_path.read_text()
    assert '"service.stopped"' in log_path.read_text()


async def test_database_cut_mid_run_is_waited_out(postgres_dsn: str, tmp_path: Path) -> None:
    """The database connection is cut while withdrawals are in flight: the service stays up, /healthz
    200 throughout, /readyz and the store routes 503 (never 500); once restored, readyz is 200 again
    and every withdrawal finishes with exactly one POST."""
    await asyncio.to_thread(_outage_mid_run, postgres_dsn, tmp_path)


async def test_run_waits_for_a_database_down_at_start(postgres_dsn: str, tmp_path: Path) -> None:
    """``run`` while the database is unreachable waits and retries (logged), then serves when it returns."""
    await asyncio.to_thread(_down_at_start, postgres_dsn, tmp_path)


async def test_run_gives_up_after_store_wait(postgres_dsn: str, tmp_path: Path) -> None:
    """With ``engine.store_wait = 1`` and the database unreachable, ``run`` exits 5 with a one-line error."""
    await asyncio.to_thread(_gives_up_after_store_wait, postgres_dsn, tmp_path)


async def test_sigterm_while_waiting_for_the_store_exits_0(postgres_dsn: str, tmp_path: Path) -> None:
    """A stop request while ``run`` waits for the database at start ends the wait cleanly (exit 0)."""
    await asyncio.to_thread(_sigterm_while_waiting, postgres_dsn, tmp_path)
