"""Group commit for the PostgreSQL store: the commits of many workflows in one statement, one round trip.

A runner steps up to ``concurrency`` workflows at once, and their commits arrive together (a claim of
200 due rows starts 200 steps in the same turn of the event loop). Sent one by one, each commit costs a
round trip, a parse/bind/execute of its own, a transaction and a WAL flush, which is most of what the
server spends per commit. :class:`CommitQueue` sends whatever has queued up as one ``UPDATE ... FROM
unnest(...)`` (a compare-and-set per row, exactly the single commit's ``WHERE``) chained to one ``INSERT``
of the events of the rows that were written: one statement, hence one transaction.

Each commit still succeeds or fails on its own:

- a row whose compare-and-set fails (version moved, lease lost, an operator flag for an ``unflagged``
  commit) is simply not in ``RETURNING``: that commit gets :class:`~engine.errors.StaleVersion`, the
  others are written;
- a constraint a row breaks (a lane already held, an exchange uuid or reference already taken) aborts
  the whole statement, so nothing of it is written; the batch is then sent again one commit at a time,
  each getting its own answer (:class:`~engine.errors.LaneBusy` for the loser, success for the others);
- a lost connection or a timeout fails every commit of the batch with
  :class:`~engine.errors.StoreUnavailable`, as it fails a single commit: the outcome is unknown and the
  runner finds out from the store.

No batch holds two commits of one workflow (the second waits for the next batch), rows are written in
id order (two batches, or a batch and a lease renewal, lock rows in the same order and cannot
deadlock), and a commit whose caller was cancelled before its batch left is not written. There is no
timer: a batch leaves at once when a connection slot is free (at most ``flights`` batches in flight),
so a lone commit waits for nothing, and under load batches grow by themselves.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.models import Workflow

__all__ = ["CommitQueue", "Pending", "batch_commit_sql", "batch_create_sql"]


@dataclass(slots=True)
class Pending:
    """One queued write: the workflow as the writer wants it stored, its statement parameters (in the
    single statement's order: a commit's fixed and updatable columns, or a creation's row, then the
    event's columns if any) and the caller's future (its answer)."""

    workflow: Workflow
    params: builtins.list[Any]
    has_event: bool
    future: asyncio.Future[Any] = field(repr=False)


def batch_commit_sql(
    fixed: Sequence[tuple[str, str]], updatable: Sequence[tuple[str, str]], events: Sequence[tuple[str, str]],
    *, set_rules: str, where_rules: str, returning: Sequence[str],
) -> str:  # fmt: skip
    """The group commit statement. Each sequence is (column, SQL type) in parameter order; ``set_rules``
    and ``where_rules`` are the single commit's own rules written over ``w`` (the row) and ``i`` (the
    input: fixed columns are named ``k_<name>``). Parameters: one array per fixed and updatable column,
    then one per event column (the events of the commits that have one)."""
    inputs = [(f"k_{name}", sql_type) for name, sql_type in fixed] + list(updatable)
    arrays = ", ".join(f"${i + 1}::{t}[]" for i, (_, t) in enumerate(inputs))
    names = ", ".join(name for name, _ in inputs)
    first_event = len(inputs) + 1
    ev_arrays = ", ".join(f"${first_event + i}::{t}[]" for i, (_, t) in enumerate(events))
    ev_names = ", ".join(name for name, _ in events)
    sets = ", ".join(f"{name} = i.{name}" for name, _ in updatable)
    returned = ", ".join(f"w.{name}" for name in returning)
    return f"""
WITH i AS (SELECT * FROM unnest({arrays}) AS i({names})),
upd AS (
    UPDATE workflows AS w SET {sets}, {set_rules}
    FROM i WHERE {where_rules}
    RETURNING w.id, {returned}
), ev AS (
    INSERT INTO events ({ev_names})
    SELECT e.* FROM unnest({ev_arrays}) AS e({ev_names}) JOIN upd ON upd.id = e.workflow_id
)
SELECT * FROM upd
"""  # noqa: S608


def batch_create_sql(columns: Sequence[tuple[str, str]], events: Sequence[tuple[str, str]]) -> str:
    """The group creation statement: the rows (one array per column, in ``columns`` order) whose
    idempotency key is free, and the first events of those that were inserted; one ``NOTIFY`` for the
    whole batch (identical notifications of one transaction are delivered once). Returns the ids that
    were inserted."""
    arrays = ", ".join(f"${i + 1}::{t}[]" for i, (_, t) in enumerate(columns))
    names = ", ".join(name for name, _ in columns)
    first_event = len(columns) + 1
    ev_arrays = ", ".join(f"${first_event + i}::{t}[]" for i, (_, t) in enumerate(events))
    ev_names = ", ".join(name for name, _ in events)
    channel = first_event + len(events)
    return f"""
WITH wf AS (
    INSERT INTO workflows ({names}) SELECT * FROM unnest({arrays})
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
), ev AS (
    INSERT INTO events ({ev_names})
    SELECT e.* FROM unnest({ev_arrays}) AS e({ev_names}) JOIN wf ON wf.id = e.workflow_id
)
SELECT wf.id, pg_notify(${channel}::text, '') FROM wf
"""  # noqa: S608


#: Sends one batch: (the batch) -> None, settling every future of it (the store's writer).
Writer = Callable[[builtins.list[Pending]], Awaitable[None]]


class CommitQueue:
    """Queues commits and sends them in batches of up to ``max_batch``, at most ``flights`` at once."""

    def __init__(self, write: Writer, *, max_batch: int = 200, flights: int = 2) -> None:
        if max_batch < 1 or flights < 1:
            raise ValueError("max_batch and flights must be at least 1")
        self._write = write
        self.max_batch = max_batch
        self.flights = flights
        self._queue: builtins.list[Pending] = []
        self._flying = 0
        #: Batches sent and commits they carried (for benchmarks and metrics).
        self.batches = 0
        self.commits = 0

    def __repr__(self) -> str:
        return f"<CommitQueue queued={len(self._queue)} flying={self._flying}/{self.flights}>"

    async def commit(self, pending: Pending) -> Any:
        """Queue one write and wait for its own outcome."""
        self._queue.append(pending)
        if self._flying < self.flights:
            self._flying += 1
            asyncio.get_running_loop().create_task(self._fly(), name="postgres-group-commit")
        return await pending.future

    async def _fly(self) -> None:
        try:
            await asyncio.sleep(0)  # the other steps woken in this turn of the loop queue theirs first
            while self._queue:
                batch = self._take()
                if batch:
                    self.batches += 1
                    self.commits += len(batch)
                    await self._write(batch)
        finally:
            self._flying -= 1

    def _take(self) -> builtins.list[Pending]:
        """Up to ``max_batch`` queued commits, at most one per workflow, in id order; cancelled ones
        are dropped (never written)."""
        batch: dict[str, Pending] = {}
        rest: builtins.list[Pending] = []
        for pending in self._queue:
            if pending.future.done():
                continue
            if pending.workflow.id in batch or len(batch) >= self.max_batch:
                rest.append(pending)
            else:
                batch[pending.workflow.id] = pending
        self._queue = rest
        return [batch[key] for key in sorted(batch)]
