"""Durable state of webhooks: subscriptions, their feed cursors, and the delivery outbox.

The outbox is the events table itself: an event is written in the same transaction as the transition it
records, so one that exists committed and one that does not was never sent. A *fan-out* turns events into
delivery rows: it reads the global feed (:meth:`~engine.store.base.Store.feed`) after a subscription's
stored cursor and, in one transaction, moves the cursor forward (a compare-and-set on the cursor it read)
and inserts the delivery rows. A crash between the read and the write loses nothing (the cursor did not
move); two workers fanning out the same range cannot both win (the second's compare-and-set fails).

Deliveries are claimed like workflows: a lease per row, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, and a
row is only claimable when no earlier event of the same workflow is still pending for the same
subscription (in order per workflow per subscription). Finishing an attempt is fenced by the lease.

Both stores keep the same tables (migration 5). This module is the stores' companion: it runs its
statements through the store's own writer (SQLite) or pool (PostgreSQL), so webhooks share the store's
durability and error translation without widening the :class:`~engine.store.base.Store` protocol.
Secrets are stored as given (HMAC signing needs them); they never leave this module except to the
signer, and no repr shows them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.errors import StoreError, WebhookNotFound
from engine.store.base import Store
from engine.store.boundary import postgres_error, sqlite_error, store_boundary
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SQLiteStore

__all__ = [
    "Delivery",
    "DeliveryStatus",
    "NewDelivery",
    "Subscription",
    "WebhookStore",
    "webhook_store",
]

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
DeliveryStatus = str
STATUSES = (PENDING, DELIVERED, FAILED)


@dataclass(frozen=True, slots=True)
class Subscription:
    """A webhook target. ``secrets``: the signing secrets, current first (two during a rotation)."""

    id: str
    url: str
    events: tuple[str, ...]
    secrets: tuple[str, ...] = field(repr=False)
    source: str  # "api" or "config"
    created_at: float
    feed_cursor: str | None = None
    deleted_at: float | None = None


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A delivery row a fan-out inserts (one event for one subscription)."""

    event_id: str
    workflow_id: str
    seq: int
    event_type: str
    body: str
    event_at: float


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery row as stored (times are epoch seconds)."""

    id: int
    subscription_id: str
    event_id: str
    workflow_id: str
    seq: int
    event_type: str
    body: str
    event_at: float
    status: DeliveryStatus
    attempts: int
    retry_from: float
    next_attempt_at: float | None
    last_attempt_at: float | None
    last_status: int | None
    last_error: str | None
    delivered_at: float | None


class WebhookStore(Protocol):
    """What the dispatcher, the API and the CLI need from the store for webhooks."""

    async def create_subscription(self, sub: Subscription) -> Subscription:
        """Insert ``sub``; its feed cursor starts at the feed's head (only events from now on)."""
        ...

    async def sync_config_subscriptions(self, subs: Sequence[Subscription], *, at: float) -> None:
        """Make the stored config subscriptions these (insert new ones at the head, update url, events
        and secrets of known ones, delete those no longer configured)."""
        ...

    async def get_subscription(self, sub_id: str) -> Subscription:
        """The live subscription, or ``WebhookNotFound``."""
        ...

    async def list_subscriptions(self) -> list[Subscription]:
        """Live subscriptions, oldest first."""
        ...

    async def delete_subscription(self, sub_id: str, *, at: float) -> None:
        """Stop fanning out and delivering for it (its log stays); ``WebhookNotFound`` if not live."""
        ...

    async def set_secrets(self, sub_id: str, secrets: Sequence[str]) -> None:
        """Replace the signing secrets (rotation: the new one first, the old one kept second)."""
        ...

    async def fan_out(self, sub_id: str, *, read: str | None, to: str, deliveries: Sequence[NewDelivery],
                      at: float) -> bool:  # fmt: skip
        """Move the cursor from ``read`` to ``to`` and insert ``deliveries``, in one transaction; False
        (nothing written) if the cursor was no longer ``read`` or the subscription was deleted."""
        ...

    async def claim_deliveries(self, *, now: float, limit: int, owner: str, lease_seconds: float) -> list[Delivery]:
        """Lease up to ``limit`` due pending deliveries of live subscriptions, none of which has an earlier
        event of its workflow still pending for its subscription."""
        ...

    async def finish_attempt(
        self, delivery_id: int, *, owner: str, at: float, status: DeliveryStatus, http_status: int | None,
        error: str | None, next_attempt_at: float | None,
    ) -> bool:  # fmt: skip
        """Record one attempt and release the lease (only while ``owner`` holds it)."""
        ...

    async def deliveries(
        self, sub_id: str, *, status: DeliveryStatus | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[Delivery]:
        """The subscription's delivery log, newest first."""
        ...

    async def redeliver(
        self, sub_id: str, *, at: float, event_ids: Sequence[str] | None = None, since: float | None = None,
        until: float | None = None,
    ) -> int:  # fmt: skip
        """Make matching deliveries pending again, due now, with a fresh retry period; how many."""
        ...

    async def pending_count(self) -> int:
        """Deliveries still pending (all subscriptions)."""
        ...


def webhook_store(store: Store) -> WebhookStore:
    """The webhook storage that lives in ``store``."""
    if isinstance(store, SQLiteStore):
        return SQLiteWebhooks(store)
    if isinstance(store, PostgresStore):
        return PostgresWebhooks(store)
    raise StoreError(f"webhooks need a SQLite or PostgreSQL store, not {type(store).__name__}")


_SUB_COLS = ("id", "url", "events", "secrets", "source", "created_at", "feed_cursor", "deleted_at")
_DELIVERY_COLS = (
    "id", "subscription_id", "event_id", "workflow_id", "seq", "event_type", "body", "event_at", "status",
    "attempts", "retry_from", "next_attempt_at", "last_attempt_at", "last_status", "last_error", "delivered_at",
)  # fmt: skip
_NEW_COLS = ("subscription_id", "event_id", "workflow_id", "seq", "event_type", "body", "event_at", "status",
             "retry_from", "next_attempt_at")  # fmt: skip


def _sub_row(sub: Subscription) -> tuple[Any, ...]:
    return (sub.id, sub.url, json.dumps(list(sub.events)), json.dumps(list(sub.secrets)), sub.source,
            sub.created_at, sub.feed_cursor, sub.deleted_at)  # fmt: skip


def _sub_from(row: Any) -> Subscription:
    return Subscription(
        id=row["id"], url=row["url"], events=tuple(json.loads(row["events"])),
        secrets=tuple(json.loads(row["secrets"])), source=row["source"], created_at=row["created_at"],
        feed_cursor=row["feed_cursor"], deleted_at=row["deleted_at"],
    )  # fmt: skip


def _delivery_from(row: Any) -> Delivery:
    return Delivery(**{name: row[name] for name in _DELIVERY_COLS})


def _new_rows(sub_id: str, deliveries: Sequence[NewDelivery], at: float) -> list[tuple[Any, ...]]:
    return [
        (sub_id, d.event_id, d.workflow_id, d.seq, d.event_type, d.body, d.event_at, PENDING, at, at)
        for d in deliveries
    ]


# -- SQLite ------------------------------------------------------------------------------------------

_Q = ", ".join
_S_DUE = (
    "d.status = 'pending' AND d.next_attempt_at <= ?3 AND (d.lease_owner IS NULL OR d.lease_expires_at < ?3) "
    "AND s.deleted_at IS NULL AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p "
    "WHERE p.subscription_id = d.subscription_id AND p.workflow_id = d.workflow_id AND p.status = 'pending' "
    "AND p.seq < d.seq)"
)
_S_CLAIM = (
    "UPDATE webhook_deliveries SET lease_owner = ?1, lease_expires_at = ?2 WHERE id IN ("  # noqa: S608
    f"SELECT d.id FROM webhook_deliveries d JOIN webhook_subscriptions s ON s.id = d.subscription_id WHERE {_S_DUE} "
    f"ORDER BY d.next_attempt_at, d.id LIMIT ?4) RETURNING {_Q(_DELIVERY_COLS)}"
)
_FINISH = (
    "UPDATE webhook_deliveries SET status = {p}1, attempts = attempts + 1, last_attempt_at = {p}2, "
    "last_status = {p}3, last_error = {p}4, next_attempt_at = {p}5, "
    "delivered_at = CASE WHEN {p}1 = 'delivered' THEN {p}2 ELSE delivered_at END, "
    "lease_owner = NULL, lease_expires_at = NULL WHERE id = {p}6 AND lease_owner = {p}7 AND status = 'pending'"
)


def _redeliver_where(p: str, event_ids: Sequence[str] | None, since: float | None, until: float | None,
                     first: int) -> tuple[str, list[Any]]:  # fmt: skip
    """The filter of a redelivery (after ``subscription_id``); placeholders numbered from ``first``."""
    clauses: list[str] = []
    args: list[Any] = []
    n = first
    if event_ids is not None:
        if p == "$":
            clauses.append(f"event_id = ANY(${n}::text[])")
            args.append(list(event_ids))
            n += 1
        else:
            clauses.append(f"event_id IN ({', '.join('?' for _ in event_ids)})")
            args.extend(event_ids)
    if since is not None:
        clauses.append(f"event_at >= {p}{n if p == '$' else ''}")
        args.append(since)
        n += 1
    if until is not None:
        clauses.append(f"event_at < {p}{n if p == '$' else ''}")
        args.append(until)
        n += 1
    return " AND ".join(clauses) or "TRUE", args


@store_boundary(sqlite_error)
class SQLiteWebhooks:
    """:class:`WebhookStore` in a :class:`~engine.store.sqlite.SQLiteStore` (writes through its writer)."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"<SQLiteWebhooks {self._store.path}>"

    async def _write(self, op: Any, *, single: bool = False) -> Any:
        return await self._store._submit(op, single=single)

    async def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        rows = await self._store._read_conn().execute_fetchall(sql, args)
        return list(rows)

    async def create_subscription(self, sub: Subscription) -> Subscription:
        """Insert at the feed's head."""
        head = await self._store.feed_head()
        stored = _replace_cursor(sub, head)
        row = _sub_row(stored)

        def op(db: sqlite3.Connection) -> None:
            db.execute(f"INSERT INTO webhook_subscriptions ({_Q(_SUB_COLS)}) VALUES ({_Q('?' * len(_SUB_COLS))})", row)  # noqa: S608

        await self._write(op, single=True)
        return stored

    async def sync_config_subscriptions(self, subs: Sequence[Subscription], *, at: float) -> None:
        """Upsert the configured ones, delete the configured ones that are gone."""
        head = await self._store.feed_head()
        rows = [_sub_row(_replace_cursor(sub, head)) for sub in subs]
        keep = [sub.id for sub in subs]

        def op(db: sqlite3.Connection) -> None:
            db.executemany(
                f"INSERT INTO webhook_subscriptions ({_Q(_SUB_COLS)}) VALUES ({_Q('?' * len(_SUB_COLS))}) "  # noqa: S608
                "ON CONFLICT (id) DO UPDATE SET url = excluded.url, events = excluded.events, "
                "secrets = excluded.secrets, deleted_at = NULL, "
                "feed_cursor = CASE WHEN webhook_subscriptions.deleted_at IS NULL "
                "THEN webhook_subscriptions.feed_cursor ELSE excluded.feed_cursor END",
                rows,
            )
            marks = _Q("?" * len(keep))
            db.execute(
                "UPDATE webhook_subscriptions SET deleted_at = ? WHERE source = 'config' "  # noqa: S608
                f"AND deleted_at IS NULL AND id NOT IN ({marks})",
                (at, *keep),
            )

        await self._write(op)

    async def get_subscription(self, sub_id: str) -> Subscription:
        """The live subscription."""
        rows = await self._read(
            f"SELECT {_Q(_SUB_COLS)} FROM webhook_subscriptions WHERE id = ? AND deleted_at IS NULL",  # noqa: S608
            (sub_id,),
        )
        if not rows:
            raise WebhookNotFound(f"no webhook subscription {sub_id[:80]!r}")
        return _sub_from(rows[0])

    async def list_subscriptions(self) -> list[Subscription]:
        """Live ones, oldest first."""
        rows = await self._read(
            f"SELECT {_Q(_SUB_COLS)} FROM webhook_subscriptions WHERE deleted_at IS NULL ORDER BY created_at, id"  # noqa: S608
        )
        return [_sub_from(row) for row in rows]

    async def delete_subscription(self, sub_id: str, *, at: float) -> None:
        """Soft delete."""

        def op(db: sqlite3.Connection) -> int:
            return db.execute(
                "UPDATE webhook_subscriptions SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL", (at, sub_id)
            ).rowcount

        if await self._write(op, single=True) != 1:
            raise WebhookNotFound(f"no webhook subscription {sub_id[:80]!r}")

    async def set_secrets(self, sub_id: str, secrets: Sequence[str]) -> None:
        """Replace the secrets."""
        value = json.dumps(list(secrets))

        def op(db: sqlite3.Connection) -> int:
            return db.execute(
                "UPDATE webhook_subscriptions SET secrets = ? WHERE id = ? AND deleted_at IS NULL", (value, sub_id)
            ).rowcount

        if await self._write(op, single=True) != 1:
            raise WebhookNotFound(f"no webhook subscription {sub_id[:80]!r}")

    async def fan_out(
        self, sub_id: str, *, read: str | None, to: str, deliveries: Sequence[NewDelivery], at: float
    ) -> bool:
        """Cursor compare-and-set and the delivery rows, in one transaction."""
        rows = _new_rows(sub_id, deliveries, at)

        def op(db: sqlite3.Connection) -> bool:
            moved = db.execute(
                "UPDATE webhook_subscriptions SET feed_cursor = ? WHERE id = ? AND feed_cursor IS ? "
                "AND deleted_at IS NULL",
                (to, sub_id, read),
            ).rowcount
            if moved != 1:
                return False
            db.executemany(
                f"INSERT OR IGNORE INTO webhook_deliveries ({_Q(_NEW_COLS)}) VALUES ({_Q('?' * len(_NEW_COLS))})",  # noqa: S608
                rows,
            )
            return True

        result: bool = await self._write(op)
        return result

    async def claim_deliveries(self, *, now: float, limit: int, owner: str, lease_seconds: float) -> list[Delivery]:
        """Lease due deliveries, in order per workflow."""

        def op(db: sqlite3.Connection) -> list[Any]:
            return db.execute(_S_CLAIM, (owner, now + lease_seconds, now, limit)).fetchall()

        rows: list[Any] = await self._write(op, single=True)
        return sorted((_delivery_from(row) for row in rows), key=lambda d: (d.next_attempt_at or 0.0, d.id))

    async def finish_attempt(
        self, delivery_id: int, *, owner: str, at: float, status: DeliveryStatus, http_status: int | None,
        error: str | None, next_attempt_at: float | None,
    ) -> bool:  # fmt: skip
        """Record the attempt (fenced by the lease)."""
        sql = _FINISH.format(p="?")
        args = (status, at, http_status, error, next_attempt_at, delivery_id, owner)

        def op(db: sqlite3.Connection) -> bool:
            return bool(db.execute(sql, args).rowcount == 1)

        result: bool = await self._write(op, single=True)
        return result

    async def deliveries(
        self, sub_id: str, *, status: DeliveryStatus | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[Delivery]:
        """Newest first."""
        rows = await self._read(
            f"SELECT {_Q(_DELIVERY_COLS)} FROM webhook_deliveries WHERE subscription_id = ? "  # noqa: S608
            "AND (? IS NULL OR status = ?) AND (? IS NULL OR id < ?) ORDER BY id DESC LIMIT ?",
            (sub_id, status, status, before_id, before_id, limit),
        )
        return [_delivery_from(row) for row in rows]

    async def redeliver(
        self, sub_id: str, *, at: float, event_ids: Sequence[str] | None = None, since: float | None = None,
        until: float | None = None,
    ) -> int:  # fmt: skip
        """Pending again, due now."""
        where, args = _redeliver_where("?", event_ids, since, until, first=4)

        def op(db: sqlite3.Connection) -> int:
            return int(
                db.execute(
                    "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, retry_from = ?, "  # noqa: S608
                    "next_attempt_at = ?, lease_owner = NULL, lease_expires_at = NULL "
                    f"WHERE subscription_id = ? AND {where}",
                    (at, at, sub_id, *args),
                ).rowcount
            )

        await self.get_subscription(sub_id)
        result: int = await self._write(op)
        return result

    async def pending_count(self) -> int:
        """Pending deliveries."""
        rows = await self._read("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'")
        return int(rows[0][0])


# -- PostgreSQL --------------------------------------------------------------------------------------

_P_CLAIM = f"""
WITH due AS (
    SELECT d.id FROM webhook_deliveries d JOIN webhook_subscriptions s ON s.id = d.subscription_id
    WHERE {_S_DUE.replace("?3", "$3")}
    ORDER BY d.next_attempt_at, d.id
    LIMIT $4
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries AS w SET lease_owner = $1, lease_expires_at = $2
FROM due WHERE w.id = due.id
RETURNING {_Q(f"w.{c}" for c in _DELIVERY_COLS)}
"""  # noqa: S608
_P_INSERT_SUB = (
    f"INSERT INTO webhook_subscriptions ({_Q(_SUB_COLS)}) VALUES ({_Q(f'${i}' for i in range(1, len(_SUB_COLS) + 1))})"  # noqa: S608
)


@store_boundary(postgres_error)
class PostgresWebhooks:
    """:class:`WebhookStore` in a :class:`~engine.store.postgres.PostgresStore` (through its pool)."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"<PostgresWebhooks {self._store!r}>"

    def _pool(self) -> Any:
        return self._store._db()

    async def create_subscription(self, sub: Subscription) -> Subscription:
        """Insert at the feed's head."""
        stored = _replace_cursor(sub, await self._store.feed_head())
        await self._pool().execute(_P_INSERT_SUB, *_sub_row(stored))
        return stored

    async def sync_config_subscriptions(self, subs: Sequence[Subscription], *, at: float) -> None:
        """Upsert the configured ones, delete the configured ones that are gone (one transaction)."""
        head = await self._store.feed_head()
        async with self._pool().acquire() as conn, conn.transaction():
            await conn.executemany(
                f"{_P_INSERT_SUB} ON CONFLICT (id) DO UPDATE SET url = excluded.url, events = excluded.events, "
                "secrets = excluded.secrets, deleted_at = NULL, "
                "feed_cursor = CASE WHEN webhook_subscriptions.deleted_at IS NULL "
                "THEN webhook_subscriptions.feed_cursor ELSE excluded.feed_cursor END",
                [_sub_row(_replace_cursor(sub, head)) for sub in subs],
            )
            await conn.execute(
                "UPDATE webhook_subscriptions SET deleted_at = $1 WHERE source = 'config' AND deleted_at IS NULL "
                "AND NOT (id = ANY($2::text[]))",
                at,
                [sub.id for sub in subs],
            )

    async def get_subscription(self, sub_id: str) -> Subscription:
        """The live subscription."""
        row = await self._pool().fetchrow(
            f"SELECT {_Q(_SUB_COLS)} FROM webhook_subscriptions WHERE id = $1 AND deleted_at IS NULL",  # noqa: S608
            sub_id,
        )
        if row is None:
            raise WebhookNotFound(f"no webhook subscription {sub_id[:80]!r}")
        return _sub_from(row)

    async def list_subscriptions(self) -> list[Subscription]:
        """Live ones, oldest first."""
        rows = await self._pool().fetch(
            f"SELECT {_Q(_SUB_COLS)} FROM webhook_subscriptions WHERE deleted_at IS NULL ORDER BY created_at, id"  # noqa: S608
        )
        return [_sub_from(row) for row in rows]

    async def delete_subscription(self, sub_id: str, *, at: float) -> None:
        """Soft delete."""
        status = await self._pool().execute(
            "UPDATE webhook_subscriptions SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL", at, sub_id
        )
        if status != "UPDATE 1":
            raise WebhookNotFound(f"no webhook subscription {sub_id[:80]!r}")

    async def set_secrets(self, sub_id: str, secrets: Sequence[str]) -> None:
        """Replace the secrets."""
        status = await self._pool().execute(
            "UPDATE webhook_subscriptions SET secrets = $1 WHERE id = $2 AND deleted_at IS NULL",
            json.dumps(list(secrets)),
            sub_id,
        )
        if status != "UPDATE 1":
            raise WebhookNotFound(f"no webhook subscription {sub_id[:80]!r}")

    async def fan_out(
        self, sub_id: str, *, read: str | None, to: str, deliveries: Sequence[NewDelivery], at: float
    ) -> bool:
        """Cursor compare-and-set and the delivery rows, in one transaction (a concurrent fan-out of the
        same range waits on the row lock, then finds the cursor moved and writes nothing)."""
        async with self._pool().acquire() as conn, conn.transaction():
            status = await conn.execute(
                "UPDATE webhook_subscriptions SET feed_cursor = $1 WHERE id = $2 "
                "AND feed_cursor IS NOT DISTINCT FROM $3 AND deleted_at IS NULL",
                to,
                sub_id,
                read,
            )
            if status != "UPDATE 1":
                return False
            if deliveries:
                marks = _Q(f"${i}" for i in range(1, len(_NEW_COLS) + 1))
                await conn.executemany(
                    f"INSERT INTO webhook_deliveries ({_Q(_NEW_COLS)}) VALUES ({marks}) "  # noqa: S608
                    "ON CONFLICT (subscription_id, event_id) DO NOTHING",
                    _new_rows(sub_id, deliveries, at),
                )
        return True

    async def claim_deliveries(self, *, now: float, limit: int, owner: str, lease_seconds: float) -> list[Delivery]:
        """Lease due deliveries, skipping rows another worker is claiming."""
        rows = await self._pool().fetch(_P_CLAIM, owner, now + lease_seconds, now, limit)
        return sorted((_delivery_from(row) for row in rows), key=lambda d: (d.next_attempt_at or 0.0, d.id))

    async def finish_attempt(
        self, delivery_id: int, *, owner: str, at: float, status: DeliveryStatus, http_status: int | None,
        error: str | None, next_attempt_at: float | None,
    ) -> bool:  # fmt: skip
        """Record the attempt (fenced by the lease)."""
        sql = _FINISH.format(p="$").replace("$1 =", "$1::text =")
        result = await self._pool().execute(sql, status, at, http_status, error, next_attempt_at, delivery_id, owner)
        return bool(result == "UPDATE 1")

    async def deliveries(
        self, sub_id: str, *, status: DeliveryStatus | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[Delivery]:
        """Newest first."""
        rows = await self._pool().fetch(
            f"SELECT {_Q(_DELIVERY_COLS)} FROM webhook_deliveries WHERE subscription_id = $1 "  # noqa: S608
            "AND ($2::text IS NULL OR status = $2) AND ($3::bigint IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
            sub_id,
            status,
            before_id,
            limit,
        )
        return [_delivery_from(row) for row in rows]

    async def redeliver(
        self, sub_id: str, *, at: float, event_ids: Sequence[str] | None = None, since: float | None = None,
        until: float | None = None,
    ) -> int:  # fmt: skip
        """Pending again, due now."""
        await self.get_subscription(sub_id)
        where, args = _redeliver_where("$", event_ids, since, until, first=3)
        status = await self._pool().execute(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, retry_from = $1, "  # noqa: S608
            "next_attempt_at = $1, lease_owner = NULL, lease_expires_at = NULL "
            f"WHERE subscription_id = $2 AND {where}",
            at,
            sub_id,
            *args,
        )
        return int(str(status).rsplit(" ", 1)[-1])

    async def pending_count(self) -> int:
        """Pending deliveries."""
        return int(await self._pool().fetchval("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'"))


def _replace_cursor(sub: Subscription, cursor: str | None) -> Subscription:
    return Subscription(
        id=sub.id, url=sub.url, events=sub.events, secrets=sub.secrets, source=sub.source,
        created_at=sub.created_at, feed_cursor=cursor, deleted_at=None,
    )  # fmt: skip
