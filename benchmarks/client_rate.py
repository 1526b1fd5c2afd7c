"""Sustained calls/s of UpbitClient against the sandbox exchange running in a separate process.

Two modes, each run ``--repeat`` times (medians reported):

``limiter_on``
    our RateLimiter at 30/s, the sandbox enforcing Upbit's 30/s (429/418) as configured by its seed;
    expect ~30 calls/s (a little more over short runs: the first second's burst) and no 429.
``limiter_off``
    RateLimiter(enabled=False) and the sandbox's rate limit disabled (``POST /sandbox/config
    {"rate_limit": {"enabled": false}}``): the raw throughput of client + sandbox (signing, HTTP, JSON).

``--concurrency`` workers each call the endpoint in a loop for ``--duration`` seconds. Latencies:
``latency_*`` is one call as the caller sees it (limiter wait included), ``http_latency_*`` the HTTP
exchange alone (from the client's observer). 429s are counted by the sandbox (``/sandbox/stats``).
The sandbox is reset before each run, so runs do not share windows, nonces or counters.

    .venv/bin/python benchmarks/client_rate.py --duration 10 --concurrency 16 --repeat 3

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.errors import ExchangeError  # noqa: E402
from engine.upbit.auth import Credentials  # noqa: E402
from engine.upbit.client import UpbitClient  # noqa: E402
from engine.upbit.ratelimit import RateLimiter  # noqa: E402

ENDPOINTS = ("coin_addresses", "wallet_status", "accounts")
MODES = ("limiter_on", "limiter_off")
_SANDBOX_CODE = "import sys; from engine.sandbox import run_sandbox; run_sandbox('127.0.0.1', int(sys.argv[1]))"


def free_port() -> int:
    """A TCP port nobody listens on right now (the sandbox binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def sandbox_process(startup_timeout: float = 20.0) -> Iterator[str]:
    """Run ``engine.sandbox.run_sandbox`` in a child process; yield its URL; stop it (SIGTERM) afterwards."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    # The demo keys must be the account's keys: do not let UPBIT_* variables replace them.
    env.pop("UPBIT_ACCESS_KEY", None)
    env.pop("UPBIT_SECRET_KEY", None)
    with tempfile.TemporaryFile(mode="w+") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SANDBOX_CODE, str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            text=True,
        )
        try:
            _wait_for_port(proc, port, errors, startup_timeout)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for_port(proc: subprocess.Popen[str], port: int, errors: IO[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            errors.seek(0)
            raise RuntimeError(f"the sandbox exited: {errors.read()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the sandbox did not start in time") from None
            time.sleep(0.05)


async def admin(session: aiohttp.ClientSession, url: str, method: str, path: str, payload: Any = None) -> Any:
    async with session.request(method, f"{url}/sandbox/{path}", json=payload) as response:
        response.raise_for_status()
        return await response.json()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


async def one_run(url: str, mode: str, *, duration: float, concurrency: int, endpoint: str) -> dict[str, Any]:
    """One timed run of ``mode``: counts, rate, 429s at the sandbox, latency percentiles (ms)."""
    limiter_on = mode == "limiter_on"
    async with aiohttp.ClientSession() as session:
        await admin(session, url, "POST", "reset")
        await admin(session, url, "POST", "config", {"rate_limit": {"enabled": limiter_on}})
    http_latencies: list[float] = []
    latencies: list[float] = []
    errors: dict[str, int] = {}
    limiter = RateLimiter(30) if limiter_on else RateLimiter(enabled=False)

    def observe(_endpoint: str, status: int, seconds: float) -> None:
        if status == 200:
            http_latencies.append(seconds)

    async with UpbitClient(Credentials.demo(), base_url=url, limiter=limiter, timeout=10.0, observer=observe) as client:
        call = getattr(client, endpoint)
        await call()  # open the session before the clock starts (counters are read after it)
        await asyncio.sleep(1.1)  # and let that call's rate window pass
        async with aiohttp.ClientSession() as session:
            before = await admin(session, url, "GET", "stats")
        http_latencies.clear()
        started = time.perf_counter()
        deadline = started + duration

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    await call()
                except ExchangeError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    async with aiohttp.ClientSession() as session:
        after = await admin(session, url, "GET", "stats")
    calls = len(latencies)
    return {
        "calls": calls,
        "seconds": round(seconds, 3),
        "calls_per_s": round(calls / seconds, 2),
        "status_429": after["status_429"] - before["status_429"],
        "status_418": after["status_418"] - before["status_418"],
        "errors": errors,
        "latency_p50_ms": round(percentile(latencies, 50) * 1000, 2) if latencies else None,
        "latency_p95_ms": round(percentile(latencies, 95) * 1000, 2) if latencies else None,
        "http_latency_p50_ms": round(percentile(http_latencies, 50) * 1000, 2) if http_latencies else None,
        "http_latency_p95_ms": round(percentile(http_latencies, 95) * 1000, 2) if http_latencies else None,
        "limiter": {
            "waited": limiter.stats.waited,
            "throttles": limiter.stats.throttles,
            "phantom": limiter.stats.phantom,
        },
    }


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric field over the runs."""
    keys = ("calls", "seconds", "calls_per_s", "status_429", "status_418", "latency_p50_ms", "latency_p95_ms",
            "http_latency_p50_ms", "http_latency_p95_ms")  # fmt: skip
    result: dict[str, Any] = {}
    for key in keys:
        values = [run[key] for run in runs if run[key] is not None]
        result[key] = round(statistics.median(values), 3) if values else None
    return result


async def benchmark(url: str, args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "benchmark": "client_rate",
        "endpoint": f"GET via UpbitClient.{args.endpoint}",
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "modes": {},
    }
    for mode in args.modes:
        runs = [
            await one_run(url, mode, duration=args.duration, concurrency=args.concurrency, endpoint=args.endpoint)
            for _ in range(args.repeat)
        ]
        report["modes"][mode] = {"median": medians(runs), "runs": runs}
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent workers (default 16)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode; medians are reported (default 3)")
    parser.add_argument("--endpoint", choices=ENDPOINTS, default="coin_addresses", help="the GET to call")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="modes to run")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1 or args.repeat < 1:
        parser.error("--duration must be positive, --concurrency and --repeat at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with sandbox_process() as url:
        report = asyncio.run(benchmark(url, args))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
