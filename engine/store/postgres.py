"""The scale-out store: PostgreSQL through asyncpg, shared by several runner processes (design §5).

Same tables, columns and rules as the SQLite store (the mapping in :mod:`engine.store.rows` is reused
as is: ISO text timestamps, epoch-second ``DOUBLE PRECISION`` scheduling columns, JSON as text), so both
pass one contract suite. What differs is how concurrency is handled:

- **Claims** lease due rows with ``SELECT ... FOR NO KEY UPDATE SKIP LOCKED``, oldest due first along
  the ``(next_run_at, id)`` index, up to the runner's free slots in one statement: concurrent claimers
  never get the same workflow and never wait on each other. A dead worker's rows are claimable once its
  lease expired.
- **Fencing.** ``commit`` is a compare-and-set on ``version`` and, with an owner, on the lease: the row
  must still be leased to that owner and the lease unexpired at the writer's time (the ``updated_at`` it
  writes, read from the same clock that chose the claim's ``now``). A worker that lost its lease gets
  :class:`~engine.errors.StaleVersion` and writes nothing. A commit that leaves its workflow terminal
  and unscheduled gives the lease back itself.
- **Few round trips.** Each write is a single statement (data-modifying CTEs), hence its own
  transaction: a commit's row update and event insert land together or not at all, and ``create``
  settles the idempotency-key race with ``ON CONFLICT DO NOTHING``. The commits (and creations) that
  arrive together share one statement, each with its own compare-and-set and its own answer
  (:mod:`engine.store.pg_commits`). Statements are prepared once per connection (asyncpg's statement
  cache), and the pool does not send its reset query after every use (nothing here leaves session
  state behind).
- **Wake-ups.** ``create`` (once per batch of creations), ``request_cancel`` and ``request_resolution``
  ``NOTIFY`` a channel in the same transaction; :meth:`PostgresStore.listen` lets a runner in any process
  wake on it. Commits never notify. Notifications only cut latency: runners poll anyway, so a lost one
  costs at most an idle poll.
- **Migrations** run in one transaction under ``pg_advisory_xact_lock``, so processes starting together
  migrate once and never see a half-built schema.

Operators' flag columns (``cancel_requested_at``, ``resolution``) follow the same rules as in SQLite: a
commit never writes a cancel flag, clears ``resolution`` once the workflow leaves the state awaiting an
operator, and keeps the row due if it carries a flag the writer had not seen (so the wake-up is not lost).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_never, wait_exponential_jitter

from engine.errors import (
    EngineError,
    InvalidCursor,
    LaneBusy,
    ReferenceConflict,
    StaleVersion,
    StoreError,
    StoreUnavailable,
    WorkflowNotFound,
)
from engine.kinds import KindRegistry, default_kinds
from engine.models import Event, Workflow
from engine.query import ListFilter
from engine.store.base import FeedItem, FeedList
from engine.store.boundary import postgres_error, store_boundary
from engine.store.filtering import SqlArgs, filter_sql
from engine.store.migrations import POSTGRES_MIGRATIONS
from engine.store.pg_commits import CommitQueue, Pending, batch_commit_sql, batch_create_sql
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
from engine.upbit.budget import Decision, ShareRow

__all__ = ["POSTGRES_MIGRATIONS", "PostgresStore"]

log = structlog.get_logger("engine.store")

#: ``pg_advisory_xact_lock`` key serialising migrations ("UPBIT_WD" in ASCII).
_MIGRATION_LOCK = 0x5550_4249_545F_5744

_N = len(WORKFLOW_COLUMNS)
_WF_FIELDS = tuple(f.name for f in dataclasses.fields(Workflow))
_COLS = ", ".join(WORKFLOW_COLUMNS)
_EV_COLS = ", ".join(EVENT_COLUMNS)
_EV_TYPES = ("text", "bigint", "text", "text", "text", "text", "text", "text", "text")
_LANE_HELD = WORKFLOW_COLUMNS.index("lane_held")
_LANE_INDEX = "workflows_lane_unresolved"
_REFERENCE_INDEX = "workflows_reference"


def _event_select(first: int) -> str:
    """``$first::text, $first+1::bigint, ...``: typed placeholders for an ``INSERT ... SELECT``."""
    return ", ".join(f"${first + i}::{t}" for i, t in enumerate(_EV_TYPES))


# $1..$N the row (N = len(WORKFLOW_COLUMNS)), then the event's nine columns, then the channel.
_CREATE = f"""
WITH wf AS (
    INSERT INTO workflows ({_COLS}) VALUES ({", ".join(f"${i + 1}" for i in range(_N))})
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
), ev AS (
    INSERT INTO events ({_EV_COLS}) SELECT {_event_select(_N + 1)} FROM wf RETURNING workflow_id
)
SELECT pg_notify(${_N + len(EVENT_COLUMNS) + 1}::text, workflow_id) FROM ev
"""  # noqa: S608

# Columns a commit writes as given; the flag columns and next_run_at follow the rules in _COMMIT_ROW.
_UPDATABLE = [
    c
    for c in WORKFLOW_COLUMNS
    if c
    not in (
        "id",
        "created_at",
        "cancel_requested_at",
        "resolution",
        "next_run_at",
        "parent_id",
        *CREATION_COLUMNS,
        *ATTRIBUTION_COLUMNS,
    )
]
# $1 id, $2 version read, $3 owner, $4 writer's now (epoch), $5 cancel flag seen, $6 resolution seen,
# $7 new next_run_at, $8 the new state awaits an operator, $9 unflagged (refuse if the row carries any
# operator flag), $10 the new state is terminal (both by the workflow's kind), then the _UPDATABLE values
# (state among them), then the event.
_FIXED = 10
_UNSEEN_FLAG = (
    "(cancel_requested_at IS NOT NULL AND $5::text IS NULL) "
    "OR (resolution IS NOT NULL AND $6::text IS NULL AND $8::boolean)"
)
#: What a commit may store differently from the workflow it was given (operators' flags and the due time
#: they keep): all it returns, so the writer's workflow is not parsed back from a whole row.
_STORE_SET = ("next_run_at", "cancel_requested_at", "resolution", *ATTRIBUTION_COLUMNS)
# A workflow committed terminal and unscheduled is never stepped again: its lease goes with the commit,
# so the runner's release of it afterwards finds nothing to write.
_SETTLED_LEASE = (
    "lease_owner = CASE WHEN {settled} THEN NULL ELSE {row}lease_owner END, "
    "lease_expires_at = CASE WHEN {settled} THEN NULL ELSE {row}lease_expires_at END"
)
_COMMIT_ROW = f"""
UPDATE workflows SET
    {", ".join(f"{c} = ${_FIXED + 1 + i}" for i, c in enumerate(_UPDATABLE))},
    resolution = CASE WHEN $8::boolean THEN resolution END,
    resolution_by = CASE WHEN $8::boolean THEN resolution_by END,
    resolution_note = CASE WHEN $8::boolean THEN resolution_note END,
    {_SETTLED_LEASE.format(settled="$10::boolean AND $7::float8 IS NULL", row="")},
    next_run_at = CASE
        WHEN ({_UNSEEN_FLAG}) AND NOT $10::boolean THEN LEAST($7::float8, next_run_at)
        ELSE $7::float8 END
WHERE id = $1 AND version = $2
    AND ($3::text IS NULL OR (lease_owner = $3::text AND lease_expires_at >= $4::float8))
    AND NOT ($9::boolean AND (cancel_requested_at IS NOT NULL OR resolution IS NOT NULL))
RETURNING {", ".join(_STORE_SET)}
"""  # noqa: S608
_COMMIT = _COMMIT_ROW
_COMMIT_WITH_EVENT = f"""
WITH upd AS ({_COMMIT_ROW}), ev AS (
    INSERT INTO events ({_EV_COLS}) SELECT {_event_select(_FIXED + len(_UPDATABLE) + 1)} FROM upd
)
SELECT {", ".join(_STORE_SET)} FROM upd
"""  # noqa: S608

#: The workflows table's columns and their SQL types (the group commit casts its arrays to them).
_COLUMN_TYPES = """
SELECT attname AS name, format_type(atttypid, atttypmod) AS type FROM pg_attribute
WHERE attrelid = 'workflows'::regclass AND attnum > 0 AND NOT attisdropped
"""
_FIXED_TYPES = (
    ("id", "text"), ("version", "bigint"), ("owner", "text"), ("now", "float8"), ("cancel_seen", "text"),
    ("resolution_seen", "text"), ("next_run_at", "float8"), ("awaits", "boolean"), ("unflagged", "boolean"),
    ("terminal", "boolean"),
)  # fmt: skip
# The single commit's rules (_COMMIT_ROW) over the row ``w`` and the input ``i``.
_BATCH_SET = f"""resolution = CASE WHEN i.k_awaits THEN w.resolution END,
    resolution_by = CASE WHEN i.k_awaits THEN w.resolution_by END,
    resolution_note = CASE WHEN i.k_awaits THEN w.resolution_note END,
    {_SETTLED_LEASE.format(settled="i.k_terminal AND i.k_next_run_at IS NULL", row="w.")},
    next_run_at = CASE
        WHEN ((w.cancel_requested_at IS NOT NULL AND i.k_cancel_seen IS NULL)
            OR (w.resolution IS NOT NULL AND i.k_resolution_seen IS NULL AND i.k_awaits)) AND NOT i.k_terminal
        THEN LEAST(i.k_next_run_at, w.next_run_at)
        ELSE i.k_next_run_at END"""
# ``w.id = ANY($1)`` (the ids' array): the rows are found through the primary key whatever the planner
# thinks of the join (else it hashes the batch and scans the whole table for it).
_BATCH_WHERE = """w.id = ANY($1::text[]) AND w.id = i.k_id AND w.version = i.k_version
    AND (i.k_owner IS NULL OR (w.lease_owner = i.k_owner AND w.lease_expires_at >= i.k_now))
    AND NOT (i.k_unflagged AND (w.cancel_requested_at IS NOT NULL OR w.resolution IS NOT NULL))"""


def _create_sql(types: dict[str, str]) -> str | None:
    """The group creation statement for the table as migrated (None: a column it writes is missing)."""
    if not all(c in types for c in WORKFLOW_COLUMNS):
        return None
    return batch_create_sql([(c, types[c]) for c in WORKFLOW_COLUMNS], list(zip(EVENT_COLUMNS, _EV_TYPES, strict=True)))


def _batch_sql(types: dict[str, str]) -> str | None:
    """The group commit statement for the table as migrated (None: a column it writes is missing)."""
    if not all(c in types for c in _UPDATABLE):
        return None
    return batch_commit_sql(
        _FIXED_TYPES, [(c, types[c]) for c in _UPDATABLE], list(zip(EVENT_COLUMNS, _EV_TYPES, strict=True)),
        set_rules=_BATCH_SET, where_rules=_BATCH_WHERE, returning=_STORE_SET,
    )  # fmt: skip


_CLAIM = f"""
WITH due AS (
    SELECT id FROM workflows
    WHERE next_run_at <= $1 AND (lease_owner IS NULL OR lease_expires_at < $1)
    ORDER BY next_run_at, id
    LIMIT $2
    FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE workflows AS w SET lease_owner = $3, lease_expires_at = $4
WHERE w.id = ANY(ARRAY(SELECT id FROM due))
RETURNING {", ".join(f"w.{c}" for c in WORKFLOW_COLUMNS)}
"""  # noqa: S608

_CANCEL = f"""
WITH upd AS (
    UPDATE workflows SET cancel_requested_at = COALESCE(cancel_requested_at, $2::text),
        cancel_by = CASE WHEN cancel_requested_at IS NULL THEN $6::text ELSE cancel_by END,
        cancel_note = CASE WHEN cancel_requested_at IS NULL THEN $7::text ELSE cancel_note END,
        next_run_at = LEAST(next_run_at, $3::float8)
    WHERE id = $1 AND NOT (kind || ':' || state = ANY($5::text[]))
    RETURNING {_COLS}
)
SELECT upd.*, pg_notify($4::text, upd.id) FROM upd
"""  # noqa: S608

_RESOLVE = f"""
WITH upd AS (
    UPDATE workflows SET resolution = $2::text, next_run_at = $3::float8, resolution_by = $6::text,
        resolution_note = $7::text
    WHERE id = $1 AND kind || ':' || state = ANY($5::text[])
        AND (resolution IS NULL OR NOT (resolution = ANY($8::text[])))
    RETURNING {_COLS}
)
SELECT upd.*, pg_notify($4::text, upd.id) FROM upd
"""  # noqa: S608

# The feed's safe horizon: an event is served only once every transaction that could still commit one
# ordered before it has ended, i.e. its xid is below the xmin of the statement's own snapshot.
_HORIZON = "pg_snapshot_xmin(pg_current_snapshot())"
_FEED = f"""
SELECT e.xid::text AS xid, e.pos, {", ".join(f"e.{c}" for c in EVENT_COLUMNS)}, w.kind, w.account,
    w.reference, w.parent_id
FROM events e JOIN workflows w ON w.id = e.workflow_id
WHERE (e.xid, e.pos) > ($1::text::xid8, $2::bigint) AND e.xid < {_HORIZON}
ORDER BY e.xid, e.pos
LIMIT $3
"""  # noqa: S608
_FEED_KNOWN = "SELECT 1 FROM events WHERE xid = $1::text::xid8 AND pos = $2::bigint"
_FEED_HEAD = f"SELECT xid::text AS xid, pos FROM events WHERE xid < {_HORIZON} ORDER BY xid DESC, pos DESC LIMIT 1"  # noqa: S608

Listener = Callable[[Any, int, str, str], None]


def _utc_iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _row_values(wf: Workflow, kinds: KindRegistry) -> builtins.list[Any]:
    values = list(workflow_to_row(wf, kinds))
    values[_LANE_HELD] = bool(values[_LANE_HELD])
    return values


def _commit_params(
    wf: Workflow, event: Event | None, owner: str | None, kinds: KindRegistry, *, unflagged: bool = False
) -> builtins.list[Any]:
    kind = kinds[wf.kind]
    row = dict(zip(WORKFLOW_COLUMNS, _row_values(wf, kinds), strict=True))
    row["version"] = wf.version + 1
    cancel_seen = None if wf.cancel_requested_at is None else _utc_iso(wf.cancel_requested_at)
    fixed = (wf.id, wf.version, owner, epoch(wf.updated_at), cancel_seen, wf.resolution, row["next_run_at"])
    tail = () if event is None else event_to_row(event)
    flags = (kind.awaits_operator(wf.state), unflagged, kind.is_terminal(wf.state))
    return [*fixed, *flags, *(row[c] for c in _UPDATABLE), *tail]


def _answer(pending: Pending, *, value: Any = None, error: BaseException | None = None) -> None:
    """Settle a queued write's future (unless its caller stopped waiting)."""
    if pending.future.done():
        return
    if error is not None:
        pending.future.set_exception(error)
    else:
        pending.future.set_result(value)


def _settle(pending: Pending, *, row: Any = None, error: BaseException | None = None) -> None:
    """Give a queued commit its answer: the error, StaleVersion when the statement wrote no row for it,
    else the stored workflow."""
    wf = pending.workflow
    if error is None and row is None:
        error = StaleVersion(f"{wf.id} moved past version {wf.version} (or lease lost)")
    _answer(pending, error=error, value=None if row is None else _committed(wf, row))


def _batch_arrays(batch: Sequence[Pending]) -> builtins.list[builtins.list[Any]]:
    """The group commit's parameters: one array per fixed and updatable column, then one per event
    column over the commits that carry an event."""
    width = _FIXED + len(_UPDATABLE)
    columns = [[p.params[j] for p in batch] for j in range(width)]
    with_event = [p.params for p in batch if p.has_event]
    events = [[params[width + k] for params in with_event] for k in range(len(EVENT_COLUMNS))]
    return [*columns, *events]


def _committed(wf: Workflow, row: Any) -> Workflow:
    """The stored workflow after a commit: the writer's, one version on, with the columns the store sets
    itself (:data:`_STORE_SET`) as stored; the rest is exactly what the writer wrote."""
    stored: Workflow = object.__new__(Workflow)
    for name in _WF_FIELDS:
        object.__setattr__(stored, name, getattr(wf, name))
    object.__setattr__(stored, "version", wf.version + 1)
    due = row["next_run_at"]
    if due != epoch(wf.next_run_at):
        object.__setattr__(stored, "next_run_at", from_epoch(due))
    flagged = row["cancel_requested_at"]
    if flagged != (None if wf.cancel_requested_at is None else _utc_iso(wf.cancel_requested_at)):
        object.__setattr__(stored, "cancel_requested_at", datetime.fromisoformat(flagged) if flagged else None)
    object.__setattr__(stored, "resolution", row["resolution"])
    for name in ATTRIBUTION_COLUMNS:  # set with the operators' flags, never by a commit: as stored
        object.__setattr__(stored, name, row[name])
    return stored


def _redacted(dsn: str) -> str:
    """The DSN without its password (for reprs and errors)."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def _mapped(workflow: Workflow | None = None) -> Iterator[None]:
    """Translate driver errors into the engine's store errors, once, at the boundary."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        constraint = getattr(exc, "constraint_name", None) or ""
        subject = workflow.id if workflow is not None else "workflow"
        if constraint == _LANE_INDEX:
            lane = (workflow.lane if workflow is not None else None) or "?"
            raise LaneBusy(f"lane {lane} has an unresolved submit") from exc
        if constraint == _REFERENCE_INDEX and workflow is not None:
            raise ReferenceConflict(
                f"account {workflow.request.account!r} already has a withdrawal with reference {workflow.reference!r}"
            ) from exc
        raise StaleVersion(f"{subject}: {constraint or 'unique constraint'} already taken") from exc
    except EngineError:
        raise
    except Exception as exc:
        mapped = postgres_error(exc)
        if mapped is None:
            raise
        raise mapped from exc


@store_boundary(postgres_error)
class PostgresStore:
    """A :class:`~engine.store.base.Store` in a PostgreSQL database shared by several runners.

    Args:
        dsn: ``postgresql://user[:password]@host[:port]/database``; asyncpg passes query parameters it
            does not know on as server settings (``?search_path=myschema`` puts the tables in a schema).
        pool_min: connections opened up front.
        pool_max: most connections this process holds (claims, commits and reads share them).
        notify_channel: the ``LISTEN``/``NOTIFY`` channel that announces new or flagged workflows.
        connect_timeout: seconds to open one connection before giving up (:class:`StoreUnavailable`).
        kinds: the workflow kinds whose rows it reads and writes (default: those ``engine.bootstrap``
            registers).
        command_timeout: seconds one statement may take before it is abandoned (:class:`StoreUnavailable`),
            so a database that stops answering (a cut network) never hangs a runner or a request.
        commit_batch: most commits sent together in one statement (1: every commit alone); at most half
            the pool's connections carry such batches at once, the rest serve claims and reads.

    Losing the database is not fatal: the pool replaces broken connections on the next acquire, every
    failure in between is a :class:`~engine.errors.StoreUnavailable`, and the ``LISTEN`` connection
    reconnects by itself in the background (then wakes its listeners once: a notification may have been
    missed meanwhile).
    """

    def __init__(
        self,
        dsn: str,
        *,
        pool_min: int = 1,
        pool_max: int = 10,
        notify_channel: str = "upbit_withdraw_due",
        connect_timeout: float = 10.0,
        command_timeout: float = 30.0,
        kinds: KindRegistry | None = None,
        commit_batch: int = 200,
    ) -> None:
        if not 0 <= pool_min <= pool_max or pool_max < 1:
            raise ValueError("need 0 <= pool_min <= pool_max and pool_max >= 1")
        if not (connect_timeout > 0 and command_timeout > 0):
            raise ValueError("connect_timeout and command_timeout must be positive")
        self.dsn = dsn
        self.kinds = kinds if kinds is not None else default_kinds()
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.notify_channel = notify_channel
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._pool: Any = None
        self._listen_conn: Any = None
        self._listeners: builtins.list[tuple[Listener, Callable[[], None]]] = []
        self._reconnecting: asyncio.Task[None] | None = None
        self.listen_reconnects = 0
        self._commits = CommitQueue(self._write_commits, max_batch=commit_batch, flights=max(1, pool_max // 2))
        self._batch_sql: str | None = None
        self._creates = CommitQueue(self._write_creates, max_batch=commit_batch, flights=max(1, pool_max // 2))
        self._create_sql: str | None = None

    def __repr__(self) -> str:
        state = "open" if self._pool is not None else "closed"
        return f"<PostgresStore {_redacted(self.dsn)} {state} pool={self.pool_min}..{self.pool_max}>"

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the connection pool and migrate the schema (once, whoever starts first)."""
        if self._pool is not None:
            raise StoreError("store is already open")
        with _mapped():
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.pool_min,
                max_size=self.pool_max,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                reset=_keep_session,
            )
        try:
            with _mapped():
                async with pool.acquire(timeout=self.connect_timeout) as conn:
                    await _migrate(conn)
                    types = {row["name"]: row["type"] for row in await conn.fetch(_COLUMN_TYPES)}
                    self._batch_sql, self._create_sql = _batch_sql(types), _create_sql(types)
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool

    async def close(self) -> None:
        """Stop listening and close every connection (idempotent; bounded even if the database is gone)."""
        reconnecting, self._reconnecting = self._reconnecting, None
        if reconnecting is not None:
            reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconnecting
        conn, self._listen_conn = self._listen_conn, None
        listeners, self._listeners = self._listeners, []
        if conn is not None:
            with contextlib.suppress(Exception):
                for listener, _ in listeners:
                    await conn.remove_listener(self.notify_channel, listener)
            await _close_connection(conn, self.connect_timeout)
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.connect_timeout)
            except Exception:  # a dead server or a stuck connection: drop them all
                pool.terminate()

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _db(self) -> Any:
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    async def ping(self) -> None:
        """One round trip to the database (readiness); :class:`StoreUnavailable` if it does not answer."""
        with _mapped():
            await self._db().fetchval("SELECT 1")

    # -- notifications -----------------------------------------------------------------------------

    async def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on this event loop) whenever any process creates or flags a workflow.

        Uses one dedicated connection outside the pool; :meth:`close` removes the listeners. Only a
        latency optimisation: a runner must still poll, because a notification can be missed (the
        connection dropped, or the runner was busy starting). If the database cannot be reached now,
        the listener is registered anyway and the connection is made in the background.
        """
        self._db()

        def on_notify(_conn: Any, _pid: int, _channel: str, _payload: str) -> None:
            try:
                callback()
            except Exception:
                log.exception("store.listener_failed", channel=self.notify_channel)

        self._listeners.append((on_notify, callback))
        conn = self._listen_conn
        if conn is not None:
            try:
                with _mapped():
                    await conn.add_listener(self.notify_channel, on_notify)
            except StoreUnavailable:
                self._listen_lost(conn)
            return
        if self._reconnecting is None:
            try:
                await self._connect_listener()
            except StoreUnavailable as exc:
                log.warning("store.listen_unavailable", error=str(exc))
                self._start_reconnect()

    async def _connect_listener(self) -> None:
        """Open the LISTEN connection and register every listener on it."""
        with _mapped():
            conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
            try:
                for listener, _ in self._listeners:
                    await conn.add_listener(self.notify_channel, listener)
            except BaseException:
                conn.terminate()
                raise
        conn.add_termination_listener(self._listen_lost)
        self._listen_conn = conn

    def _listen_lost(self, conn: Any) -> None:
        """The LISTEN connection ended (asyncpg calls this on any termination, ours included)."""
        if conn is not self._listen_conn or self._pool is None:
            return  # closed on purpose, or an old connection
        self._listen_conn = None
        conn.terminate()
        log.warning("store.listen_lost", channel=self.notify_channel)
        self._start_reconnect()

    def _start_reconnect(self) -> None:
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(
                self._reconnect_listener(), name="postgres-listen-reconnect"
            )

    async def _reconnect_listener(self) -> None:
        """Reconnect with capped, jittered backoff until it works (or :meth:`close` cancels this)."""
        retrying = AsyncRetrying(
            wait=wait_exponential_jitter(multiplier=0.1, max=5.0, jitter=0.5),
            retry=retry_if_exception_type(StoreUnavailable),
            stop=stop_never,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._connect_listener()
        self.listen_reconnects += 1
        log.info("store.listen_restored", channel=self.notify_channel)
        for _, callback in list(self._listeners):  # a notification may have been missed meanwhile
            with contextlib.suppress(Exception):
                callback()

    # -- writes ------------------------------------------------------------------------------------

    async def create(self, workflow: Workflow, event: Event) -> tuple[Workflow, bool]:
        """Insert the workflow and its first event, or return the one stored under the idempotency key
        (creations that arrive together share one statement, as commits do)."""
        self._db()
        params = [*_row_values(workflow, self.kinds), *event_to_row(event)]
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if await self._creates.commit(Pending(workflow, params, True, future)):
            return workflow, True
        key = workflow.idempotency_key
        existing = None if key is None else await self.get_by_idempotency_key(key)
        if existing is None:
            raise StoreError(f"{workflow.id} was neither inserted nor found under its idempotency key")
        return existing, False

    async def commit(
        self, workflow: Workflow, event: Event | None, *, owner: str | None, unflagged: bool = False
    ) -> Workflow:
        """Compare-and-set the row on version and lease, and append the event, in one statement: the
        commits that arrive together share it (:mod:`engine.store.pg_commits`), each with its own answer."""
        self._db()
        params = _commit_params(workflow, event, owner, self.kinds, unflagged=unflagged)
        future: asyncio.Future[Workflow] = asyncio.get_running_loop().create_future()
        stored: Workflow = await self._commits.commit(Pending(workflow, params, event is not None, future))
        return stored

    async def _write_commits(self, batch: builtins.list[Pending]) -> None:
        """Send one batch of commits (the :class:`CommitQueue`'s writer); settles every future of it."""
        try:
            if len(batch) == 1 or self._batch_sql is None:
                for pending in batch:
                    await self._write_commit(pending)
                return
            rows = await self._db().fetch(self._batch_sql, *_batch_arrays(batch))
        except (asyncpg.IntegrityConstraintViolationError, asyncpg.TransactionRollbackError):
            for pending in batch:  # nothing of the batch was written: each commit on its own, its own answer
                await self._write_commit(pending)
            return
        except Exception as exc:  # the driver's, mapped once; anything else is passed on as it is
            error = exc if isinstance(exc, EngineError) else (postgres_error(exc) or exc)
            for pending in batch:
                _settle(pending, error=error)
            return
        except BaseException:  # cancelled with the loop: whoever still waits learns the outcome is unknown
            for pending in batch:
                _settle(pending, error=StoreUnavailable("commit interrupted"))
            raise
        written = {row["id"]: row for row in rows}
        for pending in batch:
            row = written.get(pending.workflow.id)
            _settle(pending, row=row)

    async def _write_creates(self, batch: builtins.list[Pending]) -> None:
        """Send one batch of creations (the creation queue's writer): each future gets whether its row
        was inserted (False: its idempotency key was taken)."""
        try:
            if len(batch) == 1 or self._create_sql is None:
                for pending in batch:
                    await self._write_create(pending)
                return
            arrays = [[p.params[j] for p in batch] for j in range(_N + len(EVENT_COLUMNS))]
            rows = await self._db().fetch(self._create_sql, *arrays, self.notify_channel)
        except (asyncpg.IntegrityConstraintViolationError, asyncpg.TransactionRollbackError):
            for pending in batch:  # nothing was written: each on its own (a reference taken: its own error)
                await self._write_create(pending)
            return
        except Exception as exc:
            error = exc if isinstance(exc, EngineError) else (postgres_error(exc) or exc)
            for pending in batch:
                _answer(pending, error=error)
            return
        except BaseException:
            for pending in batch:
                _answer(pending, error=StoreUnavailable("create interrupted"))
            raise
        inserted = {row["id"] for row in rows}
        for pending in batch:
            _answer(pending, value=pending.workflow.id in inserted)

    async def _write_create(self, pending: Pending) -> None:
        """One creation alone, in the single-row statement."""
        try:
            with _mapped(pending.workflow):
                created = await self._db().fetchrow(_CREATE, *pending.params, self.notify_channel)
        except Exception as exc:
            _answer(pending, error=exc)
        except BaseException:
            _answer(pending, error=StoreUnavailable("create interrupted"))
            raise
        else:
            _answer(pending, value=created is not None)

    async def _write_commit(self, pending: Pending) -> None:
        """One commit alone, in the single-row statement."""
        sql = _COMMIT_WITH_EVENT if pending.has_event else _COMMIT
        try:
            with _mapped(pending.workflow):
                row = await self._db().fetchrow(sql, *pending.params)
        except Exception as exc:
            _settle(pending, error=exc)
        except BaseException:
            _settle(pending, error=StoreUnavailable("commit interrupted"))
            raise
        else:
            _settle(pending, row=row)

    async def claim_due(
        self, *, now: datetime, limit: int, owner: str, lease_seconds: float
    ) -> builtins.list[Workflow]:
        """Lease due rows nobody holds (or whose lease expired), skipping rows another claimer has locked."""
        now_s = now.timestamp()
        with _mapped():
            rows = await self._db().fetch(_CLAIM, now_s, limit, owner, now_s + lease_seconds)
        return [workflow_from_row(row, self.kinds) for row in sorted(rows, key=lambda r: (r["next_run_at"], r["id"]))]

    async def renew(self, workflow_ids: Sequence[str], *, now: datetime, owner: str, lease_seconds: float) -> None:
        """Push the lease expiry of these workflows forward (those this owner still holds)."""
        if not workflow_ids:
            return
        with _mapped():
            await self._db().execute(
                "UPDATE workflows SET lease_expires_at = $1 WHERE lease_owner = $2 AND id = ANY($3::text[])",
                now.timestamp() + lease_seconds,
                owner,
                list(workflow_ids),
            )

    async def release(self, workflow_ids: Sequence[str], *, owner: str) -> None:
        """Clear the leases this owner still holds on these workflows."""
        if not workflow_ids:
            return
        with _mapped():
            await self._db().execute(
                "UPDATE workflows SET lease_owner = NULL, lease_expires_at = NULL "
                "WHERE lease_owner = $1 AND id = ANY($2::text[])",
                owner,
                list(workflow_ids),
            )

    async def clear_leases(self) -> None:
        """Drop every lease. Only for a single exclusive runner: shared runners use ``exclusive=False``."""
        with _mapped():
            await self._db().execute(
                "UPDATE workflows SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner IS NOT NULL"
            )

    async def request_cancel(
        self, workflow_id: str, *, at: datetime, operator: str | None = None, note: str | None = None
    ) -> Workflow:
        """Set the cancel flag (once: the first request's operator and note stay) and make the workflow
        due; terminal ones are returned unchanged."""
        return await self._flag(
            _CANCEL, workflow_id, _utc_iso(at), at.timestamp(), self.kinds.terminal_pairs(), by=(operator, note)
        )

    async def request_resolution(
        self, workflow_id: str, action: str, *, at: datetime, operator: str | None = None, note: str | None = None
    ) -> Workflow:
        """Record the operator's action (with who and their note) for a workflow whose state awaits one (by
        its kind) and make it due (others: unchanged)."""
        return await self._flag(
            _RESOLVE,
            workflow_id,
            action,
            at.timestamp(),
            self.kinds.pairs(lambda kind: kind.states_accepting(action)),  # only where this very action is taken
            by=(operator, note),
            standing=self.kinds.standing_actions(),  # an approver's decision stays
        )

    async def _flag(
        self, sql: str, workflow_id: str, value: str, due: float, pairs: Sequence[str], *,
        by: tuple[str | None, str | None], standing: Sequence[str] | None = None,
    ) -> Workflow:  # fmt: skip
        """``pairs``: the ``kind:state`` set the statement tests the row against (from the kinds); ``by``:
        the operator and their note; ``standing`` (a resolution only): recorded decisions it may not replace."""
        extra = () if standing is None else (list(standing),)
        with _mapped():
            row = await self._db().fetchrow(sql, workflow_id, value, due, self.notify_channel, list(pairs), *by, *extra)
        return workflow_from_row(row, self.kinds) if row is not None else await self.get(workflow_id)

    # -- reads -------------------------------------------------------------------------------------

    async def _fetch(self, where: str, *args: Any) -> builtins.list[Workflow]:
        with _mapped():
            rows = await self._db().fetch(f"SELECT {_COLS} FROM workflows WHERE {where}", *args)  # noqa: S608
        return [workflow_from_row(row, self.kinds) for row in rows]

    async def get(self, workflow_id: str) -> Workflow:
        """The workflow by id."""
        found = await self._fetch("id = $1", workflow_id)
        if not found:
            raise WorkflowNotFound(f"no workflow {workflow_id}")
        return found[0]

    async def get_by_idempotency_key(self, key: str) -> Workflow | None:
        """The workflow submitted under this key."""
        found = await self._fetch("idempotency_key = $1", key)
        return found[0] if found else None

    async def list(
        self, where: ListFilter | None = None, *, limit: int = 100, before_id: str | None = None
    ) -> builtins.list[Workflow]:
        """Newest first (ids sort by creation time), filtered, paged by id."""
        bind = SqlArgs("numeric")
        condition = filter_sql(where or ListFilter(), bind)
        if before_id is not None:
            condition += f" AND id < {bind(before_id)}"
        condition += f" ORDER BY id DESC LIMIT {bind(limit)}::bigint"
        return await self._fetch(condition, *bind.values)

    async def count(self, where: ListFilter | None = None) -> int:
        """How many workflows ``where`` selects."""
        bind = SqlArgs("numeric")
        condition = filter_sql(where or ListFilter(), bind)
        with _mapped():
            total = await self._db().fetchval(f"SELECT COUNT(*) FROM workflows WHERE {condition}", *bind.values)  # noqa: S608
        return int(total)

    async def next_due_at(self, *, any_lease: bool = False) -> datetime | None:
        """Earliest next_run_at among workflows nobody holds (or among all, with ``any_lease``)."""
        with _mapped():
            value = await self._db().fetchval(
                "SELECT MIN(next_run_at) FROM workflows WHERE next_run_at IS NOT NULL AND ($1 OR lease_owner IS NULL)",
                any_lease,
            )
        return from_epoch(value)

    async def events(self, workflow_id: str, *, after_seq: int = 0) -> builtins.list[Event]:
        """Events in order."""
        with _mapped():
            rows = await self._db().fetch(
                f"SELECT {_EV_COLS} FROM events WHERE workflow_id = $1 AND seq > $2 ORDER BY seq",  # noqa: S608
                workflow_id,
                after_seq,
            )
        return [event_from_row(row) for row in rows]

    async def owners_of(self, exchange_uuids: Sequence[str]) -> dict[str, str]:
        """uuid -> owning workflow id (its own exchange_uuid first, else an attribution)."""
        if not exchange_uuids:
            return {}
        with _mapped():
            rows = await self._db().fetch(
                "SELECT exchange_uuid, workflow_id AS id, 0 AS rank FROM attributions "
                "WHERE exchange_uuid = ANY($1::text[]) "
                "UNION ALL SELECT exchange_uuid, id, 1 FROM workflows WHERE exchange_uuid = ANY($1::text[])",
                list(exchange_uuids),
            )
        return {row["exchange_uuid"]: row["id"] for row in sorted(rows, key=lambda r: r["rank"])}  # own uuid wins

    async def attribute(self, workflow_id: str, exchange_uuids: Sequence[str], *, at: datetime) -> None:
        """Record these exchange uuids as ``workflow_id``'s (idempotent; a uuid keeps its first owner)."""
        if not exchange_uuids:
            return
        with _mapped():
            await self._db().executemany(
                "INSERT INTO attributions (exchange_uuid, workflow_id, at) VALUES ($1, $2, $3) "
                "ON CONFLICT (exchange_uuid) DO NOTHING",
                [(uuid, workflow_id, _utc_iso(at)) for uuid in exchange_uuids],
            )

    async def sum_submitted(self, *, account: str, currency: str, since: datetime, not_paid: Sequence[str]) -> Decimal:
        """Exact sum of amounts submitted since ``since`` except those ended in a ``not_paid`` state, but
        counting such a one whose withdrawal appeared late (it has an exchange uuid: it was paid)."""
        with _mapped():
            total = await self._db().fetchval(
                "SELECT COALESCE(SUM(amount::numeric), 0) + ("
                # A late withdrawal attributed to a workflow beside its own (paid twice) counts once more each.
                "SELECT COALESCE(SUM(w.amount::numeric), 0) FROM attributions a JOIN workflows w "
                "ON w.id = a.workflow_id WHERE w.account = $1 AND w.currency = $2 AND w.submitted_at >= $3 "
                "AND a.exchange_uuid <> COALESCE(w.exchange_uuid, '')) FROM workflows "
                "WHERE account = $1 AND currency = $2 AND submitted_at >= $3 "
                "AND (state <> ALL($4::text[]) OR exchange_uuid IS NOT NULL)",
                account,
                currency,
                _utc_iso(since),
                [str(s) for s in not_paid],
            )
        return Decimal(total)

    async def count_by_state(self) -> dict[str, int]:
        """State -> count."""
        with _mapped():
            rows = await self._db().fetch("SELECT state, COUNT(*) AS n FROM workflows GROUP BY state")
        return {row["state"]: row["n"] for row in rows}

    async def count_children(self, parent_id: str) -> dict[tuple[str, str, bool], int]:
        """(kind, state, carries a resolution) -> how many of ``parent_id``'s children (indexed)."""
        with _mapped():
            rows = await self._db().fetch(
                "SELECT kind, state, resolution IS NOT NULL AS resolved, COUNT(*) AS n FROM workflows "
                "WHERE parent_id = $1 GROUP BY kind, state, resolution IS NOT NULL",
                parent_id,
            )
        return {(row["kind"], row["state"], bool(row["resolved"])): row["n"] for row in rows}

    async def children(
        self, parent_id: str, *, after_id: str | None = None, limit: int = 1000
    ) -> builtins.list[Workflow]:
        """``parent_id``'s children in id (creation) order; ``after_id`` is the cursor."""
        return await self._fetch("parent_id = $1 AND id > $2 ORDER BY id LIMIT $3", parent_id, after_id or "", limit)

    # -- the global event feed -------------------------------------------------------------------------

    async def feed(self, *, after: str | None, limit: int = 500) -> FeedList:
        """Committed events of every workflow after the cursor, in (xid, pos) order, up to the safe
        horizon (see :meth:`Store.feed`)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        xid, pos = ("0", 0) if after is None else _parse_feed_cursor(after)
        with _mapped():
            if after is not None:
                known = await self._db().fetchval(_FEED_KNOWN, xid, pos)
                if known is None:
                    raise InvalidCursor(f"unknown feed cursor {after!r}")
            rows = await self._db().fetch(_FEED, xid, pos, limit)
        return [
            FeedItem(
                f"{row['xid']}.{row['pos']}",
                event_from_row(row),
                row["kind"],
                row["account"],
                row["reference"],
                row["parent_id"],
            )
            for row in rows
        ]

    async def feed_head(self) -> str | None:
        """The cursor of the newest event below the safe horizon (None: no event yet)."""
        with _mapped():
            row = await self._db().fetchrow(_FEED_HEAD)
        return None if row is None else f"{row['xid']}.{row['pos']}"

    # -- shared rate budget (engine.upbit.budget) ----------------------------------------------------

    async def budget_beat(
        self, account: str, owner: str, beat: int, decide: Callable[[Sequence[ShareRow], datetime], Decision]
    ) -> Decision | None:
        """One heartbeat of ``owner`` for ``account``'s budget, in one transaction under the account's
        advisory lock, on the database's clock: drop expired rows, let ``decide`` choose the owner's row
        from the live ones and ``now()``, write it (or delete it when it expires at once). None, writing
        nothing, when a heartbeat numbered ``beat`` or higher of this owner already landed (fencing)."""
        with _mapped():
            async with self._db().acquire(timeout=self.connect_timeout) as conn, conn.transaction():
                now = await conn.fetchval(_BUDGET_LOCK_SQL, _BUDGET_LOCK, account)
                rows = [_share_row(r) for r in await conn.fetch(_BUDGET_LIVE_SQL, account)]
                if any(r.owner == owner and r.beat >= beat for r in rows):
                    return None
                decision = decide(rows, now)
                row = decision.row
                if row.expires_at <= now:
                    await conn.execute("DELETE FROM budget_shares WHERE account = $1 AND owner = $2", account, owner)
                else:
                    await conn.execute(
                        _BUDGET_UPSERT_SQL, account, owner, row.share, row.demand, row.draining,
                        row.drain_until, row.expires_at, row.beat,
                    )  # fmt: skip
        return decision

    async def budget_shares(self, account: str) -> tuple[datetime, builtins.list[ShareRow]]:
        """The database's ``now()`` and ``account``'s rows that have not expired (for checks and metrics)."""
        with _mapped():
            async with self._db().acquire(timeout=self.connect_timeout) as conn, conn.transaction():
                now = await conn.fetchval("SELECT now()")
                rows = [_share_row(r) for r in await conn.fetch(_BUDGET_READ_SQL, account)]
        return now, rows

    async def commit_chain(
        self, commits: Sequence[tuple[Workflow, Event | None]], *, owner: str | None, unflagged: bool = False
    ) -> builtins.list[Workflow]:
        """Several commits of one workflow, in order, in one transaction (see
        :meth:`engine.store.base.Store.commit_chain`): each is :meth:`commit`'s statement; the first lost
        compare-and-set raises ``StaleVersion`` and the transaction rolls back, so none is written."""
        if not commits:
            return []
        stored: builtins.list[Workflow] = []
        last = len(commits) - 1
        with _mapped(commits[-1][0]):
            async with self._db().acquire(timeout=self.connect_timeout) as conn, conn.transaction():
                for i, (workflow, event) in enumerate(commits):
                    sql = _COMMIT if event is None else _COMMIT_WITH_EVENT
                    params = _commit_params(workflow, event, owner, self.kinds, unflagged=unflagged and i == last)
                    row = await conn.fetchrow(sql, *params)
                    if row is None:
                        raise StaleVersion(f"{workflow.id} moved past version {workflow.version} (or lease lost)")
                    stored.append(_committed(workflow, row))
        return stored


#: Two-key advisory locks live apart from the one-key migration lock; the class is "BU" in ASCII.
_BUDGET_LOCK = 0x4255
_BUDGET_LOCK_SQL = "SELECT now() FROM (SELECT pg_advisory_xact_lock($1::int, hashtext($2::text))) AS locked"
_BUDGET_LIVE_SQL = """
WITH gone AS (DELETE FROM budget_shares WHERE account = $1 AND expires_at <= now())
SELECT owner, share, demand, draining, drain_until, expires_at, beat FROM budget_shares
WHERE account = $1 AND expires_at > now()
"""
_BUDGET_READ_SQL = """
SELECT owner, share, demand, draining, drain_until, expires_at, beat FROM budget_shares
WHERE account = $1 AND expires_at > now() ORDER BY owner
"""
_BUDGET_UPSERT_SQL = """
INSERT INTO budget_shares (account, owner, share, demand, draining, drain_until, expires_at, beat)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (account, owner) DO UPDATE SET share = EXCLUDED.share, demand = EXCLUDED.demand,
    draining = EXCLUDED.draining, drain_until = EXCLUDED.drain_until, expires_at = EXCLUDED.expires_at,
    beat = EXCLUDED.beat
"""


def _share_row(row: Any) -> ShareRow:
    return ShareRow(
        owner=row["owner"], share=row["share"], demand=float(row["demand"]), expires_at=row["expires_at"],
        draining=row["draining"], drain_until=row["drain_until"], beat=row["beat"],
    )  # fmt: skip


async def _keep_session(_conn: Any) -> None:
    """The pool's reset on release, which asyncpg does by default with a round trip of its own per use
    (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``): as many round trips as the store's
    own statements. Nothing here leaves session state behind (advisory locks are transaction-level,
    no cursors, ``LISTEN`` lives on a connection outside the pool, no ``SET``), and asyncpg still rolls
    back a transaction left open and drops listeners before calling this; so it does nothing."""


async def _close_connection(conn: Any, timeout: float) -> None:
    """Close gracefully if the server answers in time, else drop the socket."""
    try:
        await conn.close(timeout=timeout)
    except Exception:
        conn.terminate()


async def _migrate(conn: Any) -> None:
    """Apply every migration above the recorded version, in one transaction under an advisory lock."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
        current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        for version, script in POSTGRES_MIGRATIONS:
            if version > current:
                await conn.execute(script)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
                log.info("store.migrated", version=version)


def _parse_feed_cursor(cursor: str) -> tuple[str, int]:
    """``"<xid>.<pos>"`` as (xid text, pos); ``InvalidCursor`` if it is not two decimal numbers."""
    xid, dot, pos = cursor.partition(".")
    if not (dot and _decimal(xid, 20) and _decimal(pos, 19)):
        raise InvalidCursor(f"malformed feed cursor {cursor[:40]!r}")
    if int(xid) >= 2**64 or int(pos) >= 2**63:
        raise InvalidCursor(f"malformed feed cursor {cursor[:40]!r}")
    return xid, int(pos)


def _decimal(text: str, digits: int) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= digits
