"""The embedded default store: SQLite through aiosqlite, WAL mode, commits grouped over a few ms.

Why grouped: a withdrawal makes about six transitions, and each must be durable before the effect that
follows it (intent before effect). One fsync per transition would cap the engine at a few hundred
transitions a second; one fsync per batch of whatever is queued lifts that cap without weakening the
rule, because every caller's ``await`` returns only after the batch that holds its write committed.
The writer waits ``group_window`` for company, except when the first write is a submit's intent (its
POST, holding a rate-limit slot meanwhile, waits for this commit): that batch goes at once. Within a
batch, commits and creates go in ``executemany`` calls, and one-statement writes (claims, leases) skip
the savepoint a multi-statement write needs. A whole batch runs as one call on the writer's own thread
(a plain ``sqlite3`` connection behind a one-thread executor), so it costs the event loop one hand-off,
not one per statement; reads go through aiosqlite on a second connection.

``synchronous=FULL`` is the default: with ``NORMAL`` a power cut could lose a committed intent whose
POST already left, and the engine would then send it again. Writes go through one writer task on one
connection; reads use a second connection, so they never see a batch that might still roll back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiosqlite

from engine.errors import (
    EngineError,
    InvalidCursor,
    LaneBusy,
    ReferenceConflict,
    StaleVersion,
    StoreError,
    WorkflowNotFound,
)
from engine.kinds import KindRegistry, default_kinds
from engine.models import Event, Workflow
from engine.query import ListFilter
from engine.store.base import FeedItem, FeedList
from engine.store.boundary import sqlite_error, store_boundary
from engine.store.filtering import SqlArgs, filter_sql
from engine.store.migrations import SQLITE_MIGRATIONS
from engine.store.owner import OwnerLock
from engine.store.rows import (
    ATTRIBUTION_COLUMNS,
    CREATION_COLUMNS,
    EVENT_COLUMNS,
    WORKFLOW_COLUMNS,
    epoch,
    event_from_row,
    event_to_row,
    from_epoch,
    workflow_from_row,
    workflow_to_row,
)

__all__ = ["SQLiteStore"]

WorkflowList = list[Workflow]
EventList = list[Event]

_INSERT_WF = f"INSERT INTO workflows ({', '.join(WORKFLOW_COLUMNS)}) VALUES ({', '.join('?' * len(WORKFLOW_COLUMNS))})"  # noqa: S608
_INSERT_EVENT = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"  # noqa: S608
_WF_FIELDS = tuple(f.name for f in fields(Workflow))
# A commit writes the mutable columns as given; what a workflow was created with (id, kind, the request
# and the columns derived from it, the idempotency key, created_at) never changes, so it is not rewritten.
# The operators' flag columns and next_run_at follow the rules in _UPDATE_WF: the owner never writes a
# cancel flag, a resolution is cleared once the workflow leaves the state that awaits an operator, and a
# flag the writer had not seen keeps the row due (its wake-up is not lost). Which states are terminal or
# await an operator is the workflow's kind's knowledge: the writer passes both answers for the new state
# as parameters. With an owner, the lease must be held and unexpired at the writer's time (the updated_at
# it writes).
_IMMUTABLE = (
    "id", "kind", "request", "account", "currency", "amount", "lane", "idempotency_key", "created_at", "parent_id",
)  # fmt: skip
_UPDATABLE = [
    c for c in WORKFLOW_COLUMNS
    if c not in (*_IMMUTABLE, *CREATION_COLUMNS, *ATTRIBUTION_COLUMNS, "cancel_requested_at", "resolution",
                 "next_run_at")
]  # fmt: skip
# Parameters are numbered (?1, ?2, ...) and bound from a tuple: cheaper than named binding, and a value
# used several times in the statement is passed once.
_PARAMS = (
    *_UPDATABLE,
    "id",
    "next_run_at",
    "read_version",
    "owner",
    "writer_now",
    "seen_cancel",
    "seen_resolution",
    "unflagged",
    "awaiting",
    "terminal",
)
_P = {name: f"?{i}" for i, name in enumerate(_PARAMS, start=1)}
_UNSEEN_FLAG = (
    f"(cancel_requested_at IS NOT NULL AND {_P['seen_cancel']} IS NULL) "
    f"OR (resolution IS NOT NULL AND {_P['seen_resolution']} IS NULL AND {_P['awaiting']})"
)
_UPDATE_WF = (
    f"UPDATE workflows SET {', '.join(f'{c} = {_P[c]}' for c in _UPDATABLE)}, "  # noqa: S608
    f"resolution = CASE WHEN {_P['awaiting']} THEN resolution END, "
    f"resolution_by = CASE WHEN {_P['awaiting']} THEN resolution_by END, "
    f"resolution_note = CASE WHEN {_P['awaiting']} THEN resolution_note END, "
    f"next_run_at = CASE WHEN ({_UNSEEN_FLAG}) AND NOT {_P['terminal']} "
    f"THEN MIN(COALESCE({_P['next_run_at']}, next_run_at), COALESCE(next_run_at, {_P['next_run_at']})) "
    f"ELSE {_P['next_run_at']} END "
    f"WHERE id = {_P['id']} AND version = {_P['read_version']} "
    f"AND ({_P['owner']} IS NULL OR (lease_owner = {_P['owner']} AND lease_expires_at >= {_P['writer_now']})) "
    f"AND NOT ({_P['unflagged']} AND (cancel_requested_at IS NOT NULL OR resolution IS NOT NULL))"
)
# One statement claims: lease the due rows nobody holds and return them (sorted by next_run_at in Python).
_CLAIM = (
    "UPDATE workflows SET lease_owner = ?, lease_expires_at = ? WHERE id IN ("  # noqa: S608
    "SELECT id FROM workflows WHERE next_run_at <= ? AND (lease_owner IS NULL OR lease_expires_at < ?) "
    f"ORDER BY next_run_at LIMIT ?) RETURNING {', '.join(WORKFLOW_COLUMNS)}"
)
_FEED = (
    f"SELECT e.rowid AS pos, {', '.join('e.' + c for c in EVENT_COLUMNS)}, w.kind, w.account, "  # noqa: S608
    "w.reference, w.parent_id FROM events e JOIN workflows w ON w.id = e.workflow_id "
    "WHERE e.rowid > ? ORDER BY e.rowid LIMIT ?"
)

#: A write, run on the writer's own thread against its sqlite3 connection inside the batch's transaction.
Op = Callable[[sqlite3.Connection], Any]


class _TransactionLost(Exception):
    """A write's failure made SQLite roll back the batch's whole transaction: the batch failed."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _FastPathMiss(Exception):
    """A grouped commit lost a compare-and-set: fall back to one savepoint per write."""


@dataclass(frozen=True, slots=True)
class _FastCommit:
    params: tuple[Any, ...]
    event_row: tuple[Any, ...] | None
    result: Workflow


@dataclass(frozen=True, slots=True)
class _FastCreate:
    row: tuple[Any, ...]
    event_row: tuple[Any, ...]
    result: tuple[Workflow, bool]


@dataclass(slots=True)
class _Write:
    op: Op
    fast: _FastCommit | _FastCreate | None = None
    #: One SQL statement (atomic by itself in SQLite): no savepoint needed around it.
    single: bool = False
    #: Someone holds a scarce resource until this commits (a submit's intent): no grouping delay.
    urgent: bool = False
    future: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def _iso(value: datetime | None) -> str | None:
    """As ``rows`` writes timestamps: ISO-8601 in UTC (our clocks already give UTC: no conversion then)."""
    if value is None:
        return None
    return (value if value.tzinfo is UTC else value.astimezone(UTC)).isoformat()


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _update_params(
    wf: Workflow, owner: str | None, *, awaiting: bool, terminal: bool, unflagged: bool = False
) -> tuple[Any, ...]:
    """The values of ``_PARAMS``, in order (the mutable columns as ``workflow_to_row`` writes them)."""
    next_run = wf.next_run_at
    return (
        str(wf.state), int(wf.lane_held), wf.exchange_uuid, wf.txid, wf.exchange_state, wf.attempt,
        wf.submit_count, _iso(wf.deadline_at), wf.submit_body, _iso(wf.submitted_at), wf.reason,
        None if wf.error is None else _json(wf.error), _json(wf.data), wf.version + 1, wf.event_seq,
        wf.last_hash, _iso(wf.updated_at),
        wf.id, None if next_run is None else next_run.timestamp(), wf.version, owner, wf.updated_at.timestamp(),
        _iso(wf.cancel_requested_at), wf.resolution, int(unflagged), int(awaiting), int(terminal),
    )  # fmt: skip


def _utc_iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


@store_boundary(sqlite_error)
class SQLiteStore:
    """A :class:`~engine.store.base.Store` in one SQLite file.

    ``exclusive=True`` is for the one runner process of the file (``upbit-withdraw run``): :meth:`open`
    first takes the file's owner lock (:class:`~engine.store.owner.OwnerLock`) and raises
    :class:`~engine.errors.StoreInUse` if another process holds it, so a second runner never starts, clears
    the first one's leases and doubles the account's rate budget. Readers and one-shot commands open
    without it, next to the running service.

    ``kinds`` are the workflow kinds whose rows it reads and writes (default: the ones ``engine.bootstrap``
    registers).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        group_window: float = 0.002,
        synchronous: str = "FULL",
        exclusive: bool = False,
        kinds: KindRegistry | None = None,
    ) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, EXTRA or NORMAL")
        self.path = Path(path)
        self.kinds = kinds if kinds is not None else default_kinds()
        self._group_window = group_window
        self._synchronous = synchronous.upper()
        self._db: sqlite3.Connection | None = None  # the writer's, used only on its thread
        self._thread: ThreadPoolExecutor | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[_Write | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self.exclusive = exclusive
        self._owner_lock: OwnerLock | None = None
        self.batches = 0
        self.writes = 0

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path} batches={self.batches} writes={self.writes}>"

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        """Take the owner lock (``exclusive``), open both connections, set WAL, migrate, start the writer.

        A failed open leaves nothing behind (no lock, no thread, no connection), so it may be retried."""
        if self._thread is not None:
            raise StoreError("store is already open")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.exclusive:
            self._owner_lock = OwnerLock.acquire(self.path)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        try:
            await self._on_writer(self._open_writer)
            self._reader = await self._connect()
        except BaseException:
            await self.close()
            raise
        self._writer = asyncio.create_task(self._write_loop(), name="sqlite-writer")

    async def _on_writer(self, fn: Callable[[], Any]) -> Any:
        assert self._thread is not None
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def _pragmas(self) -> list[str]:
        return [
            "PRAGMA journal_mode=WAL",
            f"PRAGMA synchronous={self._synchronous}",
            "PRAGMA busy_timeout=10000",
            "PRAGMA foreign_keys=ON",
        ]

    def _open_writer(self) -> None:
        """On the writer's thread: connect, set the pragmas, migrate."""
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        for pragma in self._pragmas():
            db.execute(pragma)
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = (row[0] if row else None) or 0
        for version, script in SQLITE_MIGRATIONS:
            if version > current:
                db.executescript(f"BEGIN IMMEDIATE;\n{script}\nINSERT INTO schema_version VALUES ({version});\nCOMMIT;")
        self._db = db

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        for pragma in self._pragmas():
            await conn.execute(pragma)
        return conn

    async def close(self) -> None:
        """Drain queued writes, then close."""
        if self._writer is not None:
            await self._queue.put(None)
            await self._writer
            self._writer = None
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                await self._on_writer(self._db.close)
            self._db = None
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        if self._reader is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await self._reader.close()
            self._reader = None
        lock, self._owner_lock = self._owner_lock, None
        if lock is not None:
            lock.release()

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the writer ----------------------------------------------------------------------------------

    async def _submit(
        self, op: Op, fast: _FastCommit | _FastCreate | None = None, *, single: bool = False, urgent: bool = False
    ) -> Any:
        if self._writer is None:
            raise StoreError("store is not open")
        item = _Write(op, fast, single, urgent)
        self._queue.put_nowait(item)
        return await item.future

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            if self._group_window > 0 and not first.urgent:
                await asyncio.sleep(self._group_window)
            while not self._queue.empty() and len(batch) < 1000:
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            try:
                results = await self._on_writer(functools.partial(self._run_batch, batch))
            except Exception as exc:  # the hand-off itself failed: no caller may wait forever
                error = sqlite_error(exc) or StoreError(f"write batch failed: {type(exc).__name__}")
                results = [(item, False, error) for item in batch]
            self.batches += 1
            self.writes += len(batch)
            for item, ok, value in results:
                if item.future.done():
                    continue
                if ok:
                    item.future.set_result(value)
                else:
                    item.future.set_exception(value)

    def _run_batch(self, batch: list[_Write]) -> list[tuple[_Write, bool, Any]]:
        """On the writer's thread: the whole batch in one transaction; each write's failure is its own."""
        db = self._db
        assert db is not None
        results: list[tuple[_Write, bool, Any]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            creates = [item for item in batch if isinstance(item.fast, _FastCreate)]
            commits = [item for item in batch if isinstance(item.fast, _FastCommit)]
            if len(creates) > 1:
                results.extend(self._fast_creates(db, creates))
            if len(commits) > 1:
                results.extend(self._fast_commits(db, commits))
            handled = {id(item) for item, _, _ in results}
            index = 0
            for item in batch:
                if id(item) in handled:
                    continue
                if item.single:
                    results.append(self._single(db, item))
                else:
                    results.append(self._one(db, index, item))
                    index += 1
                if not db.in_transaction:  # SQLite rolled the whole transaction back (disk full, I/O error)
                    raise _TransactionLost(results[-1][2])
            db.execute("COMMIT")
        except Exception as exc:  # the whole batch failed: tell every caller
            with contextlib.suppress(Exception):
                db.execute("ROLLBACK")
            cause = exc.cause if isinstance(exc, _TransactionLost) else exc
            error = _store_error(cause)
            if not isinstance(error, EngineError):
                error = StoreError(f"write batch failed: {type(cause).__name__}: {cause}")
            results = [(item, False, error) for item in batch]
        return [(item, ok, value if ok else _store_error(value)) for item, ok, value in results]

    @staticmethod
    def _one(db: sqlite3.Connection, index: int, item: _Write) -> tuple[_Write, bool, Any]:
        """One write under its own savepoint: its failure is its caller's, not the batch's."""
        db.execute(f"SAVEPOINT s{index}")
        try:
            value = item.op(db)
        except Exception as exc:  # each write's failure belongs to its caller
            if not db.in_transaction:  # SQLite already rolled everything back: the batch fails (see caller)
                return item, False, exc
            db.execute(f"ROLLBACK TO s{index}")
            db.execute(f"RELEASE s{index}")
            return item, False, exc
        db.execute(f"RELEASE s{index}")
        return item, True, value

    @staticmethod
    def _single(db: sqlite3.Connection, item: _Write) -> tuple[_Write, bool, Any]:
        """A write of one SQL statement: SQLite undoes a failed statement by itself, no savepoint needed."""
        try:
            return item, True, item.op(db)
        except Exception as exc:  # the write's failure belongs to its caller
            return item, False, exc

    @staticmethod
    def _fast_commits(db: sqlite3.Connection, items: list[_Write]) -> list[tuple[_Write, bool, Any]]:
        """All commits of the batch in two ``executemany`` calls. If any row lost its compare-and-set or
        hit a unique index, undo and let the slow path (one savepoint each) sort out who failed."""
        plans = [item.fast for item in items if isinstance(item.fast, _FastCommit)]
        db.execute("SAVEPOINT fast")
        try:
            cursor = db.executemany(_UPDATE_WF, [plan.params for plan in plans])
            if cursor.rowcount != len(plans):
                raise _FastPathMiss
            events = [plan.event_row for plan in plans if plan.event_row is not None]
            if events:
                db.executemany(_INSERT_EVENT, events)
        except (sqlite3.IntegrityError, _FastPathMiss):
            db.execute("ROLLBACK TO fast")
            db.execute("RELEASE fast")
            return []
        db.execute("RELEASE fast")
        return [(item, True, plan.result) for item, plan in zip(items, plans, strict=True)]

    @staticmethod
    def _fast_creates(db: sqlite3.Connection, items: list[_Write]) -> list[tuple[_Write, bool, Any]]:
        """All new workflows of the batch (and their first events) in two ``executemany`` calls. A unique
        index hit (a known idempotency key) undoes them; the slow path then answers each one."""
        plans = [item.fast for item in items if isinstance(item.fast, _FastCreate)]
        db.execute("SAVEPOINT fast_create")
        try:
            db.executemany(_INSERT_WF, [plan.row for plan in plans])
            db.executemany(_INSERT_EVENT, [plan.event_row for plan in plans])
        except sqlite3.IntegrityError:
            db.execute("ROLLBACK TO fast_create")
            db.execute("RELEASE fast_create")
            return []
        db.execute("RELEASE fast_create")
        return [(item, True, plan.result) for item, plan in zip(items, plans, strict=True)]

    # -- writes --------------------------------------------------------------------------------------

    async def create(self, workflow: Workflow, event: Event) -> tuple[Workflow, bool]:
        """Insert, or return the workflow already stored under the idempotency key."""

        def op(db: sqlite3.Connection) -> tuple[Workflow, bool]:
            if workflow.idempotency_key is not None:
                existing = _fetch_wf_now(db, kinds, "idempotency_key = ?", (workflow.idempotency_key,))
                if existing is not None:
                    return existing, False
            try:
                db.execute(_INSERT_WF, row)
            except sqlite3.IntegrityError as exc:
                if "workflows.reference" in str(exc):
                    raise ReferenceConflict(_reference_taken(workflow)) from exc
                raise
            db.execute(_INSERT_EVENT, event_row)
            return workflow, True

        kinds = self.kinds
        row, event_row = workflow_to_row(workflow, kinds), event_to_row(event)
        result: tuple[Workflow, bool] = await self._submit(op, _FastCreate(row, event_row, (workflow, True)))
        return result

    async def commit(
        self, workflow: Workflow, event: Event | None, *, owner: str | None, unflagged: bool = False
    ) -> Workflow:
        """Compare-and-set the row on version (and lease owner and expiry); append the event in the same batch."""
        kind = self.kinds[workflow.kind]
        params = _update_params(
            workflow, owner, awaiting=kind.awaits_operator(workflow.state), terminal=kind.is_terminal(workflow.state),
            unflagged=unflagged,
        )  # fmt: skip

        def op(db: sqlite3.Connection) -> Workflow:
            try:
                cursor = db.execute(_UPDATE_WF, params)
                if cursor.rowcount != 1:
                    raise StaleVersion(f"{workflow.id} moved past version {workflow.version} (or lease lost)")
                if event_row is not None:
                    db.execute(_INSERT_EVENT, event_row)
            except sqlite3.IntegrityError as exc:
                raise _integrity(exc, workflow) from exc
            return stored

        stored: Workflow = object.__new__(Workflow)  # replace(workflow, version=+1), without its overhead
        for name in _WF_FIELDS:
            object.__setattr__(stored, name, getattr(workflow, name))
        object.__setattr__(stored, "version", workflow.version + 1)
        event_row = None if event is None else event_to_row(event)
        fast = _FastCommit(params, event_row, stored)
        result: Workflow = await self._submit(op, fast, urgent=kind.is_urgent(workflow.state))
        return result

    async def claim_due(self, *, now: datetime, limit: int, owner: str, lease_seconds: float) -> WorkflowList:
        """Lease the due workflows that nobody holds (or whose lease expired)."""
        now_s = epoch(now)
        assert now_s is not None

        def op(db: sqlite3.Connection) -> list[Any]:
            return db.execute(_CLAIM, (owner, now_s + lease_seconds, now_s, now_s, limit)).fetchall()

        # The rows are read into workflows here, on the event loop, after the batch committed.
        rows: list[Any] = await self._submit(op, single=True)
        return [workflow_from_row(row, self.kinds) for row in sorted(rows, key=_due_key)]

    async def renew(self, workflow_ids: Sequence[str], *, now: datetime, owner: str, lease_seconds: float) -> None:
        """Push the lease expiry of these workflows forward."""
        if not workflow_ids:
            return
        expiry = epoch(now) or 0.0
        ids = list(workflow_ids)

        def op(db: sqlite3.Connection) -> None:
            marks = ",".join("?" * len(ids))
            db.execute(
                f"UPDATE workflows SET lease_expires_at = ? WHERE lease_owner = ? AND id IN ({marks})",  # noqa: S608
                (expiry + lease_seconds, owner, *ids),
            )

        await self._submit(op, single=True)

    async def release(self, workflow_ids: Sequence[str], *, owner: str) -> None:
        """Clear the leases this owner still holds on these workflows."""
        ids = list(workflow_ids)
        if not ids:
            return

        def op(db: sqlite3.Connection) -> None:
            marks = ",".join("?" * len(ids))
            db.execute(
                "UPDATE workflows SET lease_owner = NULL, lease_expires_at = NULL "  # noqa: S608
                f"WHERE lease_owner = ? AND id IN ({marks})",
                (owner, *ids),
            )

        await self._submit(op, single=True)

    async def clear_leases(self) -> None:
        """Drop every lease: the one runner of a SQLite file takes over what a dead process held."""

        def op(db: sqlite3.Connection) -> None:
            db.execute("UPDATE workflows SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner IS NOT NULL")

        await self._submit(op, single=True)

    async def request_cancel(
        self, workflow_id: str, *, at: datetime, operator: str | None = None, note: str | None = None
    ) -> Workflow:
        """Set the cancel flag (once: the first request's operator and note stay) and wake the workflow."""
        return await self._flag(
            workflow_id,
            "cancel_by = CASE WHEN cancel_requested_at IS NULL THEN ? ELSE cancel_by END, "
            "cancel_note = CASE WHEN cancel_requested_at IS NULL THEN ? ELSE cancel_note END, "
            "cancel_requested_at = COALESCE(cancel_requested_at, ?), next_run_at = MIN(COALESCE(next_run_at, ?), ?)",
            (operator, note, _utc_iso(at), epoch(at), epoch(at)),
            awaiting_only=False,
        )

    async def request_resolution(
        self, workflow_id: str, action: str, *, at: datetime, operator: str | None = None, note: str | None = None
    ) -> Workflow:
        """Record the operator's action (with who and their note) for a workflow in a state that awaits one
        (by its kind) and wake it."""
        return await self._flag(
            workflow_id,
            "resolution = ?, resolution_by = ?, resolution_note = ?, next_run_at = ?",
            (action, operator, note, epoch(at)),
            awaiting_only=True,
            accepting=action,
        )

    def _accepting(self, action: str) -> tuple[str, ...]:
        """``kind:state`` of every state accepting ``action`` (never empty: SQL's ``IN ()`` is an error)."""
        return self.kinds.pairs(lambda kind: kind.states_accepting(action)) or ("",)

    async def _flag(
        self, workflow_id: str, assignments: str, params: tuple[Any, ...], *, awaiting_only: bool,
        accepting: str | None = None,
    ) -> Workflow:  # fmt: skip
        # Per-state rules come from the kinds, as ``kind:state`` parameters: no state is named here. A
        # resolution lands only in a state that accepts that very action (approve: awaiting_approval).
        terminal = self.kinds.terminal_pairs()
        condition = "id = ? AND kind || ':' || state NOT IN ({})".format(",".join("?" * len(terminal)))
        args: tuple[Any, ...] = (*params, workflow_id, *terminal)
        if awaiting_only:
            awaiting = self.kinds.awaiting_pairs() if accepting is None else self._accepting(accepting)
            condition += " AND kind || ':' || state IN ({})".format(",".join("?" * len(awaiting)))
            args = (*args, *awaiting)
        standing = self.kinds.standing_actions() if accepting is not None else ()
        if standing:  # an approver's decision waiting to be carried out is never replaced
            condition += " AND (resolution IS NULL OR resolution NOT IN ({}))".format(",".join("?" * len(standing)))
            args = (*args, *standing)
        kinds = self.kinds

        def op(db: sqlite3.Connection) -> Workflow:
            db.execute(f"UPDATE workflows SET {assignments} WHERE {condition}", args)  # noqa: S608
            found = _fetch_wf_now(db, kinds, "id = ?", (workflow_id,))
            if found is None:
                raise WorkflowNotFound(f"no workflow {workflow_id}")
            return found

        result: Workflow = await self._submit(op)
        return result

    # -- reads ---------------------------------------------------------------------------------------

    def _read_conn(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreError("store is not open")
        return self._reader

    async def ping(self) -> None:
        """A read through the store (readiness); raises :class:`StoreUnavailable` if the file cannot be read."""
        await self._read_conn().execute_fetchall("SELECT 1 FROM schema_version LIMIT 1")

    async def get(self, workflow_id: str) -> Workflow:
        """The workflow by id."""
        found = await _fetch_wf(self._read_conn(), self.kinds, "id = ?", (workflow_id,))
        if found is None:
            raise WorkflowNotFound(f"no workflow {workflow_id}")
        return found

    async def get_by_idempotency_key(self, key: str) -> Workflow | None:
        """The workflow submitted under this key."""
        return await _fetch_wf(self._read_conn(), self.kinds, "idempotency_key = ?", (key,))

    async def list(
        self, where: ListFilter | None = None, *, limit: int = 100, before_id: str | None = None
    ) -> WorkflowList:
        """Newest first, filtered, paged by id."""
        bind = SqlArgs("qmark")
        condition = filter_sql(where or ListFilter(), bind)
        if before_id is not None:
            condition += f" AND id < {bind(before_id)}"
        condition += f" ORDER BY id DESC LIMIT {bind(limit)}"
        return await _fetch_many(self._read_conn(), self.kinds, condition, bind.values)

    async def count(self, where: ListFilter | None = None) -> int:
        """How many workflows ``where`` selects."""
        bind = SqlArgs("qmark")
        condition = filter_sql(where or ListFilter(), bind)
        sql = f"SELECT COUNT(*) FROM workflows WHERE {condition}"  # noqa: S608
        rows = await self._read_conn().execute_fetchall(sql, bind.values)
        return int(next(iter(rows))[0])

    async def next_due_at(self, *, any_lease: bool = False) -> datetime | None:
        """Earliest next_run_at among workflows nobody holds (or among all, with ``any_lease``)."""
        unheld = "" if any_lease else " AND lease_owner IS NULL"
        rows = await self._read_conn().execute_fetchall(
            f"SELECT MIN(next_run_at) FROM workflows WHERE next_run_at IS NOT NULL{unheld}"  # noqa: S608
        )
        first = next(iter(rows), None)
        return from_epoch(first[0] if first is not None else None)

    async def events(self, workflow_id: str, *, after_seq: int = 0) -> EventList:
        """Events in order."""
        rows = await self._read_conn().execute_fetchall(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE workflow_id = ? AND seq > ? ORDER BY seq",  # noqa: S608
            (workflow_id, after_seq),
        )
        return [event_from_row(row) for row in rows]

    async def owners_of(self, exchange_uuids: Sequence[str]) -> dict[str, str]:
        """uuid -> owning workflow id (its own exchange_uuid first, else an attribution)."""
        if not exchange_uuids:
            return {}
        marks = ",".join("?" * len(exchange_uuids))
        rows = await self._read_conn().execute_fetchall(
            f"SELECT exchange_uuid, workflow_id, 0 FROM attributions WHERE exchange_uuid IN ({marks}) "  # noqa: S608
            f"UNION ALL SELECT exchange_uuid, id, 1 FROM workflows WHERE exchange_uuid IN ({marks})",
            [*exchange_uuids, *exchange_uuids],
        )
        return {row[0]: row[1] for row in sorted(rows, key=lambda r: r[2])}  # a workflow's own uuid wins

    async def attribute(self, workflow_id: str, exchange_uuids: Sequence[str], *, at: datetime) -> None:
        """Record these exchange uuids as ``workflow_id``'s (idempotent; a uuid keeps its first owner)."""
        if not exchange_uuids:
            return
        rows = [(uuid, workflow_id, _utc_iso(at)) for uuid in exchange_uuids]

        def op(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR IGNORE INTO attributions (exchange_uuid, workflow_id, at) VALUES (?, ?, ?)", rows)

        await self._submit(op)

    async def sum_submitted(self, *, account: str, currency: str, since: datetime, not_paid: Sequence[str]) -> Decimal:
        """Sum of amounts submitted since ``since`` except those ended in a ``not_paid`` state (refused,
        abandoned), unless the withdrawal appeared late (it has an exchange uuid: it was paid, it counts)."""
        excluded = ", ".join(f"?{i}" for i in range(4, 4 + len(not_paid)))  # SQLite takes an empty list
        rows = await self._read_conn().execute_fetchall(
            "SELECT amount FROM workflows WHERE account = ?1 AND currency = ?2 AND submitted_at >= ?3 "  # noqa: S608
            f"AND (state NOT IN ({excluded}) OR exchange_uuid IS NOT NULL) "
            # A late withdrawal attributed to a workflow beside its own (paid twice) counts once more each.
            "UNION ALL SELECT w.amount FROM attributions a JOIN workflows w ON w.id = a.workflow_id "
            "WHERE w.account = ?1 AND w.currency = ?2 AND w.submitted_at >= ?3 "
            "AND a.exchange_uuid <> COALESCE(w.exchange_uuid, '')",
            (account, currency, _utc_iso(since), *(str(s) for s in not_paid)),
        )
        return sum((Decimal(row[0]) for row in rows), Decimal(0))

    async def count_by_state(self) -> dict[str, int]:
        """State -> count."""
        rows = await self._read_conn().execute_fetchall("SELECT state, COUNT(*) FROM workflows GROUP BY state")
        return {row[0]: row[1] for row in rows}

    async def count_children(self, parent_id: str) -> dict[tuple[str, str, bool], int]:
        """(kind, state, carries a resolution) -> how many of ``parent_id``'s children (indexed)."""
        rows = await self._read_conn().execute_fetchall(
            "SELECT kind, state, resolution IS NOT NULL, COUNT(*) FROM workflows WHERE parent_id = ? "
            "GROUP BY kind, state, resolution IS NOT NULL",
            (parent_id,),
        )
        return {(row[0], row[1], bool(row[2])): row[3] for row in rows}

    # -- the global event feed -------------------------------------------------------------------------
    # The order is the events table's rowid. One writer appends every event, each batch in one transaction,
    # and nothing is ever deleted (the append-only triggers), so rowids are assigned in commit order, a
    # reader's snapshot holds exactly the rows up to some rowid, and they stay dense and stable (a VACUUM,
    # which may renumber rowids, keeps 1..n as it is when none are missing).

    async def feed(self, *, after: str | None, limit: int = 500) -> FeedList:
        """Committed events of every workflow after the cursor, in commit order (see :meth:`Store.feed`)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        start = 0 if after is None else await self._feed_position(after)
        rows = await self._read_conn().execute_fetchall(_FEED, (start, limit))
        return [
            FeedItem(
                str(row["pos"]), event_from_row(row), row["kind"], row["account"], row["reference"], row["parent_id"]
            )
            for row in rows
        ]

    async def feed_head(self) -> str | None:
        """The cursor of the newest committed event (None: no event yet)."""
        rows = await self._read_conn().execute_fetchall("SELECT MAX(rowid) FROM events")
        first = next(iter(rows), None)
        return None if first is None or first[0] is None else str(first[0])

    async def _feed_position(self, cursor: str) -> int:
        """The rowid a cursor names; ``InvalidCursor`` unless it is one of this file's events."""
        if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 19:
            raise InvalidCursor(f"malformed feed cursor {cursor[:40]!r}")
        position = int(cursor)
        rows = await self._read_conn().execute_fetchall("SELECT 1 FROM events WHERE rowid = ?", (position,))
        if not rows:
            raise InvalidCursor(f"unknown feed cursor {cursor!r}")
        return position

    async def children(self, parent_id: str, *, after_id: str | None = None, limit: int = 1000) -> WorkflowList:
        """``parent_id``'s children in id (creation) order; ``after_id`` is the cursor."""
        where = "parent_id = ? AND id > ? ORDER BY id LIMIT ?"
        return await _fetch_many(self._read_conn(), self.kinds, where, [parent_id, after_id or "", limit])


async def _fetch_wf(
    conn: aiosqlite.Connection, kinds: KindRegistry, where: str, args: Sequence[Any]
) -> Workflow | None:
    rows = await _fetch_many(conn, kinds, where, args)
    return rows[0] if rows else None  # one hand-off to the reader's thread per query (execute_fetchall)


async def _fetch_many(conn: aiosqlite.Connection, kinds: KindRegistry, where: str, args: Sequence[Any]) -> WorkflowList:
    rows = await conn.execute_fetchall(f"SELECT {', '.join(WORKFLOW_COLUMNS)} FROM workflows WHERE {where}", args)  # noqa: S608
    return [workflow_from_row(row, kinds) for row in rows]


def _fetch_wf_now(db: sqlite3.Connection, kinds: KindRegistry, where: str, args: Sequence[Any]) -> Workflow | None:
    """On the writer's thread, inside its transaction."""
    row = db.execute(f"SELECT {', '.join(WORKFLOW_COLUMNS)} FROM workflows WHERE {where}", args).fetchone()  # noqa: S608
    return None if row is None else workflow_from_row(row, kinds)


def _due_key(row: Any) -> tuple[float, str]:
    return row["next_run_at"], row["id"]


def _store_error(exc: BaseException) -> BaseException:
    """A write's failure as its caller sees it: engine errors as they are, driver errors translated."""
    if isinstance(exc, EngineError):
        return exc
    return sqlite_error(exc) or exc


def _reference_taken(workflow: Workflow) -> str:
    return f"account {workflow.request.account!r} already has a withdrawal with reference {workflow.reference!r}"


def _integrity(exc: sqlite3.IntegrityError, workflow: Workflow) -> Exception:
    text = str(exc)
    if "lane" in text:
        return LaneBusy(f"lane {workflow.lane} has an unresolved submit")
    return StaleVersion(f"{workflow.id}: {text}")
