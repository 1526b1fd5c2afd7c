"""/v1/webhooks over HTTP (every answer checked against engine/openapi.json), and the service running the
delivery worker for a [[webhooks]] subscription from the config file."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.backends import API_TOKEN_ENV
from engine.cli import run_cli
from engine.config import ApiConfig, WebhookConfig, WebhookDeliveryConfig
from engine.sandbox import SandboxServer
from engine.webhooks import TERMINAL, TRANSITION, sign, verify_signature
from tests.acceptance.conftest import free_port
from tests.api.conftest import TOKEN, Api, btc, service_config
from tests.api.test_service_listeners import _token_file, running
from tests.integration.webhook_receiver import Receiver

PUBLIC = "https://hooks.example.com/upbit"


class TestSubscriptions:
    async def test_create_shows_the_secret_once_and_never_again(self, api: Api) -> None:
        """201 with the generated secret; get and list never carry it."""
        created = await api.client.call("POST", "/v1/webhooks", body={"url": PUBLIC, "events": [TERMINAL]})
        assert created.status == 201 and created.headers["Location"] == f"/v1/webhooks/{created.body['id']}"
        secret = created.body["secret"]
        assert len(secret) >= 32 and created.body["events"] == [TERMINAL] and created.body["secrets"] == 1
        got = await api.client.call("GET", f"/v1/webhooks/{created.body['id']}")
        listed = await api.client.call("GET", "/v1/webhooks")
        assert got.status == 200 and got.body["url"] == PUBLIC
        assert [item["id"] for item in listed.body["items"]] == [created.body["id"]]
        assert secret.encode() not in got.raw + listed.raw

    async def test_given_secret_and_default_events(self, api: Api) -> None:
        """A caller may bring its own secret; events default to every transition."""
        secret = "caller-chosen-secret-0123456789"
        created = await api.client.call("POST", "/v1/webhooks", body={"url": PUBLIC, "secret": secret})
        assert created.body["secret"] == secret and created.body["events"] == [TRANSITION]

    async def test_invalid_bodies_are_422_naming_the_field(self, api: Api) -> None:
        """Loopback/private targets (not allowed here), other schemes, unknown event types, short secrets."""
        cases = [
            ({"url": "http://127.0.0.1:8080/x"}, "url"),
            ({"url": "http://169.254.169.254/latest"}, "url"),
            ({"url": "ftp://example.com/"}, "url"),
            ({"url": PUBLIC, "events": ["withdrawal.done"]}, "events"),
            ({"url": PUBLIC, "events": []}, "events"),
            ({"url": PUBLIC, "secret": "short"}, "secret"),
            ({"url": PUBLIC, "colour": "blue"}, "body"),
            ({}, "url"),
        ]
        for body, field in cases:
            answer = await api.client.call("POST", "/v1/webhooks", body=body)
            assert answer.status == 422 and field in answer.body["error"]["fields"], (body, answer.body)
        assert (await api.client.call("GET", "/v1/webhooks")).body["items"] == []

    async def test_delete_and_unknown_ids(self, api: Api) -> None:
        """Deleted subscriptions are gone (404 after), unknown ids are 404."""
        created = (await api.client.call("POST", "/v1/webhooks", body={"url": PUBLIC})).body
        assert (await api.client.call("DELETE", f"/v1/webhooks/{created['id']}")).status == 200
        for method, path in [
            ("GET", f"/v1/webhooks/{created['id']}"), ("DELETE", f"/v1/webhooks/{created['id']}"),
            ("GET", "/v1/webhooks/wh_unknown/deliveries"), ("GET", "/v1/webhooks/not-an-id"),
        ]:  # fmt: skip
            answer = await api.client.call(method, path)
            assert answer.status == 404 and answer.body["error"]["name"] == "not_found"

    async def test_rotation_keeps_both_secrets_valid(self, api: Api) -> None:
        """rotate-secret returns the new secret once; by default the old one keeps signing beside it."""
        created = (await api.client.call("POST", "/v1/webhooks", body={"url": PUBLIC})).body
        rotated = await api.client.call("POST", f"/v1/webhooks/{created['id']}/rotate-secret")
        assert rotated.status == 200 and rotated.body["secrets"] == 2 and rotated.body["secret"] != created["secret"]
        assert (await api.client.call("GET", f"/v1/webhooks/{created['id']}")).body["secrets"] == 2
        only = await api.client.call(
            "POST", f"/v1/webhooks/{created['id']}/rotate-secret", body={"keep_previous": False}
        )
        assert only.body["secrets"] == 1

    async def test_delivery_log_and_redelivery_validation(self, api: Api) -> None:
        """An empty log pages cleanly; redelivery needs event ids or a time range with an offset."""
        sub = (await api.client.call("POST", "/v1/webhooks", body={"url": PUBLIC})).body["id"]
        log = await api.client.call("GET", f"/v1/webhooks/{sub}/deliveries?status=failed&limit=5")
        assert log.status == 200 and log.body == {"items": [], "next_cursor": None}
        bad = await api.client.call("GET", f"/v1/webhooks/{sub}/deliveries?status=lost")
        assert bad.status == 422
        for body in [{}, {"since": "2026-01-01T00:00:00"}, {"event_ids": []}, {"event_ids": "x"}]:
            answer = await api.client.call("POST", f"/v1/webhooks/{sub}/redeliver", body=body)
            assert answer.status == 422, body
        ok = await api.client.call("POST", f"/v1/webhooks/{sub}/redeliver", body={"since": "2026-01-01T00:00:00+00:00"})
        assert ok.status == 202 and ok.body == {"redelivered": 0}


async def test_the_service_delivers_a_configured_subscription(
    exchange: SandboxServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``serve`` stores the [[webhooks]] subscription and runs the worker: a withdrawal submitted over the
    API reaches the receiver signed, from the first transition to DONE; the delivery log shows them."""
    secret = "config-secret-0123456789abcdef"
    receiver = Receiver([secret])
    await receiver.start()
    os.environ["TEST_HOOK_SECRET"] = secret
    try:
        base = service_config(exchange.url, tmp_path / "w.sqlite3")
        config = dataclasses.replace(
            base,
            api=ApiConfig(token_file=str(_token_file(tmp_path)), port=free_port()),
            webhooks=(WebhookConfig(name="ops", url=receiver.url, secret_env="TEST_HOOK_SECRET"),),
            webhook_delivery=WebhookDeliveryConfig(allow_private_targets=True, poll_interval=0.05, retry_initial=0.05),
        )
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with running(config) as url, aiohttp.ClientSession(headers=headers) as http:
            async with http.post(f"{url}/v1/withdrawals", json=btc("0.0123")) as answer:
                wf: dict[str, Any] = await answer.json()
            async with asyncio.timeout(60):
                while not any(r.payload["data"]["to_state"] == "DONE" for r in receiver.delivered()):
                    await asyncio.sleep(0.05)
            async with asyncio.timeout(60):  # the receiver answered; the worker records it right after
                while True:
                    async with http.get(f"{url}/v1/webhooks/cfg_ops/deliveries") as answer:
                        log = await answer.json()
                    if {d["status"] for d in log["items"]} == {"delivered"}:
                        break
                    await asyncio.sleep(0.05)
            async with http.delete(f"{url}/v1/webhooks/cfg_ops") as answer:
                assert answer.status == 409
            async with http.get(f"{url}/metrics") as answer:
                metrics = await answer.text()
            os.environ[API_TOKEN_ENV] = TOKEN  # the CLI's --api mode reads the same routes
            capsys.readouterr()
            assert await asyncio.to_thread(run_cli, ["webhooks", "list", "--api", url, "--json"]) == 0
            listed = json.loads(capsys.readouterr().out)
            argv = ["webhooks", "deliveries", "cfg_ops", "--api", url, "--json", "--status", "delivered"]
            assert await asyncio.to_thread(run_cli, argv) == 0
            cli_log = json.loads(capsys.readouterr().out)
            argv = ["webhooks", "redeliver", "cfg_ops", "--api", url, "--json", "--event-id", f"{wf['id']}:1"]
            assert await asyncio.to_thread(run_cli, argv) == 0
            redelivered = json.loads(capsys.readouterr().out)
            argv = ["webhooks", "deliveries", "wh_nope", "--api", url]
            assert await asyncio.to_thread(run_cli, argv) == 3
        first = {r.event_id: r for r in reversed(receiver.delivered())}  # the redelivered one came again
        states = [r.payload["data"]["to_state"] for r in sorted(first.values(), key=lambda r: r.payload["data"]["seq"])]
        assert states[0] == "pending" and states[-1] == "DONE"
        assert {r.payload["data"]["workflow_id"] for r in receiver.delivered()} == {wf["id"]}
        assert all(verify_signature(r.body, r.signature, [secret]) for r in receiver.delivered())
        assert len(log["items"]) == len(states) and {d["status"] for d in log["items"]} == {"delivered"}
        assert secret not in str(log) and sign(b"x", [secret], timestamp=1) not in str(log)
        assert f'upbit_withdraw_webhook_deliveries_total{{outcome="delivered"}} {float(len(states))}' in metrics
        assert "upbit_withdraw_webhook_delivery_lag_seconds_count" in metrics
        assert "\nupbit_withdraw_webhook_deliveries_pending 0.0\n" in metrics  # all delivered when scraped
        assert [item["id"] for item in listed["items"]] == ["cfg_ops"]
        assert len(cli_log["items"]) == len(states) and redelivered == {"redelivered": 1}
    finally:
        os.environ.pop("TEST_HOOK_SECRET", None)
        os.environ.pop(API_TOKEN_ENV, None)
        await receiver.stop()
