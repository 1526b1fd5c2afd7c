"""``upbit-withdraw watch``: follow every committed event live (the store's feed, or ``GET /v1/events``).

On the store path it reads :meth:`engine.core.Engine.stream` (an engine without a runner: it only reads);
with ``--api URL`` it follows the service's Server-Sent Events through :class:`engine.client.WithdrawClient`,
which resumes by ``Last-Event-ID`` by itself when the connection drops. People get a live table (one row
per withdrawal, its latest event; one plain line per event when stdout is not a terminal); ``--json``
prints one line per event, the same JSON as the stream's ``data`` plus its ``id`` (the cursor to resume
from with ``--after``). Ctrl-C ends it with exit 0.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from engine.api_events import FROM_START, event_payload
from engine.backends import API_TOKEN_ENV, HttpBackend, require_store
from engine.bootstrap import open_store
from engine.core import Engine
from engine.errors import InvalidCursor
from engine.store.base import FeedItem

__all__ = ["register", "watch_rows"]

#: Withdrawals the live table keeps (the most recently moved ones).
TABLE_ROWS = 30


def register(group: click.Group, global_options: Callable[[Any], Any], opts: Callable[[], Any], load: Any) -> None:
    """Add ``watch`` to the CLI group (``engine.cli`` passes its option helpers, so they stay one)."""

    @group.command()
    @global_options
    @click.option("--workflow", "workflow_id", help="Only this withdrawal's events.")
    @click.option("--account", help="Only this account's events.")
    @click.option("--type", "event_types", multiple=True, help="Only this event type (a trigger); repeatable.")
    @click.option("--after", help="Resume behind this event id (an 'id' of --json), or 'start' for every event.")
    def watch(workflow_id: str | None, account: str | None, event_types: tuple[str, ...], after: str | None) -> None:
        """Follow every committed event live (a table; --json: one line per event). Ctrl-C ends it."""
        options = opts()
        filters: dict[str, Any] = {"workflow_id": workflow_id, "account": account, "event_types": event_types}
        source = _over_api(options.api, after, filters) if options.api else _on_store(load(options), after, filters)
        console = Console()
        table = _LiveTable(console) if not options.json and console.is_terminal else None
        show = _print_json if options.json else _print_line if table is None else table.show
        try:
            asyncio.run(_follow(source, show))
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a watch ends: exit 0
        except InvalidCursor as exc:
            raise click.BadParameter(exc.message, param_hint="--after") from None
        finally:
            if table is not None:
                table.close()


async def _follow(source: Any, show: Callable[[FeedItem], None]) -> None:
    async with source as items:
        async for item in items:
            show(item)


@asynccontextmanager
async def _on_store(config: Any, after: str | None, filters: dict[str, Any]) -> AsyncIterator[AsyncIterator[FeedItem]]:
    """Engine.stream over the configured store (read only: no runner, no exchange keys)."""
    url = config.engine.database
    require_store(url)
    async with Engine(store=open_store(url), gateways={}, run_runner=False) as engine:
        start = after == FROM_START
        yield engine.stream(
            after=None if start else after, from_start=start, workflow_id=filters["workflow_id"],
            account=filters["account"], event_types=filters["event_types"] or None,
        )  # fmt: skip


@asynccontextmanager
async def _over_api(url: str, after: str | None, filters: dict[str, Any]) -> AsyncIterator[AsyncIterator[FeedItem]]:
    """The service's /v1/events through the typed client (the same token and URL checks as every --api command)."""
    backend = HttpBackend(url, os.environ.get(API_TOKEN_ENV))
    async with backend:
        yield backend.stream(
            after=after, workflow_id=filters["workflow_id"], account=filters["account"],
            event_types=filters["event_types"],
        )  # fmt: skip


def _print_json(item: FeedItem) -> None:
    click.echo(json.dumps({"id": item.cursor, **event_payload(item)}, ensure_ascii=False, default=str), nl=True)


def _print_line(item: FeedItem) -> None:
    """Not a terminal (a pipe, a log file): one plain line per event instead of a table redrawn in place."""
    event = item.event
    moved = f"{event.from_state or '-'} -> {event.to_state}"
    click.echo(f"{event.at.isoformat()}  {event.workflow_id}  {item.account}  #{event.seq} {event.trigger}  {moved}")


def watch_rows(latest: dict[str, FeedItem]) -> Table:
    """The live table: one row per withdrawal, newest activity first."""
    table = Table("withdrawal", "account", "state", "last event", "seq", "at", title="upbit-withdraw watch")
    for item in sorted(latest.values(), key=lambda i: i.event.at, reverse=True):
        event = item.event
        at = event.at.isoformat()
        table.add_row(event.workflow_id, item.account, event.to_state, event.trigger, str(event.seq), at)
    return table


class _LiveTable:
    """A rich Live table updated on every event; keeps the :data:`TABLE_ROWS` most recently moved."""

    def __init__(self, console: Console) -> None:
        self._latest: dict[str, FeedItem] = {}
        self._live = Live(watch_rows({}), console=console, auto_refresh=False, transient=False)
        self._started = False

    def show(self, item: FeedItem) -> None:
        if not self._started:
            self._live.start()
            self._started = True
        self._latest.pop(item.event.workflow_id, None)
        self._latest[item.event.workflow_id] = item
        while len(self._latest) > TABLE_ROWS:
            self._latest.pop(next(iter(self._latest)))
        self._live.update(watch_rows(self._latest), refresh=True)

    def close(self) -> None:
        if self._started:
            self._live.stop()
