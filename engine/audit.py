"""Tamper evidence: every event stores the hash of its workflow's previous event, so an edited,
removed or reordered line breaks the chain. :func:`verify_chain` is pure; :func:`verify_store` walks
every workflow of a store and reports the first broken link of each broken chain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from engine.models import Event, Workflow
from engine.store.base import Store

__all__ = ["BrokenLink", "verify_chain", "verify_store"]


@dataclass(frozen=True, slots=True)
class BrokenLink:
    """The first place a workflow's event chain does not hold, and why."""

    workflow_id: str
    seq: int
    problem: str


def verify_chain(workflow: Workflow | None, events: Sequence[Event]) -> BrokenLink | None:
    """None when ``events`` are 1..n, each linked to the previous hash and hashing to its own hash, and
    the workflow row points at the last one; else the first broken link."""
    prev = ""
    wf_id = workflow.id if workflow is not None else (events[0].workflow_id if events else "?")
    for expected_seq, event in enumerate(events, start=1):
        if event.seq != expected_seq:
            return BrokenLink(wf_id, expected_seq, f"event {expected_seq} is missing (found {event.seq})")
        if event.prev_hash != prev:
            return BrokenLink(wf_id, event.seq, "prev_hash does not match the previous event's hash")
        if event.sealed(prev).hash != event.hash:
            return BrokenLink(wf_id, event.seq, "content does not match its hash (edited)")
        prev = event.hash
    if workflow is not None and (workflow.event_seq != len(events) or workflow.last_hash != prev):
        return BrokenLink(wf_id, len(events) + 1, "the workflow row does not point at its last event (truncated)")
    return None


async def _all_workflows(store: Store, page: int = 500) -> AsyncIterator[Workflow]:
    before: str | None = None
    while True:
        batch = await store.list(limit=page, before_id=before)
        for wf in batch:
            yield wf
        if len(batch) < page:
            return
        before = batch[-1].id


async def verify_store(store: Store) -> tuple[int, list[BrokenLink]]:
    """(workflows checked, broken links) over the whole store."""
    checked, broken = 0, []
    async for workflow in _all_workflows(store):
        checked += 1
        link = verify_chain(workflow, await store.events(workflow.id))
        if link is not None:
            broken.append(link)
    return checked, broken
