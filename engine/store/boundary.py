"""The store boundary: every driver error is translated once, here, into the engine's store errors.

Callers of a store (the runner, the engine, the API, the CLI) only ever see :class:`~engine.errors.StoreError`
and its subclasses, never ``asyncpg`` or ``sqlite3`` exceptions: the API answers 503 for them (never 500)
and the runner backs off and retries. The split that matters to a caller is:

- :class:`~engine.errors.StoreUnavailable`: the store cannot be reached or written *now* (a connection
  lost or refused, the server restarting or out of connections, a timeout, the disk full, the database
  busy). Nothing is wrong with the request; the same call may succeed later.
- a plain :class:`~engine.errors.StoreError`: anything else the driver raised (a bug in a query, a
  constraint the store did not expect). Still a 503 for an API client, and still retried by the runner,
  but worth a look in the log.

:func:`store_boundary` wraps every public coroutine method of a store class, so a method added later (or
a write path rewritten) cannot leak a driver error by forgetting a ``try``. Errors that already belong to
the engine pass through untouched.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sqlite3
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import asyncpg

from engine.errors import EngineError, StoreError, StoreUnavailable

__all__ = ["postgres_error", "sqlite_error", "store_boundary", "translated"]

T = TypeVar("T")
Translate = Callable[[BaseException], StoreError | None]

#: SQLite primary result codes that mean "not now" rather than "never" (the low byte of an extended code).
_SQLITE_TRANSIENT = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)

#: PostgreSQL SQLSTATE classes that mean "not now": 08 connection exception, 53 insufficient resources
#: (disk full, out of memory, too many connections), 57 operator intervention (admin shutdown, cannot
#: connect now, statement timeout), 40 transaction rollback (serialization failure, deadlock).
_POSTGRES_TRANSIENT_CLASSES = frozenset({"08", "53", "57", "40"})

#: What asyncpg raises besides server errors: its own client-side errors and the socket's.
_ASYNCPG_CLIENT_ERRORS = (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)


def _describe(prefix: str, exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no detail"
    return f"{prefix}: {type(exc).__name__}: {text}"


def sqlite_error(exc: BaseException) -> StoreError | None:
    """The store error for a ``sqlite3``/``aiosqlite`` failure (None: not a driver error)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        transient = code is not None and (code & 0xFF) in _SQLITE_TRANSIENT
        if transient or (code is None and isinstance(exc, sqlite3.OperationalError)):
            return StoreUnavailable(_describe("sqlite", exc))
        return StoreError(_describe("sqlite", exc))
    if isinstance(exc, OSError):
        return StoreUnavailable(_describe("sqlite", exc))
    if isinstance(exc, ValueError) and "no active connection" in str(exc):  # aiosqlite, after a close
        return StoreUnavailable(_describe("sqlite", exc))
    return None


def postgres_error(exc: BaseException) -> StoreError | None:
    """The store error for an ``asyncpg`` (or socket) failure (None: not a driver error)."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        if sqlstate[:2] in _POSTGRES_TRANSIENT_CLASSES:
            return StoreUnavailable(_describe("postgres", exc))
        return StoreError(_describe("postgres", exc))
    if isinstance(exc, _ASYNCPG_CLIENT_ERRORS):
        return StoreUnavailable(_describe("postgres", exc))
    return None


@contextlib.contextmanager
def translated(translate: Translate) -> Iterator[None]:
    """The boundary's rule for one block: engine errors pass, a driver error ``translate`` knows leaves as
    the engine's store error (chained), anything else as it was."""
    try:
        yield
    except EngineError:
        raise
    except Exception as exc:
        mapped = translate(exc)
        if mapped is None:
            raise
        raise mapped from exc


def _guarded(method: Callable[..., Coroutine[Any, Any, Any]], translate: Translate) -> Callable[..., Any]:
    @functools.wraps(method)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        with translated(translate):
            return await method(*args, **kwargs)

    return guarded


def store_boundary(translate: Translate) -> Callable[[type[T]], type[T]]:
    """Class decorator: every public ``async def`` of the store raises only engine errors for driver
    failures (``translate`` says which store error a driver exception becomes)."""

    def decorate(cls: type[T]) -> type[T]:
        for name, member in list(vars(cls).items()):
            if not name.startswith("_") and inspect.iscoroutinefunction(member):
                setattr(cls, name, _guarded(member, translate))
        return cls

    return decorate
