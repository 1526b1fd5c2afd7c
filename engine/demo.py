"""``upbit-withdraw demo``: the engine against an in-process sandbox, with a scripted batch.

It starts the sandbox (the built-in seed, keyed with the published demo pair, faster withdrawal
timings), opens a SQLite store (a temporary one unless ``--db``), builds the engine exactly as the
service does (:func:`engine.bootstrap.build_engine`), and submits ``count`` withdrawals across the
seed's allowlisted networks. A few are built to fail, each for a documented reason: the script and its
expected outcomes are the withdrawal's (:mod:`workflows.withdrawal_demo`).

Beside them runs a small payout batch (:mod:`workflows.batch.demo`: five items, one REJECTED by the
exchange, one not allowlisted), which settles with its settlement report. The demo shows live progress,
then a table of outcomes, the batch's report and the exchange calls used per endpoint, and exits 0 only
when every workflow and every batch item ended as expected. "Settled" is each workflow's kind's word.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine.bootstrap import build_engine, standard_kinds
from engine.config import AccountConfig, ApiConfig, Config, EngineConfig, GatewayConfig
from engine.core import Engine
from engine.kinds import KindRegistry
from engine.logging import configure_logging
from engine.models import Event, Workflow
from engine.policy import Policy, WorkflowSettings
from engine.sandbox import SandboxServer
from workflows.batch.demo import demo_batch
from workflows.withdrawal_demo import SUCCESS, Planned, demo_seed, plan

__all__ = ["DEMO_SETTINGS", "Planned", "demo_seed", "plan", "run_demo"]  # the script's names: re-exported

#: Demo timings: a paused wallet gives up after 4 s instead of 30 min; polls are frequent.
DEMO_SETTINGS = WorkflowSettings(
    preflight_deadline=4.0,
    wallet_recheck_initial=0.3,
    wallet_recheck_max=1.0,
    read_retry_initial=0.2,
    read_retry_max=1.0,
    poll_initial=0.25,
    poll_max=1.0,
    poll_jitter=0.1,
    reconcile_delay=0.5,
    reconcile_grace=10.0,
    clock_skew=30.0,
    lane_retry=0.2,
)
DEMO_GATEWAY = GatewayConfig(allowlist_ttl=30.0, wallet_ttl=0.5, chance_ttl=1.0, poll_window=0.05)
#: How long the demo waits for every workflow to settle before calling the run a failure.
SETTLE_LIMIT = 50.0


async def _run_batch(engine: Engine, batch_id: str, expected: dict[str, str]) -> dict[str, Any]:
    """Wait for the demo batch to settle; its report, each item checked against what was expected."""
    with contextlib.suppress(TimeoutError):  # a batch that did not settle is reported as not ok
        await engine.wait(batch_id, timeout=SETTLE_LIMIT)
    report = await engine.batch_report(batch_id)
    for row in report["items"]:
        row["expected"] = expected[row["reference"]]
        row["as_expected"] = row["outcome"] == row["expected"]
    report["ok"] = report["state"] == "settled" and all(row["as_expected"] for row in report["items"])
    return report


class _Tracker:
    """Latest record per workflow, fed by the engine's transition hook (settled: by its kind)."""

    def __init__(self, kinds: KindRegistry) -> None:
        self.kinds = kinds
        self.latest: dict[str, Workflow] = {}

    def observe(self, before: Workflow, after: Workflow, event: Event) -> None:
        self.latest[after.id] = after

    def counts(self, ids: list[str], initial: dict[str, str]) -> Counter[str]:
        return Counter(str(self.latest[i].state) if i in self.latest else initial[i] for i in ids)

    def settled(self, ids: list[str]) -> int:
        return sum(1 for i in ids if i in self.latest and self.kinds.is_settled(self.latest[i]))


def _config(url: str, db_path: Path) -> Config:
    return Config(
        engine=EngineConfig(database=f"sqlite:///{db_path}"),
        gateway=DEMO_GATEWAY,
        workflow=DEMO_SETTINGS,
        accounts={"default": AccountConfig(name="default", base_url=url, demo=True)},
        policy=Policy(),
        api=ApiConfig(),
        source="demo",
    )


async def _follow(engine: Engine, tracker: _Tracker, ids: list[str], initial: dict[str, str], console: Console) -> None:
    columns = (
        SpinnerColumn(), TextColumn("[bold]withdrawals"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[counts]}"),
    )  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("demo", total=len(ids), counts="")
        async with asyncio.timeout(SETTLE_LIMIT):
            while True:
                counts = tracker.counts(ids, initial)
                text = "  ".join(f"{state} {n}" for state, n in sorted(counts.items()))
                progress.update(task, completed=tracker.settled(ids), counts=text)
                if tracker.settled(ids) == len(ids):
                    return
                await asyncio.sleep(0.1)


async def _run(count: int, db_path: Path, console: Console) -> dict[str, Any]:
    seed = demo_seed()
    planned = plan(count, seed)
    started = time.monotonic()
    sandbox = SandboxServer(seed=seed)
    tracker = _Tracker(standard_kinds())
    async with sandbox, build_engine(_config(sandbox.url, db_path), observers=[tracker.observe]) as engine:
        submitted = [await engine.submit(p.request) for p in planned]
        ids = [wf.id for wf in submitted]
        initial = {wf.id: str(wf.state) for wf in submitted}
        items, expected = demo_batch(seed)
        batch = await engine.submit_batch(items, idempotency_key="demo-payroll")
        try:
            await _follow(engine, tracker, ids, initial, console)
        except TimeoutError:
            console.print(f"[red]not every withdrawal settled within {SETTLE_LIMIT:g} s[/red]")
        finals = [await engine.get(i) for i in ids]
        batch_report = await _run_batch(engine, batch.id, expected)
        stats = engine.stats()["default"]
    report = _report(planned, finals, stats, time.monotonic() - started)
    return {**report, "ok": report["ok"] and batch_report["ok"], "batch": batch_report}


def _report(planned: list[Planned], finals: list[Workflow], stats: dict[str, Any], elapsed: float) -> dict[str, Any]:
    rows = [
        {
            "id": wf.id,
            "label": p.label,
            "currency": wf.request.currency,
            "net_type": wf.request.net_type,
            "amount": format(wf.request.amount, "f"),
            "state": str(wf.state),
            "reason": wf.reason,
            "expected_state": str(p.expected_state),
            "expected_reasons": list(p.expected_reasons),
            "as_expected": p.matches(wf),
        }
        for p, wf in zip(planned, finals, strict=True)
    ]
    calls = dict(sorted(stats["calls"].items()))
    return {
        "ok": all(r["as_expected"] for r in rows),
        "elapsed_seconds": round(elapsed, 2),
        "workflows": rows,
        "calls": calls,
        "calls_total": sum(calls.values()),
        "poll_batches": stats["poll_batches"],
    }


def _show(report: dict[str, Any], console: Console) -> None:
    table = Table("#", "id", "currency/net", "amount", "final state", "reason", "expected?", title="Outcomes")
    for n, row in enumerate(report["workflows"], 1):
        expected = row["expected_state"] + "".join(f"/{r}" for r in row["expected_reasons"][:1])
        mark = f"[green]yes[/green] ({row['label']})" if row["as_expected"] else f"[red]NO[/red] (wanted {expected})"
        style = "green" if row["state"] == SUCCESS else "yellow" if row["as_expected"] else "red"
        table.add_row(
            str(n), row["id"], f"{row['currency']}/{row['net_type']}", row["amount"],
            f"[{style}]{row['state']}[/{style}]", row["reason"] or "", mark,
        )  # fmt: skip
    console.print(table)
    _show_batch(report["batch"], console)
    calls = Table("endpoint", "calls", title="Exchange API calls")
    for endpoint, n in report["calls"].items():
        calls.add_row(endpoint, str(n))
    calls.add_row("[bold]total[/bold]", f"[bold]{report['calls_total']}[/bold]")
    console.print(calls)
    batch_items = len(report["batch"]["items"])
    per = report["calls_total"] / max(1, len(report["workflows"]) + batch_items)
    verdict = "[green]every withdrawal ended as expected[/green]" if report["ok"] else "[red]unexpected outcomes[/red]"
    console.print(
        f"{len(report['workflows'])} withdrawals and a batch of {batch_items} in {report['elapsed_seconds']:.1f} s, "
        f"{per:.2f} exchange calls each ({report['poll_batches']} batched polls): {verdict}"
    )


def _show_batch(batch: dict[str, Any], console: Console) -> None:
    table = Table("reference", "amount", "outcome", "reason", "txid", "expected?",
                  title=f"Payout batch {batch['batch_id']}: {batch['state']}")  # fmt: skip
    for row in batch["items"]:
        mark = "[green]as expected[/green]" if row["as_expected"] else f"[red]NO[/red] (wanted {row['expected']})"
        table.add_row(row["reference"], f"{row['amount']} {row['currency']}", row["outcome"], row["reason"] or "",
                      row["txid"] or "", mark)  # fmt: skip
    console.print(table)
    totals = ", ".join(f"{cur} {t['amount']} ({t['count']} items)" for cur, t in batch["totals"]["by_currency"].items())
    console.print(f"batch totals: {totals}; by outcome: {batch['totals']['by_state']}")


def run_demo(*, count: int = 20, db: str | None = None, as_json: bool = False) -> int:
    """Run the demo; returns the exit code (0: every workflow ended as expected)."""
    configure_logging(level="ERROR", stream=sys.stderr)
    interactive = sys.stdout.isatty()
    console = Console(stderr=as_json, width=None if interactive else 140)
    with tempfile.TemporaryDirectory(prefix="upbit-withdraw-demo-") as tmp:
        db_path = Path(db) if db else Path(tmp) / "demo.sqlite3"
        if not as_json:
            console.print(f"Sandbox exchange in-process, store [bold]{db_path}[/bold], {count} withdrawals")
        report = asyncio.run(_run(count, db_path, console))
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _show(report, console)
    return 0 if report["ok"] else 1
