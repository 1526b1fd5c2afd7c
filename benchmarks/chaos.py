"""The large chaos run: ``python benchmarks/chaos.py --withdrawals 1000 --kills 20``.

The same harness as ``tests/safety/test_chaos.py`` (``workflows/testing/chaos.py``): the service
(``upbit-withdraw run``) SIGKILLed ``--kills`` times at random moments while ``--withdrawals`` are
submitted through its HTTP API, against the sandbox exchange with faults on (5xx everywhere, dropped and
malformed POST answers, hangs past the client's timeout, 429 bursts, wallets paused and resumed). After
the last restart the faults are cleared and everything settles; then the store and the sandbox are
compared. Prints the summary as JSON on stdout and exits 1 when any property is violated.

Everything binds 127.0.0.1; every wait is bounded (``--max-seconds``); every process it starts, it stops.
On the 2-core machine: 1000 withdrawals with 20 kills take about 72 s of wall time, with 30 kills about
92 s (each restart costs the service's start-up, about 0.7 s); the exchange's 30 calls/s is the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workflows.testing.chaos import ChaosSettings, run_chaos  # noqa: E402


def settings_for(args: argparse.Namespace) -> ChaosSettings:
    """Timings scaled to the size: about 30 withdrawals a second is the exchange's ceiling."""
    span = max(3.0, args.withdrawals / 30.0)
    return ChaosSettings(
        withdrawals=args.withdrawals,
        kills=args.kills,
        seed=args.seed,
        submit_span=span,
        kill_gap=(args.kill_gap_min, args.kill_gap_max),
        settle_timeout=args.settle_timeout,
        max_seconds=args.max_seconds,
        auto_resolve=args.auto_resolve,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--withdrawals", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument("--kill-gap-min", type=float, default=1.0, help="seconds a service lives at least")
    parser.add_argument("--kill-gap-max", type=float, default=4.0, help="seconds a service lives at most")
    parser.add_argument("--settle-timeout", type=float, default=300.0)
    parser.add_argument("--max-seconds", type=float, default=1500.0, help="hard bound on the whole run")
    parser.add_argument("--workdir", type=Path, help="keep the logs, the SQLite file and summary.json here")
    parser.add_argument(
        "--auto-resolve",
        action="store_true",
        help="turn on the account's auto-resolution of needs_review by proven absence (3 listings over 3 s)",
    )
    args = parser.parse_args(argv)
    if args.workdir is not None:
        summary = asyncio.run(run_chaos(settings_for(args), args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
            summary = asyncio.run(run_chaos(settings_for(args), Path(tmp)))
    print(json.dumps(summary, indent=2, default=str))
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
