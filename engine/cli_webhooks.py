"""``upbit-withdraw webhooks list|deliveries|redeliver``: webhook subscriptions and their delivery log,
read from (and redeliveries written to) the store directly, next to a running service.

The global ``--config``/``--database``/``--json`` options work before the command name (as for every
command) or after it. A redelivery makes the deliveries pending again; the running service's worker
sends them within its ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from engine.api_webhooks import delivery_view, subscription_view
from engine.backends import require_store
from engine.bootstrap import open_store
from engine.config import load_config
from engine.errors import WebhookNotFound
from engine.store.webhooks import STATUSES, WebhookStore, webhook_store

__all__ = ["webhooks"]

T = TypeVar("T")
#: engine.cli.EXIT["not_found"] (that module imports this one, so the number is repeated here).
EXIT_NOT_FOUND = 3


def _setting(name: str, value: Any) -> Any:
    """This command's option, else the one given before the command name (the group's ``Options``)."""
    if value not in (None, False):
        return value
    root = click.get_current_context().find_root().obj
    return getattr(root, name, None)


def _with_hooks(
    config: str | None, database: str | None, action: Callable[[WebhookStore], Coroutine[Any, Any, T]]
) -> T:
    overrides = {"engine.database": _setting("database", database)}
    url = load_config(_setting("config", config), overrides=overrides).engine.database
    if _setting("api", None):
        raise click.UsageError("webhooks commands read the store; use the HTTP API's /v1/webhooks with --api")

    async def run() -> T:
        require_store(url)
        store = open_store(url)
        await store.open()
        try:
            return await action(webhook_store(store))
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except WebhookNotFound as exc:
        click.echo(f"upbit-withdraw: error: {exc.message}", err=True)
        raise SystemExit(EXIT_NOT_FOUND) from None


def _options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--json", "as_json", is_flag=True, help="Machine output.")(func)
    func = click.option("--database", help="Store URL override (sqlite:///path or postgresql://...).")(func)
    return click.option(
        "--config", type=click.Path(dir_okay=False), envvar="UPBIT_WITHDRAW_CONFIG", help="TOML config file."
    )(func)


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console(soft_wrap=False).print(table)


@click.group()
def webhooks() -> None:
    """Webhook subscriptions, their delivery log, redelivery."""


@webhooks.command(name="list")
@_options
def list_(*, config: str | None, database: str | None, as_json: bool) -> None:
    """Live subscriptions (never their secrets)."""
    subs = _with_hooks(config, database, lambda hooks: hooks.list_subscriptions())
    views = [subscription_view(sub) for sub in subs]
    if _setting("json", as_json):
        _emit({"items": views})
        return
    rows = [[v["id"], v["url"], ",".join(v["events"]), v["source"], v["created_at"]] for v in views]
    _table("webhooks", ["id", "url", "events", "source", "created"], rows)


@webhooks.command()
@_options
@click.argument("subscription_id")
@click.option("--status", type=click.Choice(list(STATUSES)), help="Only deliveries in this status.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
def deliveries(
    *,
    config: str | None, database: str | None, as_json: bool, subscription_id: str, status: str | None, limit: int
) -> None:
    """A subscription's delivery log, newest first."""

    async def read(hooks: WebhookStore) -> list[dict[str, Any]]:
        await hooks.get_subscription(subscription_id)
        return [delivery_view(d) for d in await hooks.deliveries(subscription_id, status=status, limit=limit)]

    views = _with_hooks(config, database, read)
    if _setting("json", as_json):
        _emit({"items": views})
        return
    rows = [
        [v["event_id"], v["type"], v["status"], v["attempts"], v["last_status"] or v["last_error"], v["event_at"]]
        for v in views
    ]
    _table(f"deliveries of {subscription_id}", ["event id", "type", "status", "attempts", "last", "event at"], rows)


def _aware(value: datetime | None, name: str) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise click.BadParameter("needs a UTC offset, e.g. 2026-01-01T00:00:00+00:00", param_hint=name)
    return value.timestamp()


@webhooks.command()
@_options
@click.argument("subscription_id")
@click.option("--event-id", "event_ids", multiple=True, help="An event id (workflow_id:seq); repeatable.")
@click.option("--since", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z"]), help="Events at or after this time.")
@click.option("--until", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z"]), help="Events before this time.")
def redeliver(
    *,
    config: str | None, database: str | None, as_json: bool, subscription_id: str, event_ids: tuple[str, ...],
    since: datetime | None, until: datetime | None,
) -> None:  # fmt: skip
    """Send deliveries again (by event id, or by the events' time range)."""
    if not event_ids and since is None:
        raise click.UsageError("give --event-id (repeatable) or --since (and optionally --until)")
    start, end = _aware(since, "--since"), _aware(until, "--until")
    count = _with_hooks(
        config, database,
        lambda hooks: hooks.redeliver(
            subscription_id, at=time.time(), event_ids=list(event_ids) or None, since=start, until=end
        ),
    )  # fmt: skip
    if _setting("json", as_json):
        _emit({"redelivered": count})
    else:
        click.echo(f"{count} deliveries of {subscription_id} will be sent again")
