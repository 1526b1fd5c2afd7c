"""``upbit-withdraw batch ...``: payout batches from the command line (registered by ``engine.cli``)::

    batch submit payouts.csv|payouts.json [--skip-invalid] [--idempotency-key KEY]
    batch status ID
    batch report ID [--csv]
    batch cancel ID

Like the withdrawal commands they work on the store directly, or with ``--api URL`` on a running service.
A refused batch prints every bad item (index, reference, field, message) and exits 2; nothing is stored.

:func:`register` receives the CLI's shared pieces (global options, output, the backend) instead of
importing ``engine.cli``, which imports this module to register it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import click
from rich.console import Console
from rich.table import Table

from engine.backends import Backend, HttpBackend, StoreBackend
from engine.batch_ops import BATCH_KIND, BatchOps
from engine.bootstrap import standard_kinds
from engine.errors import InvalidBatch, InvalidRequest
from engine.operators import Permission

__all__ = ["CliParts", "register"]

T = TypeVar("T")


class _Options(Protocol):
    json: bool


@dataclass(frozen=True, slots=True)
class CliParts:
    """What the batch commands share with the rest of the CLI."""

    global_options: Callable[[Callable[..., Any]], Callable[..., Any]]
    options: Callable[[], _Options]
    with_backend: Callable[[Any, Callable[[Backend], Coroutine[Any, Any, Any]]], Coroutine[Any, Any, Any]]
    run: Callable[[Coroutine[Any, Any, Any]], Any]
    emit_json: Callable[[Any], None]
    console: Callable[[], Console]
    usage_exit: int


# -- the two ways to reach batches ----------------------------------------------------------------------


async def _submit(
    backend: Backend, text: str, fmt: str, *, skip_invalid: bool, key: str | None
) -> tuple[dict[str, Any], bool]:
    if isinstance(backend, StoreBackend):
        engine = backend.engine
        items, caps = engine.read_batch(text, fmt)
        wf, created = await engine.intake_batch(items, skip_invalid=skip_invalid, max_total=caps or None,
                                                idempotency_key=key)  # fmt: skip
        return await engine.get_batch(wf.id), created
    items, caps = _kind().read(text, fmt)  # parsed here, sent as JSON: the service validates every item
    # Checked here first as well, so that a refusal lists every bad item (the service's answer carries
    # them too, but the backend's error keeps only its message); the accounts are the service's to check.
    named = {str(i.get("account") or "default") for i in items if isinstance(i, dict)}
    _kind().accept(items, skip_invalid=skip_invalid, max_total=None, accounts=named, limits={})
    body = {"items": items, "max_total": {cur: format(v, "f") for cur, v in caps.items()}}
    headers = {"Idempotency-Key": key} if key else None
    params = [("skip_invalid", "true" if skip_invalid else "false")]
    status, payload = await _http(backend)._call("POST", "/v1/batches", body=body, headers=headers, params=params)
    return payload, status == 201


async def _get(backend: Backend, batch_id: str) -> dict[str, Any]:
    if isinstance(backend, StoreBackend):
        return await backend.engine.get_batch(batch_id)
    return dict((await _http(backend)._call("GET", f"/v1/batches/{batch_id}"))[1])


async def _report(backend: Backend, batch_id: str) -> dict[str, Any]:
    if isinstance(backend, StoreBackend):
        return await backend.engine.batch_report(batch_id)
    return dict((await _http(backend)._call("GET", f"/v1/batches/{batch_id}/report"))[1])


async def _cancel(backend: Backend, batch_id: str, operator: str | None, note: str | None) -> dict[str, Any]:
    if isinstance(backend, StoreBackend):
        await backend.check_operator(operator, Permission.CANCEL)
        wf = await backend.engine.cancel_batch(batch_id, operator=operator, note=note)
        return await backend.engine.get_batch(wf.id)
    if operator is not None:
        raise InvalidRequest(
            "--operator is for the store path; over --api the token says who you are", field="operator"
        )
    body = None if note is None else {"note": note}
    return dict((await _http(backend)._call("POST", f"/v1/batches/{batch_id}/cancel", body=body))[1])


def _http(backend: Backend) -> HttpBackend:
    assert isinstance(backend, HttpBackend)
    return backend


def _format(path: Path, given: str | None) -> str:
    if given:
        return given
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in ("csv", "json"):
        raise click.UsageError(f"cannot tell the format of {path.name}: name it .csv or .json, or pass --format")
    return suffix


# -- output ---------------------------------------------------------------------------------------------


def _approval_line(approval: dict[str, Any] | None) -> str:
    """The batch's four-eyes approval in one line (empty: it never needed one)."""
    if not approval:
        return ""
    over = ", ".join(f"{v['total']} {c} > {v['threshold']}" for c, v in approval.get("over", {}).items())
    if approval.get("approved_at"):
        return (
            f"approved by {approval.get('approved_by')} at {approval['approved_at']}: {approval.get('note')} ({over})"
        )
    return f"asked ({over}), open until {approval.get('expires_at')}; not approved"


def _show_status(console: Console, view: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("id", view["id"]), ("state", view["state"]), ("items", str(view["items"])),
        ("dispatched", str(view["dispatched"])),
        ("totals", ", ".join(f"{v} {c}" for c, v in view["totals"].items())),
        ("children", ", ".join(f"{s} {n}" for s, n in view.get("children", {}).items())),
        ("skipped", ", ".join(f"#{e['index']} {e['reference'] or ''} {e['field']}" for e in view["skipped"])),
        ("cancel requested", "yes" if view["cancel_requested"] else ""),
        ("reason", view.get("reason") or ""), ("approval", _approval_line(view.get("approval"))),
        ("created", view["created_at"]), ("updated", view["updated_at"]),
    ]  # fmt: skip
    for name, value in rows:
        if value:
            table.add_row(name, value)
    console.print(table)


def _show_report(console: Console, report: dict[str, Any]) -> None:
    columns = ["index", "reference", "outcome", "amount", "currency", "exchange_uuid", "txid", "fee", "reason"]
    items = Table(*columns, title=f"batch {report['batch_id']} ({report['state']})")
    for row in report["items"]:
        items.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
    console.print(items)
    totals = Table("currency", "items", "amount", "by outcome", title="totals")
    for currency, t in report["totals"]["by_currency"].items():
        by_state = ", ".join(f"{s} {v}" for s, v in t["by_state"].items())
        totals.add_row(currency, str(t["count"]), t["amount"], by_state)
    console.print(totals)
    console.print("by outcome: " + ", ".join(f"{s} {n}" for s, n in report["totals"]["by_state"].items()))
    for note in report["notes"]:
        console.print(f"note: {note}")


def _refused(parts: CliParts, exc: InvalidBatch) -> None:
    """Every bad item, on stderr (or as JSON on stdout with --json)."""
    if parts.options().json:
        parts.emit_json({"error": {"name": "invalid_request", "message": exc.message, "items": exc.errors}})
    else:
        stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
        table = Table("index", "reference", "field", "problem", title="refused: nothing was stored")
        for error in exc.errors:
            cells = (error["index"], error["reference"] or "", error["field"], error["message"])
            table.add_row(*(str(cell) for cell in cells))
        stderr.print(table)
    click.echo(f"upbit-withdraw: error: {exc.message}", err=True)
    sys.exit(parts.usage_exit)


# -- the commands ---------------------------------------------------------------------------------------


def register(group: click.Group, parts: CliParts) -> None:
    """Add the ``batch`` command group to the CLI's ``group``."""

    @group.group(name="batch")
    def batch() -> None:
        """Payout batches: one file of withdrawals in, one settlement report out."""

    @batch.command(name="submit")
    @parts.global_options
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--format", "fmt", type=click.Choice(["csv", "json"]), help="Default: from the file name.")
    @click.option("--skip-invalid", is_flag=True, help="Accept the valid items; list the skipped ones.")
    @click.option("--idempotency-key", help="Same key + same file = the same batch, never a second one.")
    def submit(file: Path, fmt: str | None, skip_invalid: bool, idempotency_key: str | None) -> None:
        """Submit a payout batch from a CSV or JSON file (every item is validated first)."""
        opts = parts.options()
        text = file.read_text(encoding="utf-8-sig")
        kind = _format(file, fmt)

        async def go(backend: Backend) -> tuple[dict[str, Any], bool]:
            return await _submit(backend, text, kind, skip_invalid=skip_invalid, key=idempotency_key)

        try:
            view, created = parts.run(parts.with_backend(opts, go))
        except InvalidBatch as exc:
            _refused(parts, exc)
        click.echo(f"{view['id']}: {'submitted' if created else 'already submitted under this key'}", err=True)
        parts.emit_json(view) if opts.json else _show_status(parts.console(), view)

    @batch.command(name="status")
    @parts.global_options
    @click.argument("batch_id")
    def status(batch_id: str) -> None:
        """Show a batch and its children's counts by state."""
        opts = parts.options()
        view = parts.run(parts.with_backend(opts, lambda backend: _get(backend, batch_id)))
        parts.emit_json(view) if opts.json else _show_status(parts.console(), view)

    @batch.command(name="report")
    @parts.global_options
    @click.argument("batch_id")
    @click.option("--csv", "as_csv", is_flag=True, help="One CSV line per item on stdout.")
    def report(batch_id: str, as_csv: bool) -> None:
        """The settlement report: per item reference, outcome, uuid, txid, fee, reason; totals."""
        opts = parts.options()
        data = parts.run(parts.with_backend(opts, lambda backend: _report(backend, batch_id)))
        if as_csv:
            click.echo(_csv(data), nl=False)
        elif opts.json:
            parts.emit_json(data)
        else:
            _show_report(parts.console(), data)

    @batch.command(name="cancel")
    @parts.global_options
    @click.argument("batch_id")
    @click.option("--operator", metavar="NAME", help="Who cancels (store path only: a known operator who may cancel).")
    @click.option("--note", metavar="TEXT", help="Why (optional): recorded with the operator in the events.")
    def cancel(batch_id: str, operator: str | None, note: str | None) -> None:
        """Cancel a batch: children not yet submitted are cancelled, the exchange is asked for the rest."""
        opts = parts.options()
        view = parts.run(parts.with_backend(opts, lambda backend: _cancel(backend, batch_id, operator, note)))
        parts.emit_json(view) if opts.json else _show_status(parts.console(), view)


def _kind() -> BatchOps:
    """The batch kind (its pure file reading and CSV rendering serve both the store and ``--api``)."""
    return cast(BatchOps, standard_kinds()[BATCH_KIND])


def _csv(report: dict[str, Any]) -> str:
    """The report's CSV, rendered by the batch kind (the same text ``GET .../report?format=csv`` gives)."""
    return _kind().render_csv(report)
