"""Chained transitions: several transitions of one drive written in one store call (``commit_chain``).

The store contract of ``commit_chain`` (every store: all the commits or none), and the engine end to end
(real HTTP to the sandbox, a real SQLite file): a chained run records exactly the states and events an
unchained run records, and a POST never leaves before its intent and everything before it is durable.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from engine import Engine, State
from engine.errors import StaleVersion
from engine.kinds import KindRegistry
from engine.models import Event, Workflow
from engine.store.base import Store
from engine.store.sqlite import SQLiteStore
from tests.conftest import FAST, SandboxAdmin, make_gateway
from tests.integration.test_engine import request_for
from tests.integration.test_store_contract import add, advanced
from workflows.withdrawal import KIND

pytestmark = pytest.mark.asyncio


def chain_of(wf: Workflow, *states: State) -> list[tuple[Workflow, Event]]:
    """Successive commits of ``wf`` through ``states`` (each the version the one before it wrote)."""
    out: list[tuple[Workflow, Event]] = []
    for i, state in enumerate(states):
        moved, event = advanced(wf, when=1.0 + i, to=state)
        out.append((moved, event))
        wf = replace(moved, version=moved.version + 1)
    return out


class TestCommitChainContract:
    async def test_a_chain_writes_every_row_version_and_event_in_order(self, store: Store) -> None:
        wf = await add(store)
        commits = chain_of(wf, State.VERIFYING_ADDRESS, State.CHECKING_WALLET, State.SUBMITTING)
        written = await store.commit_chain(commits, owner=None)
        assert [w.version for w in written] == [wf.version + 1, wf.version + 2, wf.version + 3]
        assert [w.state for w in written] == [State.VERIFYING_ADDRESS, State.CHECKING_WALLET, State.SUBMITTING]
        stored = await store.get(wf.id)
        assert stored.version == wf.version + 3 and stored.state is State.SUBMITTING
        events = await store.events(wf.id)
        assert [e.seq for e in events] == [1, 2, 3, 4]
        assert events[1:] == [event for _, event in commits]

    async def test_a_lost_compare_and_set_anywhere_writes_nothing(self, store: Store) -> None:
        wf = await add(store)
        commits = chain_of(wf, State.VERIFYING_ADDRESS, State.CHECKING_WALLET)
        broken = [commits[0], (replace(commits[1][0], version=commits[1][0].version + 5), commits[1][1])]
        with pytest.raises(StaleVersion):
            await store.commit_chain(broken, owner=None)
        stored = await store.get(wf.id)
        assert stored.version == wf.version and stored.state is State.PENDING
        assert [e.seq for e in await store.events(wf.id)] == [1]

    async def test_an_event_less_commit_closes_a_chain(self, store: Store) -> None:
        """A reschedule (no event) may end a chain: the row takes its values, the events are the others'."""
        wf = await add(store)
        (moved, event), = chain_of(wf, State.VERIFYING_ADDRESS)  # fmt: skip
        slept = replace(moved, version=moved.version + 1, next_run_at=None)
        written = await store.commit_chain([(moved, event), (slept, None)], owner=None)
        assert written[-1].version == wf.version + 2
        stored = await store.get(wf.id)
        assert stored.next_run_at is None and stored.state is State.VERIFYING_ADDRESS
        assert [e.seq for e in await store.events(wf.id)] == [1, 2]


class CountingStore(SQLiteStore):
    """The real SQLite store, counting the transitions committed alone and the chains it is asked to write."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.commits = 0
        self.chains: list[list[str]] = []

    async def commit(self, workflow: Workflow, event: Event | None, **kw: Any) -> Workflow:
        self.commits += event is not None  # transitions only (reschedules vary with timing)
        return await super().commit(workflow, event, **kw)

    async def commit_chain(self, commits: Any, **kw: Any) -> list[Workflow]:
        self.chains.append([str(wf.state) for wf, _ in commits])
        return await super().commit_chain(commits, **kw)


def comparable(event: Event) -> tuple[Any, ...]:
    """An event without what differs from run to run (times, hashes over them, ids the exchange gives)."""
    data = {k: v for k, v in event.data.items() if k not in ("exchange_uuid", "txid")}
    return event.seq, event.trigger, event.from_state, event.to_state, data


async def run_three(engine: Engine, url: str) -> list[list[Event]]:
    """Three withdrawals to DONE; their events."""
    requests = [await request_for(url, amount=amount) for amount in ("0.011", "0.012", "0.013")]
    ids = [(await engine.submit(r)).id for r in requests]
    for wf_id in ids:
        assert (await engine.wait(wf_id, timeout=20)).state is State.DONE
    return [[e async for e in engine.events(wf_id, follow=False)] for wf_id in ids]


class TestChainedRun:
    async def test_chained_and_unchained_runs_record_the_same_states_and_events(
        self, sandbox: Any, admin: SandboxAdmin, tmp_path: Any
    ) -> None:
        """Every state and every event, field by field except times: chaining changes only how many
        store calls they take (pending -> verifying_address -> checking_wallet -> submitting in one)."""
        await admin.configure(waiting_seconds=0.1, processing_seconds=0.1)
        runs: dict[str, tuple[list[list[Event]], CountingStore]] = {}
        unchained = KindRegistry([replace(KIND, chainable=frozenset())])
        for name, kinds in (("chained", None), ("unchained", unchained)):
            store = CountingStore(tmp_path / f"{name}.sqlite3", group_window=0.001)
            engine = Engine(
                store=store, gateways={"default": make_gateway(sandbox.url)}, settings=FAST,
                **({} if kinds is None else {"kinds": kinds}),
            )  # fmt: skip
            async with engine:
                runs[name] = (await run_three(engine, sandbox.url), store)
        chained, chained_store = runs["chained"]
        plain, plain_store = runs["unchained"]
        assert [[comparable(e) for e in wf] for wf in chained] == [[comparable(e) for e in wf] for wf in plain]
        for events in chained:  # the hash chain holds, seq 1..n
            prev = ""
            for event in events:
                assert event.prev_hash == prev and event.sealed(prev).hash == event.hash
                prev = event.hash
        assert plain_store.chains == []
        assert chained_store.chains == [["verifying_address", "checking_wallet", "submitting"]] * 3
        assert plain_store.commits - chained_store.commits == 3 * 3  # three transitions each, one call

    async def test_the_post_leaves_after_the_intent_and_the_chain_before_it_are_durable(
        self, sandbox: Any, engine_factory: Any, tmp_path: Any
    ) -> None:
        """At the moment of the POST, a second connection to the file already reads the workflow in
        ``submitting`` with its four events (create, start, verify, submit)."""
        seen: list[tuple[str, list[str]]] = []
        async with engine_factory() as engine:
            client = engine.gateways["default"].client
            original = client.withdraw_coin

            async def spying(*args: Any, **kw: Any) -> Any:
                reader = SQLiteStore(engine.store.path)  # type: ignore[attr-defined]
                async with reader:
                    (wf,) = await reader.list(limit=1)
                    seen.append((str(wf.state), [e.trigger for e in await reader.events(wf.id)]))
                return await original(*args, **kw)

            client.withdraw_coin = spying  # type: ignore[method-assign]
            wf = await engine.submit(await request_for(sandbox.url))
            assert (await engine.wait(wf.id, timeout=20)).state is State.DONE
        assert seen == [("submitting", ["create", "start", "verify", "submit"])]

    async def test_a_failed_read_after_a_chained_transition_writes_it_before_retrying(
        self, sandbox: Any, admin: SandboxAdmin, engine_factory: Any
    ) -> None:
        """pending -> verifying_address is chained; the allowlist read then fails: the transition is
        written (with the retry's schedule) and the workflow goes on from verifying_address."""
        request = await request_for(sandbox.url)
        await admin.fault(endpoint="GET /v1/withdraws/coin_addresses", kind="error", probability=1.0, status=500)
        async with engine_factory() as engine:
            wf = await engine.submit(request)
            async with asyncio.timeout(20):
                while (stored := await engine.get(wf.id)).state is State.PENDING or stored.error is None:
                    await asyncio.sleep(0.05)
            assert stored.state is State.VERIFYING_ADDRESS
            assert [e.trigger async for e in engine.events(wf.id, follow=False)] == ["create", "start"]
            await admin.clear_faults()
            assert (await engine.wait(wf.id, timeout=30)).state is State.DONE
            events = [e async for e in engine.events(wf.id, follow=False)]
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert [e.to_state for e in events][:5] == [
            "pending", "verifying_address", "checking_wallet", "submitting", "WAITING"
        ]  # fmt: skip
