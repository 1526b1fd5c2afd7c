"""Per-operator authentication and role checks on the HTTP API (engine/api.py's middleware): each operator's
own token, the deprecated shared token as an admin, a permission for every route, 403 ``forbidden`` with
a clear message, attribution of every change (the engine records who, and the note), and the console's
paths left to the console."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from engine.api import CONSOLE_PREFIX, ROUTE_PERMISSIONS, create_app
from engine.client import WithdrawClient
from engine.errors import RemoteForbidden
from engine.operators import OPERATOR_KEY, Role
from engine.store.operators import operator_store
from tests.api.conftest import TOKEN, Api, CheckedClient, btc
from tests.api.test_http_api import _needs_review

pytestmark = pytest.mark.asyncio


async def tokens(api: Api, **roles: Role) -> dict[str, str]:
    """Operators of these roles (name -> token), added to the API's store."""
    ops = operator_store(api.engine.store)
    return {name: await ops.add(name, role) for name, role in roles.items()}


async def events_of(api: Api, workflow_id: str, token: str) -> list[dict[str, Any]]:
    answer = await api.client.call("GET", f"/v1/withdrawals/{workflow_id}/events", token=token)
    return list(answer.body["events"])


class TestTokens:
    async def test_an_operators_token_authenticates_and_attributes(self, api: Api) -> None:
        """A submitter's own token submits; the workflow and its first event name the submitter."""
        t = await tokens(api, alice=Role.SUBMITTER)
        answer = await api.client.call("POST", "/v1/withdrawals", body=btc(), token=t["alice"])
        assert answer.status == 201
        assert (await api.engine.get(answer.body["id"])).created_by == "alice"
        first = (await events_of(api, answer.body["id"], t["alice"]))[0]
        assert first["data"]["created_by"] == "alice"

    @pytest.mark.parametrize("token", ["uwo_" + "x" * 43, "uwo_", "not-a-token-at-all-0123456789"])
    async def test_unknown_tokens_are_401(self, api: Api, token: str) -> None:
        """A token no operator has (prefixed or not) is refused, and never echoed."""
        await tokens(api, alice=Role.ADMIN)
        answer = await api.client.call("GET", "/v1/withdrawals", token=token)
        assert answer.status == 401 and answer.body["error"]["name"] == "unauthorized"
        assert token.encode() not in answer.raw

    async def test_rotated_and_removed_tokens_stop_working_at_once(self, api: Api) -> None:
        """No cache: a rotated token is refused on the next call, as is a removed operator's."""
        t = await tokens(api, bob=Role.VIEWER)
        ops = operator_store(api.engine.store)
        assert (await api.client.call("GET", "/v1/withdrawals", token=t["bob"])).status == 200
        new = await ops.rotate_token("bob")
        assert (await api.client.call("GET", "/v1/withdrawals", token=t["bob"])).status == 401
        assert (await api.client.call("GET", "/v1/withdrawals", token=new)).status == 200
        await ops.set_role("bob", Role.SUBMITTER)
        assert (await api.client.call("POST", "/v1/withdrawals", body=btc(), token=new)).status == 201
        await ops.remove("bob")
        assert (await api.client.call("GET", "/v1/withdrawals", token=new)).status == 401

    async def test_the_shared_token_still_works_as_an_admin(self, api: Api) -> None:
        """The old single token: every route, attributed to 'shared-token'."""
        answer = await api.client.call("POST", "/v1/withdrawals", body=btc(), token=TOKEN)
        assert answer.status == 201
        assert (await api.engine.get(answer.body["id"])).created_by == "shared-token"
        hook = {"url": "https://hooks.example.com/x", "events": ["workflow.transition"]}
        assert (await api.client.call("POST", "/v1/webhooks", body=hook, token=TOKEN)).status == 201

    async def test_the_shared_token_is_deprecated_once_at_start_without_showing_it(self, api: Api) -> None:
        """create_app warns once, naming the shared operator and the way out, never the token itself."""
        with capture_logs() as logs:
            create_app(api.engine, token=TOKEN)
        warnings = [e for e in logs if e["event"] == "api.shared_token_deprecated"]
        assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
        assert "operator add" in warnings[0]["advice"] and TOKEN not in repr(logs)
        with capture_logs() as logs:
            create_app(api.engine, token=None)
        assert not [e for e in logs if e["event"] == "api.shared_token_deprecated"]

    async def test_without_a_shared_token_only_operators_get_in(self, api: Api) -> None:
        """token=None: the old token is refused, an operator's works."""
        t = await tokens(api, carol=Role.VIEWER)
        app = create_app(api.engine, token=None)
        async with TestClient(TestServer(app, host="127.0.0.1")) as raw:
            client = CheckedClient(raw, t["carol"])
            assert (await client.call("GET", "/v1/withdrawals")).status == 200
            assert (await client.call("GET", "/v1/withdrawals", token=TOKEN)).status == 401


class TestRoles:
    async def test_a_viewer_reads_and_is_refused_every_change(self, api: Api) -> None:
        """Reads pass; submit, cancel, resolve, batches and webhooks answer 403 naming role and permission."""
        t = await tokens(api, val=Role.VIEWER)
        wf = (await api.client.call("POST", "/v1/withdrawals", body=btc(), token=TOKEN)).body
        for method, path in (("GET", "/v1/withdrawals"), ("GET", f"/v1/withdrawals/{wf['id']}"),
                             ("GET", "/openapi.json"), ("GET", "/metrics"), ("GET", "/v1/webhooks")):  # fmt: skip
            assert (await api.client.call(method, path, token=t["val"])).status == 200, path
        refused = [
            ("POST", "/v1/withdrawals", btc("0.02"), "submit"),
            ("POST", f"/v1/withdrawals/{wf['id']}/cancel", None, "cancel"),
            ("POST", f"/v1/withdrawals/{wf['id']}/resolve", {"action": "abandon", "note": "n"}, "resolve"),
            ("POST", "/v1/batches", [], "submit"),
            ("POST", "/v1/webhooks", {"url": "https://h.example.com/x"}, "admin"),
        ]
        for method, path, body, permission in refused:
            answer = await api.client.call(method, path, body=body, token=t["val"])
            assert answer.status == 403 and answer.body["error"]["name"] == "forbidden", path
            message = answer.body["error"]["message"]
            assert "'val' (role viewer)" in message and permission in message, message
        assert (await api.engine.get(wf["id"])).cancel_requested_at is None
        assert len(await api.engine.list()) == 1

    async def test_a_submitter_submits_and_cancels_but_never_decides(self, api: Api) -> None:
        """Submit and cancel (with a note, attributed); resolve is 403 even with a valid body."""
        t = await tokens(api, sam=Role.SUBMITTER)
        review = await _needs_review(api)
        answer = await api.client.call(
            "POST", f"/v1/withdrawals/{review['id']}/resolve", body={"action": "abandon", "note": "n"}, token=t["sam"]
        )
        assert answer.status == 403 and "resolve" in answer.body["error"]["message"]
        wf = (await api.client.call("POST", "/v1/withdrawals", body=btc("0.03"), token=t["sam"])).body
        cancelled = await api.client.call(
            "POST", f"/v1/withdrawals/{wf['id']}/cancel", body={"note": "typo in the amount"}, token=t["sam"]
        )
        assert cancelled.status in (202, 409)  # it may have finished already (a fast sandbox)
        if cancelled.status == 202:
            stored = await api.engine.get(wf["id"])
            assert (stored.cancel_by, stored.cancel_note) == ("sam", "typo in the amount")

    async def test_an_approver_decides_with_a_note_and_the_event_says_who(self, api: Api) -> None:
        """An approver cannot submit; their resubmit is recorded with their name and note."""
        t = await tokens(api, ann=Role.APPROVER)
        assert (await api.client.call("POST", "/v1/withdrawals", body=btc(), token=t["ann"])).status == 403
        review = await _needs_review(api)
        body = {"action": "resubmit", "note": "checked: nothing arrived"}
        answer = await api.client.call("POST", f"/v1/withdrawals/{review['id']}/resolve", body=body, token=t["ann"])
        assert answer.status == 202
        await api.client.wait_state(review["id"], {"DONE"}, timeout=15)
        resubmit = next(e for e in await events_of(api, review["id"], t["ann"]) if e["trigger"] == "resubmit")
        assert (resubmit["data"]["operator"], resubmit["data"]["note"]) == ("ann", "checked: nothing arrived")

    async def test_cancel_bodies_are_checked(self, api: Api) -> None:
        """A cancel takes no body, {} or {"note": ...}; anything else is 422 and nothing is flagged."""
        wf = (await api.client.call("POST", "/v1/withdrawals", body=btc("0.04"))).body
        for body, field in (({"why": "x"}, "body"), ({"note": ""}, "note"), ({"note": 3}, "note")):
            answer = await api.client.call("POST", f"/v1/withdrawals/{wf['id']}/cancel", body=body)
            assert answer.status == 422 and field in answer.body["error"]["fields"], body
        assert (await api.engine.get(wf["id"])).cancel_requested_at is None

    async def test_the_client_raises_remote_forbidden(self, api: Api) -> None:
        """WithdrawClient maps 403 to RemoteForbidden (a Forbidden and a ServiceError)."""
        t = await tokens(api, vic=Role.VIEWER)
        base = str(api.client.client.make_url("/"))
        async with WithdrawClient(base, t["vic"]) as client:
            with pytest.raises(RemoteForbidden) as refused:
                await client.submit(btc())
            page = await client.list()
        assert refused.value.status == 403 and refused.value.name == "forbidden" and not page.withdrawals
        assert t["vic"] not in str(refused.value)


class TestRouteTable:
    async def test_every_route_of_the_app_has_a_permission(self, api: Api) -> None:
        """The table covers every route the app serves (probes and the console's own paths aside); a new
        route must be added to it."""
        app = create_app(api.engine, token=TOKEN)
        served = {
            (route.method, route.resource.canonical)
            for route in app.router.routes()
            if route.resource is not None
            and route.resource.canonical not in ("/healthz", "/readyz")
            and not route.resource.canonical.startswith(CONSOLE_PREFIX)
        }
        assert served, "no routes found"
        missing = served - set(ROUTE_PERMISSIONS)
        assert not missing, f"routes without a permission: {sorted(missing)}"
        assert all(ROUTE_PERMISSIONS[key] for key in served)

    async def test_a_route_missing_from_the_table_is_refused(self, api: Api) -> None:
        """Fail closed: a route nobody listed answers 403, even to an admin."""
        app = create_app(api.engine, token=TOKEN)
        seen: list[object] = []

        async def extra(request: web.Request) -> web.Response:
            seen.append(request[OPERATOR_KEY])
            return web.json_response({})

        app.router.add_get("/v1/unlisted", extra)
        async with TestClient(TestServer(app, host="127.0.0.1")) as raw:
            answer = await raw.get("/v1/unlisted", headers={"Authorization": f"Bearer {TOKEN}"})
            assert answer.status == 403 and (await answer.json())["error"]["name"] == "forbidden"
        assert seen == []

    async def test_console_paths_are_left_to_the_console(self, api: Api) -> None:
        """/console/ paths reach their handlers without a bearer token and without an operator set;
        unknown routes still answer 401 before 404."""
        app = create_app(api.engine, token=TOKEN)
        seen: list[object] = []

        async def page(request: web.Request) -> web.Response:
            seen.append(request.get(OPERATOR_KEY))
            return web.Response(text="console")

        app.router.add_get("/console/login", page)
        async with TestClient(TestServer(app, host="127.0.0.1")) as raw:
            assert (await raw.get("/console/login")).status == 200
            assert (await raw.get("/console/nothing-here")).status == 404
            assert (await raw.get("/v1/nothing-here")).status == 401
            assert (await raw.get("/consolex")).status == 401
        assert seen == [None]

    async def test_probes_need_no_token_and_the_document_needs_one(self, api: Api) -> None:
        """/healthz and /readyz stay open; /openapi.json keeps needing a token (any role)."""
        assert (await api.client.call("GET", "/healthz", token=None)).status == 200
        assert (await api.client.call("GET", "/readyz", token=None)).status == 200
        assert (await api.client.call("GET", "/openapi.json", token=None)).status == 401

    async def test_every_secured_operation_documents_403(self) -> None:
        """engine/openapi.json lists 403 beside 401 wherever a token is needed."""
        from tests.api.openapi_schema import SPEC

        for path, item in SPEC["paths"].items():
            for method, op in item.items():
                responses = op.get("responses", {})
                if "401" in responses:
                    assert "403" in responses, f"{method.upper()} {path}"
        assert re.search(r"\bforbidden\b", SPEC["info"]["description"])
