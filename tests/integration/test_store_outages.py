"""Store outages: driver errors are translated at the store boundary, the runner waits an outage out,
SQLite disk full is survived, a SQLite store has one runner, PostgreSQL's LISTEN reconnects by itself.

(The same with ``upbit-withdraw run`` processes and a PostgreSQL connection cut mid-run:
``test_service_outage.py``.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine import Engine, State
from engine.api import create_app
from engine.errors import StoreError, StoreInUse, StoreUnavailable
from engine.store.base import Store
from engine.store.owner import OwnerLock, lock_path
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SQLiteStore
from tests.api.conftest import TOKEN, CheckedClient
from tests.conftest import FAST, SandboxAdmin, make_gateway
from tests.integration.conftest import fresh_schema
from tests.integration.tcp_proxy import TcpProxy
from tests.integration.test_engine import allowed, request_for

pytestmark = pytest.mark.asyncio

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def until(predicate: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> None:
    """Wait for ``predicate()`` (sync or async) to be true; generous deadline, short polls."""
    async with asyncio.timeout(timeout):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(what)  # pragma: no cover - asyncio.timeout raises first


def _sqlite_error(code: int, message: str, kind: type[sqlite3.Error] = sqlite3.OperationalError) -> sqlite3.Error:
    exc = kind(message)
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    return exc


#: (driver error, the store error it must become) for PostgreSQL.
POSTGRES_ERRORS: list[tuple[Callable[[], BaseException], type[StoreError]]] = [
    (lambda: asyncpg.InternalClientError("cannot switch to state 15; another operation in progress"), StoreUnavailable),
    (lambda: asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"), StoreUnavailable),
    (lambda: asyncpg.InterfaceError("pool is closing"), StoreUnavailable),
    (lambda: asyncpg.exceptions.AdminShutdownError("terminating connection"), StoreUnavailable),
    (lambda: asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), StoreUnavailable),
    (lambda: asyncpg.exceptions.DiskFullError("could not extend file"), StoreUnavailable),
    (lambda: asyncpg.exceptions.TooManyConnectionsError("too many clients"), StoreUnavailable),
    (lambda: ConnectionResetError(104, "Connection reset by peer"), StoreUnavailable),
    (lambda: OSError(113, "No route to host"), StoreUnavailable),
    (TimeoutError, StoreUnavailable),
    (lambda: asyncpg.exceptions.UndefinedTableError('relation "workflows" does not exist'), StoreError),
]

#: The same for SQLite (codes as sqlite3 sets them on what it raises).
SQLITE_ERRORS: list[tuple[Callable[[], BaseException], type[StoreError]]] = [
    (lambda: _sqlite_error(sqlite3.SQLITE_FULL, "database or disk is full"), StoreUnavailable),
    (lambda: _sqlite_error(sqlite3.SQLITE_BUSY, "database is locked"), StoreUnavailable),
    (lambda: _sqlite_error(sqlite3.SQLITE_IOERR | (3 << 8), "disk I/O error"), StoreUnavailable),
    (lambda: _sqlite_error(sqlite3.SQLITE_CANTOPEN, "unable to open database file"), StoreUnavailable),
    (lambda: OSError(28, "No space left on device"), StoreUnavailable),
    (lambda: _sqlite_error(sqlite3.SQLITE_CORRUPT, "malformed", sqlite3.DatabaseError), StoreError),
]  # fmt: skip


class RaisingPool:
    """Stands in for asyncpg's pool below the store boundary: every call raises the driver error."""

    def __init__(self, error: Callable[[], BaseException]) -> None:
        self.error = error
        self.calls = 0

    async def _raise(self, *_: Any, **__: Any) -> Any:
        self.calls += 1
        raise self.error()

    fetch = fetchrow = fetchval = execute = _raise


class RaisingReader:
    """Stands in for the SQLite store's aiosqlite reader: every query raises the driver error."""

    def __init__(self, error: Callable[[], BaseException]) -> None:
        self.error = error

    async def execute_fetchall(self, *_: Any, **__: Any) -> Any:
        raise self.error()


class RaisingWriter:
    """Stands in for the SQLite writer's sqlite3 connection: every statement raises the driver error."""

    in_transaction = False

    def __init__(self, error: Callable[[], BaseException]) -> None:
        self.error = error

    def execute(self, *_: Any) -> Any:
        raise self.error()

    executemany = execute


async def _every_operation(store: Store, workflow_id: str) -> list[tuple[str, BaseException | None]]:
    """Call each store operation once; what each raised."""
    operations: dict[str, Callable[[], Any]] = {
        "get": lambda: store.get(workflow_id),
        "list": store.list,
        "next_due_at": store.next_due_at,
        "count_by_state": store.count_by_state,
        "events": lambda: store.events(workflow_id),
        "ping": store.ping,
        "claim_due": lambda: store.claim_due(now=NOW, limit=5, owner="o", lease_seconds=5),
        "release": lambda: store.release([workflow_id], owner="o"),
        "request_cancel": lambda: store.request_cancel(workflow_id, at=NOW),
    }
    seen: list[tuple[str, BaseException | None]] = []
    for name, call in operations.items():
        try:
            await call()
        except BaseException as exc:
            seen.append((name, exc))
        else:
            seen.append((name, None))
    return seen


class TestDriverErrorsAreTranslated:
    @pytest.mark.postgres
    @pytest.mark.parametrize(("error", "expected"), POSTGRES_ERRORS)
    async def test_postgres(
        self, postgres_dsn: str, error: Callable[[], BaseException], expected: type[StoreError]
    ) -> None:
        """Every asyncpg or socket error leaves the PostgreSQL store as a StoreError (transient ones as
        StoreUnavailable), never as itself."""
        async with PostgresStore(postgres_dsn, pool_max=2) as store:
            real = store._pool
            store._pool = RaisingPool(error)
            try:
                seen = await _every_operation(store, "wd_missing")
            finally:
                store._pool = real
        for name, exc in seen:
            assert type(exc) is expected, f"{name} raised {exc!r}"
            assert isinstance(exc.__cause__, type(error())), name

    @pytest.mark.parametrize(("error", "expected"), SQLITE_ERRORS)
    async def test_sqlite_reads_and_writes(
        self, tmp_path: Path, error: Callable[[], BaseException], expected: type[StoreError]
    ) -> None:
        """Every sqlite3 or OS error, on the reader or inside a write batch on the writer's thread,
        leaves the SQLite store as a StoreError (transient ones as StoreUnavailable)."""
        async with SQLiteStore(tmp_path / "s.sqlite3") as store:
            reader, writer = store._reader, store._db
            store._reader = RaisingReader(error)  # type: ignore[assignment]
            store._db = RaisingWriter(error)  # type: ignore[assignment]
            try:
                seen = await _every_operation(store, "wd_missing")
            finally:
                store._reader, store._db = reader, writer
            assert await store.count_by_state() == {}  # the store works again once the driver does
        for name, exc in seen:
            assert type(exc) is expected, f"{name} raised {exc!r}"


@asynccontextmanager
async def served(engine: Engine) -> AsyncIterator[CheckedClient]:
    """The HTTP API over ``engine`` (entered here), answers checked against openapi.json."""
    app = create_app(engine, token=TOKEN)
    async with engine, TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield CheckedClient(client, TOKEN)


class TestApiAnswers503:
    @pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
    async def test_driver_errors_are_503_never_500(
        self, kind: str, tmp_path: Path, sandbox: Any, request: pytest.FixtureRequest
    ) -> None:
        """With the driver failing underneath (asyncpg's InternalClientError, SQLite disk full), every
        route that touches the store answers 503 ``unavailable``; /readyz says 503, /healthz stays 200;
        both recover with the driver and the withdrawal finishes."""
        async with AsyncExitStack() as stack:
            if kind == "sqlite":
                store: Any = SQLiteStore(tmp_path / "api.sqlite3")
            else:
                dsn = await stack.enter_async_context(fresh_schema(request.getfixturevalue("postgres_database")))
                store = PostgresStore(dsn, pool_max=2)
            engine = Engine(store=store, gateways={"default": make_gateway(sandbox.url)}, settings=FAST)
            engine.runner.store_retry_initial, engine.runner.store_retry_max = 0.02, 0.3
            api = await stack.enter_async_context(served(engine))
            address = (await allowed(sandbox.url, "BTC", "BTC")).withdraw_address
            body = {"currency": "BTC", "net_type": "BTC", "amount": "0.01", "address": address}
            created = await api.call("POST", "/v1/withdrawals", body=body)
            assert created.status == 201
            wid = created.body["id"]
            await until(lambda: engine.runner.store_ready, what="runner ready")
            assert (await api.call("GET", "/readyz", token=None)).status == 200
            broken = _break_driver(store)
            try:
                for method, path, payload in [
                    ("POST", "/v1/withdrawals", {**body, "amount": "0.02"}),
                    ("GET", "/v1/withdrawals", None),
                    ("GET", f"/v1/withdrawals/{wid}", None),
                    ("GET", f"/v1/withdrawals/{wid}/events", None),
                    ("POST", f"/v1/withdrawals/{wid}/cancel", None),
                    ("GET", "/readyz", None),
                ]:
                    answer = await api.call(method, path, body=payload)
                    assert answer.status == 503, (method, path, answer.body)
                    assert "unavailable" in answer.raw.decode(), answer.body
                assert (await api.call("GET", "/healthz", token=None)).status == 200
                await until(lambda: engine.runner.store_outages >= 1, what="the runner noticed")
                assert engine.runner_failed is None
            finally:
                broken()
            await until(lambda: engine.runner.store_ready, what="the runner resumed")
            assert (await api.call("GET", "/readyz", token=None)).status == 200
            done = await engine.wait(wid, timeout=30)
            assert done.state is State.DONE


def _break_driver(store: Any) -> Callable[[], None]:
    """Make the store's driver fail underneath it (SQLite: disk full; PostgreSQL: asyncpg's
    InternalClientError); returns the repair."""
    if isinstance(store, SQLiteStore):
        full = _sqlite_error(sqlite3.SQLITE_FULL, "database or disk is full")
        saved = (store._reader, store._db)
        store._reader, store._db = RaisingReader(lambda: full), RaisingWriter(lambda: full)  # type: ignore[assignment]

        def repair_sqlite() -> None:
            store._reader, store._db = saved

        return repair_sqlite
    pool = store._pool
    store._pool = RaisingPool(lambda: asyncpg.InternalClientError("cannot switch to state 15"))

    def repair_postgres() -> None:
        store._pool = pool

    return repair_postgres


class TestRunnerWaitsOutAnOutage:
    async def test_failed_claims_back_off_and_resume(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Claims that fail (the store unreachable) no longer end the runner: it backs off with growing
        delays, reports not ready, and finishes every withdrawal once claims work again (one POST each)."""
        failures = 6
        calls: list[float] = []
        ready_seen: list[bool] = []

        async with engine_factory() as engine:
            engine.runner.store_retry_initial, engine.runner.store_retry_max = 0.02, 0.2
            await until(lambda: engine.runner.store_ready, what="runner ready")
            real_claim = engine.store.claim_due

            async def flaky_claim(**kw: Any) -> Any:
                calls.append(asyncio.get_running_loop().time())
                ready_seen.append(engine.runner.store_ready)
                if len(calls) <= failures:
                    raise StoreUnavailable("postgres: ConnectionResetError: injected")
                return await real_claim(**kw)

            monkeypatch.setattr(engine.store, "claim_due", flaky_claim)
            wfs = [await engine.submit(await request_for(sandbox.url, amount=f"0.00{i + 1}")) for i in range(3)]
            results = [await engine.wait(wf.id, timeout=30) for wf in wfs]
            assert engine.runner_failed is None
            assert engine.runner.store_ready
            assert engine.runner.store_outages == 1
        assert [r.state for r in results] == [State.DONE] * 3
        assert await admin.posts() == 3
        gaps = [b - a for a, b in itertools.pairwise(calls[: failures + 1])]
        assert min(gaps) >= 0.019, gaps  # it waited (backoff) between tries: no hot loop
        assert ready_seen[1:failures] == [False] * (failures - 1)  # not ready from the first failure on
        assert ready_seen[failures] is False  # the claim that works proves nothing before it returns


class TestLiveness:
    async def test_healthz_fails_only_when_the_runner_loop_is_stuck(
        self, tmp_path: Path, sandbox: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """/healthz stays 200 through store failures, but a runner loop that stopped going round (here a
        store read that never returns) fails liveness with ``runner: stalled``, and recovers with it."""
        monkeypatch.setattr("engine.api.STALLED_AFTER", 0.3)
        store = SQLiteStore(tmp_path / "live.sqlite3")
        engine = Engine(store=store, gateways={"default": make_gateway(sandbox.url)}, settings=FAST)
        engine.runner.idle_poll = 0.05
        async with served(engine) as api:
            await until(lambda: engine.runner.store_ready, what="runner ready")
            assert (await api.call("GET", "/healthz", token=None)).status == 200
            release = asyncio.Event()
            real_next_due = store.next_due_at

            async def hanging_next_due(**kw: Any) -> Any:
                await release.wait()
                return await real_next_due(**kw)

            monkeypatch.setattr(store, "next_due_at", hanging_next_due)
            try:
                await until(lambda: engine.runner.stalled(0.3), what="the loop is stuck")
                answer = await api.call("GET", "/healthz", token=None)
                assert (answer.status, answer.body) == (503, {"status": "unavailable", "runner": "stalled"})
            finally:
                release.set()
            await until(lambda: not engine.runner.stalled(0.3), what="the loop goes round again")
            assert (await api.call("GET", "/healthz", token=None)).status == 200


class TestSQLiteDiskFull:
    async def test_full_database_refuses_intake_and_resumes_when_space_returns(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """SQLITE_FULL (``PRAGMA max_page_count`` at the file's size on the writer's connection): intake
        refuses with StoreUnavailable (the API's 503), the runner stays up and reports not ready, and
        once the limit is raised every accepted withdrawal finishes with one POST each."""
        await admin.configure(waiting_seconds=0.3, processing_seconds=0.3, jitter=0.0)
        async with engine_factory() as engine:
            engine.runner.store_retry_initial, engine.runner.store_retry_max = 0.02, 0.3
            store = engine.store
            assert isinstance(store, SQLiteStore)
            base = await request_for(sandbox.url, amount="0.001")
            amounts = (Decimal("0.001") + Decimal(i) * Decimal("0.00000001") for i in range(1000))
            accepted = [await engine.submit(dataclasses.replace(base, amount=next(amounts))) for _ in range(4)]

            def limit_pages(extra: int | None) -> int:
                assert store._db is not None
                pages = int(store._db.execute("PRAGMA page_count").fetchone()[0])
                target = 1_073_741_823 if extra is None else pages + extra
                return int(store._db.execute(f"PRAGMA max_page_count = {target}").fetchone()[0])

            await store._on_writer(lambda: limit_pages(0))
            refused = 0
            for _ in range(500):  # fill the last free pages: intake is refused at some point
                try:
                    accepted.append(await engine.submit(dataclasses.replace(base, amount=next(amounts))))
                except StoreUnavailable as exc:
                    assert "full" in str(exc)
                    refused += 1
                    break
            assert refused == 1, "the database never filled up"
            await until(lambda: engine.runner.store_outages >= 1, what="the runner saw the full disk")
            await asyncio.sleep(0.5)  # the runner keeps backing off and retrying meanwhile
            assert engine.runner_failed is None

            await store._on_writer(lambda: limit_pages(None))
            results = [await engine.wait(wf.id, timeout=60) for wf in accepted]
            assert engine.runner_failed is None
            await until(lambda: engine.runner.store_ready, what="ready again")
        assert {r.state for r in results} == {State.DONE}
        assert await admin.posts() == len(accepted)


class TestOneOwner:
    async def test_second_exclusive_open_is_refused_until_the_first_closes(self, tmp_path: Path) -> None:
        """An exclusive SQLite store (the runner's) holds an OS lock on ``<file>.lock``: a second exclusive
        open fails with StoreInUse naming the holder's pid; readers still open; closing frees it."""
        path = tmp_path / "owned.sqlite3"
        first = SQLiteStore(path, exclusive=True)
        await first.open()
        try:
            second = SQLiteStore(path, exclusive=True)
            with pytest.raises(StoreInUse, match=r"already in use by process \d+"):
                await second.open()
            async with SQLiteStore(path) as reader:  # one-shot commands open next to the runner
                assert await reader.count_by_state() == {}
            with pytest.raises(StoreInUse):  # a failed open left nothing behind and can be retried
                await second.open()
        finally:
            await first.close()
        async with SQLiteStore(path, exclusive=True) as again:
            assert await again.count_by_state() == {}
        assert lock_path(path).exists()

    async def test_lock_is_not_reentrant_within_a_process(self, tmp_path: Path) -> None:
        """flock conflicts between two opens even in one process; release is idempotent."""
        lock = OwnerLock.acquire(tmp_path / "x.sqlite3")
        with pytest.raises(StoreInUse):
            OwnerLock.acquire(tmp_path / "x.sqlite3")
        lock.release()
        lock.release()
        assert not lock.held
        OwnerLock.acquire(tmp_path / "x.sqlite3").release()


def _via(dsn: str, port: int) -> str:
    """The DSN with its host:port replaced by the proxy's."""
    parts = urlsplit(dsn)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


@pytest.mark.postgres
class TestPostgresReconnects:
    async def test_listen_connection_and_pool_come_back_after_a_cut(self, postgres_dsn: str) -> None:
        """A cut (every connection reset, new ones refused) makes the store StoreUnavailable; once
        restored, the pool serves again and the LISTEN connection reconnects by itself, wakes its
        listener once (a notification may have been missed) and hears new notifications."""
        target = urlsplit(postgres_dsn)
        proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
        await proxy.start()
        woken = asyncio.Event()
        wakes = 0

        def wake() -> None:
            nonlocal wakes
            wakes += 1
            woken.set()

        try:
            async with PostgresStore(_via(postgres_dsn, proxy.port), pool_max=2, connect_timeout=5) as store:
                await store.listen(wake)
                proxy.cut()
                with pytest.raises(StoreUnavailable):
                    await store.ping()
                await until(lambda: store._listen_conn is None, what="the listen connection was noticed lost")
                assert wakes == 0
                proxy.restore()
                await until(lambda: store.listen_reconnects == 1, what="LISTEN reconnected")
                assert wakes == 1
                await store.ping()
                woken.clear()
                admin = await asyncpg.connect(postgres_dsn)
                try:
                    await admin.execute("SELECT pg_notify($1, 'x')", store.notify_channel)
                finally:
                    await admin.close()
                await asyncio.wait_for(woken.wait(), 30)
                assert wakes == 2
        finally:
            await proxy.close()
