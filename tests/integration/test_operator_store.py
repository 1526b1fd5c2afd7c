"""The operator storage (engine/store/operators.py) on both stores: operators with hashed tokens and
passwords, roles, console sessions with idle expiry; and the attribution columns of migration 7 (who
submitted, who asked for a cancel or a resolution, with a note) through the store's requests."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from engine.errors import InvalidRequest, OperatorNotFound
from engine.kinds import default_kinds, new_workflow
from engine.models import Event, Workflow
from engine.operators import TOKEN_PREFIX, Operator, Role, token_hash
from engine.policy import WorkflowSettings
from engine.store.base import Store
from engine.store.operators import operator_store
from tests.conftest import FAST, SandboxAdmin
from tests.integration.test_engine import request_for, until
from workflows.withdrawal_model import State, WithdrawalRequest

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
IDLE = timedelta(minutes=30)
PASSWORD = "correct horse battery"


def request(n: int = 1) -> WithdrawalRequest:
    return WithdrawalRequest(currency="BTC", net_type="BTC", amount=Decimal("0.01"), address=f"addr-{n}")


async def add_workflow(store: Store, *, created_by: str | None = None, n: int = 1) -> Workflow:
    kinds = default_kinds()
    wf, event = new_workflow(
        kinds["withdrawal"], request(n), now=NOW, settings=WorkflowSettings(), created_by=created_by
    )
    stored, _ = await store.create(wf, event)
    return stored


async def all_events(engine: Any, wf_id: str) -> list[Event]:
    return [e async for e in engine.events(wf_id, follow=False)]


async def raw_rows(store: Store, sql: str) -> list[tuple[object, ...]]:
    """Rows straight from the database (to prove what is, and is not, stored)."""
    ops = operator_store(store)
    return [tuple(row) for row in await ops._fetch(sql)]  # type: ignore[attr-defined]


class TestOperators:
    async def test_add_returns_a_token_stored_only_as_its_hash(self, store: Store) -> None:
        """The token is shown once; the table holds its SHA-256 and the token finds the operator."""
        ops = operator_store(store)
        token = await ops.add("alice", Role.SUBMITTER)
        assert token.startswith(TOKEN_PREFIX) and len(token) > 40
        assert await ops.by_token(token) == Operator("alice", Role.SUBMITTER)
        stored = await raw_rows(store, "SELECT name, role, token_hash, password_hash FROM operators")
        assert stored == [("alice", "submitter", token_hash(token), None)]
        assert all(token not in str(value) for value in stored[0])
        assert await ops.by_token(token + "x") is None and await ops.by_token("") is None

    async def test_names_roles_and_duplicates_are_checked(self, store: Store) -> None:
        """A bad name, an unknown role, a name taken: each a clear InvalidRequest, nothing stored."""
        ops = operator_store(store)
        await ops.add("bob", Role.VIEWER)
        with pytest.raises(InvalidRequest, match="already exists"):
            await ops.add("bob", Role.ADMIN)
        with pytest.raises(InvalidRequest, match="operator name"):
            await ops.add("Bob Smith", Role.ADMIN)
        with pytest.raises(InvalidRequest, match="unknown role 'root'"):
            await ops.add("carol", "root")  # type: ignore[arg-type]
        assert [r.name for r in await ops.list()] == ["bob"]
        assert (await ops.get("bob")) == Operator("bob", Role.VIEWER)

    async def test_role_token_and_removal(self, store: Store) -> None:
        """A role change applies at once; a rotated token replaces the old one; removal ends everything;
        an unknown name is OperatorNotFound."""
        ops = operator_store(store)
        old = await ops.add("dave", Role.VIEWER)
        await ops.set_role("dave", Role.APPROVER)
        assert await ops.by_token(old) == Operator("dave", Role.APPROVER)
        new = await ops.rotate_token("dave")
        assert new != old and await ops.by_token(old) is None
        assert await ops.by_token(new) == Operator("dave", Role.APPROVER)
        await ops.remove("dave")
        assert await ops.by_token(new) is None and await ops.get("dave") is None
        for call in (ops.remove("dave"), ops.set_role("dave", Role.ADMIN), ops.rotate_token("dave"),
                     ops.set_password("dave", PASSWORD)):  # fmt: skip
            with pytest.raises(OperatorNotFound, match="no operator named 'dave'"):
                await call

    async def test_passwords_are_salted_scrypt_and_checked(self, store: Store) -> None:
        """Short passwords are refused; the stored hash is scrypt with its parameters, salted (two
        operators with one password differ); only the right password logs in."""
        ops = operator_store(store)
        await ops.add("erin", Role.ADMIN)
        await ops.add("frank", Role.VIEWER)
        with pytest.raises(InvalidRequest, match="at least 12"):
            await ops.set_password("erin", "short")
        await ops.set_password("erin", PASSWORD)
        await ops.set_password("frank", PASSWORD)
        hashes = [row[0] for row in await raw_rows(store, "SELECT password_hash FROM operators ORDER BY name")]
        assert all(str(h).startswith("scrypt$16384$8$1$") and PASSWORD not in str(h) for h in hashes)
        assert hashes[0] != hashes[1]
        assert await ops.by_password("erin", PASSWORD) == Operator("erin", Role.ADMIN)
        assert await ops.by_password("erin", PASSWORD + "!") is None
        assert await ops.by_password("nobody", PASSWORD) is None
        listed = {r.name: r.has_password for r in await ops.list()}
        assert listed == {"erin": True, "frank": True}
        await ops.add("gina", Role.VIEWER)
        assert await ops.by_password("gina", PASSWORD) is None  # no password set: no login


class TestSessions:
    async def test_a_session_lives_while_used_and_expires_when_idle(self, store: Store) -> None:
        """The cookie value is stored as its hash; each read touches last_seen; idle past the limit: gone."""
        ops = operator_store(store)
        await ops.add("hana", Role.APPROVER)
        opened = await ops.open_session("hana", now=NOW)
        assert opened.token and opened.csrf and opened.token != opened.csrf
        assert opened.token not in repr(opened) and opened.csrf not in repr(opened)
        stored = await raw_rows(store, "SELECT token_hash, operator FROM console_sessions")
        assert stored == [(token_hash(opened.token), "hana")]
        later = NOW + timedelta(minutes=20)
        seen = await ops.session(opened.token, now=later, idle=IDLE)
        assert seen is not None and seen.operator == Operator("hana", Role.APPROVER) and seen.csrf == opened.csrf
        # touched at +20 min: still alive at +45, gone at +76 (31 minutes idle)
        assert await ops.session(opened.token, now=NOW + timedelta(minutes=45), idle=IDLE) is not None
        assert await ops.session(opened.token, now=NOW + timedelta(minutes=76), idle=IDLE) is None
        assert await raw_rows(store, "SELECT token_hash FROM console_sessions") == []
        assert await ops.session("not-a-session", now=later, idle=IDLE) is None

    async def test_logout_password_change_rotation_and_role_change(self, store: Store) -> None:
        """Logout ends one session; a new password or token ends all of the operator's sessions; a role
        change shows in a live session at once."""
        ops = operator_store(store)
        await ops.add("ivan", Role.VIEWER)
        first = await ops.open_session("ivan", now=NOW)
        second = await ops.open_session("ivan", now=NOW)
        await ops.close_session(first.token)
        assert await ops.session(first.token, now=NOW, idle=IDLE) is None
        await ops.set_role("ivan", Role.ADMIN)
        live = await ops.session(second.token, now=NOW, idle=IDLE)
        assert live is not None and live.operator.role is Role.ADMIN
        await ops.set_password("ivan", PASSWORD)
        assert await ops.session(second.token, now=NOW, idle=IDLE) is None
        third = await ops.open_session("ivan", now=NOW)
        await ops.rotate_token("ivan")
        assert await ops.session(third.token, now=NOW, idle=IDLE) is None
        fourth = await ops.open_session("ivan", now=NOW)
        await ops.remove("ivan")
        assert await ops.session(fourth.token, now=NOW, idle=IDLE) is None
        with pytest.raises(OperatorNotFound):
            await ops.open_session("ivan", now=NOW)

    async def test_concurrent_sessions_are_independent(self, store: Store) -> None:
        """Many logins at once: each its own cookie and CSRF token."""
        ops = operator_store(store)
        await ops.add("jo", Role.VIEWER)
        sessions = await asyncio.gather(*(ops.open_session("jo", now=NOW) for _ in range(8)))
        assert len({s.token for s in sessions}) == 8 and len({s.csrf for s in sessions}) == 8


class TestAttributionColumns:
    async def test_created_by_is_stored_and_in_the_first_event(self, store: Store) -> None:
        """created_by reads back and the creation event records it; without one, the event is as before."""
        named = await add_workflow(store, created_by="alice", n=1)
        anonymous = await add_workflow(store, n=2)
        assert (await store.get(named.id)).created_by == "alice"
        assert (await store.events(named.id))[0].data["created_by"] == "alice"
        assert (await store.get(anonymous.id)).created_by is None
        assert "created_by" not in (await store.events(anonymous.id))[0].data

    async def test_cancel_keeps_the_first_requests_operator_and_note(self, store: Store) -> None:
        """request_cancel stores who and why once; a repeat by another operator changes nothing."""
        wf = await add_workflow(store)
        flagged = await store.request_cancel(wf.id, at=NOW, operator="bob", note="wrong address")
        assert (flagged.cancel_by, flagged.cancel_note) == ("bob", "wrong address")
        again = await store.request_cancel(wf.id, at=NOW + timedelta(seconds=5), operator="carol", note="dup")
        assert (again.cancel_by, again.cancel_note, again.cancel_requested_at) == ("bob", "wrong address", NOW)

    async def test_resolution_attribution_is_cleared_with_the_resolution(self, store: Store) -> None:
        """request_resolution stores who and the note; a commit leaving needs_review clears all three."""
        wf = await add_workflow(store)
        review = await store.commit(_evolve(wf, state=State.NEEDS_REVIEW, next_run_at=None), None, owner=None)
        resolved = await store.request_resolution(review.id, "abandon", at=NOW, operator="dave", note="checked")
        assert (resolved.resolution, resolved.resolution_by, resolved.resolution_note) == ("abandon", "dave", "checked")
        moved = await store.commit(_evolve(resolved, state=State.ABORTED, next_run_at=None), None, owner=None)
        read = await store.get(moved.id)
        assert (read.resolution, read.resolution_by, read.resolution_note) == (None, None, None)


def _evolve(wf: Workflow, **changes: object) -> Workflow:
    return replace(wf, **changes)  # type: ignore[arg-type]


class TestEngineAttribution:
    """Engine -> store -> events, against the sandbox: who submitted, who decided, with their note."""

    async def test_resubmit_and_submit_are_attributed(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """The submitter is stored and in the first event; the resubmit event names the approver and
        carries the note; the resolution's attribution is cleared once applied."""
        await admin.fault(endpoint="POST /v1/withdraws/coin", kind="error", probability=1.0, times=1, status=500)
        async with engine_factory() as engine:
            wf = await engine.submit(await request_for(sandbox.url), operator="alice")
            wf = await engine.wait(wf.id, timeout=15)
            assert wf.state is State.NEEDS_REVIEW and wf.created_by == "alice"
            flagged = await engine.resolve(wf.id, "resubmit", operator="bob", note="  nothing at the exchange ")
            assert (flagged.resolution_by, flagged.resolution_note) == ("bob", "nothing at the exchange")
            wf = await engine.wait(wf.id, timeout=15)
            events = [e async for e in engine.events(wf.id, follow=False)]
        assert wf.state is State.DONE and (wf.resolution_by, wf.resolution_note) == (None, None)
        assert events[0].data["created_by"] == "alice"
        resubmit = next(e for e in events if e.trigger == "resubmit")
        assert (resubmit.data["operator"], resubmit.data["note"]) == ("bob", "nothing at the exchange")

    async def test_abandon_without_a_name_records_an_unnamed_operator(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """The Python API may still decide without a name: the event says an operator did (true), no note."""
        await admin.fault(endpoint="POST /v1/withdraws/coin", kind="error", probability=1.0, times=1, status=500)
        async with engine_factory(settings=replace(FAST, lane_watch=0.0)) as engine:
            wf = await engine.wait((await engine.submit(await request_for(sandbox.url))).id, timeout=15)
            await engine.resolve(wf.id, "abandon")
            wf = await engine.wait(wf.id, timeout=15)
            abandon = next(e for e in await all_events(engine, wf.id) if e.trigger == "abandon")
        assert wf.state is State.ABORTED and abandon.data["operator"] is True and "note" not in abandon.data

    async def test_local_cancel_records_who_and_why(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """A cancel before submit: the cancel event names the operator and their note."""
        await admin.wallet("ETH", "ETH", wallet_state="paused")
        async with engine_factory() as engine:
            wf = await engine.submit(await request_for(sandbox.url, "ETH", "ETH", "0.5"), operator="carol")
            await until(engine, wf.id, lambda w: w.state == "checking_wallet")
            flagged = await engine.cancel(wf.id, operator="dave", note="customer withdrew the request")
            assert (flagged.cancel_by, flagged.cancel_note) == ("dave", "customer withdrew the request")
            wf = await engine.wait(wf.id, timeout=10)
            cancel = next(e for e in await all_events(engine, wf.id) if e.trigger == "cancel")
        assert wf.state is State.CANCELLED
        assert (cancel.data["operator"], cancel.data["note"]) == ("dave", "customer withdrew the request")

    async def test_exchange_cancel_notes_the_operator(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """After submit, the cancel_sent note names the operator (their note as operator_note)."""
        await admin.configure(waiting_seconds=30.0)
        async with engine_factory() as engine:
            wf = await engine.submit(await request_for(sandbox.url))
            await until(engine, wf.id, lambda w: w.state is State.WAITING)
            await engine.cancel(wf.id, operator="erin", note="duplicate payout")
            wf = await engine.wait(wf.id, timeout=10)
            sent = next(e for e in await all_events(engine, wf.id) if e.data.get("note") == "cancel_sent")
        assert wf.state is State.CANCELLED
        assert (sent.data["operator"], sent.data["operator_note"]) == ("erin", "duplicate payout")

    async def test_bad_operator_or_note_is_refused_before_anything_is_stored(
        self, sandbox: Any, engine_factory: Any, admin: SandboxAdmin
    ) -> None:
        """An invalid name or a blank/oversized note: InvalidRequest naming the field; no flag set."""
        await admin.wallet("ETH", "ETH", wallet_state="paused")
        async with engine_factory() as engine:
            wf = await engine.submit(await request_for(sandbox.url, "ETH", "ETH", "0.5"))
            with pytest.raises(InvalidRequest) as bad_name:
                await engine.cancel(wf.id, operator="Not A Name")
            with pytest.raises(InvalidRequest) as blank:
                await engine.cancel(wf.id, operator="ok", note="   ")
            with pytest.raises(InvalidRequest):
                await engine.cancel(wf.id, note="x" * 1001)
            with pytest.raises(InvalidRequest):
                await engine.submit(await request_for(sandbox.url, "ETH", "ETH", "0.6"), operator="UPPER")
            assert (await engine.get(wf.id)).cancel_requested_at is None
            assert len(await engine.list()) == 1
        assert (bad_name.value.field, blank.value.field) == ("name", "note")

    async def test_a_batch_and_its_children_are_attributed(self, engine_factory: Any, admin: SandboxAdmin) -> None:
        """The batch's submitter is its children's too; its cancel (who, why) is recorded by the batch's
        cancel event and passed to every child it flags, whose cancel events say so too."""
        await admin.configure(waiting_seconds=60.0, processing_seconds=60.0)
        items = [{"reference": f"r{i}", "currency": "BTC", "net_type": "BTC", "amount": f"0.070{i}",
                  "address": "bc1qsandbox0demo0wallet0000000000000000000"} for i in (1, 2)]  # fmt: skip
        async with engine_factory() as engine:
            batch = await engine.submit_batch(items, operator="maker")
            async with asyncio.timeout(60):
                while [c.state async for c in engine.batch_children(batch.id)] != ["WAITING", "WAITING"]:
                    await asyncio.sleep(0.05)
            await engine.cancel_batch(batch.id, operator="checker", note="wrong payout file")
            async with asyncio.timeout(60):
                while (await engine.get(batch.id)).state != "cancelled":
                    await asyncio.sleep(0.05)
            children = [c async for c in engine.batch_children(batch.id)]
            batch_cancel = next(e for e in await all_events(engine, batch.id) if e.trigger == "cancel")
            sent = [
                next(e for e in await all_events(engine, c.id) if e.data.get("note") == "cancel_sent") for c in children
            ]
        assert batch.created_by == "maker" and all(c.created_by == "maker" for c in children)
        assert (batch_cancel.data["operator"], batch_cancel.data["note"]) == ("checker", "wrong payout file")
        assert all((c.cancel_by, c.cancel_note) == ("checker", "wrong payout file") for c in children)
        assert all((e.data["operator"], e.data["operator_note"]) == ("checker", "wrong payout file") for e in sent)
