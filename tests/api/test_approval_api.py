"""Four-eyes approval over HTTP: ``POST /v1/withdrawals/{id}/resolve`` and ``POST /v1/batches/{id}/resolve``
with ``approve``/``reject`` and a note, each operator with their own token; every answer is checked against
engine/openapi.json by the ``api`` fixture's client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from engine.client import WithdrawClient
from engine.errors import RemoteForbidden, RemoteInvalidTransition
from engine.operators import Role
from engine.policy import CurrencyPolicy, Policy
from engine.store.operators import operator_store
from tests.api.conftest import BTC_ADDRESS, TOKEN, Api, ApiFactory, btc

pytestmark = pytest.mark.asyncio

POLICY = Policy(
    currencies={"BTC": CurrencyPolicy(approval_above=Decimal("0.05"))}, batch_approval_above={"BTC": Decimal("0.2")}
)
HELD = {"awaiting_approval"}


@pytest.fixture
async def api(api_factory: ApiFactory) -> AsyncIterator[Api]:
    """The API with BTC withdrawals above 0.05, and batches above 0.2, held for an approver."""
    async with api_factory(policy=POLICY) as built:
        yield built


@pytest.fixture
async def tokens(api: Api) -> dict[str, str]:
    """alice (an admin: she may submit and approve), bob (an approver), dave (a submitter)."""
    ops = operator_store(api.engine.store)
    roles = {"alice": Role.ADMIN, "bob": Role.APPROVER, "dave": Role.SUBMITTER}
    return {name: await ops.add(name, role) for name, role in roles.items()}


async def held(api: Api, token: str, amount: str = "0.06") -> dict[str, Any]:
    """A withdrawal submitted with ``token``, once it waits for an approver."""
    created = await api.client.call("POST", "/v1/withdrawals", body=btc(amount), token=token)
    assert created.status == 201, created.body
    return await api.client.wait_state(created.body["id"], HELD | {"DONE", "aborted"}, timeout=30)


def decide(action: str, note: str | None = "checked") -> dict[str, Any]:
    return {"action": action} if note is None else {"action": action, "note": note}


class TestWithdrawal:
    async def test_held_then_approved_by_another_operator(self, api: Api, tokens: dict[str, str]) -> None:
        """alice's withdrawal waits (nothing sent; its view says why and until when); alice's own approve is
        403 and records nothing; bob's is 202 and it is sent once; the events name both."""
        wf = await held(api, tokens["alice"])
        assert wf["state"] == "awaiting_approval"
        assert (
            wf["approval"]["threshold"] == "0.05"
            and wf["approval"]["expires_at"]
            and wf["approval"]["approved_by"] is None
        )
        path = f"/v1/withdrawals/{wf['id']}/resolve"
        own = await api.client.call("POST", path, body=decide("approve"), token=tokens["alice"])
        assert own.status == 403 and own.body["error"]["name"] == "forbidden"
        assert "alice submitted" in own.body["error"]["message"]
        assert (await api.engine.get(wf["id"])).resolution is None
        answer = await api.client.call("POST", path, body=decide("approve", "invoice 7 checked"), token=tokens["bob"])
        assert answer.status == 202 and answer.body["resolution"] == "approve"
        done = await api.client.wait_state(wf["id"], {"DONE"}, timeout=30)
        assert done["approval"]["approved_by"] == "bob" and done["approval"]["note"] == "invoice 7 checked"
        events = (await api.client.call("GET", f"/v1/withdrawals/{wf['id']}/events", token=tokens["bob"])).body
        triggers = [e["trigger"] for e in events["events"]]
        approve = next(e for e in events["events"] if e["trigger"] == "approve")
        assert approve["data"] == {"operator": "bob", "note": "invoice 7 checked"}
        assert triggers.count("submit") == 1 and triggers.index("await_approval") < triggers.index("approve")
        assert (await api.admin.posts()) == 1

    async def test_reject(self, api: Api, tokens: dict[str, str]) -> None:
        """bob rejects: aborted (approval_rejected), nothing sent."""
        wf = await held(api, tokens["alice"])
        path = f"/v1/withdrawals/{wf['id']}/resolve"
        answer = await api.client.call("POST", path, body=decide("reject", "unknown payee"), token=tokens["bob"])
        assert answer.status == 202
        ended = await api.client.wait_state(wf["id"], {"aborted"}, timeout=30)
        assert ended["reason"] == "approval_rejected" and (await api.admin.posts()) == 0

    async def test_the_refusals(self, api: Api, tokens: dict[str, str]) -> None:
        """A note is required (422 naming it); a submitter's role may not approve (403); the shared token's
        own submission is its own (403); resubmit in awaiting_approval and approve elsewhere are 409."""
        wf = await held(api, tokens["dave"])
        path = f"/v1/withdrawals/{wf['id']}/resolve"
        for body in (decide("approve", None), decide("approve", "  "), decide("approve", "x" * 1001)):
            answer = await api.client.call("POST", path, body=body, token=tokens["bob"])
            assert answer.status == 422 and "note" in answer.body["error"]["fields"]
        by_role = await api.client.call("POST", path, body=decide("approve"), token=tokens["dave"])
        assert by_role.status == 403 and "approve" in by_role.body["error"]["message"]
        wrong = await api.client.call("POST", path, body=decide("resubmit"), token=tokens["alice"])
        assert wrong.status == 409 and "accepts approve or reject" in wrong.body["error"]["message"]
        shared = await held(api, TOKEN, amount="0.061")
        path = f"/v1/withdrawals/{shared['id']}/resolve"
        own = await api.client.call("POST", path, body=decide("approve"), token=TOKEN)
        assert own.status == 403 and "shared-token submitted" in own.body["error"]["message"]
        sent = await held(api, tokens["dave"], amount="0.01")
        assert sent["state"] == "DONE"
        late = await api.client.call(
            "POST", f"/v1/withdrawals/{sent['id']}/resolve", body=decide("approve"), token=tokens["bob"]
        )
        assert late.status == 409 and "not awaiting_approval" in late.body["error"]["message"]
        assert (await api.engine.get(wf["id"])).resolution is None

    async def test_the_client(self, api: Api, tokens: dict[str, str]) -> None:
        """WithdrawClient.approve/reject: the same rules, as the engine's error types."""
        url = str(api.client.client.make_url(""))
        wf = await held(api, tokens["alice"])
        async with WithdrawClient(url, tokens["alice"]) as alice, WithdrawClient(url, tokens["bob"]) as bob:
            with pytest.raises(RemoteForbidden):
                await alice.approve(wf["id"], note="mine")
            view = await bob.approve(wf["id"], note="fine")
            assert view.resolution == "approve"
            with pytest.raises(RemoteInvalidTransition):  # decided (or done already): it stands
                await bob.reject(wf["id"], note="changed my mind")


class TestBatch:
    async def test_a_batch_waits_then_dispatches(self, api: Api, tokens: dict[str, str]) -> None:
        """A batch above 0.2 BTC waits with no child; its submitter may not approve it (403); bob approves:
        it dispatches and settles, its children not held again."""
        items = [
            {"reference": f"r{i}", "currency": "BTC", "net_type": "BTC", "amount": "0.09", "address": BTC_ADDRESS}
            for i in range(3)
        ]
        created = await api.client.call("POST", "/v1/batches", body=items, token=tokens["alice"])
        assert created.status == 201, created.body
        batch_id = created.body["id"]
        await _batch_state(api, batch_id, "awaiting_approval", tokens["bob"])
        path = f"/v1/batches/{batch_id}/resolve"
        own = await api.client.call("POST", path, body=decide("approve"), token=tokens["alice"])
        assert own.status == 403
        missing = await api.client.call("POST", path, body={"action": "approve"}, token=tokens["bob"])
        assert missing.status == 422 and "note" in missing.body["error"]["fields"]
        wrong = await api.client.call("POST", path, body=decide("resubmit"), token=tokens["bob"])
        assert wrong.status == 422 and "action" in wrong.body["error"]["fields"]
        answer = await api.client.call("POST", path, body=decide("approve", "payroll 12"), token=tokens["bob"])
        assert answer.status == 202 and answer.body["id"] == batch_id and answer.body["children"] == {}
        view = await _batch_state(api, batch_id, "settled", tokens["bob"], timeout=60)
        assert view["children"] == {"DONE": 3} and view["approval"]["approved_by"] == "bob"
        assert view["approval"]["over"] == {"BTC": {"total": "0.27", "threshold": "0.2"}}
        again = await api.client.call("POST", path, body=decide("reject"), token=tokens["bob"])
        assert again.status == 409
        unknown = await api.client.call("POST", "/v1/batches/bt_00000000/resolve", body=decide("approve"), token=TOKEN)
        assert unknown.status == 404


async def _batch_state(api: Api, batch_id: str, state: str, token: str, timeout: float = 30.0) -> dict[str, Any]:
    import asyncio

    async with asyncio.timeout(timeout):
        while True:
            view = (await api.client.call("GET", f"/v1/batches/{batch_id}", token=token)).body
            if view["state"] == state:
                return dict(view)
            await asyncio.sleep(0.05)
