"""Store fixtures: every store-level test runs against a fresh SQLite file and a fresh PostgreSQL schema.

PostgreSQL comes from ``UPBIT_TEST_POSTGRES_DSN`` (default: the local server's ``postgres`` database).
Each test session creates its own ``upbit_test_<random>`` database there (so concurrent sessions on one
server never see each other's rows or notifications) and drops it at the end, with any connection left
over. Each test gets a new schema in it, reached through ``search_path`` in the DSN and dropped after
the test: a schema costs milliseconds where a database costs a file copy.

When the server is unreachable the PostgreSQL cases skip with the reason, unless
``UPBIT_REQUIRE_POSTGRES=1`` (CI): then they fail.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from engine.store.base import Store
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SQLiteStore
from tests.conftest import postgres_required

POSTGRES_DSN = os.environ.get("UPBIT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

#: Runs one SQL statement against the store's database on a connection of its own.
RawSQL = Callable[[str], Awaitable[None]]


def _with_database(dsn: str, name: str, **settings: str) -> str:
    parts = urlsplit(dsn)
    query = "&".join(q for q in (parts.query, urlencode(settings)) if q)
    return urlunsplit(parts._replace(path=f"/{name}", query=query))


async def _admin_execute(sql: str) -> str | None:
    """Run ``sql`` on the configured database; the reason it could not connect, if it could not."""
    try:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        return f"PostgreSQL unreachable at {POSTGRES_DSN}: {type(exc).__name__}: {exc}"
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
    return None


def _admin_execute_blocking(sql: str) -> str | None:
    """:func:`_admin_execute` on a thread of its own: works whether or not an event loop is running here
    (the session fixture is first requested from inside an async fixture)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(_admin_execute(sql))).result()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """This session's own database (DSN), dropped at the end; skips or fails without a server."""
    name = f"upbit_test_{secrets.token_hex(6)}"
    unreachable = _admin_execute_blocking(f'CREATE DATABASE "{name}"')
    if unreachable is not None:
        if postgres_required():
            pytest.fail(f"{unreachable} (UPBIT_REQUIRE_POSTGRES=1)")
        pytest.skip(f"{unreachable} (set UPBIT_TEST_POSTGRES_DSN; UPBIT_REQUIRE_POSTGRES=1 makes this fail)")
    try:
        yield _with_database(POSTGRES_DSN, name)
    finally:
        _admin_execute_blocking(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def fresh_schema(database_dsn: str) -> AsyncIterator[str]:
    """Create an empty schema; yield a DSN whose ``search_path`` is that schema; drop it afterwards."""
    schema = f"t_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        yield _with_database(database_dsn, urlsplit(database_dsn).path.lstrip("/"), search_path=schema)
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


@pytest.fixture
async def postgres_dsn(postgres_database: str) -> AsyncIterator[str]:
    """The DSN of an empty PostgreSQL schema of this test's own."""
    async with fresh_schema(postgres_database) as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An open store of each kind over fresh storage."""
    if request.param == "sqlite":
        async with SQLiteStore(tmp_path / "store.sqlite3", group_window=0.001) as sqlite_store:
            yield sqlite_store
        return
    database = request.getfixturevalue("postgres_database")
    channel = f"upbit_test_{secrets.token_hex(4)}"
    async with fresh_schema(database) as dsn, PostgresStore(dsn, pool_max=8, notify_channel=channel) as pg_store:
        yield pg_store


@pytest.fixture
def raw_sql(store: Store) -> RawSQL:
    """Execute SQL against the store's database behind its back (to prove what the database refuses)."""

    async def run(sql: str) -> None:
        if isinstance(store, SQLiteStore):
            await asyncio.to_thread(_sqlite_execute, store.path, sql)
            return
        assert isinstance(store, PostgresStore)
        conn = await asyncpg.connect(store.dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    return run


def _sqlite_execute(path: Path, sql: str) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute(sql)
    finally:
        conn.close()
