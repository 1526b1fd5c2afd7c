"""engine.client.WithdrawClient's retry rules over aioresponses (narrow: answers a live service cannot be
made to give on demand): a submit answered 5xx is retried under the same Idempotency-Key, gives up after
``retries`` with ServiceUnavailable, and cancel/resolve are never retried."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aioresponses import aioresponses

from engine.client import WithdrawClient
from engine.errors import ServiceError, ServiceUnavailable
from tests.unit.test_client import CompatResponse

URL = "http://127.0.0.1:9"
TOKEN = "unit-token-0123456789abcdef"
BODY = {"currency": "BTC", "net_type": "BTC", "amount": "0.01", "address": "bc1qx"}
VIEW = {
    "id": "wd_0123", "state": "pending", "request": {**BODY, "secondary_address": None, "transaction_type": "default",
    "account": "default", "exchange_name": None}, "exchange_uuid": None, "txid": None, "exchange_state": None,
    "reason": None, "error": None, "submit_count": 0, "cancel_requested": False, "resolution": None,
    "created_at": "2026-01-01T00:00:00+00:00", "updated_at": "2026-01-01T00:00:00+00:00", "lane": "l",
}  # fmt: skip
UNAVAILABLE = {"error": {"name": "unavailable", "message": "the engine could not complete the request"}}


class Mock(aioresponses):
    """aioresponses with aiohttp 3.14's responses (see tests/unit/test_client.py)."""

    def add(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", CompatResponse)
        super().add(*args, **kwargs)


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with Mock() as mock:
        yield mock


def sent_keys(mock: aioresponses, method: str, path: str) -> list[str]:
    calls: list[Any] = next(v for k, v in mock.requests.items() if k[0] == method and k[1].path == path)
    return [call.kwargs["headers"].get("Idempotency-Key") for call in calls]


async def test_submit_retries_a_5xx_under_one_generated_key(mocked: aioresponses) -> None:
    mocked.post(f"{URL}/v1/withdrawals", status=503, payload=UNAVAILABLE)
    mocked.post(f"{URL}/v1/withdrawals", status=200, payload=VIEW)  # the replay of what the first try stored
    async with WithdrawClient(URL, TOKEN) as client:
        done = await client.submit(BODY)
    keys = sent_keys(mocked, "POST", "/v1/withdrawals")
    assert len(keys) == 2 and keys[0] == keys[1] == done.idempotency_key
    assert done.created, "a replay of this call's own earlier try is this call's creation"


async def test_a_callers_key_replayed_is_not_reported_as_created(mocked: aioresponses) -> None:
    mocked.post(f"{URL}/v1/withdrawals", status=503, payload=UNAVAILABLE)
    mocked.post(f"{URL}/v1/withdrawals", status=200, payload=VIEW)
    async with WithdrawClient(URL, TOKEN) as client:
        done = await client.submit(BODY, idempotency_key="invoice-9")
    assert sent_keys(mocked, "POST", "/v1/withdrawals") == ["invoice-9", "invoice-9"]
    assert not done.created  # the key may have been used by an earlier call of the caller's


async def test_submit_gives_up_after_its_tries(mocked: aioresponses) -> None:
    for _ in range(2):
        mocked.post(f"{URL}/v1/withdrawals", status=503, payload=UNAVAILABLE)
    async with WithdrawClient(URL, TOKEN, retries=2) as client:
        with pytest.raises(ServiceUnavailable) as failed:
            await client.submit(BODY)
    assert failed.value.status == 503 and failed.value.name == "unavailable"
    assert len(sent_keys(mocked, "POST", "/v1/withdrawals")) == 2


@pytest.mark.parametrize("action", ["cancel", "resolve"])
async def test_cancel_and_resolve_are_not_retried(mocked: aioresponses, action: str) -> None:
    mocked.post(f"{URL}/v1/withdrawals/wd_0123/{action}", status=503, payload=UNAVAILABLE)
    async with WithdrawClient(URL, TOKEN) as client:
        with pytest.raises(ServiceUnavailable):
            await (client.cancel("wd_0123") if action == "cancel" else client.resolve("wd_0123", "abandon"))
    assert len(sent_keys(mocked, "POST", f"/v1/withdrawals/wd_0123/{action}")) == 1


async def test_an_error_without_the_apis_shape_is_still_a_service_error(mocked: aioresponses) -> None:
    mocked.get(f"{URL}/v1/withdrawals/wd_0123", status=418, body=b"<html>teapot</html>")
    async with WithdrawClient(URL, TOKEN) as client:
        with pytest.raises(ServiceError) as failed:
            await client.get("wd_0123")
    assert failed.value.status == 418 and failed.value.name == "http_error"
    assert TOKEN not in repr(client) and TOKEN not in str(failed.value)
