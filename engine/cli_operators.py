"""``upbit-withdraw operator add|list|role|passwd|token|remove``: the people (and programs) who may use the
HTTP API and the console, each with a role, managed in the store (the config's ``engine.database``)
directly: only someone who can reach the store can make operators.

A token is printed once, when it is made (``add``, ``token``), with a warning that it is not shown
again: the store keeps only its SHA-256. A password (for the console) is read from a prompt (typed
twice, not echoed) or from standard input with ``--password-stdin``, never from an argument (an argument
shows in ``ps`` and the shell's history); it needs at least 12 characters and is stored as a salted
scrypt hash. Errors end the command with the CLI's exit codes (2: a bad name, role, password or a name
taken; 3: no such operator).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from engine.backends import require_store
from engine.bootstrap import open_store
from engine.operators import MIN_PASSWORD_LENGTH, ROLE_PERMISSIONS, Role, check_name, check_password, check_role
from engine.store.operators import OperatorStore, operator_store

__all__ = ["register"]

T = TypeVar("T")
_ROLES = [r.value for r in Role]
_ROLE_HELP = "; ".join(f"{r.value}: {', '.join(sorted(p.value for p in ROLE_PERMISSIONS[r]))}" for r in Role)
_SHOWN_ONCE = "this token is shown once and never again: store it now (only its hash is kept)"


@dataclass(slots=True)
class _Parts:
    """What ``engine.cli`` lends this module (its option helpers stay one): set by :func:`register`."""

    opts: Callable[[], Any]
    load: Callable[[Any], Any]


_PARTS: list[_Parts] = []


def _json_wanted() -> bool:
    return bool(_PARTS[0].opts().json)


def _store_call(action: Callable[[OperatorStore], Coroutine[Any, Any, T]]) -> T:
    """Run ``action`` on the operator storage of the config's database (which must exist)."""
    parts = _PARTS[0]
    options = parts.opts()
    if options.api:
        raise click.UsageError("operator commands work on the store (the config's database); drop --api")
    url = parts.load(options).engine.database

    async def run() -> T:
        require_store(url)
        store = open_store(url)
        await store.open()
        try:
            return await action(operator_store(store))
        finally:
            await store.close()

    return asyncio.run(run())


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def register(group: click.Group, global_options: Callable[[Any], Any], opts: Callable[[], Any], load: Any) -> None:
    """Add the ``operator`` command group to the CLI (``engine.cli`` passes its option helpers)."""
    _PARTS[:] = [_Parts(opts, load)]
    operator = click.Group(name="operator", help=_GROUP_HELP)
    for command in (_add, _list, _role, _passwd, _token, _remove):
        operator.add_command(global_options(command))
    group.add_command(operator)


_GROUP_HELP = """Named operators: their roles, API tokens and console passwords (in the store).

\b
Roles and what they may do:
  viewer     read everything
  submitter  read; submit withdrawals and batches; cancel
  approver   read; cancel; decide needs_review (resubmit, abandon); approve/reject
  admin      everything, including webhooks management

The store must exist (`upbit-withdraw migrate` creates it)."""


@click.command(name="add")
@click.argument("name")
@click.option("--role", type=click.Choice(_ROLES), required=True, help=f"The operator's role ({_ROLE_HELP}).")
def _add(name: str, role: str) -> None:
    """Add an operator and print their API token (shown once). NAME: 1-64 of a-z 0-9 . _ -."""
    name, chosen = check_name(name), check_role(role)
    token = _store_call(lambda ops: ops.add(name, chosen))
    _show_token(name, chosen.value, token)


@click.command(name="list")
def _list() -> None:
    """List the operators: name, role, when added, whether a console password is set."""
    records = _store_call(lambda ops: ops.list())
    rows = [
        {"name": r.name, "role": r.role.value, "created_at": r.created_at.isoformat(), "password": r.has_password}
        for r in records
    ]
    if _json_wanted():
        _emit(rows)
        return
    table = Table("name", "role", "created", "password", title="operators")
    for row in rows:
        table.add_row(str(row["name"]), str(row["role"]), str(row["created_at"]), "yes" if row["password"] else "")
    Console().print(table)
    if not rows:
        click.echo("no operators yet: upbit-withdraw operator add NAME --role ROLE")


@click.command(name="role")
@click.argument("name")
@click.argument("role", type=click.Choice(_ROLES))
def _role(name: str, role: str) -> None:
    """Change an operator's role (their token and console sessions act with it at once)."""
    chosen = check_role(role)
    _store_call(lambda ops: ops.set_role(name, chosen))
    _done(f"operator {name} is now {chosen.value}", {"name": name, "role": chosen.value})


@click.command(name="passwd")
@click.argument("name")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (its first line) instead of a prompt."
)
def _passwd(name: str, password_stdin: bool) -> None:
    """Set an operator's console password (at least 12 characters; ends their console sessions)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(
            f"password for {name} (at least {MIN_PASSWORD_LENGTH} characters)", hide_input=True,
            confirmation_prompt=True,
        )  # fmt: skip
    check_password(password)
    _store_call(lambda ops: ops.set_password(name, password))
    _done(f"password set for {name}", {"name": name, "password_set": True})


@click.command(name="token")
@click.argument("name")
def _token(name: str) -> None:
    """Give an operator a new API token (shown once); the old one stops working at once."""

    async def rotate(ops: OperatorStore) -> tuple[str, str]:
        token = await ops.rotate_token(name)
        found = await ops.get(name)
        return token, found.role.value if found is not None else "?"

    token, role = _store_call(rotate)
    _show_token(name, role, token)


@click.command(name="remove")
@click.argument("name")
def _remove(name: str) -> None:
    """Remove an operator: their token and console sessions stop working (their events stay)."""
    _store_call(lambda ops: ops.remove(name))
    _done(f"operator {name} removed", {"name": name, "removed": True})


def _show_token(name: str, role: str, token: str) -> None:
    """The token on stdout (once), the warning on stderr."""
    click.echo(f"upbit-withdraw: warning: {_SHOWN_ONCE}", err=True)
    if _json_wanted():
        _emit({"name": name, "role": role, "token": token})
    else:
        click.echo(f"operator {name} ({role}) token:")
        click.echo(token)


def _done(text: str, data: dict[str, Any]) -> None:
    _emit(data) if _json_wanted() else click.echo(text)
