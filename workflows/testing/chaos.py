"""The chaos harness: the real service, SIGKILLed at random, against a faulty sandbox; then proof.

Shared by the fast test (``tests/safety/test_chaos.py``) and the large run (``benchmarks/chaos.py``);
the checks are in :mod:`workflows.testing.checks`.

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
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

from workflows.testing.checks import analyse, read_store, settled

TOKEN = "chaos-api-token-0123456789abcdef"  # noqa: S105 (the harness's own API token, for loopback runs only)
TOKEN_ENV = "UPBIT_WITHDRAW_API_TOKEN"  # noqa: S105 (the variable's name, not a secret)
_SCRIPT = Path(sys.executable).with_name("upbit-withdraw")
CLI: list[str] = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "engine.cli"]


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


def seeded(seed: int) -> random.Random:
    """A pseudo-random generator for the run's choices: seeded, so a chaos run can be replayed."""
    return random.Random(seed)  # noqa: S311 (reproducible choices, nothing secret)


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
    rng = seeded(seed)
    bodies = []
    for i in range(count):
        net = NETWORKS[rng.randrange(len(NETWORKS))]
        amount = net.base + (i + 1) * net.unit
        bodies.append({
            "currency": net.currency, "net_type": net.net_type, "amount": format(amount, "f"), "address": net.address,
        })  # fmt: skip
    return bodies


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
                *self.argv, stdout=out, stderr=asyncio.subprocess.STDOUT, env=self.env, cwd=self.log.parent,
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
        self.rng = seeded(settings.seed)
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

        await asyncio.gather(*(worker(seeded(self.s.seed + n)) for n in range(self.s.submit_concurrency)))

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
        rng = seeded(self.s.seed ^ 0x7A11E7)
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
            if len(views) >= len(self.bodies) and all(settled(v) for v in views) and not await self._still_due():
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


async def run_chaos(settings: ChaosSettings, workdir: Path, *, keep_answers: bool = False) -> dict[str, Any]:
    """One chaos run in ``workdir`` (created); the summary (see the module docstring)."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    return await Chaos(settings, workdir, keep_answers=keep_answers).run()
