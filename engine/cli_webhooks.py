"""``upbit-withdraw webhooks list|deliveries|redeliver``: webhook subscriptions and their delivery log,
read from (and redeliveries written to) the store directly, next to a running service; or, with
``--api URL`` (token from ``UPBIT_WITHDRAW_API_TOKEN``), through the service's ``/v1/webhooks`` routes.

The global ``--config``/``--database``/``--json``/``--api`` options work before the command name (as for
every command) or after it. A redelivery makes the deliveries pending again; the running service's worker
sends them within its ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import click
from rich.console import Console
from rich.table import Table

from engine.api import ApiError
from engine.api_webhooks import delivery_view, subscription_view
from engine.backends import API_TOKEN_ENV, ServiceUnreachable, require_store
from engine.bootstrap import open_store
from engine.config import load_config
from engine.errors import ConfigError, WebhookNotFound
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


async def _api_call(
    base: str, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None
) -> Any:
    """One call to the service's API; its error answers become :class:`ApiError` (exit codes as elsewhere)."""
    token = os.environ.get(API_TOKEN_ENV)
    if not token:
        raise ConfigError(f"set {API_TOKEN_ENV} to the service's API token", key=API_TOKEN_ENV)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=15)) as session:
        try:
            async with session.request(method, f"{base.rstrip('/')}{path}", json=body, params=params) as answer:
                status, raw = answer.status, await answer.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ServiceUnreachable(f"cannot reach the service at {base}: {type(exc).__name__}") from None
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = None
    if status < 400:
        return payload
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        raise ApiError(status, str(error.get("name")), str(error.get("message")), error.get("fields"))
    raise ApiError(status, "http_error", f"the service answered {status}")


def _via_api(api: str | None, method: str, path: str, **kw: Any) -> Any:
    """The answer of the API at ``api`` (``--api``, here or before the command name)."""
    base = _setting("api", api)
    assert base
    return asyncio.run(_api_call(base, method, path, **kw))


def _options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--api", metavar="URL", help="Ask a running service instead of the store.")(func)
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
def list_(*, config: str | None, database: str | None, as_json: bool, api: str | None) -> None:
    """Live subscriptions (never their secrets)."""
    if _setting("api", api):
        views = list(_via_api(api, "GET", "/v1/webhooks")["items"])
    else:
        views = [subscription_view(sub) for sub in _with_hooks(config, database, lambda h: h.list_subscriptions())]
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
    config: str | None, database: str | None, as_json: bool, subscription_id: str, status: str | None, limit: int,
    api: str | None,
) -> None:  # fmt: skip
    """A subscription's delivery log, newest first."""

    async def read(hooks: WebhookStore) -> list[dict[str, Any]]:
        await hooks.get_subscription(subscription_id)
        return [delivery_view(d) for d in await hooks.deliveries(subscription_id, status=status, limit=limit)]

    if _setting("api", api):
        params = {"limit": str(limit), **({"status": status} if status else {})}
        views = list(_via_api(api, "GET", f"/v1/webhooks/{subscription_id}/deliveries", params=params)["items"])
    else:
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
    since: datetime | None, until: datetime | None, api: str | None,
) -> None:  # fmt: skip
    """Send deliveries again (by event id, or by the events' time range)."""
    if not event_ids and since is None:
        raise click.UsageError("give --event-id (repeatable) or --since (and optionally --until)")
    start, end = _aware(since, "--since"), _aware(until, "--until")
    if _setting("api", api):
        body: dict[str, Any] = {"event_ids": list(event_ids)} if event_ids else {}
        body |= {key: value.isoformat() for key, value in (("since", since), ("until", until)) if value}
        answer = _via_api(api, "POST", f"/v1/webhooks/{subscription_id}/redeliver", body=body)
        _report_redelivered(subscription_id, int(answer["redelivered"]), as_json)
        return
    count = _with_hooks(
        config, database,
        lambda hooks: hooks.redeliver(
            subscription_id, at=time.time(), event_ids=list(event_ids) or None, since=start, until=end
        ),
    )  # fmt: skip
    _report_redelivered(subscription_id, count, as_json)


def _report_redelivered(subscription_id: str, count: int, as_json: bool) -> None:
    if _setting("json", as_json):
        _emit({"redelivered": count})
    else:
        click.echo(f"{count} deliveries of {subscription_id} will be sent again")
