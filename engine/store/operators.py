"""Durable state of operators: names, roles, hashed credentials, and console sessions (migration 7).

What is stored is never a credential itself: an API token is kept as its SHA-256 (it is 32 random bytes,
so the hash is both a safe at-rest form and the look-up key), a password as a salted scrypt hash with its
parameters, a console session's cookie value as its SHA-256. The token and the session value leave this
module once, in the return value of the call that made them, to be shown (token) or set as a cookie
(session); no repr shows them.

Like :mod:`engine.store.webhooks`, this is a companion of the store: it runs its statements through the
SQLite store's writer (reads on its reader) or the PostgreSQL store's pool, so it shares the store's
durability and its error translation without widening the :class:`~engine.store.base.Store` protocol.
The statements are written once, with ``?`` placeholders, and numbered for PostgreSQL.
"""

from __future__ import annotations

import builtins
import hmac
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from engine.errors import InvalidRequest, OperatorNotFound, StoreError
from engine.operators import (
    Operator,
    Role,
    check_name,
    check_password,
    check_role,
    hash_password,
    new_secret,
    new_token,
    token_hash,
    verify_password,
)
from engine.store.base import Store
from engine.store.boundary import postgres_error, sqlite_error, translated
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SQLiteStore

__all__ = ["ConsoleSession", "OperatorRecord", "OperatorStore", "operator_store"]


@dataclass(frozen=True, slots=True)
class OperatorRecord:
    """One operator as listed (no credential, only whether a password is set)."""

    name: str
    role: Role
    created_at: datetime
    has_password: bool


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A console login. ``token`` is the cookie's value (only its hash is stored; it is known in full only
    to the caller of :meth:`OperatorStore.open_session`, and ``""`` on sessions read back), ``csrf`` the
    session's form token, ``operator`` who is logged in with their role as it is now."""

    token: str = field(repr=False)
    csrf: str = field(repr=False)
    operator: Operator
    created_at: datetime
    last_seen: datetime


class OperatorStore(Protocol):
    """What the API, the console and the CLI need from the store for operators."""

    async def add(self, name: str, role: Role) -> str:
        """Create the operator; returns its new API token (shown once). ``InvalidRequest`` for a bad name
        or role, or a name already taken."""
        ...

    async def get(self, name: str) -> Operator | None:
        """The operator named ``name``, if any."""
        ...

    async def list(self) -> builtins.list[OperatorRecord]:
        """Every operator, by name."""
        ...

    async def set_role(self, name: str, role: Role) -> None:
        """Change the role (live sessions and the token act with the new role at once)."""
        ...

    async def set_password(self, name: str, password: str) -> None:
        """Set the console password (at least 12 characters; stored as a salted scrypt hash); ends the
        operator's console sessions."""
        ...

    async def rotate_token(self, name: str) -> str:
        """A new API token (shown once); the old one stops working and the console sessions end."""
        ...

    async def remove(self, name: str) -> None:
        """Delete the operator and their sessions (events naming them stay as written)."""
        ...

    async def by_token(self, token: str) -> Operator | None:
        """The operator whose API token this is (looked up by hash, compared in constant time)."""
        ...

    async def by_password(self, name: str, password: str) -> Operator | None:
        """The operator, if ``password`` is theirs (None for an unknown name, no password, a wrong one)."""
        ...

    async def open_session(self, operator: str, *, now: datetime) -> ConsoleSession:
        """A new console session for ``operator`` (``OperatorNotFound`` if there is none)."""
        ...

    async def session(self, token: str, *, now: datetime, idle: timedelta) -> ConsoleSession | None:
        """The session this cookie value names, touched (``last_seen = now``); None when unknown or idle
        longer than ``idle`` (an expired one is deleted)."""
        ...

    async def close_session(self, token: str) -> None:
        """End the session (logout); unknown ones are ignored."""
        ...


def operator_store(store: Store) -> OperatorStore:
    """The operator storage that lives in ``store``."""
    if isinstance(store, SQLiteStore):
        return SQLiteOperators(store)
    if isinstance(store, PostgresStore):
        return PostgresOperators(store)
    raise StoreError(f"operators need a SQLite or PostgreSQL store, not {type(store).__name__}")


_OP_COLS = "name, role, created_at, password_hash IS NOT NULL"
_TOUCH = (
    "UPDATE console_sessions SET last_seen = ? WHERE token_hash = ? AND last_seen >= ? "
    "RETURNING operator, csrf, created_at, last_seen"
)
#: Computed once: checking a password for an unknown name costs the same scrypt as for a known one.
_DUMMY_HASH: str | None = None


def _dummy_hash() -> str:
    global _DUMMY_HASH  # noqa: PLW0603 - computed lazily: scrypt at import time would slow every start
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password("not-a-password-of-anyone")
    return _DUMMY_HASH


def _at(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


class _Operators:
    """The operator store over a dialect's three primitives (:meth:`_fetch`, :meth:`_write`,
    :meth:`_returning`); every statement is written once, with ``?`` placeholders."""

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> builtins.list[Sequence[Any]]:
        raise NotImplementedError

    async def _write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> builtins.list[int]:
        """Run the statements in one transaction; the rows each one changed."""
        raise NotImplementedError

    async def _returning(self, sql: str, args: Sequence[Any]) -> builtins.list[Sequence[Any]]:
        """One writing statement with a ``RETURNING`` clause: the rows it returned."""
        raise NotImplementedError

    async def add(self, name: str, role: Role) -> str:
        """Insert; the token is returned once, only its hash is kept."""
        name, role = check_name(name), check_role(role)
        token = new_token()
        now = time.time()
        sql = (
            "INSERT INTO operators (name, role, token_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO NOTHING"
        )
        (added,) = await self._write([(sql, (name, role.value, token_hash(token), now, now))])
        if added != 1:
            raise InvalidRequest(f"an operator named {name!r} already exists", field="name")
        return token

    async def get(self, name: str) -> Operator | None:
        """By name."""
        rows = await self._fetch("SELECT name, role FROM operators WHERE name = ?", (name,))
        return Operator(rows[0][0], Role(rows[0][1])) if rows else None

    async def list(self) -> builtins.list[OperatorRecord]:
        """By name."""
        rows = await self._fetch(f"SELECT {_OP_COLS} FROM operators ORDER BY name")  # noqa: S608
        return [OperatorRecord(row[0], Role(row[1]), _at(row[2]), bool(row[3])) for row in rows]

    async def set_role(self, name: str, role: Role) -> None:
        """Update the role."""
        role = check_role(role)
        sql = "UPDATE operators SET role = ?, updated_at = ? WHERE name = ?"
        await self._update_one(name, [(sql, (role.value, time.time(), name))])

    async def set_password(self, name: str, password: str) -> None:
        """Hash and store; the operator's sessions end."""
        hashed = hash_password(check_password(password))
        sql = "UPDATE operators SET password_hash = ?, updated_at = ? WHERE name = ?"
        await self._update_one(name, [(sql, (hashed, time.time(), name)), *self._end_sessions(name)])

    async def rotate_token(self, name: str) -> str:
        """A new token; the old one and the sessions end."""
        token = new_token()
        sql = "UPDATE operators SET token_hash = ?, updated_at = ? WHERE name = ?"
        await self._update_one(name, [(sql, (token_hash(token), time.time(), name)), *self._end_sessions(name)])
        return token

    async def remove(self, name: str) -> None:
        """Sessions first, then the operator (one transaction)."""
        await self._update_one(name, [("DELETE FROM operators WHERE name = ?", (name,)), *self._end_sessions(name)])

    @staticmethod
    def _end_sessions(name: str) -> builtins.list[tuple[str, Sequence[Any]]]:
        return [("DELETE FROM console_sessions WHERE operator = ?", (name,))]

    async def _update_one(self, name: str, statements: builtins.list[tuple[str, Sequence[Any]]]) -> None:
        """Run ``statements`` (the first one changes the operator's row); ``OperatorNotFound`` if it did not."""
        counts = await self._write(statements)
        if counts[0] != 1:
            raise OperatorNotFound(f"no operator named {name[:80]!r}")

    async def by_token(self, token: str) -> Operator | None:
        """By the token's hash; the stored hash is compared again in constant time."""
        if not isinstance(token, str) or not token:
            return None
        wanted = token_hash(token)
        rows = await self._fetch("SELECT name, role, token_hash FROM operators WHERE token_hash = ?", (wanted,))
        if not rows or not hmac.compare_digest(str(rows[0][2]), wanted):
            return None
        return Operator(rows[0][0], Role(rows[0][1]))

    async def by_password(self, name: str, password: str) -> Operator | None:
        """scrypt check (as costly for an unknown name as for a known one)."""
        rows = await self._fetch("SELECT name, role, password_hash FROM operators WHERE name = ?", (name,))
        stored = rows[0][2] if rows else None
        ok = verify_password(password, stored if stored is not None else _dummy_hash())
        if not rows or stored is None or not ok:
            return None
        return Operator(rows[0][0], Role(rows[0][1]))

    async def open_session(self, operator: str, *, now: datetime) -> ConsoleSession:
        """A random cookie value (its hash stored) and a random CSRF token."""
        found = await self.get(operator)
        if found is None:
            raise OperatorNotFound(f"no operator named {operator[:80]!r}")
        token, csrf = new_secret(), new_secret()
        at = now.timestamp()
        sql = "INSERT INTO console_sessions (token_hash, operator, csrf, created_at, last_seen) VALUES (?, ?, ?, ?, ?)"
        await self._write([(sql, (token_hash(token), operator, csrf, at, at))])
        return ConsoleSession(token=token, csrf=csrf, operator=found, created_at=now, last_seen=now)

    async def session(self, token: str, *, now: datetime, idle: timedelta) -> ConsoleSession | None:
        """Touch a live session; delete an idle one."""
        if not isinstance(token, str) or not token:
            return None
        key = token_hash(token)
        at = now.timestamp()
        rows = await self._returning(_TOUCH, (at, key, at - idle.total_seconds()))
        if not rows:  # unknown (no write for a made-up cookie), or idle too long: then it is deleted
            if await self._fetch("SELECT 1 FROM console_sessions WHERE token_hash = ?", (key,)):
                await self._write([("DELETE FROM console_sessions WHERE token_hash = ?", (key,))])
            return None
        name, csrf, created, _ = rows[0]
        operator = await self.get(name)
        if operator is None:  # removed meanwhile (its sessions went with it)
            return None
        return ConsoleSession(token="", csrf=csrf, operator=operator, created_at=_at(created), last_seen=now)

    async def close_session(self, token: str) -> None:
        """Delete it."""
        if isinstance(token, str) and token:
            await self._write([("DELETE FROM console_sessions WHERE token_hash = ?", (token_hash(token),))])


class SQLiteOperators(_Operators):
    """:class:`OperatorStore` in a :class:`~engine.store.sqlite.SQLiteStore` (writes through its writer)."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"<SQLiteOperators {self._store.path}>"

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> builtins.list[Sequence[Any]]:
        with translated(sqlite_error):
            return list(await self._store._read_conn().execute_fetchall(sql, args))

    async def _write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> builtins.list[int]:
        def op(db: sqlite3.Connection) -> builtins.list[int]:
            return [db.execute(sql, args).rowcount for sql, args in statements]

        with translated(sqlite_error):
            counts: builtins.list[int] = await self._store._submit(op, single=len(statements) == 1)
        return counts

    async def _returning(self, sql: str, args: Sequence[Any]) -> builtins.list[Sequence[Any]]:
        def op(db: sqlite3.Connection) -> builtins.list[Sequence[Any]]:
            return list(db.execute(sql, args).fetchall())

        with translated(sqlite_error):
            rows: builtins.list[Sequence[Any]] = await self._store._submit(op, single=True)
        return rows


_MARK = re.compile(r"\?")


def _numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (the statements here have no other ``?``)."""
    counter = iter(range(1, sql.count("?") + 1))
    return _MARK.sub(lambda _: f"${next(counter)}", sql)


class PostgresOperators(_Operators):
    """:class:`OperatorStore` in a :class:`~engine.store.postgres.PostgresStore` (through its pool)."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"<PostgresOperators {self._store!r}>"

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> builtins.list[Sequence[Any]]:
        with translated(postgres_error):
            return list(await self._store._db().fetch(_numbered(sql), *args))

    async def _write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> builtins.list[int]:
        counts: builtins.list[int] = []
        with translated(postgres_error):
            async with self._store._db().acquire() as conn, conn.transaction():
                for sql, args in statements:
                    status = await conn.execute(_numbered(sql), *args)
                    counts.append(int(str(status).rsplit(" ", 1)[-1]))
        return counts

    async def _returning(self, sql: str, args: Sequence[Any]) -> builtins.list[Sequence[Any]]:
        with translated(postgres_error):
            return list(await self._store._db().fetch(_numbered(sql), *args))
