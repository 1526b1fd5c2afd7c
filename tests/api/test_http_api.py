"""The HTTP API: status codes, auth, body limits, the one workflow view, and what the runner does behind it.

Every answer is validated against engine/openapi.json by the ``api`` fixture's client.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from tests.api.conftest import BTC_ADDRESS, DOGE_ADDRESS, TOKEN, Api, ApiFactory, btc
from tests.api.openapi_schema import SPEC
from tests.conftest import FAST

WORKFLOW_KEYS = {
    "id", "state", "request", "exchange_uuid", "txid", "exchange_state", "reason", "error", "submit_count",
    "cancel_requested", "resolution", "created_at", "updated_at", "lane", "reference", "metadata", "approval",
}  # fmt: skip
SETTLED = {"DONE", "FAILED", "CANCELLED", "REJECTED", "aborted", "needs_review"}
PROTECTED = [
    ("POST", "/v1/withdrawals"),
    ("GET", "/v1/withdrawals"),
    ("GET", "/v1/withdrawals/wd_0123abcd"),
    ("POST", "/v1/withdrawals/wd_0123abcd/cancel"),
    ("POST", "/v1/withdrawals/wd_0123abcd/resolve"),
    ("GET", "/v1/withdrawals/wd_0123abcd/events"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
]


class TestAuth:
    @pytest.mark.parametrize(("method", "path"), PROTECTED)
    async def test_missing_token_is_401(self, api: Api, method: str, path: str) -> None:
        """Every route but /healthz refuses a request without a bearer token."""
        answer = await api.client.call(method, path, token=None)
        assert answer.status == 401
        assert answer.body["error"]["name"] == "unauthorized"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")

    @pytest.mark.parametrize("token", ["wrong-token-0123456789abcdef", TOKEN[:-1], TOKEN + "x", ""])
    async def test_wrong_token_is_401(self, api: Api, token: str) -> None:
        """A token that differs in any way is refused, and never echoed back."""
        answer = await api.client.call("GET", "/v1/withdrawals", token=token)
        assert answer.status == 401
        assert token.encode() not in answer.raw or token == ""

    async def test_other_scheme_is_401(self, api: Api) -> None:
        """Only the Bearer scheme is accepted."""
        answer = await api.client.call(
            "GET", "/v1/withdrawals", token=None, headers={"Authorization": f"Basic {TOKEN}"}
        )
        assert answer.status == 401

    async def test_healthz_needs_no_token(self, api: Api) -> None:
        """Health checks work without credentials."""
        answer = await api.client.call("GET", "/healthz", token=None)
        assert (answer.status, answer.body) == (200, {"status": "ok"})

    async def test_scheme_is_case_insensitive(self, api: Api) -> None:
        """'bearer' works like 'Bearer' (RFC 7235: the scheme is case-insensitive)."""
        answer = await api.client.call(
            "GET", "/v1/withdrawals", token=None, headers={"Authorization": f"bearer {TOKEN}"}
        )
        assert answer.status == 200


class TestSubmit:
    async def test_new_withdrawal_is_201_and_runs_to_done(self, api: Api) -> None:
        """A valid body creates a workflow (201, Location), and the runner takes it to DONE."""
        answer = await api.client.call("POST", "/v1/withdrawals", body=btc())
        assert answer.status == 201
        view = answer.body
        assert set(view) == WORKFLOW_KEYS
        assert answer.headers["Location"] == f"/v1/withdrawals/{view['id']}"
        assert view["request"]["amount"] == "0.01" and view["state"] == "pending"
        done = await api.client.wait_state(view["id"], SETTLED)
        assert done["state"] == "DONE" and done["txid"] and done["exchange_uuid"]
        assert done["submit_count"] == 1

    async def test_amounts_are_strings_exactly_as_given(self, api: Api) -> None:
        """Amounts travel as decimal strings and are never rounded."""
        answer = await api.client.call("POST", "/v1/withdrawals", body=btc("0.12345678"))
        assert answer.body["request"]["amount"] == "0.12345678"
        assert answer.body["lane"] == "default|BTC|BTC|0.12345678"

    async def test_same_key_same_body_is_200_replay(self, api: Api) -> None:
        """A retried submit with the same Idempotency-Key returns the same workflow with 200."""
        headers = {"Idempotency-Key": "invoice-77"}
        first = await api.client.call("POST", "/v1/withdrawals", body=btc(), headers=headers)
        again = await api.client.call("POST", "/v1/withdrawals", body=btc("0.010"), headers=headers)
        assert (first.status, again.status) == (201, 200)
        assert again.body["id"] == first.body["id"]
        page = await api.client.call("GET", "/v1/withdrawals")
        assert len(page.body["withdrawals"]) == 1

    async def test_same_key_other_body_is_409(self, api: Api) -> None:
        """Reusing a key for a different request is a conflict; nothing new is created."""
        headers = {"Idempotency-Key": "invoice-78"}
        await api.client.call("POST", "/v1/withdrawals", body=btc(), headers=headers)
        answer = await api.client.call("POST", "/v1/withdrawals", body=btc("0.02"), headers=headers)
        assert answer.status == 409
        assert answer.body["error"]["name"] == "idempotency_conflict"

    async def test_invalid_body_names_every_bad_field(self, api: Api) -> None:
        """A 422 lists each invalid, missing or unknown field at once."""
        body = {"currency": "btc", "amount": "1.2.3", "address": "has space", "colour": "red"}
        answer = await api.client.call("POST", "/v1/withdrawals", body=body)
        assert answer.status == 422
        error = answer.body["error"]
        assert error["name"] == "invalid_request"
        assert set(error["fields"]) == {"currency", "net_type", "amount", "address", "colour"}
        assert error["fields"]["net_type"] == "is required"
        assert error["fields"]["colour"] == "unknown field"

    @pytest.mark.parametrize("amount", [0.5, 1, True])
    async def test_number_amount_is_422(self, api: Api, amount: Any) -> None:
        """JSON numbers are refused for amounts: binary floating point would round money."""
        answer = await api.client.call("POST", "/v1/withdrawals", body=btc(amount=amount))
        assert answer.status == 422
        assert set(answer.body["error"]["fields"]) == {"amount"}

    @pytest.mark.parametrize(
        ("patch", "field"),
        [
            ({"amount": "0"}, "amount"),
            ({"amount": "-1"}, "amount"),
            ({"transaction_type": "instant"}, "transaction_type"),
            ({"account": "nobody"}, "account"),
            ({"address": "x" * 300}, "address"),
            ({"secondary_address": "tag\n1"}, "secondary_address"),
        ],
    )
    async def test_each_invalid_field_is_422(self, api: Api, patch: dict[str, Any], field: str) -> None:
        """Each field's rule is enforced, and the error names that field."""
        answer = await api.client.call("POST", "/v1/withdrawals", body={**btc(), **patch})
        assert answer.status == 422
        assert field in answer.body["error"]["fields"]

    async def test_long_idempotency_key_is_422(self, api: Api) -> None:
        """Keys are 1-200 characters."""
        answer = await api.client.call("POST", "/v1/withdrawals", body=btc(), headers={"Idempotency-Key": "k" * 201})
        assert answer.status == 422
        assert "idempotency_key" in answer.body["error"]["fields"]

    @pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"[1, 2]", b""])
    async def test_unreadable_or_non_object_body(self, api: Api, raw: bytes) -> None:
        """Malformed JSON is 400; JSON that is not an object is 422."""
        answer = await api.client.call("POST", "/v1/withdrawals", raw=raw)
        assert answer.status in (400, 422)
        expected = 400 if raw in (b"{not json", b"\xff\xfe") else 422
        assert answer.status == expected

    async def test_body_over_the_limit_is_413(self, api_factory: ApiFactory) -> None:
        """api.max_body_bytes bounds the body; larger ones get 413 and nothing is created."""
        async with api_factory(max_body_bytes=512) as api:
            answer = await api.client.call("POST", "/v1/withdrawals", body=btc(exchange_name="x" * 600))
            assert answer.status == 413
            assert answer.body["error"]["name"] == "body_too_large"
            page = await api.client.call("GET", "/v1/withdrawals")
            assert page.body["withdrawals"] == []

    async def test_chunked_body_over_the_limit_is_413(self, api_factory: ApiFactory) -> None:
        """Without Content-Length (chunked), the limit still holds while reading."""
        async with api_factory(max_body_bytes=512) as api:

            async def chunks() -> Any:
                for _ in range(20):
                    yield b" " * 100

            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            response = await api.client.client.post("/v1/withdrawals", data=chunks(), headers=headers)
            assert response.status == 413
            assert (await response.json())["error"]["name"] == "body_too_large"

    async def test_dry_run_sends_no_post(self, api_factory: ApiFactory) -> None:
        """With engine.dry_run every check runs but the POST is never sent (aborted/dry_run)."""
        async with api_factory(dry_run=True) as api:
            answer = await api.client.call("POST", "/v1/withdrawals", body=btc())
            done = await api.client.wait_state(answer.body["id"], SETTLED)
            assert (done["state"], done["reason"]) == ("aborted", "dry_run")
            stats = await api.admin.stats()
            assert stats["by_endpoint"].get("POST /v1/withdraws/coin", 0) == 0
            assert stats["by_endpoint"]["GET /v1/withdraws/chance"] >= 1


class TestRead:
    async def test_get_unknown_is_404(self, api: Api) -> None:
        """An unknown (or malformed) id is 404 not_found."""
        for path in ("/v1/withdrawals/wd_0000000000", "/v1/withdrawals/not-an-id"):
            answer = await api.client.call("GET", path)
            assert answer.status == 404
            assert answer.body["error"]["name"] == "not_found"

    async def test_get_returns_the_same_view(self, api: Api) -> None:
        """GET answers the same view as the submit did, updated."""
        created = (await api.client.call("POST", "/v1/withdrawals", body=btc())).body
        fetched = (await api.client.call("GET", f"/v1/withdrawals/{created['id']}")).body
        assert set(fetched) == WORKFLOW_KEYS
        assert fetched["id"] == created["id"] and fetched["request"] == created["request"]

    async def test_list_pages_with_cursor(self, api: Api) -> None:
        """Newest first; next_cursor pages through all; null on the last page."""
        ids = [(await api.client.call("POST", "/v1/withdrawals", body=btc(f"0.0{i + 1}"))).body["id"] for i in range(5)]
        seen: list[str] = []
        cursor = ""
        while True:
            page = (await api.client.call("GET", f"/v1/withdrawals?limit=2{cursor}")).body
            seen.extend(v["id"] for v in page["withdrawals"])
            if page["next_cursor"] is None:
                break
            cursor = f"&cursor={page['next_cursor']}"
        assert seen == list(reversed(ids))

    async def test_list_refuses_an_unknown_cursor(self, api: Api) -> None:
        """A well-formed cursor that is no stored workflow's id is 422 naming ``cursor``, not a silent page."""
        await api.client.call("POST", "/v1/withdrawals", body=btc())
        answer = await api.client.call("GET", "/v1/withdrawals?cursor=wd_80")
        assert answer.status == 422
        assert "no workflow wd_80" in answer.body["error"]["fields"]["cursor"]

    async def test_list_filters_by_state(self, api: Api) -> None:
        """?state= returns only workflows in that state."""
        wf = (await api.client.call("POST", "/v1/withdrawals", body=btc())).body
        await api.client.wait_state(wf["id"], SETTLED)
        bad = (await api.client.call("POST", "/v1/withdrawals", body=btc(address="bc1qunknown000000"))).body
        await api.client.wait_state(bad["id"], SETTLED)
        done = (await api.client.call("GET", "/v1/withdrawals?state=DONE")).body["withdrawals"]
        aborted = (await api.client.call("GET", "/v1/withdrawals?state=aborted")).body["withdrawals"]
        assert [v["id"] for v in done] == [wf["id"]]
        assert [(v["id"], v["reason"]) for v in aborted] == [(bad["id"], "address_not_allowed")]

    @pytest.mark.parametrize(
        ("query", "field"),
        [("state=done", "state"), ("limit=0", "limit"), ("limit=abc", "limit"), ("limit=1001", "limit"),
         ("cursor=x'--", "cursor"), ("colour=red", "colour")],
    )  # fmt: skip
    async def test_list_rejects_bad_parameters(self, api: Api, query: str, field: str) -> None:
        """Bad or unknown query parameters are 422 naming the parameter."""
        answer = await api.client.call("GET", f"/v1/withdrawals?{query}")
        assert answer.status == 422
        assert field in answer.body["error"]["fields"]

    async def test_events_are_the_audit_log(self, api: Api) -> None:
        """Events come in order, from create to the terminal state, hash-chained."""
        wf = (await api.client.call("POST", "/v1/withdrawals", body=btc())).body
        await api.client.wait_state(wf["id"], SETTLED)
        answer = await api.client.call("GET", f"/v1/withdrawals/{wf['id']}/events")
        events = answer.body["events"]
        assert answer.body["workflow_id"] == wf["id"]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events[0]["trigger"] == "create" and events[-1]["to"] == "DONE"
        assert len({e["hash"] for e in events}) == len(events)

    async def test_events_of_unknown_is_404(self, api: Api) -> None:
        """No events for an unknown workflow."""
        answer = await api.client.call("GET", "/v1/withdrawals/wd_00000000000000/events")
        assert answer.status == 404

    async def test_unknown_route_and_method(self, api: Api) -> None:
        """Unknown routes are 404 and wrong methods 405, both in the error shape."""
        response = await api.client.client.get("/v2/nothing", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status == 404 and (await response.json())["error"]["name"] == "not_found"
        response = await api.client.client.delete("/v1/withdrawals", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status == 405 and (await response.json())["error"]["name"] == "method_not_allowed"


class TestCancel:
    async def test_cancel_before_submit_ends_cancelled_without_post(self, api_factory: ApiFactory) -> None:
        """A workflow held by a paused wallet is cancelled locally: 202, then CANCELLED, no POST."""
        async with api_factory(settings=dataclasses.replace(FAST, preflight_deadline=60.0)) as api:
            body = {"currency": "DOGE", "net_type": "DOGE", "amount": "100", "address": DOGE_ADDRESS}
            wf = (await api.client.call("POST", "/v1/withdrawals", body=body)).body
            await api.client.wait_state(wf["id"], {"checking_wallet"})
            answer = await api.client.call("POST", f"/v1/withdrawals/{wf['id']}/cancel")
            assert answer.status == 202 and answer.body["cancel_requested"] is True
            ended = await api.client.wait_state(wf["id"], SETTLED)
            assert ended["state"] == "CANCELLED"
            assert (await api.admin.stats())["by_endpoint"].get("POST /v1/withdraws/coin", 0) == 0

    async def test_cancel_terminal_is_409(self, api: Api) -> None:
        """A finished workflow cannot be cancelled."""
        wf = (await api.client.call("POST", "/v1/withdrawals", body=btc())).body
        await api.client.wait_state(wf["id"], SETTLED)
        answer = await api.client.call("POST", f"/v1/withdrawals/{wf['id']}/cancel")
        assert answer.status == 409 and answer.body["error"]["name"] == "invalid_transition"

    async def test_cancel_unknown_is_404(self, api: Api) -> None:
        """Unknown id: 404."""
        assert (await api.client.call("POST", "/v1/withdrawals/wd_00000000/cancel")).status == 404


async def _needs_review(api: Api) -> dict[str, Any]:
    """A workflow whose POST got a 500 (outcome unknown, nothing created) ends in needs_review."""
    await api.admin.fault(kind="error", endpoint="POST /v1/withdraws/coin", times=1)
    wf = (await api.client.call("POST", "/v1/withdrawals", body=btc())).body
    review = await api.client.wait_state(wf["id"], SETTLED, timeout=15)
    assert review["state"] == "needs_review", review
    return review


class TestResolve:
    async def test_resolve_not_in_review_is_409(self, api: Api) -> None:
        """Only needs_review workflows take a resolution."""
        wf = (await api.client.call("POST", "/v1/withdrawals", body=btc())).body
        await api.client.wait_state(wf["id"], SETTLED)
        body = {"action": "abandon", "note": "n"}
        answer = await api.client.call("POST", f"/v1/withdrawals/{wf['id']}/resolve", body=body)
        assert answer.status == 409 and answer.body["error"]["name"] == "invalid_transition"

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"action": "retry", "note": "n"}, "action"), ({}, "action"), ({"action": 1, "note": "n"}, "action"),
            ({"action": "abandon", "note": "n", "x": 1}, "x"), ([], "body"), ({"action": "abandon"}, "note"),
            ({"action": "abandon", "note": "  "}, "note"), ({"action": "abandon", "note": 5}, "note"),
        ],
    )  # fmt: skip
    async def test_resolve_bad_body_is_422(self, api: Api, body: Any, field: str) -> None:
        """The body must be exactly {"action": "resubmit"|"abandon", "note": "..."}: the note is required."""
        wf = (await api.client.call("POST", "/v1/withdrawals", body=btc())).body
        answer = await api.client.call("POST", f"/v1/withdrawals/{wf['id']}/resolve", body=body)
        assert answer.status == 422 and field in answer.body["error"]["fields"]

    async def test_resolve_unknown_is_404(self, api: Api) -> None:
        """Unknown id: 404."""
        body = {"action": "abandon", "note": "n"}
        answer = await api.client.call("POST", "/v1/withdrawals/wd_00000000/resolve", body=body)
        assert answer.status == 404

    async def test_abandon_ends_aborted(self, api: Api) -> None:
        """abandon: the operator gives up; aborted/abandoned."""
        review = await _needs_review(api)
        body = {"action": "abandon", "note": "nothing arrived"}
        answer = await api.client.call("POST", f"/v1/withdrawals/{review['id']}/resolve", body=body)
        assert answer.status == 202 and answer.body["resolution"] == "abandon"
        ended = await api.client.wait_state(review["id"], {"aborted"})
        assert ended["reason"] == "abandoned"

    async def test_resubmit_sends_once_more_and_completes(self, api: Api) -> None:
        """resubmit: a fresh intent and exactly one more POST; the withdrawal completes."""
        review = await _needs_review(api)
        body = {"action": "resubmit", "note": "not at the exchange"}
        answer = await api.client.call("POST", f"/v1/withdrawals/{review['id']}/resolve", body=body)
        assert answer.status == 202
        ended = await api.client.wait_state(review["id"], SETTLED - {"needs_review"})
        assert ended["state"] == "DONE" and ended["submit_count"] == 2
        assert (await api.admin.stats())["by_endpoint"]["POST /v1/withdraws/coin"] == 2


class TestMetricsAndDocs:
    async def test_metrics_after_a_withdrawal(self, api: Api) -> None:
        """/metrics reports transitions, exchange calls, rate limiting, time to terminal and in-flight gauges."""
        wf = (await api.client.call("POST", "/v1/withdrawals", body=btc())).body
        await api.client.wait_state(wf["id"], SETTLED)
        answer = await api.client.call("GET", "/metrics")
        assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")
        text = answer.body
        assert 'upbit_withdraw_transitions_total{from_state="pending",to_state="verifying_address"} 1.0' in text
        assert re.search(r'upbit_withdraw_transitions_total\{from_state="\w+",to_state="DONE"\} 1\.0', text)
        assert 'upbit_withdraw_exchange_calls_total{endpoint="POST /v1/withdraws/coin",status="201"} 1.0' in text
        assert 'upbit_withdraw_time_to_terminal_seconds_count{state="DONE"} 1.0' in text
        assert 'upbit_withdraw_ratelimit_granted_total{account="default"}' in text
        assert 'upbit_withdraw_workflows{state="pending"} 0.0' in text
        assert TOKEN not in text

    async def test_openapi_json_is_the_shipped_document(self, api: Api) -> None:
        """GET /openapi.json serves engine/openapi.json."""
        answer = await api.client.call("GET", "/openapi.json")
        assert answer.status == 200 and answer.body == SPEC

    async def test_every_route_is_documented_and_vice_versa(self, api: Api) -> None:
        """The app's routes and the document's operations are the same set."""
        app = api.client.client.server.app
        assert app is not None
        served = {
            (route.method.lower(), route.resource.canonical)
            for route in app.router.routes()
            if route.resource is not None and route.method != "HEAD"
        }
        documented = {(method, path) for path, item in SPEC["paths"].items() for method in item}
        assert served == documented


async def test_submitted_request_is_the_one_sent(api: Api) -> None:
    """The exchange receives exactly the amount and address the API was given (XRP: the registered tag)."""
    body = {"currency": "XRP", "net_type": "XRP", "amount": "21.5", "address": "rN7n7otQDd6FczFgLdSqtcsAUxDkw6fzRH"}
    wf = (await api.client.call("POST", "/v1/withdrawals", body=body)).body
    await api.client.wait_state(wf["id"], SETTLED)
    rows = await api.admin.withdrawals()
    assert len(rows) == 1
    row = rows[0]
    assert row["amount"] == "21.5" and row["currency"] == "XRP"
    assert BTC_ADDRESS not in str(row)
