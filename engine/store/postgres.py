"""The scale-out store: PostgreSQL through asyncpg, shared by several runner processes (design §5).

Same tables, columns and rules as the SQLite store (the mapping in :mod:`engine.store.rows` is reused
as is: ISO text timestamps, epoch-second ``DOUBLE PRECISION`` scheduling columns, JSON as text), so both
pass one contract suite. What differs is how concurrency is handled:

- **Claims** lease due rows with ``SELECT ... FOR UPDATE SKIP LOCKED``: concurrent claimers never get the
  same workflow and never wait on each other. A dead worker's rows are claimable once its lease expired.
- **Fencing.** ``commit`` is a compare-and-set on ``version`` and, with an owner, on the lease: the row
  must still be leased to that owner and the lease unexpired at the writer's time (the ``updated_at`` it
  writes, read from the same clock that chose the claim's ``now``). A worker that lost its lease gets
  :class:`~engine.errors.StaleVersion` and writes nothing.
- **One round trip per write.** Each write is a single statement (data-modifying CTEs), hence its own
  transaction: a commit's row update and event insert land together or not at all, and ``create``
  settles the idempotency-key race with ``ON CONFLICT DO NOTHING``. No write grouping is needed here.
- **Wake-ups.** ``create``, ``request_cancel`` and ``request_resolution`` ``NOTIFY`` a channel in the
  same transaction; :meth:`PostgresStore.listen` lets a runner in any process wake on it. Notifications
  only cut latency: runners poll anyway, so a lost one costs at most an idle poll.
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
_COMMIT_ROW = f"""
UPDATE workflows SET
    {", ".join(f"{c} = ${_FIXED + 1 + i}" for i, c in enumerate(_UPDATABLE))},
    resolution = CASE WHEN $8::boolean THEN resolution END,
    resolution_by = CASE WHEN $8::boolean THEN resolution_by END,
    resolution_note = CASE WHEN $8::boolean THEN resolution_note END,
    next_run_at = CASE
        WHEN ({_UNSEEN_FLAG}) AND NOT $10::boolean THEN LEAST($7::float8, next_run_at)
        ELSE $7::float8 END
WHERE id = $1 AND version = $2
    AND ($3::text IS NULL OR (lease_owner = $3::text AND lease_expires_at >= $4::float8))
    AND NOT ($9::boolean AND (cancel_requested_at IS NOT NULL OR resolution IS NOT NULL))
RETURNING {_COLS}
"""  # noqa: S608
_COMMIT = _COMMIT_ROW
_COMMIT_WITH_EVENT = f"""
WITH upd AS ({_COMMIT_ROW}), ev AS (
    INSERT INTO events ({_EV_COLS}) SELECT {_event_select(_FIXED + len(_UPDATABLE) + 1)} FROM upd
)
SELECT {_COLS} FROM upd
"""  # noqa: S608

_CLAIM = f"""
WITH due AS (
    SELECT id FROM workflows
    WHERE next_run_at <= $1 AND (lease_owner IS NULL OR lease_expires_at < $1)
    ORDER BY next_run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE workflows AS w SET lease_owner = $3, lease_expires_at = $4
FROM due WHERE w.id = due.id
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
            )
        try:
            with _mapped():
                async with pool.acquire(timeout=self.connect_timeout) as conn:
                    await _migrate(conn)
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
        """Insert the workflow and its first event, or return the one stored under the idempotency key."""
        params = [*_row_values(workflow, self.kinds), *event_to_row(event), self.notify_channel]
        with _mapped(workflow):
            created = await self._db().fetchrow(_CREATE, *params)
        if created is not None:
            return workflow, True
        key = workflow.idempotency_key
        existing = None if key is None else await self.get_by_idempotency_key(key)
        if existing is None:
            raise StoreError(f"{workflow.id} was neither inserted nor found under its idempotency key")
        return existing, False

    async def commit(
        self, workflow: Workflow, event: Event | None, *, owner: str | None, unflagged: bool = False
    ) -> Workflow:
        """Compare-and-set the row on version and lease, and append the event, in one statement."""
        sql = _COMMIT if event is None else _COMMIT_WITH_EVENT
        with _mapped(workflow):
            row = await self._db().fetchrow(
                sql, *_commit_params(workflow, event, owner, self.kinds, unflagged=unflagged)
            )
        if row is None:
            raise StaleVersion(f"{workflow.id} moved past version {workflow.version} (or lease lost)")
        return workflow_from_row(row, self.kinds)

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
