"""References, metadata and search over the HTTP API (issue #13): the engine with its runner against the
sandbox on 127.0.0.1, a real SQLite file, every answer checked against engine/openapi.json."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Any

import pytest

from engine.backends import API_TOKEN_ENV
from engine.cli import run_cli
from engine.models import State
from tests.api.conftest import BTC_ADDRESS, TOKEN, Api, btc

SETTLED = {"DONE", "FAILED", "CANCELLED", "REJECTED", "aborted", "needs_review"}


async def submit(api: Api, body: dict[str, Any], key: str | None = None) -> Any:
    """POST /v1/withdrawals (optionally under an Idempotency-Key); the answer."""
    return await api.client.call(
        "POST", "/v1/withdrawals", body=body, headers={"Idempotency-Key": key} if key else None
    )


async def listed(api: Api, query: str) -> dict[str, Any]:
    """GET /v1/withdrawals?query, which must answer 200; the page."""
    answer = await api.client.call("GET", f"/v1/withdrawals?{query}")
    assert answer.status == 200, answer.body
    return dict(answer.body)


class TestReferenceAndMetadata:
    async def test_shown_in_every_view_and_in_the_first_event(self, api: Api) -> None:
        """Reference and metadata come back from submit, get, list, and the submission event's data."""
        metadata = {"user": "u-42", "batch": 7, "tags": ["vip"], "note": "출금"}
        created = await submit(api, btc(reference="payout-1", metadata=metadata))
        assert created.status == 201
        view = created.body
        assert (view["reference"], view["metadata"]) == ("payout-1", metadata)
        fetched = (await api.client.call("GET", f"/v1/withdrawals/{view['id']}")).body
        assert (fetched["reference"], fetched["metadata"]) == ("payout-1", metadata)
        page = await listed(api, "reference=payout-1")
        assert [(v["id"], v["metadata"]) for v in page["withdrawals"]] == [(view["id"], metadata)]
        first = (await api.client.call("GET", f"/v1/withdrawals/{view['id']}/events")).body["events"][0]
        assert (first["data"]["reference"], first["data"]["metadata"]) == ("payout-1", metadata)

    async def test_absent_reference_and_metadata_are_null(self, api: Api) -> None:
        """A submission without them shows both as null."""
        view = (await submit(api, btc())).body
        assert (view["reference"], view["metadata"]) == (None, None)

    async def test_a_duplicate_reference_is_409_and_creates_nothing(self, api: Api) -> None:
        """The same reference on the same account under another key: 409 reference_conflict naming the
        workflow that holds it; nothing is stored."""
        first = (await submit(api, btc(reference="payout-9"), key="key-a")).body
        answer = await submit(api, btc("0.02", reference="payout-9"), key="key-b")
        assert answer.status == 409
        assert answer.body["error"]["name"] == "reference_conflict"
        assert first["id"] in answer.body["error"]["message"]
        assert (await listed(api, "limit=10"))["total"] == 1
        assert (await listed(api, "idempotency_key=key-b"))["withdrawals"] == []
        without_key = await submit(api, btc("0.03", reference="payout-9"))
        assert without_key.status == 409

    async def test_same_key_same_reference_is_a_replay_other_metadata_a_conflict(self, api: Api) -> None:
        """Under one Idempotency-Key, reference and metadata are part of the request it stands for."""
        body = btc(reference="payout-3", metadata={"a": 1})
        first = await submit(api, body, key="k-3")
        again = await submit(api, body, key="k-3")
        assert (first.status, again.status, again.body["id"]) == (201, 200, first.body["id"])
        changed = await submit(api, btc(reference="payout-3", metadata={"a": 2}), key="k-3")
        assert (changed.status, changed.body["error"]["name"]) == (409, "idempotency_conflict")

    @pytest.mark.parametrize(
        ("extra", "field", "rule"),
        [
            ({"metadata": {f"k{i}": i for i in range(33)}}, "metadata", "more than 32 keys"),
            ({"metadata": {"blob": "x" * 5000}}, "metadata", "4096 bytes"),
            ({"metadata": ["not", "an", "object"]}, "metadata", "JSON object"),
            ({"metadata": {"a": {"b": {"c": {"d": {"e": 1}}}}}}, "metadata", "nested"),
            ({"metadata": {"": 1}}, "metadata", "keys"),
            ({"reference": "has space"}, "reference", "without spaces"),
            ({"reference": "r" * 129}, "reference", "1-128"),
            ({"reference": 42}, "reference", "printable"),
        ],
    )  # fmt: skip
    async def test_bad_reference_or_metadata_is_422_naming_the_rule(
        self, api: Api, extra: dict[str, Any], field: str, rule: str
    ) -> None:
        """422 invalid_request, the field named with the rule it broke; nothing stored."""
        answer = await submit(api, btc(**extra))
        assert answer.status == 422
        assert rule in answer.body["error"]["fields"][field]
        assert (await listed(api, "limit=1"))["total"] == 0

    async def test_bad_metadata_and_bad_request_fields_are_named_together(self, api: Api) -> None:
        """Every bad field at once: the request's and the metadata's."""
        answer = await submit(api, btc(amount="-1", metadata="text"))
        assert answer.status == 422
        assert {"amount", "metadata"} <= set(answer.body["error"]["fields"])


class TestSearch:
    async def test_states_currency_and_time_filters_combine_with_a_total(self, api: Api) -> None:
        """Several states (repeated or comma list), other filters and time bounds combine; total counts all."""
        done = [(await submit(api, btc(f"0.0{i + 1}", reference=f"ok-{i}"))).body["id"] for i in range(3)]
        bad = (await submit(api, btc(address="bc1qunknown000000"))).body["id"]
        for wf_id in [*done, bad]:
            await api.client.wait_state(wf_id, SETTLED)
        both = await listed(api, "state=DONE&state=aborted")
        assert both["total"] == 4 and {v["id"] for v in both["withdrawals"]} == {*done, bad}
        assert (await listed(api, "state=DONE,aborted"))["total"] == 4
        only_aborted = await listed(api, "state=aborted&reason=address_not_allowed&currency=BTC&net_type=BTC")
        assert [v["id"] for v in only_aborted["withdrawals"]] == [bad]
        assert (await listed(api, "currency=ETH"))["total"] == 0
        assert (await listed(api, "account=default&state=DONE"))["total"] == 3
        created = (await api.client.call("GET", f"/v1/withdrawals/{done[1]}")).body["created_at"]
        since = urllib.parse.quote(created)
        window = await listed(api, f"created_after={since}&state=DONE")
        assert [v["id"] for v in window["withdrawals"]] == [done[2], done[1]]
        before = await listed(api, f"created_before={since}")
        assert [v["id"] for v in before["withdrawals"]] == [done[0]]
        future = urllib.parse.quote("2999-01-01T00:00:00+09:00")
        assert (await listed(api, f"updated_before={future}&updated_after={since}"))["total"] >= 3

    async def test_paging_is_exact(self, api: Api) -> None:
        """A page that ends the list has no next_cursor, even when it is full; total stays the same."""
        ids = [(await submit(api, btc(f"0.0{i + 1}"))).body["id"] for i in range(4)]
        first = await listed(api, "limit=2")
        second = await listed(api, f"limit=2&cursor={first['next_cursor']}")
        assert [v["id"] for v in first["withdrawals"] + second["withdrawals"]] == list(reversed(ids))
        assert second["next_cursor"] is None
        assert first["total"] == second["total"] == 4
        assert (await listed(api, "limit=4"))["next_cursor"] is None

    async def test_lookups_by_reference_and_idempotency_key(self, api: Api) -> None:
        """A look-up answers a page of 0 or 1."""
        view = (await submit(api, btc(reference="pay/01:x"), key="look-key")).body
        by_ref = await listed(api, f"reference={urllib.parse.quote('pay/01:x')}&account=default")
        by_key = await listed(api, "idempotency_key=look-key")
        assert [v["id"] for v in by_ref["withdrawals"]] == [v["id"] for v in by_key["withdrawals"]] == [view["id"]]
        assert (await listed(api, "reference=nobody"))["withdrawals"] == []

    @pytest.mark.parametrize(
        ("query", "field"),
        [
            ("created_after=2026-01-01T00:00:00", "created_after"),  # naive: no offset
            ("updated_before=yesterday", "updated_before"),
            ("created_before=0001-01-01T00:00:00%2B14:00", "created_before"),  # out of range in UTC
            ("state=DONE,nope", "state"),
            ("currency=btc", "currency"),
            ("reference=has%20space", "reference"),
            ("account=Desk", "account"),
            ("currency=BTC&currency=ETH", "currency"),
            ("idempotency_key=", "idempotency_key"),
        ],
    )  # fmt: skip
    async def test_bad_filters_are_422_naming_the_parameter(self, api: Api, query: str, field: str) -> None:
        """Each bad filter is refused by name (never a 500, never ignored)."""
        answer = await api.client.call("GET", f"/v1/withdrawals?{query}")
        assert answer.status == 422, answer.body
        assert field in answer.body["error"]["fields"]

    async def test_every_bad_parameter_is_named_at_once(self, api: Api) -> None:
        """Several bad parameters: all named in one answer."""
        answer = await api.client.call("GET", "/v1/withdrawals?limit=0&state=x&created_after=2026-01-01")
        assert answer.status == 422
        assert {"limit", "state", "created_after"} <= set(answer.body["error"]["fields"])


def _cli_json(out: str) -> Any:
    """The CLI's JSON document in captured stdout. The service under test runs in this process and logs
    to the same stdout (its runner's first line can land while the CLI runs, on a loaded machine), so the
    document is taken from its first opening line to its last closing one."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line in ("{", "["))
    end = max(i for i, line in enumerate(lines) if line in ("}", "]"))
    return json.loads("\n".join(lines[start : end + 1]))


async def test_cli_api_mode_submits_finds_and_filters(
    api: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's --api path sends the same reference, metadata and filters over HTTP and reads the same views."""
    monkeypatch.setenv(API_TOKEN_ENV, TOKEN)
    url = str(api.client.client.make_url("")).rstrip("/")

    async def cli(*args: str) -> tuple[int, Any]:
        capsys.readouterr()
        code = await asyncio.to_thread(run_cli, ["--api", url, "--json", *args])
        out = capsys.readouterr().out
        return code, _cli_json(out) if code == 0 else None

    code, view = await cli(
        "submit", "--currency", "BTC", "--net-type", "BTC", "--amount", "0.01", "--address", BTC_ADDRESS,
        "--reference", "api-ref", "--metadata", '{"via": "api"}', "--idempotency-key", "api-key",
    )  # fmt: skip
    assert code == 0 and (view["reference"], view["metadata"]) == ("api-ref", {"via": "api"})
    assert (await cli("status", "--reference", "api-ref"))[1]["id"] == view["id"]
    assert (await cli("status", "--idempotency-key", "api-key"))[1]["id"] == view["id"]
    code, page = await cli("list", "--state", ",".join(State), "--reference", "api-ref")
    assert code == 0 and [v["id"] for v in page["withdrawals"]] == [view["id"]] and page["total"] == 1
    assert (await cli("list", "--cursor", "wd_0000"))[0] == 2
    assert (await cli("list", "--created-after", "2026-01-01T00:00:00"))[0] == 2
    assert (await cli("status", "--reference", "missing"))[0] == 3
