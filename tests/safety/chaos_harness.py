"""The chaos harness: the real service, SIGKILLed at random, against a faulty sandbox; then proof.

Shared by the fast test (``tests/safety/test_chaos.py``) and the large run (``benchmarks/chaos.py``).

What runs, all on 127.0.0.1 and each in a process of its own:

- the sandbox exchange (``upbit-withdraw sandbox --port P``), with faults switched on through its admin
  routes: ``error`` 5xx on every endpoint, ``drop`` (accept, then cut the connection) and ``malformed``
  on ``POST /v1/withdraws/coin``, ``hang`` past the client's timeout, ``burst_429`` bursts (the rate
  limit's 418 block shortened so a block costs seconds, not half a minute), some latency, and a
  background task pausing and resuming wallets;
- the service (``upbit-withdraw --config FILE run``): the runner and the HTTP API on one SQLite file,
  with short workflow timings so reconciliation and ``needs_review`` happen within the run. It is
  SIGKILLed ``kills`` times at random moments and started again each time.

Withdrawals are submitted **through the HTTP API** of the running service, each with an
``Idempotency-Key``; a submit that meets a dead service (connection refused or reset) is retried with
the same key until it is answered, so a retried submit must never make a second workflow. After the last
restart the faults are cleared, the wallets resumed, and the run waits (bounded) until every workflow is
terminal or ``needs_review``. Then the service is stopped with SIGTERM (it must exit 0) and the harness
reads the SQLite file itself and the sandbox's admin routes, and checks:

- duplicates: withdrawals the sandbox created for one workflow beyond the first (matched by their exact
  currency, network and amount: every workflow's amount is unique) = 0;
- lost: a sandbox withdrawal that no workflow owns by uuid and no ``needs_review`` workflow could match,
  or a workflow neither terminal nor ``needs_review`` = 0;
- every ``needs_review`` workflow's ``escalate`` event carries its evidence;
- every event log is gap-free, ordered, continuous (each event starts where the previous ended) and its
  hash chain verifies (:func:`engine.audit.verify_store`);
- the sandbox ledger agrees with the DONE withdrawals, every DONE workflow's uuid is DONE at the sandbox,
  every workflow that ended in an exchange state agrees with the sandbox, and balances are conserved;
- ``aborted`` workflows sent nothing that was created; exactly one workflow per idempotency key, and a
  replay of every submit returns the same workflow (200); no 5xx from the API, ever.

:func:`run_chaos` returns the summary (JSON-ready); ``summary["violations"]`` lists every broken
property, empty when all hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

from engine.api import create_app, start_site
from engine.audit import verify_store
from engine.bootstrap import build_engine
from engine.config import AccountConfig, Config, EngineConfig, GatewayConfig
from engine.policy import Policy
from engine.sandbox import SandboxServer
from engine.sandbox.model import Timings
from engine.store.sqlite import SQLiteStore
from tests.conftest import FAST, FAST_EXCHANGE

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "chaos-api-token-0123456789abcdef"
TOKEN_ENV = "UPBIT_WITHDRAW_API_TOKEN"
_SCRIPT = Path(sys.executable).with_name("upbit-withdraw")
CLI: list[str] = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "engine.cli"]
SETTLED_EXTRA = {"needs_review"}
TERMINAL = {"DONE", "FAILED", "CANCELLED", "REJECTED", "aborted"}
EXCHANGE_TERMINAL = {"DONE", "FAILED", "CANCELLED", "REJECTED"}
EVIDENCE_KEYS = {"mode", "searched", "since", "matches"}


@dataclass(frozen=True, slots=True)
class Network:
    """One of the default seed's allowlisted networks, and how chaos amounts are made on it."""

    currency: str
    net_type: str
    address: str
    base: Decimal
    unit: Decimal
    fee: Decimal


#: The default seed's networks (DOGE stays out: the seed pauses it on purpose).
BTC_ADDRESS = "bc1qsandbox0demo0wallet0000000000000000000"
ETH_ADDRESS = "0x5a0b54d5dc17e0aadc383d2db43b0a0d3e029c4c"
TRX_ADDRESS = "TJYeasTPa6gpEEfYqGJkbXhBVxBJMEZfUt"
XRP_ADDRESS = "rN7n7otQDd6FczFgLdSqtcsAUxDkw6fzRH"
NETWORKS = (
    Network("BTC", "BTC", BTC_ADDRESS, Decimal("0.0001"), Decimal("1e-8"), Decimal("0.0008")),
    Network("ETH", "ETH", ETH_ADDRESS, Decimal("0.01"), Decimal("1e-8"), Decimal("0.01")),
    Network("USDT", "TRX", TRX_ADDRESS, Decimal("2"), Decimal("1e-6"), Decimal("1")),
    Network("USDT", "ETH", ETH_ADDRESS, Decimal("20"), Decimal("1e-6"), Decimal("5")),
    Network("XRP", "XRP", XRP_ADDRESS, Decimal("2"), Decimal("1e-6"), Decimal("0.4")),
)


@dataclass(slots=True, kw_only=True)
class ChaosSettings:
    """Size, faults and timings of one chaos run."""

    withdrawals: int = 40
    kills: int = 3
    seed: int = 20260101
    #: Seconds between a service becoming healthy and its SIGKILL: uniform in this range.
    kill_gap: tuple[float, float] = (1.0, 2.5)
    #: Seconds a killed service stays down before it is started again: uniform in this range.
    down_time: tuple[float, float] = (0.0, 0.4)
    #: Submissions are spread over about this many seconds (so kills land while they go on).
    submit_span: float = 3.0
    submit_concurrency: int = 8
    error_probability: float = 0.05
    drop_probability: float = 0.02
    malformed_probability: float = 0.01
    hang_probability: float = 0.01
    hang_seconds: float = 2.0
    burst_probability: float = 0.004
    burst_count: int = 3
    latency_probability: float = 0.1
    latency_ms: int = 30
    account_timeout: float = 1.0
    #: The sandbox's 418 block after too many 429s: shortened from 30 s.
    block_seconds: float = 2.0
    wallet_toggle: bool = True
    #: Networks the toggler pauses and resumes, by index into NETWORKS.
    toggled_networks: tuple[int, ...] = (0, 4)
    reconcile_grace: float = 3.0
    preflight_deadline: float = 120.0
    #: The sandbox's withdrawal lifecycle (seconds): WAITING for base+U(0, jitter), then PROCESSING.
    waiting_seconds: float = 0.3
    processing_seconds: float = 0.5
    lifecycle_jitter: float = 0.5
    #: Outcome weights drawn by the sandbox for each new withdrawal.
    outcome_weights: dict[str, float] = field(
        default_factory=lambda: {"DONE": 0.9, "FAILED": 0.04, "REJECTED": 0.03, "CANCELLED": 0.03}
    )
    settle_timeout: float = 60.0
    #: A hard bound on the whole run (seconds), settle included.
    max_seconds: float = 300.0
    #: Non-demo keys (set both): the sandbox's account and the service read them from the environment.
    access_key: str | None = None
    secret_key: str | None = None
    log_level: str = "INFO"
    #: Copy the SQLite files (with -wal and -shm, as the killed process left them) after every kill.
    snapshot_on_kill: bool = False
    #: The account's calls per second (the engine's limiter; the sandbox allows 30).
    rate_limit: int = 30
    concurrency: int = 200
    #: The gateway's shared caches (seconds).
    wallet_ttl: float = 0.5
    chance_ttl: float = 0.5
    #: The account's auto-resolution of needs_review by proven absence (off, as by default in the service):
    #: ``auto_resolve_listings`` empty listings over ``auto_resolve_minutes`` resubmit once.
    auto_resolve: bool = False
    auto_resolve_listings: int = 3
    auto_resolve_minutes: float = 0.05
    #: ``workflow.lane_watch``: how long a lane stays watched after a resubmitted workflow settles.
    lane_watch: float = 3.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: no exchange keys or engine settings leak in from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPBIT_", "COLUMNS"))}
    env.update(extra)
    return env


def plan_requests(count: int, seed: int) -> list[dict[str, str]]:
    """``count`` request bodies spread over NETWORKS, each with an amount no other one has."""
    rng = random.Random(seed)
    bodies = []
    for i in range(count):
        net = NETWORKS[rng.randrange(len(NETWORKS))]
        amount = net.base + (i + 1) * net.unit
        bodies.append({
            "currency": net.currency, "net_type": net.net_type, "amount": format(amount, "f"), "address": net.address,
        })  # fmt: skip
    return bodies


def request_key(body: dict[str, Any]) -> tuple[str, str, Decimal]:
    """How a sandbox withdrawal is matched to its workflow: currency, network and exact amount."""
    return (str(body["currency"]), str(body.get("net_type") or body["currency"]), Decimal(str(body["amount"])))


# -- processes ------------------------------------------------------------------------------------------


class Proc:
    """A child process with its output in a file; every wait is bounded."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdout=out, stderr=asyncio.subprocess.STDOUT, env=self.env, cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> int | None:
        """SIGKILL and reap."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        return await asyncio.wait_for(self.proc.wait(), 10)

    async def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait (bounded), SIGKILL if it would not stop; the exit code of the first stop."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                await self.kill()
                return None
        return self.proc.returncode


async def _get_ok(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _until_healthy(session: aiohttp.ClientSession, proc: Proc, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive:
            raise RuntimeError(f"{proc.name} exited with {proc.proc and proc.proc.returncode}: see {proc.log}")
        if await _get_ok(session, url):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not become healthy within {timeout:g} s: see {proc.log}")


def service_config(workdir: Path, sandbox_url: str, port: int, s: ChaosSettings) -> Path:
    """The service's TOML: SQLite in ``workdir``, the sandbox account, short timings."""
    keys = 'access_key_env = "UPBIT_ACCESS_KEY"\nsecret_key_env = "UPBIT_SECRET_KEY"' if s.access_key else "demo = true"
    text = f"""\
[engine]
database = "sqlite:///{workdir / "workflows.sqlite3"}"
concurrency = {s.concurrency}
log_level = "{s.log_level}"
log_format = "json"

[gateway]
allowlist_ttl = 5.0
wallet_ttl = {s.wallet_ttl}
chance_ttl = {s.chance_ttl}
poll_window = 0.05

[workflow]
preflight_deadline = {s.preflight_deadline}
wallet_recheck_initial = 0.2
wallet_recheck_max = 1.0
read_retry_initial = 0.1
read_retry_max = 1.0
poll_initial = 0.2
poll_max = 1.0
poll_jitter = 0.1
reconcile_delay = 0.3
reconcile_grace = {s.reconcile_grace}
clock_skew = 5.0
lane_retry = 0.1
recent_pages = 10
lane_watch = {s.lane_watch}

[accounts.default]
base_url = "{sandbox_url}"
timeout = {s.account_timeout}
rate_limit = {s.rate_limit}
{keys}
{_auto_resolve_section(s)}
[api]
host = "127.0.0.1"
port = {port}
"""
    path = workdir / "config.toml"
    path.write_text(text)
    return path


def _auto_resolve_section(s: ChaosSettings) -> str:
    if not s.auto_resolve:
        return ""
    return (
        "\n[accounts.default.policy.auto_resolve]\nenabled = true\n"
        f"listings = {s.auto_resolve_listings}\nminutes = {s.auto_resolve_minutes}\n"
    )


# -- the run --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """What the harness saw while the run went on."""

    kills: int = 0
    restarts: int = 0
    kill_codes: list[int | None] = field(default_factory=list)
    submit_attempts: int = 0
    submit_connection_errors: int = 0
    submit_created: int = 0
    submit_replayed: int = 0
    api_statuses: Counter[int] = field(default_factory=Counter)
    api_5xx: list[dict[str, Any]] = field(default_factory=list)
    unexpected_answers: list[dict[str, Any]] = field(default_factory=list)
    ids_by_index: dict[int, str] = field(default_factory=dict)
    replay_mismatches: list[dict[str, Any]] = field(default_factory=list)
    wallet_toggles: int = 0
    answers: list[bytes] = field(default_factory=list)


class Chaos:
    """One chaos run in ``workdir``: start everything, make trouble, settle, check."""

    def __init__(self, settings: ChaosSettings, workdir: Path, *, keep_answers: bool = False) -> None:
        self.s = settings
        self.dir = workdir
        self.rng = random.Random(settings.seed)
        self.tally = Tally()
        self.keep_answers = keep_answers
        self.bodies = plan_requests(settings.withdrawals, settings.seed)
        self.sandbox_port = free_port()
        self.api_port = free_port()
        self.sandbox_url = f"http://127.0.0.1:{self.sandbox_port}"
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        keys = {}
        if settings.access_key and settings.secret_key:
            keys = {"UPBIT_ACCESS_KEY": settings.access_key, "UPBIT_SECRET_KEY": settings.secret_key}
        self.sandbox = Proc(
            "sandbox", [*CLI, "sandbox", "--port", str(self.sandbox_port)], clean_env(**keys), workdir / "sandbox.log"
        )
        self.config = service_config(workdir, self.sandbox_url, self.api_port, settings)
        self.service_env = clean_env(**keys, **{TOKEN_ENV: TOKEN})
        self.service: Proc | None = None
        self.incarnation = 0
        self.session: aiohttp.ClientSession | None = None
        self.faults_fired: list[dict[str, Any]] = []
        self.initial_ledger: dict[str, Any] = {}
        self._up = asyncio.Event()

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None
        return self.session

    async def admin(self, method: str, path: str, payload: Any = None) -> Any:
        async with self.http.request(
            method, f"{self.sandbox_url}/sandbox/{path}", json=payload, timeout=aiohttp.ClientTimeout(total=30)
        ) as resp:
            body = await resp.read()
            if resp.status >= 300:
                raise RuntimeError(f"sandbox admin {method} {path}: {resp.status} {body[:300]!r}")
            return json.loads(body)

    async def api(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """One call to the service; connection problems raise (the caller decides whether to retry)."""
        all_headers = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
        async with self.http.request(
            method, f"{self.api_url}{path}", json=body, headers=all_headers, timeout=aiohttp.ClientTimeout(total=15)
        ) as resp:
            raw = await resp.read()
        self.tally.api_statuses[resp.status] += 1
        if self.keep_answers:
            self.tally.answers.append(raw)
        payload = json.loads(raw) if raw else None
        if resp.status >= 500:
            self.tally.api_5xx.append({"method": method, "path": path, "status": resp.status, "body": payload})
        return resp.status, payload

    async def start_service(self) -> None:
        self.incarnation += 1
        self.service = Proc(
            f"service#{self.incarnation}", [*CLI, "--config", str(self.config), "run"], self.service_env,
            self.dir / f"service-{self.incarnation:03d}.log",
        )  # fmt: skip
        await self.service.start()
        await _until_healthy(self.http, self.service, f"{self.api_url}/healthz")
        self._up.set()

    async def kill_service(self) -> None:
        assert self.service is not None
        self._up.clear()
        code = await self.service.kill()
        self.tally.kills += 1
        self.tally.kill_codes.append(code)
        if self.s.snapshot_on_kill:
            target = self.dir / "snapshots" / f"kill-{self.tally.kills:03d}"
            target.mkdir(parents=True, exist_ok=True)
            for path in self.dir.glob("workflows.sqlite3*"):
                shutil.copy2(path, target / path.name)

    # -- setup ----------------------------------------------------------------------------------

    async def start_sandbox(self) -> None:
        await self.sandbox.start()
        await _until_healthy(self.http, self.sandbox, f"{self.sandbox_url}/sandbox/")
        s = self.s
        await self.admin("POST", "config", {
            "timings": {
                "waiting_seconds": s.waiting_seconds, "waiting_jitter": s.lifecycle_jitter,
                "processing_seconds": s.processing_seconds, "processing_jitter": s.lifecycle_jitter,
            },
            "outcome_weights": s.outcome_weights,
            "rate_limit": {"block_seconds": s.block_seconds},
        })  # fmt: skip
        self.initial_ledger = await self.admin("GET", "ledger")

    def fault_rules(self) -> list[dict[str, Any]]:
        """The faults of the run; the first rule that fires wins, latency adds up."""
        s = self.s
        post = "POST /v1/withdraws/coin"
        share = s.error_probability / 4
        return [
            {"endpoint": post, "kind": "drop", "probability": s.drop_probability},
            {"endpoint": post, "kind": "malformed", "probability": s.malformed_probability},
            {"endpoint": "*", "kind": "hang", "probability": s.hang_probability, "seconds": s.hang_seconds},
            {"endpoint": "*", "kind": "error", "probability": share, "status": 500},
            {"endpoint": "*", "kind": "error", "probability": share, "status": 502},
            {"endpoint": "*", "kind": "error", "probability": share, "status": 503, "body": "json"},
            {"endpoint": "*", "kind": "error", "probability": share, "status": 504},
            {"endpoint": "*", "kind": "burst_429", "probability": s.burst_probability, "count": s.burst_count},
            {"endpoint": "*", "kind": "latency", "probability": s.latency_probability, "ms": s.latency_ms},
        ]

    # -- the troublemakers -------------------------------------------------------------------------

    async def submit_all(self) -> None:
        """Submit every planned body through the API (spread over ``submit_span``), retrying with the key."""
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(self.bodies)):
            queue.put_nowait(i)
        pause = self.s.submit_span * self.s.submit_concurrency / max(1, len(self.bodies))

        async def worker(rng: random.Random) -> None:
            while not queue.empty():
                i = queue.get_nowait()
                await self.submit_one(i)
                if rng.random() < 0.1:  # an impatient client sends it again: must be the same workflow
                    await self.submit_one(i, replay=True)
                await asyncio.sleep(rng.uniform(0, 2 * pause))

        await asyncio.gather(*(worker(random.Random(self.s.seed + n)) for n in range(self.s.submit_concurrency)))

    async def submit_one(self, i: int, *, replay: bool = False) -> None:
        body, key = self.bodies[i], f"chaos-{self.s.seed}-{i}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            self.tally.submit_attempts += 1
            try:
                status, answer = await self.api("POST", "/v1/withdrawals", body, {"Idempotency-Key": key})
            except (aiohttp.ClientError, TimeoutError):
                self.tally.submit_connection_errors += 1
                await asyncio.sleep(0.1)
                continue
            if status in (200, 201):
                self._accepted(i, status, answer, replay=replay)
                return
            if status >= 500:
                await asyncio.sleep(0.1)
                continue
            self.tally.unexpected_answers.append({"index": i, "status": status, "answer": answer})
            return
        self.tally.unexpected_answers.append({"index": i, "status": None, "answer": "gave up after 120 s"})

    def _accepted(self, i: int, status: int, answer: dict[str, Any], *, replay: bool) -> None:
        known = self.tally.ids_by_index.get(i)
        if known is None:
            self.tally.ids_by_index[i] = answer["id"]
        elif known != answer["id"]:
            self.tally.replay_mismatches.append({"index": i, "first": known, "then": answer["id"]})
        if replay and status != 200:
            self.tally.replay_mismatches.append({"index": i, "replay_status": status})
        if status == 201:
            self.tally.submit_created += 1
        else:
            self.tally.submit_replayed += 1

    async def killer(self) -> None:
        """Kill the service ``kills`` times at random moments; start it again each time."""
        for _ in range(self.s.kills):
            await self._up.wait()
            await asyncio.sleep(self.rng.uniform(*self.s.kill_gap))
            await self.kill_service()
            await asyncio.sleep(self.rng.uniform(*self.s.down_time))
            await self.start_service()
            self.tally.restarts += 1

    async def toggle_wallets(self, stop: asyncio.Event) -> None:
        """Pause a network, resume it a little later; again and again until ``stop``."""
        rng = random.Random(self.s.seed ^ 0x7A11E7)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.uniform(0.5, 2.0))
            if stop.is_set():
                return
            net = NETWORKS[rng.choice(self.s.toggled_networks)]
            await self.set_wallet(net, "paused")
            self.tally.wallet_toggles += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.uniform(0.3, 1.5))
            await self.set_wallet(net, "working")

    async def set_wallet(self, net: Network, state: str) -> None:
        await self.admin("POST", "wallets", {"currency": net.currency, "net_type": net.net_type, "wallet_state": state})

    async def resume_wallets(self) -> None:
        for index in self.s.toggled_networks:
            await self.set_wallet(NETWORKS[index], "working")

    # -- settling -------------------------------------------------------------------------------------

    async def states(self) -> list[dict[str, Any]]:
        """Every workflow's view, through the API (paged)."""
        views: list[dict[str, Any]] = []
        cursor = None
        while True:
            path = "/v1/withdrawals?limit=1000" + (f"&cursor={cursor}" if cursor else "")
            status, page = await self.api("GET", path)
            if status != 200:
                raise RuntimeError(f"list answered {status}: {page}")
            views.extend(page["withdrawals"])
            cursor = page["next_cursor"]
            if cursor is None:
                return views

    async def settle(self) -> float:
        """Wait until every workflow is terminal or needs_review; returns the seconds it took."""
        started = time.monotonic()
        deadline = started + self.s.settle_timeout
        while time.monotonic() < deadline:
            views = await self.states()
            if len(views) >= len(self.bodies) and all(_settled(v) for v in views) and not await self._still_due():
                break
            await asyncio.sleep(0.25)
        return time.monotonic() - started

    async def _still_due(self) -> int:
        """Settled workflows the service will still step (needs_review listing for proof of absence, a
        settled one watching its lane): read from the SQLite file, read-only (the API does not show it)."""
        path = self.dir / "workflows.sqlite3"

        def count() -> int:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
                row = db.execute(
                    "SELECT COUNT(*) FROM workflows WHERE next_run_at IS NOT NULL AND state IN "
                    "('needs_review', 'aborted', 'DONE', 'FAILED', 'CANCELLED', 'REJECTED')"
                ).fetchone()
            return int(row[0])

        return await asyncio.to_thread(count)

    async def replay_all(self) -> None:
        """Every submit again with its key: each must answer 200 with the same workflow."""
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                await self.submit_one(i, replay=True)

        await asyncio.gather(*(one(i) for i in range(len(self.bodies))))
        body = dict(self.bodies[0], amount=format(Decimal(self.bodies[0]["amount"]) + 1, "f"))
        status, _ = await self.api("POST", "/v1/withdrawals", body, {"Idempotency-Key": f"chaos-{self.s.seed}-0"})
        if status != 409:
            self.tally.replay_mismatches.append({"index": 0, "conflict_probe_status": status})

    # -- the whole thing ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> Any:
        """An HTTP session for the run; on the way out, every process started is stopped."""
        async with aiohttp.ClientSession() as self.session:
            try:
                yield self
            finally:
                if self.service is not None:
                    await self.service.kill()
                await self.sandbox.terminate(10)

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        async with self.running(), asyncio.timeout(self.s.max_seconds):
            return await self._run(started)

    async def _run(self, started: float) -> dict[str, Any]:
        await self.start_sandbox()
        await self.admin("POST", "faults", self.fault_rules())
        await self.start_service()
        stop_toggling = asyncio.Event()
        toggler = asyncio.create_task(self.toggle_wallets(stop_toggling)) if self.s.wallet_toggle else None
        try:
            await asyncio.gather(self.submit_all(), self.killer())
        finally:
            stop_toggling.set()
            if toggler is not None:
                await toggler
        self.faults_fired = (await self.admin("GET", "faults"))["faults"]
        await self.admin("DELETE", "faults")
        await self.resume_wallets()
        settle_seconds = await self.settle()
        await self.replay_all()
        assert self.service is not None
        stop_code = await self.service.terminate(60)
        wall = time.monotonic() - started
        evidence = await self.collect()
        summary = await analyse(self, evidence)
        summary["timing"] = {"wall_seconds": round(wall, 1), "settle_seconds": round(settle_seconds, 1)}
        summary["service_stop_code"] = stop_code
        if stop_code != 0:
            summary["violations"].append(f"the service did not stop cleanly on SIGTERM (exit {stop_code})")
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        if self.keep_answers:
            (self.dir / "api-answers.jsonl").write_bytes(b"".join(raw + b"\n" for raw in self.tally.answers))
        return summary

    async def posts(self) -> int:
        """How many POST /v1/withdraws/coin the sandbox received so far."""
        return int((await self.admin("GET", "stats"))["by_endpoint"].get("POST /v1/withdraws/coin", 0))

    async def post_records(self) -> list[dict[str, Any]]:
        """Every POST /v1/withdraws/coin the sandbox received, in order, with its body and answer."""
        records: list[dict[str, Any]] = []
        since = 0
        while True:
            page = await self.admin("GET", f"requests?since={since}&limit=5000")
            records += [r for r in page["requests"] if r["method"] == "POST" and r["path"] == "/v1/withdraws/coin"]
            if not page["requests"]:
                return records
            since = page["next_since"]

    async def collect(self) -> dict[str, Any]:
        """Everything the checks read: the sandbox's view, then the store's (read by this process)."""
        sandbox = {
            "withdrawals": await self.admin("GET", "withdrawals"),
            "ledger": await self.admin("GET", "ledger"),
            "stats": await self.admin("GET", "stats"),
            "posts": await self.post_records(),
        }
        store = await read_store(self.dir / "workflows.sqlite3")
        with (self.dir / "posts.jsonl").open("w") as out:
            for record in sandbox["posts"]:
                out.write(json.dumps(record) + "\n")
        return {"sandbox": sandbox, "store": store}


def _settled(view: dict[str, Any]) -> bool:
    return view["state"] in TERMINAL or (view["state"] == "needs_review" and view["resolution"] is None)


async def read_store(db: Path) -> dict[str, Any]:
    """Every workflow, its events, and the audit verification, read from the SQLite file."""
    async with SQLiteStore(db) as store:
        checked, broken = await verify_store(store)
        workflows = []
        before = None
        while True:
            page = await store.list(limit=1000, before_id=before)
            workflows.extend(page)
            if len(page) < 1000:
                break
            before = page[-1].id
        events = {wf.id: await store.events(wf.id) for wf in workflows}
    return {"checked": checked, "broken": broken, "workflows": workflows, "events": events}


# -- the checks -----------------------------------------------------------------------------------------


def _event_problems(wf: Any, events: list[Any]) -> list[str]:
    problems = []
    if not events or events[0].trigger != "create" or events[0].to_state != "pending":
        problems.append("the log does not start with create -> pending")
    for before, after in itertools.pairwise(events):
        if after.at < before.at:
            problems.append(f"event {after.seq} is older than event {before.seq}")
        if after.from_state != before.to_state:
            problems.append(
                f"event {after.seq} starts in {after.from_state}, the one before ended in {before.to_state}"
            )
    if events and events[-1].to_state != wf.state.value:
        problems.append(f"the last event ends in {events[-1].to_state} but the workflow is {wf.state.value}")
    return problems


def _escalation_problem(events: list[Any]) -> str | None:
    escalations = [e for e in events if e.trigger == "escalate"]
    if not escalations:
        return "no escalate event"
    evidence = escalations[-1].data.get("evidence")
    if not isinstance(evidence, dict) or not set(evidence) >= EVIDENCE_KEYS or not escalations[-1].data.get("why"):
        return f"escalate event without evidence: {escalations[-1].data}"
    return None


Check = tuple[dict[str, Any], list[str]]
"""What one check contributes: summary fields, and the properties it found broken."""


def _key_text(key: tuple[str, str, Decimal]) -> str:
    return f"{key[0]}/{key[1]} {key[2]}"


def check_duplicates(sandbox: dict[str, Any]) -> Check:
    """Several sandbox withdrawals for one workflow's (currency, network, amount)."""
    per_key = Counter(request_key(w) for w in sandbox["withdrawals"])
    duplicates = {_key_text(k): n for k, n in per_key.items() if n > 1}
    by_body = {body: n for body, n in sandbox["stats"]["creations_by_body"].items() if n > 1}
    count = sum(n - 1 for n in per_key.values() if n > 1)
    broken = [f"duplicates: {duplicates} (creations_by_body > 1: {by_body})"] if count or by_body else []
    return {"duplicates": count}, broken


def check_lost(workflows: list[Any], sandbox: dict[str, Any]) -> Check:
    """Created at the sandbox but owned by nobody (and no needs_review match), or stuck in the store."""
    by_key = {wf_key(wf): wf for wf in workflows}
    owned = {wf.exchange_uuid for wf in workflows if wf.exchange_uuid}
    lost: list[dict[str, Any]] = []
    unowned_review = 0
    for w in sandbox["withdrawals"]:
        if w["uuid"] in owned:
            continue
        owner = by_key.get(request_key(w))
        if owner is not None and owner.state.value == "needs_review":
            unowned_review += 1
            continue
        where = None if owner is None else f"{owner.id} {owner.state.value}"
        lost.append({"sandbox_uuid": w["uuid"], "body": w["body"], "state": w["state"], "workflow": where})
    lost += [
        {"stuck": f"{wf.id} {wf.state.value}"} for wf in workflows if wf.state.value not in TERMINAL | SETTLED_EXTRA
    ]
    fields = {"lost": len(lost), "needs_review_with_unowned_withdrawal": unowned_review}
    return fields, [f"lost: {lost[:10]}"] if lost else []


def check_never_twice(workflows: list[Any], events: dict[str, list[Any]], sandbox: dict[str, Any]) -> Check:
    """At the wire: no POST of a body after one of its POSTs may have been executed. Also: which
    needs_review workflows never had a POST reach the exchange at all."""
    posts = _posts_by_key(sandbox["posts"])
    created = Counter(request_key(w) for w in sandbox["withdrawals"])
    # An automatic resubmit (proof of absence, with its evidence) is a resend after a possible effect by
    # design; it is allowed only when the sandbox indeed created at most one withdrawal for that body.
    auto = {wf_key(wf) for wf in workflows if any(e.trigger == "auto_resubmit" for e in events[wf.id])}
    resent_keys = {k for k, rs in posts.items() if _resent(rs)}
    by_auto = {k for k in resent_keys if k in auto and created[k] <= 1}
    resent = {_key_text(k): [r["status"] for r in posts[k]] for k in resent_keys - by_auto}
    review = [wf for wf in workflows if wf.state.value == "needs_review"]
    never_sent = [wf for wf in review if not posts.get(wf_key(wf))]
    triggers = Counter(e.data.get("note", e.trigger) for wf in workflows for e in events[wf.id])
    fields = {
        "posts_received_per_workflow_max": max((len(r) for r in posts.values()), default=0),
        "posts_resent_after_possible_effect": len(resent),
        "posts_resent_by_auto_resolution": len(by_auto),
        "auto_resubmits": triggers["auto_resubmit"],
        "auto_resolve_stopped": triggers["auto_resolve_stopped"],
        "needs_review": len(review),
        "needs_review_modes": dict(Counter(_review_mode(events[wf.id]) for wf in review)),
        "needs_review_never_sent": len(never_sent),
        "needs_review_never_sent_modes": dict(Counter(_review_mode(events[wf.id]) for wf in never_sent)),
    }
    broken = [f"a POST was sent again after one that may have been executed: {resent}"] if resent else []
    return fields, broken


def check_events(workflows: list[Any], events: dict[str, list[Any]], store: dict[str, Any]) -> Check:
    """Hash chains verify; logs are gap-free, ordered, continuous; every escalation has its evidence."""
    review = [wf for wf in workflows if wf.state.value == "needs_review"]
    no_evidence = {wf.id: p for wf in review if (p := _escalation_problem(events[wf.id]))}
    chains = [asdict(b) for b in store["broken"]]
    order = {wf.id: p for wf in workflows if (p := _event_problems(wf, events[wf.id]))}
    broken = []
    if no_evidence:
        broken.append(f"needs_review without evidence: {no_evidence}")
    if chains:
        broken.append(f"hash chain broken: {chains[:10]}")
    if order:
        broken.append(f"event logs out of order: {dict(list(order.items())[:10])}")
    fields = {
        "needs_review_without_evidence": len(no_evidence),
        "chains_checked": store["checked"],
        "chains_broken": len(chains),
        "event_order_problems": len(order),
    }
    return fields, broken


def check_ledger(workflows: list[Any], sandbox: dict[str, Any], initial: dict[str, Any]) -> Check:
    """The sandbox's books agree with the DONE withdrawals and the store; aborted sent nothing."""
    problems = _ledger_problems(workflows, sandbox, initial)
    created = {request_key(w) for w in sandbox["withdrawals"]}
    sent_aborted = [wf.id for wf in workflows if wf.state.value == "aborted" and wf_key(wf) in created]
    broken = [f"ledger: {p}" for p in problems]
    if sent_aborted:
        broken.append(f"aborted workflows with a withdrawal at the sandbox: {sent_aborted}")
    return {"ledger_ok": not problems, "aborted_but_created": len(sent_aborted)}, broken


def check_intake(chaos: Chaos, workflows: list[Any]) -> Check:
    """Idempotent intake, no 5xx, no crash of the API."""
    tally = chaos.tally
    broken = _idempotency_problems(chaos, workflows)
    if tally.api_5xx:
        broken.append(f"the API answered 5xx: {tally.api_5xx[:5]}")
    if tally.unexpected_answers:
        broken.append(f"unexpected submit answers: {tally.unexpected_answers[:5]}")
    logs = scan_logs(chaos.dir)
    if logs["api.crashed"]:
        broken.append(f"the API crashed {logs['api.crashed']} times (see service logs)")
    fields = {
        "submit": {
            "http_attempts": tally.submit_attempts,
            "connection_errors": tally.submit_connection_errors,
            "created_201": tally.submit_created,
            "replayed_200": tally.submit_replayed,
            "replay_mismatches": len(tally.replay_mismatches),
        },
        "api_statuses": {str(k): v for k, v in sorted(tally.api_statuses.items())},
        "api_5xx": len(tally.api_5xx),
        "log_events": logs,
    }
    return fields, broken


def sandbox_counts(chaos: Chaos, sandbox: dict[str, Any]) -> dict[str, Any]:
    """What the exchange saw."""
    stats = sandbox["stats"]
    return {
        "posts_sent": stats["by_endpoint"].get("POST /v1/withdraws/coin", 0),
        "post_statuses": stats["by_endpoint_status"].get("POST /v1/withdraws/coin", {}),
        "withdrawals_created_at_sandbox": len(sandbox["withdrawals"]),
        "sandbox_by_state": stats["withdrawals_by_state"],
        "exchange_calls": stats["requests_total"],
        "exchange_calls_by_endpoint": stats["by_endpoint"],
        "status_429": stats["status_429"],
        "status_418": stats["status_418"],
        "dropped": stats["dropped"],
        "faults_fired": {_fault_name(f): f["fired"] for f in chaos.faults_fired},
        "wallet_toggles": chaos.tally.wallet_toggles,
    }


async def analyse(chaos: Chaos, evidence: dict[str, Any]) -> dict[str, Any]:
    """The summary: counts, and every property that does not hold under ``violations``."""
    store, sandbox = evidence["store"], evidence["sandbox"]
    workflows, events = store["workflows"], store["events"]
    summary: dict[str, Any] = {
        "withdrawals": len(chaos.bodies),
        "kills": chaos.tally.kills,
        "restarts": chaos.tally.restarts,
        "submitted_via": "HTTP API (POST /v1/withdrawals with Idempotency-Key, retried across restarts)",
        "auto_resolve": chaos.s.auto_resolve,
        "workflows_in_store": len(workflows),
        "by_state": dict(sorted(Counter(wf.state.value for wf in workflows).items())),
        "abort_reasons": dict(Counter(wf.reason for wf in workflows if wf.state.value == "aborted")),
    }
    violations: list[str] = []
    checks = (
        check_duplicates(sandbox),
        check_lost(workflows, sandbox),
        check_never_twice(workflows, events, sandbox),
        check_events(workflows, events, store),
        check_ledger(workflows, sandbox, chaos.initial_ledger),
        check_intake(chaos, workflows),
    )
    for fields, broken in checks:
        summary.update(fields)
        violations += broken
    summary.update(sandbox_counts(chaos, sandbox))
    summary["violations"] = violations
    return summary


def _fault_name(fault: dict[str, Any]) -> str:
    return f"{fault['kind']} {fault['endpoint']} {fault['params'].get('status', '')}".strip()


def _posts_by_key(records: list[dict[str, Any]]) -> dict[tuple[str, str, Decimal], list[dict[str, Any]]]:
    grouped: dict[tuple[str, str, Decimal], list[dict[str, Any]]] = {}
    for record in records:
        body = record["body"]
        if isinstance(body, dict) and "currency" in body and "amount" in body:
            grouped.setdefault(request_key(body), []).append(record)
    return grouped


def _may_have_executed(status: int | str) -> bool:
    """Anything but a definite refusal (a 4xx, incl. 429/418) may have created the withdrawal."""
    return not (isinstance(status, int) and 400 <= status < 500)


def _resent(records: list[dict[str, Any]]) -> bool:
    first = next((i for i, r in enumerate(records) if _may_have_executed(r["status"])), None)
    return first is not None and first < len(records) - 1


def wf_key(wf: Any) -> tuple[str, str, Decimal]:
    return (wf.request.currency, wf.request.net_type, wf.request.amount)


def _review_mode(events: list[Any]) -> str:
    escalations = [e for e in events if e.trigger == "escalate"]
    if not escalations:
        return "?"
    data = escalations[-1].data
    return f"{data.get('evidence', {}).get('mode')}: {data.get('why')}"


def _ledger_problems(workflows: list[Any], sandbox: dict[str, Any], initial: dict[str, Any]) -> list[str]:
    sw_by_uuid = {w["uuid"]: w for w in sandbox["withdrawals"]}
    problems = []
    done_sum: dict[str, Decimal] = {}
    for w in sandbox["withdrawals"]:
        if w["state"] == "DONE":
            done_sum[w["currency"]] = done_sum.get(w["currency"], Decimal(0)) + Decimal(w["amount"]) + Decimal(w["fee"])
    totals = {c: Decimal(v) for c, v in sandbox["ledger"]["done_totals"].items()}
    for currency in sorted(set(done_sum) | {c for c, v in totals.items() if v}):
        if totals.get(currency, Decimal(0)) != done_sum.get(currency, Decimal(0)):
            problems.append(f"{currency}: done_totals {totals.get(currency)} != sum of DONE {done_sum.get(currency)}")
    for wf in workflows:
        if wf.state.value not in EXCHANGE_TERMINAL:
            continue
        found = sw_by_uuid.get(wf.exchange_uuid)
        if found is None:
            problems.append(f"{wf.id} is {wf.state.value} with uuid {wf.exchange_uuid} unknown to the sandbox")
        elif found["state"] != wf.state.value:
            problems.append(f"{wf.id} is {wf.state.value} but the sandbox says {found['state']}")
        elif Decimal(found["amount"]) != wf.request.amount:
            problems.append(f"{wf.id} amount {wf.request.amount} but the sandbox's is {found['amount']}")
    problems += _conservation_problems(initial, sandbox["ledger"])
    return problems


def _conservation_problems(initial: dict[str, Any], final: dict[str, Any]) -> list[str]:
    """balance + locked + done of every currency equals the starting balance (nothing appears or vanishes)."""
    problems = []
    start = {a["name"]: a["currencies"] for a in initial.get("accounts", [])}
    for account in final["accounts"]:
        for currency, row in account["currencies"].items():
            before = start.get(account["name"], {}).get(currency)
            if before is None:
                continue
            total = Decimal(row["balance"]) + Decimal(row["locked"]) + Decimal(row["done"])
            first = Decimal(before["balance"]) + Decimal(before["locked"]) + Decimal(before["done"])
            if total != first:
                problems.append(f"{account['name']} {currency}: balance+locked+done {total} != starting {first}")
    return problems


def _idempotency_problems(chaos: Chaos, workflows: list[Any]) -> list[str]:
    problems = []
    keys = Counter(wf.idempotency_key for wf in workflows)
    twice = {k: n for k, n in keys.items() if n > 1}
    if twice:
        problems.append(f"idempotency keys with several workflows: {twice}")
    if len(workflows) != len(chaos.bodies):
        problems.append(f"{len(workflows)} workflows in the store for {len(chaos.bodies)} distinct submits")
    if chaos.tally.replay_mismatches:
        problems.append(f"replays that did not return the first workflow: {chaos.tally.replay_mismatches[:5]}")
    ids = {wf.id for wf in workflows}
    unknown = [i for i, wf_id in chaos.tally.ids_by_index.items() if wf_id not in ids]
    if unknown:
        problems.append(f"acknowledged submits missing from the store: {unknown[:10]}")
    return problems


def scan_logs(workdir: Path) -> dict[str, int]:
    """Counts of the log events that point at bugs or trouble, over every service incarnation."""
    names = ("api.crashed", "workflow.step_crashed", "workflow.step_refused", "workflow.retry_later",
             "exchange.unknown_state", "exchange.unexpected_state", "workflow.moved_elsewhere")  # fmt: skip
    counts = dict.fromkeys(names, 0)
    for path in sorted(workdir.glob("service-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            for name in names:
                if f'"{name}"' in line:
                    counts[name] += 1
    return counts


async def run_chaos(settings: ChaosSettings, workdir: Path, *, keep_answers: bool = False) -> dict[str, Any]:
    """One chaos run in ``workdir`` (created); the summary (see the module docstring)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return await Chaos(settings, workdir, keep_answers=keep_answers).run()


# -- a live stack in a background thread (hostile input, API fuzzing) ------------------------------------


class LiveStack:
    """The sandbox, an engine with its runner, and the HTTP API, served from a background thread's loop.

    For tests that talk plain blocking HTTP (urllib, schemathesis' requests): ``api_url``, ``sandbox_url``,
    ``db`` (the SQLite file), and :meth:`call` / :meth:`admin` / :meth:`workflow_count` to look around.
    Loopback only, ephemeral ports; ``with LiveStack(tmp) as stack:`` stops everything it started.
    """

    def __init__(self, workdir: Path, *, settings: Any = None) -> None:
        self.dir = workdir
        self.db = workdir / "workflows.sqlite3"
        self.settings = settings
        self.api_url = ""
        self.sandbox_url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name="live-stack")

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the test thread by __enter__
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with SandboxServer() as sandbox:
            self.sandbox_url = sandbox.url
            sandbox.exchange.configure(**_exchange_timings(FAST_EXCHANGE))
            config = Config(
                engine=EngineConfig(database=f"sqlite:///{self.db}"),
                gateway=GatewayConfig(allowlist_ttl=5.0, wallet_ttl=0.05, chance_ttl=0.05, poll_window=0.01),
                workflow=self.settings or FAST,
                accounts={"default": AccountConfig(name="default", base_url=sandbox.url, demo=True, timeout=2.0)},
                policy=Policy(),
            )
            engine = build_engine(config)
            async with engine:
                runner, self.api_url = await start_site(create_app(engine, token=TOKEN), host="127.0.0.1", port=0)
                self._ready.set()
                try:
                    await self._stop.wait()
                finally:
                    await runner.cleanup()

    def __enter__(self) -> LiveStack:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the live stack did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    # -- blocking helpers ---------------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
             raw: bytes | None = None) -> tuple[int, Any]:  # fmt: skip
        """One API call (with the token); (status, parsed JSON body or None)."""
        return http_json(method, f"{self.api_url}{path}", body, token=TOKEN, headers=headers, raw=raw)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = http_json(method, f"{self.sandbox_url}/sandbox/{path}", body)
        assert status < 300, payload
        return payload

    def posts(self) -> int:
        """How many POST /v1/withdraws/coin the sandbox received."""
        return int(self.admin("GET", "stats")["by_endpoint"].get("POST /v1/withdraws/coin", 0))

    def workflow_count(self) -> int:
        """Rows in the store's workflows table, read straight from the SQLite file."""
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM workflows").fetchone()[0])

    def wait_settled(self, workflow_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """Poll the API until the workflow is terminal or needs_review."""
        deadline = time.monotonic() + timeout
        while True:
            status, view = self.call("GET", f"/v1/withdrawals/{workflow_id}")
            assert status == 200, view
            if _settled(view) or time.monotonic() > deadline:
                return dict(view)
            time.sleep(0.05)


def _exchange_timings(fast: dict[str, float]) -> dict[str, Any]:
    jitter = fast.get("jitter", 0.0)
    return {"timings": Timings(
        waiting_seconds=fast["waiting_seconds"], waiting_jitter=jitter,
        processing_seconds=fast["processing_seconds"], processing_jitter=jitter,
    )}  # fmt: skip


def http_json(
    method: str,
    url: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """A small blocking JSON client; ``raw`` sends those exact bytes instead of ``body`` as JSON."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:  # loopback only
            payload = response.read()
            return response.status, json.loads(payload) if payload else None
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            return exc.code, json.loads(payload) if payload else None
        except ValueError:
            return exc.code, payload.decode(errors="replace")
