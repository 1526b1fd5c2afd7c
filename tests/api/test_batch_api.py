"""The payout batch routes over HTTP: every answer is checked against engine/openapi.json by the client."""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any

from tests.api.conftest import BTC_ADDRESS, Api


def item(ref: str, amount: str, **extra: Any) -> dict[str, Any]:
    """A batch item paying BTC to the sandbox's registered address."""
    return {"reference": ref, "currency": "BTC", "net_type": "BTC", "amount": amount, "address": BTC_ADDRESS, **extra}


async def settled(api: Api, batch_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """GET the batch until it is settled or cancelled."""
    async with asyncio.timeout(timeout):
        while (answer := await api.client.call("GET", f"/v1/batches/{batch_id}")).body["state"] not in (
            "settled", "cancelled",
        ):  # fmt: skip
            await asyncio.sleep(0.05)
    return dict(answer.body)


class TestSubmit:
    async def test_json_batch_runs_and_reports(self, api: Api) -> None:
        """201 with the batch and a Location; it settles; the report is JSON or CSV."""
        body = {"items": [item("a", "0.011"), item("b", "0.012")]}
        answer = await api.client.call("POST", "/v1/batches", body=body, headers={"Idempotency-Key": "pay-1"})
        assert answer.status == 201 and answer.body["items"] == 2 and answer.body["state"] == "accepted"
        batch_id = answer.body["id"]
        assert answer.headers["Location"] == f"/v1/batches/{batch_id}"
        final = await settled(api, batch_id)
        assert final["state"] == "settled" and final["children"] == {"DONE": 2}
        report = (await api.client.call("GET", f"/v1/batches/{batch_id}/report")).body
        assert [(r["reference"], r["outcome"]) for r in report["items"]] == [("a", "DONE"), ("b", "DONE")]
        assert report["totals"]["by_currency"]["BTC"]["amount"] == "0.023"
        as_csv = await api.client.call("GET", f"/v1/batches/{batch_id}/report?format=csv")
        by_accept = await api.client.call("GET", f"/v1/batches/{batch_id}/report", headers={"Accept": "text/csv"})
        assert as_csv.headers["Content-Type"].startswith("text/csv") and by_accept.raw == as_csv.raw
        rows = list(csv.DictReader(io.StringIO(as_csv.body)))
        assert [r["reference"] for r in rows] == ["a", "b"] and rows[0]["txid"]
        replay = await api.client.call("POST", "/v1/batches", body=body, headers={"Idempotency-Key": "pay-1"})
        assert replay.status == 200 and replay.body["id"] == batch_id
        other = {"items": [item("a", "0.013")]}
        conflict = await api.client.call("POST", "/v1/batches", body=other, headers={"Idempotency-Key": "pay-1"})
        assert conflict.status == 409

    async def test_csv_body(self, api: Api) -> None:
        """A text/csv body is read with its header; a plain JSON list works too."""
        text = f"reference,currency,net_type,amount,address\nx,BTC,BTC,0.021,{BTC_ADDRESS}\n"
        answer = await api.client.call("POST", "/v1/batches", raw=text.encode(), headers={"Content-Type": "text/csv"})
        assert answer.status == 201 and answer.body["totals"] == {"BTC": "0.021"}
        listed = await api.client.call("POST", "/v1/batches", body=[item("y", "0.022")])
        assert listed.status == 201

    async def test_invalid_batch_names_every_item_and_stores_nothing(self, api: Api) -> None:
        """422 with error.items: index, reference and field of every problem; no workflow is created."""
        body = [item("a", "0.01"), item("b", "1.5.0"), {"reference": "c"}, item("a", "0.02")]
        answer = await api.client.call("POST", "/v1/batches", body=body)
        assert answer.status == 422 and answer.body["error"]["name"] == "invalid_request"
        problems = {(e["index"], e["field"]) for e in answer.body["error"]["items"]}
        assert problems == {(1, "amount"), (2, "currency"), (2, "net_type"), (2, "amount"), (2, "address"),
                            (3, "reference")}  # fmt: skip
        assert sum((await api.engine.store.count_by_state()).values()) == 0

    async def test_skip_invalid(self, api: Api) -> None:
        """?skip_invalid=true accepts the valid items and lists the skipped ones."""
        body = [item("a", "0.01"), item("b", "x")]
        answer = await api.client.call("POST", "/v1/batches?skip_invalid=true", body=body)
        assert answer.status == 201 and answer.body["items"] == 1
        assert [(e["index"], e["reference"]) for e in answer.body["skipped"]] == [(1, "b")]

    async def test_over_the_cap(self, api: Api) -> None:
        """A batch's own cap applies; over it, 422 on max_total and nothing stored."""
        body = {"items": [item("a", "0.5"), item("b", "0.6")], "max_total": {"BTC": "1"}}
        answer = await api.client.call("POST", "/v1/batches", body=body)
        assert answer.status == 422 and "max_total" in answer.body["error"]["fields"]
        assert sum((await api.engine.store.count_by_state()).values()) == 0

    async def test_bad_bodies(self, api: Api) -> None:
        """Not JSON: 400; a bad CSV header: 422 naming the csv; a bad flag: 422."""
        assert (await api.client.call("POST", "/v1/batches", raw=b"{")).status == 400
        text = b"reference,colour\n"
        bad_csv = await api.client.call("POST", "/v1/batches", raw=text, headers={"Content-Type": "text/csv"})
        assert bad_csv.status == 422 and "csv" in bad_csv.body["error"]["fields"]
        flag = await api.client.call("POST", "/v1/batches?skip_invalid=maybe", body=[item("a", "0.01")])
        assert flag.status == 422

    async def test_body_limit_is_the_batch_one(self, api_factory: Any) -> None:
        """A batch larger than the withdrawal body limit is read (its own limit applies); beyond it, 413."""
        async with api_factory(max_body_bytes=1024) as built:
            body = [item(f"r{i}", "0.0001") for i in range(40)]  # ~5 KB
            assert (await built.client.call("POST", "/v1/batches", body=body)).status == 201
            built.engine.batch_max_body_bytes = 2048
            assert (await built.client.call("POST", "/v1/batches", body=body)).status == 413


class TestOther:
    async def test_cancel_and_unknown(self, api: Api) -> None:
        """Cancel answers 202, then the batch ends cancelled; again: 409; unknown ids: 404."""
        answer = await api.client.call("POST", "/v1/batches", body=[item("a", "0.031")])
        batch_id = answer.body["id"]
        cancel = await api.client.call("POST", f"/v1/batches/{batch_id}/cancel")
        assert cancel.status == 202 and cancel.body["cancel_requested"] is True
        final = await settled(api, batch_id)
        assert final["state"] in ("cancelled", "settled")
        assert (await api.client.call("POST", f"/v1/batches/{batch_id}/cancel")).status == 409
        assert (await api.client.call("GET", "/v1/batches/bt_0123abcd")).status == 404
        assert (await api.client.call("GET", "/v1/batches/wd_0123abcd")).status == 404
        assert (await api.client.call("GET", f"/v1/batches/{batch_id}/report?format=xml")).status == 422

    async def test_withdrawal_list_shows_withdrawals_only(self, api: Api) -> None:
        """GET /v1/withdrawals lists the batch's children (withdrawals), never the batch itself."""
        batch = (await api.client.call("POST", "/v1/batches", body=[item("a", "0.041")])).body
        await settled(api, batch["id"])
        listed = (await api.client.call("GET", "/v1/withdrawals")).body["withdrawals"]
        assert [w["request"]["amount"] for w in listed] == ["0.041"]

    async def test_routes_need_the_token(self, api: Api) -> None:
        """Batch routes sit behind the same bearer token."""
        for method, path in [("POST", "/v1/batches"), ("GET", "/v1/batches/bt_01"), ("GET", "/v1/batches/bt_01/report"),
                             ("POST", "/v1/batches/bt_01/cancel")]:  # fmt: skip
            assert (await api.client.call(method, path, token=None)).status == 401
