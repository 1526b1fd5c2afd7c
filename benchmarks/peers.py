"""Peers benchmark: the same faulty exchange, N withdrawals through each way of calling Upbit.

Usage (see benchmarks/README.md; needs the ``bench`` extra)::

    .venv/bin/python -m benchmarks.peers                 # N = 200, every side, JSON on stdout
    .venv/bin/python -m benchmarks.peers -n 50 --markdown

One sandbox in its own process (``benchmarks.withdrawals.SandboxProcess``), reset before every side,
with the same faults on ``POST /v1/withdraws/coin``: ``--drop`` accepted-then-dropped connections,
``--error`` 5xx answered without doing anything, ``--hang`` accepted then held past every client's
timeout (``--timeout`` s, the same for all). Its rate limit is off (the point is the POST's faults), its
withdrawals settle in about a second. The sides, one after the other:

``sdk-defaults``  the official SDK's ``AsyncUpbit`` as shipped: it retries a timed-out, dropped or 5xx'd
                  request twice, with a fresh JWT;
``sdk-no-retry``  the same with ``max_retries=0``, as a careful user calls a POST;
``ccxt``          ccxt's async ``upbit.withdraw()`` (it does not retry);
``recipe``        Upbit's published per-withdrawal recipe, as ``benchmarks/withdrawals.py`` runs it;
``engine``        this engine, wired by ``engine.bootstrap`` with the demo timings.

The three client sides POST, then follow their withdrawal (``GET /v1/withdraw``) until it ends; a POST
whose outcome they cannot tell (timeout, dropped connection, 5xx) is left as it is, since sending it
again blind is how duplicates are made. What is reported per side, from the sandbox's own records:
withdrawals created per requested one, duplicates (a request that became two or more withdrawals),
requests whose outcome the caller could not tell, API calls per withdrawal (every call the sandbox
received, retries included), and wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.withdrawals import CURRENCY, Admin, SandboxProcess, baseline_withdrawal, machine_info, make_requests
from engine.models import State, WithdrawalRequest
from engine.upbit.auth import DEMO_ACCESS_KEY, DEMO_SECRET_KEY, Credentials

POST = "POST /v1/withdraws/coin"
SIDES = ("sdk-defaults", "sdk-no-retry", "ccxt", "recipe", "engine")
#: Terminal withdrawal states as Upbit writes them.
ENDED = frozenset({"DONE", "FAILED", "CANCELLED", "REJECTED"})
#: What the caller knows after its POST.
CREATED, REFUSED, UNKNOWN = "created", "refused", "unknown"


@dataclass
class Tally:
    """One side's view of its own calls: what each request's POST told it."""

    outcomes: Counter[str] = field(default_factory=Counter)
    unknown: list[Decimal] = field(default_factory=list)
    """The amounts (one per request) whose outcome the caller could not tell."""

    def add(self, outcome: str, request: WithdrawalRequest) -> None:
        self.outcomes[outcome] += 1
        if outcome == UNKNOWN:
            self.unknown.append(request.amount)


def faults(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The POST's faults, the same for every side (the first rule that fires wins)."""
    return [
        {"endpoint": POST, "kind": "drop", "probability": args.drop},
        {"endpoint": POST, "kind": "error", "probability": args.error, "params": {"status": 503}},
        {"endpoint": POST, "kind": "hang", "probability": args.hang, "params": {"seconds": args.timeout + 2.0}},
    ]


def sandbox_config(args: argparse.Namespace) -> dict[str, Any]:
    """Withdrawals settle in about a second; no rate limit (the faults are the point)."""
    timings = {"waiting_seconds": 0.3, "waiting_jitter": 0.2, "processing_seconds": 0.5, "processing_jitter": 0.3}
    return {"timings": timings, "rate_limit": {"enabled": False}}


async def bounded(requests: Sequence[WithdrawalRequest], concurrency: int, one: Callable[..., Awaitable[None]]) -> None:
    """Run ``one(request)`` for every request, at most ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def guarded(request: WithdrawalRequest) -> None:
        async with gate:
            await one(request)

    await asyncio.gather(*(guarded(r) for r in requests))


async def follow(read: Callable[[], Awaitable[str]], poll: float, limit: float) -> None:
    """Poll a withdrawal's state until it ends (bounded by ``limit`` seconds); read errors are retried."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        await asyncio.sleep(poll)
        try:
            if await read() in ENDED:
                return
        except Exception:  # a failed read is simply tried again at the next poll
            continue


# -- the sides -----------------------------------------------------------------------------------------


async def sdk_side(
    url: str, requests: Sequence[WithdrawalRequest], args: argparse.Namespace, *, retries: bool
) -> Tally:
    """The official SDK's AsyncUpbit: its defaults, or ``max_retries=0``."""
    import upbit

    tally = Tally()
    options: dict[str, Any] = {} if retries else {"max_retries": 0}
    client = upbit.AsyncUpbit(
        access_key=DEMO_ACCESS_KEY, secret_key=DEMO_SECRET_KEY, base_url=url, timeout=args.timeout, **options
    )

    async def one(request: WithdrawalRequest) -> None:
        try:
            made = await client.withdraws.create_withdrawal(
                currency=request.currency, net_type=request.net_type, amount=str(request.amount),
                address=request.address,
            )  # fmt: skip
        except upbit.APIStatusError as exc:
            tally.add(UNKNOWN if exc.status_code >= 500 else REFUSED, request)
            return
        except upbit.APIConnectionError:  # timeouts included: the POST may or may not have been done
            tally.add(UNKNOWN, request)
            return
        tally.add(CREATED, request)

        async def read() -> str:
            return (await client.withdraws.retrieve(uuid=made.uuid)).state

        await follow(read, args.poll, args.follow_limit)

    async with client:
        await bounded(requests, args.concurrency, one)
    return tally


async def ccxt_side(url: str, requests: Sequence[WithdrawalRequest], args: argparse.Namespace) -> Tally:
    """ccxt's async client: ``withdraw()`` (the amount as a float, as its unified API takes it)."""
    import ccxt.async_support as ccxt

    tally = Tally()
    exchange = ccxt.upbit({
        "apiKey": DEMO_ACCESS_KEY, "secret": DEMO_SECRET_KEY, "timeout": int(args.timeout * 1000),
        "urls": {"api": {"public": url, "private": url}},
    })  # fmt: skip

    async def one(request: WithdrawalRequest) -> None:
        try:
            made = await exchange.withdraw(
                request.currency, float(request.amount), request.address, params={"network": request.net_type}
            )
        except ccxt.NetworkError:  # RequestTimeout and 5xx (ExchangeNotAvailable) included
            tally.add(UNKNOWN, request)
            return
        except ccxt.ExchangeError:
            tally.add(REFUSED, request)
            return
        tally.add(CREATED, request)

        async def read() -> str:
            return str((await exchange.fetch_withdrawal(made["id"]))["info"]["state"])

        await follow(read, args.poll, args.follow_limit)

    try:
        await exchange.load_markets()
        await bounded(requests, args.concurrency, one)
    finally:
        await exchange.close()
    return tally


async def recipe_side(url: str, requests: Sequence[WithdrawalRequest], args: argparse.Namespace) -> Tally:
    """Upbit's published recipe, exactly as ``benchmarks/withdrawals.py`` runs it (its ``baseline_withdrawal``)."""
    from engine.upbit.client import UpbitClient
    from engine.upbit.ratelimit import RateLimiter

    tally = Tally()
    extra: Counter[str] = Counter()
    client = UpbitClient(Credentials.demo(), base_url=url, limiter=RateLimiter(30, enabled=False), timeout=args.timeout)

    async def one(request: WithdrawalRequest) -> None:
        state = await baseline_withdrawal(client, request, poll_interval=args.poll, outcome=extra)
        # The recipe gives up on any error of its POST: with these faults, always one it cannot interpret.
        tally.add(UNKNOWN if state == "submit_failed" else CREATED, request)

    async with client:
        await bounded(requests, args.concurrency, one)
    return tally


async def engine_side(url: str, requests: Sequence[WithdrawalRequest], args: argparse.Namespace, db: Path) -> Tally:
    """The engine as ``engine.bootstrap`` wires it (demo timings: a 10 s reconciliation grace)."""
    from engine.bootstrap import build_engine
    from engine.config import AccountConfig, ApiConfig, Config, EngineConfig
    from engine.demo import DEMO_GATEWAY, DEMO_SETTINGS
    from engine.logging import configure_logging
    from engine.policy import Policy

    tally = Tally()
    account = AccountConfig(name="default", base_url=url, demo=True, timeout=args.timeout)
    config = Config(
        engine=EngineConfig(database=f"sqlite:///{db}"), gateway=DEMO_GATEWAY, workflow=DEMO_SETTINGS,
        accounts={"default": account}, policy=Policy(), api=ApiConfig(), source="peers",
    )  # fmt: skip
    with (db.parent / "engine-log.jsonl").open("w") as log:
        configure_logging(level="WARNING", json=True, stream=log)
        async with build_engine(config) as engine:
            ids = [(await engine.submit(r)).id for r in requests]
            deadline = time.monotonic() + args.follow_limit + 60.0
            while time.monotonic() < deadline:
                finals = [await engine.get(i) for i in ids]
                if all(w.state.is_terminal or w.state is State.NEEDS_REVIEW for w in finals):
                    break
                await asyncio.sleep(0.5)
    for workflow in finals:
        if workflow.state is State.NEEDS_REVIEW:
            tally.add(UNKNOWN, workflow.request)  # handed to an operator, with the evidence, instead of guessed
        elif workflow.exchange_uuid is not None:
            tally.add(CREATED, workflow.request)
        else:
            tally.add(REFUSED, workflow.request)
    return tally


# -- measuring -----------------------------------------------------------------------------------------


def exchange_view(
    withdrawals: Sequence[dict[str, Any]], requests: Sequence[WithdrawalRequest], unknown: Sequence[Decimal] = ()
) -> dict[str, int]:
    """From the sandbox's records: withdrawals per requested amount (each request has its own amount)."""
    per_amount = Counter(Decimal(w["amount"]) for w in withdrawals if w["currency"] == CURRENCY)
    wanted = {r.amount for r in requests}
    return {
        "unknown_but_created": sum(1 for amount in unknown if per_amount[amount] > 0),
        "created": sum(n for amount, n in per_amount.items() if amount in wanted),
        "requests_with_a_withdrawal": sum(1 for amount in wanted if per_amount[amount] > 0),
        "duplicated_requests": sum(1 for amount in wanted if per_amount[amount] > 1),
        "duplicates": sum(n - 1 for amount, n in per_amount.items() if amount in wanted and n > 1),
    }


async def run_side(side: str, url: str, admin: Admin, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Reset the sandbox, run one side, and report it from both ends."""
    await admin.prepare(sandbox_config(args), faults(args))
    requests = make_requests(args.n)
    started = time.monotonic()
    tally = await _dispatch(side, url, requests, args, workdir)
    wall = time.monotonic() - started
    stats = await admin.stats()
    withdrawals = await admin.call("GET", "withdrawals")
    seen = exchange_view(withdrawals, requests, tally.unknown)
    fired = {f["kind"]: f["fired"] for f in (await admin.call("GET", "faults"))["faults"]}
    return {
        "side": side,
        "n": args.n,
        "created_per_requested": round(seen["created"] / args.n, 3),
        **seen,
        "caller_could_not_tell": tally.outcomes[UNKNOWN],
        "caller_outcomes": dict(tally.outcomes),
        "api_calls": stats["requests_total"],
        "api_calls_per_withdrawal": round(stats["requests_total"] / args.n, 2),
        "post_calls": stats["by_endpoint"].get(POST, 0),
        "faults_fired": fired,
        "wall_seconds": round(wall, 2),
    }


async def _dispatch(
    side: str, url: str, requests: Sequence[WithdrawalRequest], args: argparse.Namespace, workdir: Path
) -> Tally:
    if side == "sdk-defaults":
        return await sdk_side(url, requests, args, retries=True)
    if side == "sdk-no-retry":
        return await sdk_side(url, requests, args, retries=False)
    if side == "ccxt":
        return await ccxt_side(url, requests, args)
    if side == "recipe":
        return await recipe_side(url, requests, args)
    return await engine_side(url, requests, args, workdir / "engine.sqlite3")


def markdown(results: Sequence[dict[str, Any]]) -> str:
    """The README's table."""
    lines = [
        "| side | created per requested | duplicates | outcome unknown to the caller (of which created) "
        "| API calls per withdrawal | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        unknown = f"{r['caller_could_not_tell']} ({r['unknown_but_created']})"
        lines.append(
            f"| {r['side']} | {r['created_per_requested']:.3f} | {r['duplicates']} | {unknown} "
            f"| {r['api_calls_per_withdrawal']:.2f} | {r['wall_seconds']:.1f} |"
        )
    return "\n".join(lines)


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="upbit-peers-") as tmp:
        workdir = Path(tmp)
        sandbox = SandboxProcess(workdir / "sandbox.log")
        sandbox.start()
        info = machine_info()
        results = []
        try:
            async with Admin(sandbox.url) as admin:
                for side in args.sides:
                    results.append(await run_side(side, sandbox.url, admin, args, workdir))
        finally:
            sandbox.stop()
    settings = {k: getattr(args, k) for k in ("n", "concurrency", "timeout", "drop", "error", "hang", "poll")}
    return {"benchmark": "peers", "settings": settings, "machine": info, "sides": results, "table": markdown(results)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200, help="withdrawals per side")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--concurrency", type=int, default=10, help="calls in flight per client side")
    parser.add_argument("--timeout", type=float, default=5.0, help="every client's request timeout (s)")
    parser.add_argument("--drop", type=float, default=0.02, help="share of POSTs done, then dropped")
    parser.add_argument("--error", type=float, default=0.03, help="share of POSTs answered 503, not done")
    parser.add_argument("--hang", type=float, default=0.01, help="share of POSTs done, then held past the timeout")
    parser.add_argument("--poll", type=float, default=0.5, help="the client sides' poll interval (s)")
    parser.add_argument("--follow-limit", type=float, default=30.0, help="how long a side follows one withdrawal")
    parser.add_argument("--markdown", action="store_true", help="print the table instead of the JSON")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(orchestrate(args))
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(report["table"] if args.markdown else text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
