"""``upbit-withdraw``: the command line (click + rich). Tables for people, ``--json`` for programs.

Workflow commands (submit, status, list, history, cancel, resolve, approve, reject) work on the store directly, or with
``--api URL`` on a running service (token from ``UPBIT_WITHDRAW_API_TOKEN``). Exchange commands
(addresses, wallet-status, chance) call Upbit through the configured account. ``run`` is the service,
``sandbox`` the simulated exchange, ``demo`` both at once with a scripted batch. Only ``run`` and
``migrate`` create a store; every other command refuses a store that is not there.

Exit codes (documented in the README and ``--help``)::

    0   ok
    1   the workflow did not end DONE (failed, rejected, cancelled, aborted, needs_review) - submit --wait;
        verify-audit found a broken event chain
    2   usage or configuration error (the message names the option or the config key); the store does
        not exist (only run and migrate create one)
    3   not found; verify-audit: the store holds no event chain to verify
    4   conflict: idempotency key reused for another request, or a transition not allowed now
    5   the exchange, the store or the service is unreachable (or refused the call)
    6   submit --wait timed out (the workflow goes on)
    7   run: another runner process already owns this SQLite store
    8   forbidden: the operator may not do this (their role; four eyes: a submitter never approves their own)
    70  internal error (a bug: please report it)

Errors print one line on stderr: never a traceback, never a secret.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine import cli_batches
from engine.api import ApiError
from engine.audit import (
    AUDIT_KEY_ENV,
    AUDIT_KEY_FILE_ENV,
    AuditKey,
    BrokenLink,
    ChainHead,
    append_heads,
    latest_exported,
    read_heads,
    store_heads,
    verify_store,
)
from engine.backends import (
    API_TOKEN_ENV,
    Backend,
    HttpBackend,
    Query,
    StoreBackend,
    is_batch_id,
    require_store,
    sqlite_path,
    wait_settled,
)
from engine.bootstrap import build_gateway, open_store, standard_kinds
from engine.cli_operators import register as register_operators
from engine.cli_watch import register as register_watch
from engine.cli_webhooks import webhooks
from engine.clock import SystemClock
from engine.config import Config, load_config
from engine.demo import run_demo
from engine.errors import (
    ConfigError,
    EngineError,
    ExchangeError,
    Forbidden,
    IdempotencyConflict,
    InvalidRequest,
    InvalidTransition,
    OperatorNotFound,
    ReferenceConflict,
    ServiceUnreachable,
    StoreInUse,
    WaitTimeout,
    WorkflowNotFound,
)
from engine.logging import configure_logging, redact_secrets
from engine.sandbox import run_sandbox
from engine.service import serve
from engine.store.base import Store
from engine.upbit.client import UpbitClient
from engine.views import (
    EVENT_COLUMNS,
    PAGE_COLUMNS,
    event_rows,
    page_rows,
    with_cause,
    workflow_rows,
)

__all__ = ["EXIT", "WaitTimeout", "cli", "main", "run_cli"]

T = TypeVar("T")

EXIT = {
    "ok": 0,
    "workflow_failed": 1,
    "usage": 2,
    "not_found": 3,
    "conflict": 4,
    "unreachable": 5,
    "timeout": 6,
    "store_in_use": 7,
    "forbidden": 8,
    "internal": 70,
}
#: The kind the workflow commands (submit, status, list, cancel, resolve) work with: its states, its
#: presentation (progress path, success, colours) and its operator actions are its own.
_KIND = standard_kinds()["withdrawal"]
#: The actions ``resolve`` offers: the review's (approve and reject, the four-eyes ones, have their own commands).
_REVIEW_ACTIONS = [str(a) for a in _KIND.resolutions if not _KIND.is_four_eyes(a)]


@dataclasses.dataclass(slots=True)
class Options:
    """Global options (accepted before or after the command name)."""

    config: str | None = None
    database: str | None = None
    json: bool = False
    api: str | None = None


def _remember(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, _: click.Parameter, value: Any) -> Any:
        if value not in (None, False):
            setattr(ctx.ensure_object(Options), name, value)
        return value

    return callback


def _global_options(func: Callable[..., T]) -> Callable[..., T]:
    options = [
        click.option(
            "--config", type=click.Path(dir_okay=False), envvar="UPBIT_WITHDRAW_CONFIG", expose_value=False,
            callback=_remember("config"), help="TOML config file (env UPBIT_WITHDRAW_CONFIG).",
        ),
        click.option(
            "--database", expose_value=False, callback=_remember("database"),
            help="Store URL override (sqlite:///path or postgresql://...).",
        ),
        click.option("--json", is_flag=True, expose_value=False, callback=_remember("json"), help="Machine output."),
        click.option(
            "--api", metavar="URL", expose_value=False, callback=_remember("api"),
            help=f"Talk to a running service (token from {API_TOKEN_ENV}) instead of the store.",
        ),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def _opts() -> Options:
    return click.get_current_context().ensure_object(Options)


def _load(opts: Options, **overrides: Any) -> Config:
    return load_config(opts.config, overrides={"engine.database": opts.database, **overrides})


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# -- output ----------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-ready: Decimals and datetimes as strings, dataclasses as objects."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    converters: list[tuple[type, Callable[[Any], Any]]] = [
        (Decimal, lambda d: format(d, "f")),
        (datetime, lambda d: d.isoformat()),
        (Enum, lambda e: e.value),
    ]
    return next((convert(value) for kind, convert in converters if isinstance(value, kind)), value)


def _console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 160, soft_wrap=False)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(_plain(data), indent=2, ensure_ascii=False))


def _styled(state: str) -> str:
    style = _KIND.styles.get(state)
    return f"[{style}]{state}[/{style}]" if style else state


def _escaped(row: tuple[str, ...], *, keep: int) -> list[str]:
    """Cells as text, not rich markup (a reference or evidence may hold "[red]"), but the styled state."""
    return [cell if i == keep else escape(cell) for i, cell in enumerate(row)]


def _show_workflow(view: dict[str, Any], title: str | None = None) -> None:
    table = Table(title=title, show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in workflow_rows(view, _styled):
        table.add_row(name, value if name == "state" else escape(value))
    _console().print(table)


async def _with_cause(backend: Backend, view: dict[str, Any]) -> dict[str, Any]:
    """The view plus ``reason_detail`` (:func:`engine.views.with_cause`), reading the events only when
    the workflow has a reason to explain."""
    return with_cause(view, await backend.events(view["id"])) if view.get("reason") else view


def _show_page(page: dict[str, Any]) -> None:
    table = Table(*PAGE_COLUMNS)
    for row in page_rows(page, _styled):
        table.add_row(*_escaped(row, keep=PAGE_COLUMNS.index("state")))
    console = _console()
    console.print(table)
    shown = len(page["withdrawals"])
    console.print(f"{shown} shown of {page['total']} matching")
    if page["next_cursor"]:
        console.print(f"more: --cursor {page['next_cursor']}")


def _show_events(events: list[dict[str, Any]]) -> None:
    table = Table(*EVENT_COLUMNS)
    table.columns[-1].overflow = "fold"  # evidence is shown in full, wrapped, never cut
    for row in event_rows(events, _styled):
        table.add_row(*_escaped(row, keep=EVENT_COLUMNS.index("to")))
    _console().print(table)


def _show_rows(title: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    _console().print(table)


# -- errors ----------------------------------------------------------------------------------------------


def _clean(message: str) -> str:
    """One line, secrets masked (registered keys, JWTs, bearer tokens)."""
    scrubbed = redact_secrets(None, "", {"message": message})["message"]
    return " ".join(str(scrubbed).split())


def _api_error_code(exc: ApiError) -> int:
    if exc.status == 404:
        return EXIT["not_found"]
    if exc.status == 409:
        return EXIT["conflict"]
    if exc.status == 403:
        return EXIT["forbidden"]
    if exc.status >= 500:
        return EXIT["unreachable"]
    return EXIT["usage"]


def _text(exc: BaseException) -> str:
    """The error's sentence; for a query with several bad parameters, each named with its problem."""
    text = str(exc)
    if isinstance(exc, InvalidRequest) and exc.fields and not (exc.field and text.startswith(f"{exc.field}:")):
        text += f" ({'; '.join(f'{k}: {v}' for k, v in exc.fields.items())})"
    return text


def _describe(exc: BaseException) -> tuple[int, str]:
    """Exit code and one-line message for an error that ends a command."""
    if isinstance(exc, ApiError):
        detail = "; ".join(f"{k}: {v}" for k, v in exc.fields.items())
        suffix = f" ({detail})" if detail else ""
        if exc.status == 401:
            return EXIT["usage"], f"the service refused the token: check {API_TOKEN_ENV}"
        return _api_error_code(exc), f"{exc.message}{suffix}"
    table: list[tuple[type[BaseException], str, str]] = [
        (ConfigError, "usage", "configuration error: "),
        (InvalidRequest, "usage", ""),
        (WorkflowNotFound, "not_found", ""),
        (OperatorNotFound, "not_found", ""),
        (IdempotencyConflict, "conflict", ""),
        (ReferenceConflict, "conflict", ""),
        (InvalidTransition, "conflict", ""),
        (Forbidden, "forbidden", "forbidden: "),
        (WaitTimeout, "timeout", ""),
        (StoreInUse, "store_in_use", ""),
        (ServiceUnreachable, "unreachable", ""),
        (ExchangeError, "unreachable", "exchange error: "),
        (EngineError, "unreachable", "store error: "),
    ]
    for kind, code, prefix in table:
        if isinstance(exc, kind):
            return EXIT[code], prefix + _text(exc)
    if isinstance(exc, ValueError):
        return EXIT["usage"], str(exc)
    if isinstance(exc, OSError):
        return EXIT["unreachable"], f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return EXIT["internal"], f"internal error ({type(exc).__name__}): {exc}; please report it"


# -- the group -------------------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@_global_options
@click.version_option(package_name="upbit-withdraw-engine", prog_name="upbit-withdraw")
def cli() -> None:
    """Crash-safe withdrawals off Upbit: each one is a persisted state machine.

    \b
    Exit codes: 0 ok; 1 the workflow did not end DONE (submit --wait), or a broken audit chain;
    2 usage or config error, or no store there (only run and migrate create one); 3 not found,
    or no audit chain to verify; 4 conflict (idempotency key, transition not allowed); 5 exchange, store or
    service unreachable; 6 submit --wait timed out; 7 the SQLite store has a runner already; 8 forbidden
    (the role does not allow it, or a submitter approving their own); 70 internal error.
    """
    configure_logging(level="WARNING", stream=sys.stderr)


def _backend(opts: Options) -> Backend:
    if opts.api:
        return HttpBackend(opts.api, os.environ.get(API_TOKEN_ENV))
    return StoreBackend(_load(opts))


async def _with_backend(opts: Options, action: Callable[[Backend], Coroutine[Any, Any, T]]) -> T:
    async with _backend(opts) as backend:
        return await action(backend)


# -- workflow commands -----------------------------------------------------------------------------------


@cli.command()
@_global_options
@click.option("--currency", required=True, help="Currency code, e.g. BTC.")
@click.option("--net-type", required=True, help="Network, e.g. BTC, ETH, TRX.")
@click.option("--amount", required=True, help="Decimal amount, e.g. 0.01 (exact; never rounded).")
@click.option("--address", required=True, help="Destination; must be in the Open API allowlist.")
@click.option("--secondary-address", help="Tag/memo (omit to use the registered one).")
@click.option("--transaction-type", type=click.Choice(["default", "internal"]), default="default", show_default=True)
@click.option("--account", default="default", show_default=True, help="Configured account that pays.")
@click.option("--exchange-name", help="Receiving exchange, when the allowlist names one.")
@click.option("--idempotency-key", help="Same key + same request = the same workflow, never a second one.")
@click.option("--reference", help="Your own id for this payout (unique per account); find it with status --reference.")
@click.option("--metadata", metavar="JSON", help='A small JSON object kept as given, e.g. \'{"user": "42"}\'.')
@click.option("--wait", is_flag=True, help="Follow the workflow until it ends (progress on stderr).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=900.0, show_default=True, help="--wait limit (s).")
def submit(
    *,
    currency: str, net_type: str, amount: str, address: str, secondary_address: str | None,
    transaction_type: str, account: str, exchange_name: str | None, idempotency_key: str | None,
    reference: str | None, metadata: str | None, wait: bool, timeout: float,
) -> None:  # fmt: skip
    """Submit a withdrawal (and optionally wait for its end)."""
    opts = _opts()
    body = {
        "currency": currency.upper(), "net_type": net_type.upper(), "amount": amount, "address": address,
        "secondary_address": secondary_address, "transaction_type": transaction_type, "account": account,
        "exchange_name": exchange_name, "reference": reference, "metadata": _json_option(metadata, "metadata"),
    }  # fmt: skip
    body = {k: v for k, v in body.items() if v is not None}

    async def go(backend: Backend) -> dict[str, Any]:
        view, created = await backend.submit(body, idempotency_key)
        note = "submitted" if created else "already submitted under this idempotency key"
        click.echo(f"{view['id']}: {note}", err=True)
        if wait and not _KIND.settles_in(view["state"]):
            view = await _follow(backend, view, limit=timeout)
        return view

    view = _run(_with_backend(opts, go))
    _emit_json(view) if opts.json else _show_workflow(view)
    if wait and view["state"] not in _KIND.success:
        sys.exit(EXIT["workflow_failed"])


async def _follow(backend: Backend, view: dict[str, Any], *, limit: float) -> dict[str, Any]:
    """Poll until settled, with a progress bar on stderr; a hint when nothing processes the store."""
    stderr = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    started = time.monotonic()
    with Progress(*columns, console=stderr, transient=False) as progress:
        path = _KIND.path
        task = progress.add_task(view["id"], total=len(path))

        def update(current: dict[str, Any]) -> None:
            state = current["state"]
            done = len(path) if _KIND.settles_in(state) else path.index(state) if state in path else 3
            hint = ""
            if state == _KIND.initial and time.monotonic() - started > 5:
                hint = "  (no runner yet: is `upbit-withdraw run` up?)"
            progress.update(task, completed=done, description=f"{current['id']} {_styled(state)}{hint}")

        try:
            async with asyncio.timeout(limit):
                return await wait_settled(backend, view["id"], on_poll=update)
        except TimeoutError:
            raise WaitTimeout(f"still not finished after {limit:g} s; follow it with: status {view['id']}") from None


def _json_option(value: str | None, name: str) -> Any:
    """A JSON-valued option, parsed (None when not given); bad JSON is a usage error naming the option."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        raise InvalidRequest("is not valid JSON", field=name) from None


async def _find(backend: Backend, query: Query) -> dict[str, Any]:
    """The one workflow a look-up query (reference and account, or idempotency key) selects."""
    page = await backend.page([*query, ("limit", "2")])
    found = page["withdrawals"]
    if not found:
        wanted = ", ".join(f"{k} {v!r}" for k, v in query)
        raise WorkflowNotFound(f"no workflow with {wanted}")
    if len(found) > 1:
        accounts = ", ".join(sorted(view["request"]["account"] for view in found))
        raise InvalidRequest(f"the reference is used on several accounts ({accounts}): add --account", field="account")
    return dict(found[0])


@cli.command()
@_global_options
@click.argument("workflow_id", required=False)
@click.option("--reference", help="Find it by your reference instead of its id.")
@click.option("--account", help="With --reference: the account it was submitted on.")
@click.option("--idempotency-key", help="Find it by the idempotency key it was submitted under.")
def status(workflow_id: str | None, reference: str | None, account: str | None, idempotency_key: str | None) -> None:
    """Show one withdrawal (with why it was aborted or needs review), by id, reference or idempotency key."""
    opts = _opts()
    given = [name for name, value in (("WORKFLOW_ID", workflow_id), ("--reference", reference),
                                      ("--idempotency-key", idempotency_key)) if value is not None]  # fmt: skip
    if len(given) != 1:
        raise click.UsageError("give exactly one of WORKFLOW_ID, --reference or --idempotency-key")
    if account is not None and reference is None:
        raise click.UsageError("--account goes with --reference")
    query = [(k, v) for k, v in (("reference", reference), ("account", account), ("idempotency_key", idempotency_key))
             if v is not None]  # fmt: skip

    async def go(backend: Backend) -> dict[str, Any]:
        view = await backend.get(workflow_id) if workflow_id is not None else await _find(backend, query)
        return await _with_cause(backend, view)

    view = _run(_with_backend(opts, go))
    _emit_json(view) if opts.json else _show_workflow(view)


_TIME_HELP = "ISO 8601 time with a UTC offset, e.g. 2026-01-01T09:00:00+09:00"


@cli.command(name="list")
@_global_options
@click.option(
    "--state", multiple=True, help="Only these states (repeat, or comma-separate): " + ", ".join(map(str, _KIND.states))
)
@click.option("--currency", help="Only this currency, e.g. BTC.")
@click.option("--net-type", help="Only this network, e.g. TRX.")
@click.option("--account", help="Only this account.")
@click.option("--reason", help="Only this reason (e.g. address_not_allowed).")
@click.option("--reference", help="Only the one with this reference.")
@click.option("--idempotency-key", help="Only the one submitted under this idempotency key.")
@click.option("--created-after", help=f"Created at or after this time ({_TIME_HELP}).")
@click.option("--created-before", help="Created before this time.")
@click.option("--updated-after", help="Last changed at or after this time.")
@click.option("--updated-before", help="Last changed before this time.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", help="The id printed as 'more: --cursor ...' by the previous page.")
def list_(state: tuple[str, ...], limit: int, **filters: str | None) -> None:
    """List withdrawals, newest first, with the count of all that match (filters combine)."""
    opts = _opts()
    query: list[tuple[str, str]] = [("state", value) for value in state]
    query += [(name, value) for name, value in filters.items() if value is not None]
    query.append(("limit", str(limit)))
    page = _run(_with_backend(opts, lambda b: b.page(query)))
    _emit_json(page) if opts.json else _show_page(page)


@cli.command()
@_global_options
@click.argument("workflow_id")
def history(workflow_id: str) -> None:
    """Show a withdrawal's audit log (every transition, in order)."""
    opts = _opts()
    events = _run(_with_backend(opts, lambda b: b.events(workflow_id)))
    _emit_json(events) if opts.json else _show_events(events)


_OPERATOR_HELP = (
    "Who does this (store path only: an operator of `upbit-withdraw operator list` whose role allows it); "
    "recorded in the audit events. Over --api the token says who you are."
)


@cli.command()
@_global_options
@click.argument("workflow_id")
@click.option("--operator", "operator", metavar="NAME", help=_OPERATOR_HELP)
@click.option("--note", metavar="TEXT", help="Why (optional, up to 1000 characters): recorded with the operator.")
def cancel(workflow_id: str, operator: str | None, note: str | None) -> None:
    """Ask to cancel: locally before submission, at the exchange after."""
    opts = _opts()
    view = _run(_with_backend(opts, lambda b: b.cancel(workflow_id, operator=operator, note=note)))
    _emit_json(view) if opts.json else _show_workflow(view, title="cancellation requested")


_NOTE_HELP = "Why (required, 1-1000 characters): recorded in the audit log with the decision."
_DECIDER_HELP = (
    "Who decides, on the store path (an operator of `upbit-withdraw operator list` whose role allows it; "
    "required for approve/reject there, and never the submitter). Over --api the token says who you are."
)


@cli.command()
@_global_options
@click.argument("workflow_id")
@click.option(
    "--action", type=click.Choice(_REVIEW_ACTIONS), required=True,
    help="resubmit: send it again (a fresh intent, one POST); abandon: end it aborted.",
)  # fmt: skip
@click.option("--note", required=True, help=_NOTE_HELP)
@click.option("--operator", metavar="NAME", help=_DECIDER_HELP)
def resolve(workflow_id: str, action: str, note: str, operator: str | None) -> None:
    """Decide a needs_review withdrawal: resubmit (send again) or abandon (end as aborted)."""
    opts = _opts()
    view = _run(_with_backend(opts, lambda b: b.resolve(workflow_id, action, note=note, operator=operator)))
    _emit_json(view) if opts.json else _show_workflow(view, title=f"resolution recorded: {action}")


def _decide(action: str, workflow_id: str, note: str, operator: str | None) -> None:
    """approve / reject: a four-eyes decision on a withdrawal (wd_...) or a batch (bt_...) awaiting approval."""
    opts = _opts()
    if not opts.api and operator is None:
        raise click.UsageError(f"{action} on the store needs --operator NAME (who decides; never the submitter)")
    view = _run(_with_backend(opts, lambda b: b.resolve(workflow_id, action, note=note, operator=operator)))
    if opts.json:
        _emit_json(view)
    elif is_batch_id(workflow_id):
        _console().print(f"{action} recorded for batch {escape(view['id'])} (state {escape(view['state'])})")
    else:
        _show_workflow(view, title=f"{action} recorded")


@cli.command()
@_global_options
@click.argument("workflow_id")
@click.option("--note", required=True, help=_NOTE_HELP)
@click.option("--operator", metavar="NAME", help=_DECIDER_HELP)
def approve(workflow_id: str, note: str, operator: str | None) -> None:
    """Approve a withdrawal or batch awaiting approval (four eyes: not by its submitter). The withdrawal's
    checks run again, then it is sent; a batch dispatches its children."""
    _decide("approve", workflow_id, note, operator)


@cli.command()
@_global_options
@click.argument("workflow_id")
@click.option("--note", required=True, help=_NOTE_HELP)
@click.option("--operator", metavar="NAME", help=_DECIDER_HELP)
def reject(workflow_id: str, note: str, operator: str | None) -> None:
    """Reject a withdrawal or batch awaiting approval: it ends aborted (approval_rejected), nothing sent."""
    _decide("reject", workflow_id, note, operator)


register_watch(cli, _global_options, _opts, _load)
register_operators(cli, _global_options, _opts, _load)  # upbit-withdraw operator ... (engine/cli_operators.py)


# -- exchange commands -----------------------------------------------------------------------------------


def _exchange_call(opts: Options, account: str, call: Callable[[UpbitClient], Coroutine[Any, Any, T]]) -> T:
    if opts.api:
        raise click.UsageError("this command calls the exchange through the configured account; drop --api")
    config = _load(opts)
    if account not in config.accounts:
        raise ConfigError(
            f"no such account (configured: {', '.join(sorted(config.accounts))})", key=f"accounts.{account}"
        )

    async def go() -> T:
        gateway = build_gateway(config.accounts[account], config.gateway, clock=SystemClock())
        try:
            return await call(gateway.client)
        finally:
            await gateway.aclose()

    return _run(go())


def _exchange_list(
    account: str, currency: str | None, fetch: Callable[[Any], Coroutine[Any, Any, list[Any]]], title: str,
    columns: list[str],
) -> None:  # fmt: skip
    """Fetch a list from the exchange through the account, filter by currency, print or emit it."""
    opts = _opts()
    rows = [_plain(row) for row in _exchange_call(opts, account, fetch)]
    rows = [r for r in rows if currency is None or r["currency"] == currency.upper()]
    if opts.json:
        _emit_json(rows)
    else:
        _show_rows(title, columns, rows)


@cli.command()
@_global_options
@click.option("--account", default="default", show_default=True)
@click.option("--currency", help="Only this currency.")
def addresses(account: str, currency: str | None) -> None:
    """List the Open API withdrawal allowlist (addresses registered on the Upbit website)."""
    columns = ["currency", "net_type", "withdraw_address", "secondary_address", "beneficiary_name", "exchange_name"]
    _exchange_list(account, currency, lambda c: c.coin_addresses(), "Open API withdrawal allowlist", columns)


@cli.command(name="wallet-status")
@_global_options
@click.option("--account", default="default", show_default=True)
@click.option("--currency", help="Only this currency.")
def wallet_status(account: str, currency: str | None) -> None:
    """Show deposit/withdrawal status per network (working, withdraw_only, paused, ...)."""
    columns = ["currency", "net_type", "wallet_state", "block_state", "block_height", "block_elapsed_minutes"]
    _exchange_list(account, currency, lambda c: c.wallet_status(), "Wallet status", columns)


@cli.command()
@_global_options
@click.option("--account", default="default", show_default=True)
@click.option("--currency", required=True)
@click.option("--net-type", required=True)
def chance(account: str, currency: str, net_type: str) -> None:
    """Show what the exchange allows for (currency, network): fee, minimum, balance, limits."""
    opts = _opts()
    result = _plain(_exchange_call(opts, account, lambda c: c.chance(currency.upper(), net_type.upper())))
    if opts.json:
        _emit_json(result)
        return
    table = Table(title=f"Withdrawal chance {currency.upper()}/{net_type.upper()}", show_header=False)
    for key, value in result.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    _console().print(table)


# -- processes -------------------------------------------------------------------------------------------


@cli.command()
@_global_options
@click.option("--host", help="Bind address of the HTTP API (overrides api.host).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port of the HTTP API (overrides api.port).")
def run(host: str | None, port: int | None) -> None:
    """Run the service: the runner and the HTTP API, until SIGTERM/SIGINT (then drain, exit 0)."""
    opts = _opts()
    config = _load(opts, **{"api.host": host, "api.port": port})
    fmt = config.engine.log_format
    configure_logging(level=config.engine.log_level, json=None if fmt == "auto" else fmt == "json")
    _run(serve(config))


@cli.command()
@_global_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback only: the admin routes are open.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--seed", type=click.Path(exists=True, dir_okay=False), help="Seed TOML (default: the built-in seed).")
def sandbox(host: str, port: int, seed: str | None) -> None:
    """Run the sandbox exchange (a simulated Upbit; demo keys; never real funds)."""
    run_sandbox(host, port, seed)


@cli.command()
@_global_options
@click.option("--count", type=click.IntRange(1, 500), default=20, show_default=True, help="Withdrawals to submit.")
@click.option("--db", type=click.Path(dir_okay=False), help="SQLite file to keep (default: a temporary one).")
def demo(count: int, db: str | None) -> None:
    """Run a scripted batch against an in-process sandbox and show how each withdrawal ended."""
    sys.exit(run_demo(count=count, db=db, as_json=_opts().json))


def _store_label(url: str) -> str:
    """The store for people, without a PostgreSQL URL's password."""
    path = sqlite_path(url)
    return f"SQLite store {path}" if path is not None else "PostgreSQL store"


async def _on_store(url: str, action: Callable[[Store], Coroutine[Any, Any, T]], *, create: bool = False) -> T:
    """Open the store (refused when missing, unless ``create``), run ``action``, close."""
    if not create:
        require_store(url)
    store = open_store(url)
    await store.open()
    try:
        return await action(store)
    finally:
        await store.close()


@cli.command()
@_global_options
def migrate() -> None:
    """Create the store, or bring its schema up to date, then exit (``run`` does the same at start)."""
    opts = _opts()
    url = _load(opts).engine.database

    async def nothing(_: Store) -> None:
        return None

    _run(_on_store(url, nothing, create=True))
    if opts.json:
        _emit_json({"store": _store_label(url), "migrated": True})
    else:
        click.echo(f"{_store_label(url)}: schema up to date")


def _heads_file(heads: str, key_file: str | None) -> tuple[list[ChainHead], list[BrokenLink]]:
    """The heads of a heads file and its untrustworthy lines, read with the key (if any)."""
    key = AuditKey.resolve(key_file)
    try:
        with Path(heads).open(encoding="utf-8", errors="replace") as lines:
            found, problems = read_heads(lines, key)
    except OSError as exc:
        raise ConfigError(f"cannot read {heads}: {exc.strerror}", key="--heads") from None
    if not found and not problems:
        raise ConfigError(f"{heads} holds no chain head", key="--heads")
    return found, problems


_KEY_HELP = f"File holding the HMAC key of the heads file (else ${AUDIT_KEY_FILE_ENV} or ${AUDIT_KEY_ENV})."


@cli.command(name="verify-audit")
@_global_options
@click.option("--heads", type=click.Path(dir_okay=False), help="Also check against a heads file (audit-heads).")
@click.option("--key-file", type=click.Path(dir_okay=False), help=_KEY_HELP)
def verify_audit(heads: str | None, key_file: str | None) -> None:
    """Check every workflow's hash-chained event log; name the first broken link of each (exit 1 if any).

    With --heads, every exported head must still hold: a chain rewritten wholesale, with every hash
    recomputed, fails here. A store with no chain at all is not a success (exit 3)."""
    opts = _opts()
    url = _load(opts).engine.database
    expected, bad_lines = _heads_file(heads, key_file) if heads else ([], [])

    async def check(store: Store) -> tuple[int, list[BrokenLink]]:
        return await verify_store(store, expected)

    checked, broken = _run(_on_store(url, check))
    broken = [*bad_lines, *broken]
    if opts.json:
        _emit_json({"checked": checked, "broken": [dataclasses.asdict(link) for link in broken]})
    elif broken:
        _show_rows("Broken audit chains", ["workflow_id", "seq", "problem"], [dataclasses.asdict(b) for b in broken])
    elif checked:
        note = f", {len(expected)} exported heads hold" if heads else ""
        _console().print(f"audit intact: {checked} workflow event chains verified{note}")
    if broken:
        sys.exit(EXIT["workflow_failed"])
    if checked == 0:
        click.echo(f"upbit-withdraw: no event chain in the {_store_label(url)}: nothing verified", err=True)
        sys.exit(EXIT["not_found"])


@cli.command(name="audit-heads")
@_global_options
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Heads file to append to.")
@click.option("--key-file", type=click.Path(dir_okay=False), help=_KEY_HELP)
def audit_heads(out: str, key_file: str | None) -> None:
    """Append every chain head that moved since the last export to FILE (one JSON line each, signed with
    HMAC-SHA256 when a key is given). Keep the file off the database host; verify with --heads."""
    opts = _opts()
    url = _load(opts).engine.database
    key = AuditKey.resolve(key_file)
    path = Path(out)

    async def export(store: Store) -> tuple[int, int]:
        heads = await store_heads(store)
        exported = latest_exported(path)
        return append_heads(path, heads, at=SystemClock().now(), key=key, exported=exported), len(heads)

    written, chains = _run(_on_store(url, export))
    if opts.json:
        _emit_json({"chains": chains, "written": written, "signed": key is not None, "out": str(path)})
    else:
        click.echo(f"{written} of {chains} chain heads appended to {path}{'' if key else ' (unsigned)'}")


cli_batches.register(
    cli, cli_batches.CliParts(_global_options, _opts, _with_backend, _run, _emit_json, _console, EXIT["usage"])
)
cli.add_command(webhooks)  # upbit-withdraw webhooks list|deliveries|redeliver (engine/cli_webhooks.py)


# -- entry point -----------------------------------------------------------------------------------------


def run_cli(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (errors already printed)."""
    try:
        result = cli.main(args=argv, prog_name="upbit-withdraw", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return EXIT["usage"]
    except (click.Abort, KeyboardInterrupt):
        click.echo("upbit-withdraw: interrupted", err=True)
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT["ok"]
    except Exception as exc:
        if os.environ.get("UPBIT_WITHDRAW_DEBUG") == "1":
            raise
        code, message = _describe(exc)
        click.echo(f"upbit-withdraw: error: {_clean(message)}", err=True)
        return code
    return result if isinstance(result, int) else EXIT["ok"]


def main() -> None:
    """Console script entry point."""
    sys.exit(run_cli())


if __name__ == "__main__":  # pragma: no cover - ``python -m engine.cli``
    main()
