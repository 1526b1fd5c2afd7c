"""The Store contract for references and search (issue #13), on SQLite and PostgreSQL alike.

``ListFilter.matches`` states the rule in Python; every store's SQL must select exactly the same rows, in
the same order, and count them the same. A population with every filtered attribute varied is checked
against many combined filters, so a wrong clause (a missing bound, an OR where an AND belongs, a string
comparison that does not sort in time order) shows up as a difference.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from engine.errors import ReferenceConflict, WorkflowNotFound
from engine.kinds import default_kinds
from engine.models import State, WithdrawalRequest, Workflow
from engine.query import ListFilter
from engine.store.base import Store
from engine.store.migrations import SQLITE_MIGRATIONS
from engine.store.postgres import POSTGRES_MIGRATIONS, PostgresStore
from engine.store.rows import ATTRIBUTION_COLUMNS, CREATION_COLUMNS, WORKFLOW_COLUMNS, workflow_to_row
from engine.store.sqlite import SQLiteStore
from tests.integration.conftest import fresh_schema
from tests.integration.test_store_contract import KST, add, at, new_workflow

STATES = (State.PENDING, State.DONE, State.FAILED, State.ABORTED, State.NEEDS_REVIEW)


def request(*, currency: str = "BTC", net_type: str = "BTC", account: str = "default", amount: str = "1") -> Any:
    """A valid request on the given currency, network and account."""
    return WithdrawalRequest(
        currency=currency, net_type=net_type, amount=Decimal(amount), address="dest-address-1", account=account
    )


async def population(store: Store) -> list[Workflow]:
    """24 workflows varying state, currency, network, account, reason, reference and both timestamps."""
    made = []
    for n in range(24):
        wf = await add(
            store,
            created=n * 10.0,
            state=STATES[n % len(STATES)],
            request=request(
                currency=("BTC", "ETH", "XRP")[n % 3],
                net_type=("BTC", "ETH", "TRX", "XRP")[n % 4],
                account=("default", "desk-2")[n % 2],
                amount=f"{n + 1}",
            ),
            reason=(None, "address_not_allowed", "dry_run")[n % 3] if n % 5 else None,
            reference=f"payout-{n}" if n % 4 else None,
            metadata={"n": n, "tags": ["a", "b"], "nested": {"ok": True}} if n % 6 == 0 else None,
            idempotency_key=f"key-{n}" if n % 3 == 0 else None,
        )
        # updated_at runs in the opposite direction to created_at, so the two ranges cannot stand in for each other.
        found = {"exchange_uuid": f"uuid-{n}", "txid": f"tx-{n % 7}"} if n % 5 == 1 else {}  # a txid may repeat
        moved = replace(wf, updated_at=at(1000 - n * 7), **found)
        made.append(await store.commit(moved, None, owner=None))
    return made


FILTERS = [
    ListFilter(),
    ListFilter(states={State.DONE}),
    ListFilter(states={State.DONE, State.FAILED}),
    ListFilter(currency="ETH"),
    ListFilter(net_type="TRX"),
    ListFilter(account="desk-2"),
    ListFilter(reason="dry_run"),
    ListFilter(reference="payout-5"),
    ListFilter(reference="payout-5", account="default"),  # payout-5 is on desk-2: nothing
    ListFilter(idempotency_key="key-9"),
    ListFilter(created_after=at(50), created_before=at(120)),
    ListFilter(created_after=at(50).astimezone(KST)),  # any offset means the same instant
    ListFilter(updated_after=at(900), updated_before=at(958)),
    ListFilter(updated_before=at(1000 - 7 * 20)),
    ListFilter(states={State.PENDING, State.ABORTED}, account="default", created_before=at(200)),
    ListFilter(currency="BTC", net_type="BTC", states={State.PENDING}),
    ListFilter(account="desk-2", reason="address_not_allowed", updated_after=at(0)),
    ListFilter(currency="DOGE"),
    ListFilter(exchange_uuid="uuid-6"),
    ListFilter(exchange_uuid="uuid-7"),  # none has it
    ListFilter(txid="tx-6"),
    ListFilter(txid="tx-1", account="desk-2"),
]


def selects(where: ListFilter, wf: Workflow) -> bool:
    return where.matches(wf, default_kinds().of(wf).index(wf.request))


@pytest.mark.parametrize("where", FILTERS, ids=[f"f{i}" for i in range(len(FILTERS))])
async def test_list_and_count_select_what_the_filter_matches(store: Store, where: ListFilter) -> None:
    """Every store selects exactly ``where.matches``, newest first, and counts the same rows."""
    made = await population(store)
    expected = [wf.id for wf in sorted(made, key=lambda w: w.id, reverse=True) if selects(where, wf)]
    assert [wf.id for wf in await store.list(where, limit=1000)] == expected
    assert await store.count(where) == len(expected)


async def test_filtered_pages_cover_every_row_once(store: Store) -> None:
    """Paging a filter with ``before_id`` visits each matching row once, in order, and then stops."""
    made = await population(store)
    where = ListFilter(states={State.PENDING, State.DONE, State.FAILED}, created_after=at(20))
    expected = [wf.id for wf in sorted(made, key=lambda w: w.id, reverse=True) if selects(where, wf)]
    seen: list[str] = []
    before = None
    for _ in range(len(made)):
        page = await store.list(where, limit=3, before_id=before)
        seen += [wf.id for wf in page]
        if len(page) < 3:
            break
        before = page[-1].id
    assert seen == expected and len(expected) > 6


async def test_time_bounds_are_half_open(store: Store) -> None:
    """``after`` includes its instant, ``before`` excludes it: adjacent windows never count a row twice."""
    for n in range(4):
        await add(store, created=n * 10.0)
    first = await store.count(ListFilter(created_after=at(0), created_before=at(20)))
    second = await store.count(ListFilter(created_after=at(20), created_before=at(40)))
    assert (first, second) == (2, 2)
    assert await store.count(ListFilter(created_after=at(10), created_before=at(10))) == 0
    assert await store.count(ListFilter(created_after=at(9.999999), created_before=at(10.000001))) == 1


async def test_reference_and_metadata_round_trip(store: Store) -> None:
    """Reference and metadata come back exactly as stored; None stays None."""
    metadata = {"user": "42", "amounts": ["1.5", 2, 2.5], "deep": {"list": [None, True]}, "unicode": "출금"}
    with_both = await add(store, reference="payout-1", metadata=metadata)
    without = await add(store)
    got = await store.get(with_both.id)
    assert (got.reference, got.metadata) == ("payout-1", metadata)
    assert got == with_both
    assert (await store.get(without.id)).reference is None
    assert (await store.get(without.id)).metadata is None


async def test_a_reference_is_unique_per_account(store: Store) -> None:
    """The same reference on the same account is refused and writes nothing; another account may use it;
    workflows without a reference never collide."""
    first = await add(store, reference="payout-7")
    await add(store, reference="payout-7", request=request(account="desk-2"))
    await add(store)
    await add(store)
    wf, event = new_workflow(reference="payout-7", idempotency_key="other-key")
    with pytest.raises(ReferenceConflict, match="payout-7"):
        await store.create(wf, event)
    with pytest.raises(WorkflowNotFound):
        await store.get(wf.id)
    assert await store.get_by_idempotency_key("other-key") is None
    assert await store.events(wf.id) == []
    assert await store.count() == 4
    assert [w.id for w in await store.list(ListFilter(reference="payout-7", account="default"))] == [first.id]


async def test_concurrent_creates_of_one_reference_make_one_workflow(store: Store) -> None:
    """Racing creates of one reference: exactly one wins, the others get ReferenceConflict."""
    pairs = [new_workflow(reference="race", idempotency_key=f"k{n}") for n in range(6)]
    results = await asyncio.gather(*(store.create(wf, ev) for wf, ev in pairs), return_exceptions=True)
    assert sum(1 for r in results if isinstance(r, tuple)) == 1
    assert all(isinstance(r, ReferenceConflict) for r in results if not isinstance(r, tuple))
    assert await store.count(ListFilter(reference="race")) == 1


# -- migration 4 on a database made before it -------------------------------------------------------------

_OLD_COLUMNS = [c for c in WORKFLOW_COLUMNS if c not in (*CREATION_COLUMNS, *ATTRIBUTION_COLUMNS)]


def _old_row(wf: Workflow) -> list[Any]:
    row = dict(zip(WORKFLOW_COLUMNS, workflow_to_row(wf, default_kinds()), strict=True))
    return [row[c] for c in _OLD_COLUMNS]


async def test_migration_4_keeps_sqlite_rows_and_fills_the_network(tmp_path: Path) -> None:
    """A SQLite file of the schema before migration 4 opens with every row intact, its network filled in."""
    path = tmp_path / "old.sqlite3"
    wf, event = new_workflow(request=request(net_type="TRX", currency="USDT"))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version, script in (m for m in SQLITE_MIGRATIONS if m[0] < 4):
        db.executescript(f"BEGIN;\n{script}\nINSERT INTO schema_version VALUES ({version});\nCOMMIT;")
    marks = ", ".join("?" * len(_OLD_COLUMNS))
    db.execute(f"INSERT INTO workflows ({', '.join(_OLD_COLUMNS)}) VALUES ({marks})", _old_row(wf))
    ev = (event.workflow_id, 1, event.at.isoformat(), "create", None, "pending", json.dumps(event.data), "", event.hash)
    db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", ev)
    db.close()
    async with SQLiteStore(path) as store:
        assert await store.get(wf.id) == wf
        assert [w.id for w in await store.list(ListFilter(net_type="TRX"))] == [wf.id]
        assert await store.events(wf.id) == [event]


@pytest.mark.postgres
async def test_migration_4_keeps_postgres_rows_and_fills_the_network(postgres_database: str) -> None:
    """The same on PostgreSQL: the rows of a database migrated to version 2 survive migration 4."""
    wf, _ = new_workflow(request=request(net_type="TRX", currency="USDT"))
    async with fresh_schema(postgres_database) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
            for version, script in (m for m in POSTGRES_MIGRATIONS if m[0] < 4):
                await conn.execute(script)
                await conn.execute("INSERT INTO schema_version VALUES ($1)", version)
            values = _old_row(wf)
            values[_OLD_COLUMNS.index("lane_held")] = bool(values[_OLD_COLUMNS.index("lane_held")])
            marks = ", ".join(f"${i + 1}" for i in range(len(_OLD_COLUMNS)))
            await conn.execute(f"INSERT INTO workflows ({', '.join(_OLD_COLUMNS)}) VALUES ({marks})", *values)
        finally:
            await conn.close()
        async with PostgresStore(dsn) as store:
            assert await store.get(wf.id) == wf
            assert [w.id for w in await store.list(ListFilter(net_type="TRX"))] == [wf.id]


def test_filters_and_a_single_state_combine() -> None:
    """``with_state`` narrows a filter by one more state (the Engine's ``state=`` shorthand)."""
    base = ListFilter(states={State.DONE})
    assert base.with_state(None) is base
    assert base.with_state(State.FAILED).states == frozenset({State.DONE, State.FAILED})
    assert ListFilter().with_state(State.DONE).states == {State.DONE}
    assert ListFilter(created_after=at(0) + timedelta(hours=9)).created_after == at(32400)
