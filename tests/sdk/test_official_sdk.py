"""The official SDK (``upbit-sdk`` 1.1.0, generated from Upbit's OpenAPI spec) is the oracle for the sandbox.

Every endpoint the sandbox serves is driven through the SDK's sync ``Upbit`` and its ``AsyncUpbit``, both
with ``_strict_response_validation=True`` and ``max_retries=0``, on success and error paths. On top of
the SDK's own validation (which builds list pages without validating them), every response body that
crosses the wire is recorded by an httpx hook and validated against the SDK's model for its endpoint
with pydantic's *strict* mode (no "8" for 8, no "true" for true); error bodies must be Upbit's
``{"error": {"name", "message"}}`` and raise the SDK's typed error with that name.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from operator import attrgetter
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, TypeAdapter
from upbit import (
    APIStatusError,
    AsyncUpbit,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    RateLimitPenaltyError,
    Upbit,
)
from upbit.types import (
    AccountListResponse,
    TradingPairListResponse,
    WalletStatusListResponse,
    Withdraw,
    WithdrawListCoinAddressesResponse,
    WithdrawRetrieveChanceResponse,
)

from engine.sandbox.thread import SandboxThread
from engine.upbit.auth import DEMO_ACCESS_KEY, DEMO_SECRET_KEY
from tests.sdk.conftest import admin

BTC_ADDRESS = "bc1qsandbox0demo0wallet0000000000000000000"
XRP_ADDRESS = "rN7n7otQDd6FczFgLdSqtcsAUxDkw6fzRH"

#: (method, path) -> the SDK's model of a 2xx answer.
MODELS: dict[tuple[str, str], Any] = {
    ("GET", "/v1/accounts"): AccountListResponse,
    ("GET", "/v1/status/wallet"): WalletStatusListResponse,
    ("GET", "/v1/withdraws/coin_addresses"): WithdrawListCoinAddressesResponse,
    ("GET", "/v1/withdraws/chance"): WithdrawRetrieveChanceResponse,
    ("POST", "/v1/withdraws/coin"): Withdraw,
    ("DELETE", "/v1/withdraws/coin"): Withdraw,
    ("GET", "/v1/withdraw"): Withdraw,
    ("GET", "/v1/withdraws"): list[Withdraw],
    ("GET", "/v1/market/all"): TradingPairListResponse,
}


class _ErrorDetail(BaseModel):
    name: str
    message: str


class _ErrorBody(BaseModel):
    error: _ErrorDetail


@dataclass
class Wire:
    """Every (method, path, status, body) the SDK received, validated strictly at the end."""

    seen: list[tuple[str, str, int, bytes]] = field(default_factory=list)

    def record(self, response: httpx.Response) -> None:
        request = response.request
        self.seen.append((request.method, request.url.path, response.status_code, response.content))

    def check(self) -> set[tuple[str, str]]:
        """Validate every body; returns the endpoints answered with a 2xx."""
        answered = set()
        for method, path, status, body in self.seen:
            if 200 <= status < 300:
                TypeAdapter(MODELS[method, path]).validate_python(json.loads(body), strict=True)
                answered.add((method, path))
            elif status not in (429,):  # Upbit's 429 is plain text from the gateway
                _ErrorBody.model_validate(json.loads(body), strict=True)
        return answered


def sync_client(url: str, wire: Wire, **kw: Any) -> Upbit:
    def hook(response: httpx.Response) -> None:
        response.read()
        wire.record(response)

    http = httpx.Client(event_hooks={"response": [hook]})
    options = {"access_key": DEMO_ACCESS_KEY, "secret_key": DEMO_SECRET_KEY, "max_retries": 0, **kw}
    return Upbit(base_url=url, _strict_response_validation=True, http_client=http, **options)


def async_client(url: str, wire: Wire, **kw: Any) -> AsyncUpbit:
    async def hook(response: httpx.Response) -> None:
        await response.aread()
        wire.record(response)

    http = httpx.AsyncClient(event_hooks={"response": [hook]})
    options = {"access_key": DEMO_ACCESS_KEY, "secret_key": DEMO_SECRET_KEY, "max_retries": 0, **kw}
    return AsyncUpbit(base_url=url, _strict_response_validation=True, http_client=http, **options)


class Driver:
    """Calls ``client.<dotted path>(**kw)`` whether the client is sync or async."""

    def __init__(self, client: Upbit | AsyncUpbit) -> None:
        self.client = client

    async def __call__(self, path: str, **kw: Any) -> Any:
        result = attrgetter(path)(self.client)(**kw)
        return await result if inspect.isawaitable(result) else result

    async def items(self, **kw: Any) -> list[Withdraw]:
        """One page of ``withdraws.list`` as a list."""
        page = await self("withdraws.list", **kw)
        return list(page.items)

    async def refused(self, error: type[APIStatusError], name: str | None, path: str, **kw: Any) -> APIStatusError:
        """The call raises the SDK's ``error`` type with Upbit's error ``name``."""
        with pytest.raises(error) as caught:
            await self(path, **kw)
        assert caught.value.name == name, caught.value
        return caught.value


CLIENTS: dict[str, Callable[..., Upbit | AsyncUpbit]] = {"sync": sync_client, "async": async_client}


@pytest.fixture(name="make", params=sorted(CLIENTS))
async def _make(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Upbit | AsyncUpbit]]:
    """A client factory; every client it made is closed afterwards."""
    made: list[Upbit | AsyncUpbit] = []

    def make(url: str, wire: Wire, **kw: Any) -> Upbit | AsyncUpbit:
        made.append(CLIENTS[request.param](url, wire, **kw))
        return made[-1]

    yield make
    for client in made:
        closing = client.close()
        if inspect.isawaitable(closing):
            await closing


async def test_every_endpoint_fits_the_official_models(sandbox: SandboxThread, make: Callable[..., Any]) -> None:
    """Reads, create, get by uuid/txid/latest, list by every filter and cursor, cancel: all strictly valid."""
    wire = Wire()
    sdk = Driver(make(sandbox.url, wire))
    accounts = await sdk("accounts.list")
    assert accounts[0].currency == "KRW"
    wallets = await sdk("wallet_status.list")
    assert {(w.currency, w.net_type) for w in wallets} >= {("BTC", "BTC"), ("XRP", "XRP")}
    addresses = await sdk("withdraws.list_coin_addresses")
    assert any(a.secondary_address == "1234567" for a in addresses)
    chance = await sdk("withdraws.retrieve_chance", currency="BTC", net_type="BTC")
    assert chance.withdraw_limit.fiat_currency == "KRW" and chance.withdraw_limit.can_withdraw is True
    markets = await sdk("trading_pairs.list")
    assert any(m.market == "KRW-BTC" for m in markets)

    first = await sdk("withdraws.create_withdrawal", currency="BTC", net_type="BTC", amount="0.01", address=BTC_ADDRESS)
    assert (first.state, first.amount, first.is_cancelable) == ("WAITING", "0.01", True)
    tagged = await sdk(
        "withdraws.create_withdrawal", currency="XRP", net_type="XRP", amount="20", address=XRP_ADDRESS,
        secondary_address="1234567", transaction_type="internal",
    )  # fmt: skip
    assert tagged.transaction_type == "internal" and tagged.fee == "0.0"
    assert (await sdk("withdraws.retrieve", uuid=first.uuid)).uuid == first.uuid
    assert (await sdk("withdraws.retrieve")).uuid == tagged.uuid
    assert (await sdk("withdraws.retrieve", currency="BTC")).uuid == first.uuid

    assert [w.uuid for w in await sdk.items(uuids=[first.uuid, tagged.uuid])] == [tagged.uuid, first.uuid]
    assert [w.uuid for w in await sdk.items(currency="XRP", state="WAITING", limit=10)] == [tagged.uuid]
    assert [w.uuid for w in await sdk.items(order_by="asc", page=1, limit=1)] == [first.uuid]
    assert [w.uuid for w in await sdk.items(from_=first.uuid)] == [tagged.uuid]
    assert [w.uuid for w in await sdk.items(to=tagged.uuid)] == [first.uuid]

    cancelled = await sdk("withdraws.cancel_withdrawal", uuid=first.uuid)
    assert (cancelled.state, cancelled.is_cancelable) == ("CANCELLED", True)
    again = await sdk("withdraws.cancel_withdrawal", uuid=first.uuid)
    assert (again.state, again.is_cancelable) == ("CANCELLED", False)

    admin(sandbox, "POST", "/sandbox/config", {"waiting_seconds": 0.0, "processing_seconds": 0.0, "jitter": 0.0})
    done = await sdk("withdraws.create_withdrawal", currency="ETH", net_type="ETH", amount="1", address=_eth())
    settled = await _wait_for_txid(sdk, done.uuid)
    assert (await sdk("withdraws.retrieve", txid=settled.txid)).uuid == done.uuid
    assert [w.uuid for w in await sdk.items(txids=[settled.txid])] == [done.uuid]
    assert settled.done_at is not None

    assert wire.check() == set(MODELS)


async def test_error_paths_raise_the_sdks_typed_errors(sandbox: SandboxThread, make: Callable[..., Any]) -> None:
    """400, 401, 404 answers are Upbit-shaped; the SDK raises its typed error carrying Upbit's name."""
    wire = Wire()
    sdk = Driver(make(sandbox.url, wire))
    btc = {"currency": "BTC", "net_type": "BTC", "address": BTC_ADDRESS}
    await sdk.refused(NotFoundError, "currency_not_found", "withdraws.retrieve_chance", currency="NOPE", net_type="X")
    await sdk.refused(BadRequestError, "validation_error", "withdraws.retrieve_chance", currency="BTC", net_type="X")
    await sdk.refused(NotFoundError, "withdraw_not_found", "withdraws.retrieve", uuid="00000000-0000-4000-8000-0")
    await sdk.refused(NotFoundError, "withdraw_not_found", "withdraws.retrieve", currency="ETH")
    await sdk.refused(NotFoundError, "withdraw_not_found", "withdraws.cancel_withdrawal", uuid="nope")
    await sdk.refused(NotFoundError, "withdraw_not_found", "withdraws.list", from_="nope")
    await sdk.refused(BadRequestError, "validation_error", "withdraws.list", uuids=["a"], txids=["b"])
    await sdk.refused(BadRequestError, "validation_error", "withdraws.list", state="BOGUS")
    refusals = [
        (BadRequestError, "withdraw_address_not_registered", {**btc, "amount": "0.01", "address": "bc1qother"}),
        (BadRequestError, "withdraw_insufficient_balance", {**btc, "amount": "20"}),
        (BadRequestError, "invalid_parameter", {**btc, "amount": "-1"}),
        (BadRequestError, "sandbox_under_min_amount", {**btc, "amount": "0.000001"}),
        (BadRequestError, "sandbox_too_many_decimals", {**btc, "amount": "0.123456789"}),
        (NotFoundError, "currency_not_found", {**btc, "amount": "1", "currency": "NOPE"}),
        (BadRequestError, "sandbox_wallet_unavailable",
         {"currency": "DOGE", "net_type": "DOGE", "amount": "20", "address": "DH5yaieqoZN36fDVciNyRueRGvGLR3mr7L"}),
    ]  # fmt: skip
    for error, name, body in refusals:
        await sdk.refused(error, name, "withdraws.create_withdrawal", **body)

    wrong = Driver(make(sandbox.url, wire, secret_key="x" * 40))
    await wrong.refused(AuthenticationError, "jwt_verification", "accounts.list")
    stranger = Driver(make(sandbox.url, wire, access_key="nobody"))
    await stranger.refused(AuthenticationError, "invalid_access_key", "accounts.list")

    admin(sandbox, "POST", "/sandbox/faults", {"endpoint": "GET /v1/accounts", "kind": "error", "times": 1,
                                              "params": {"status": 503, "body": "json"}})  # fmt: skip
    await sdk.refused(InternalServerError, "server_error", "accounts.list")
    admin(sandbox, "POST", "/sandbox/faults", {"endpoint": "GET /v1/accounts", "kind": "burst_429", "count": 1})
    await sdk.refused(RateLimitError, None, "accounts.list")
    assert wire.check() == set()


async def test_418_block_is_the_sdks_penalty_error(sandbox: SandboxThread, make: Callable[..., Any]) -> None:
    """Enough 429s block the account: 418 ``too_many_requests_blocked`` is RateLimitPenaltyError."""
    wire = Wire()
    sdk = Driver(make(sandbox.url, wire))
    admin(sandbox, "POST", "/sandbox/config", {"rate_limit": {"block_after_429s": 2, "block_seconds": 600.0}})
    admin(sandbox, "POST", "/sandbox/faults", {"endpoint": "GET /v1/accounts", "kind": "burst_429", "count": 2})
    for _ in range(2):
        await sdk.refused(RateLimitError, None, "accounts.list")
    await sdk.refused(RateLimitPenaltyError, "too_many_requests_blocked", "accounts.list")
    wire.check()


def _eth() -> str:
    return "0x5a0b54d5dc17e0aadc383d2db43b0a0d3e029c4c"


async def _wait_for_txid(sdk: Driver, uuid: str) -> Withdraw:
    """Poll (bounded) until the zero-timing withdrawal reached its end with a txid."""
    for _ in range(2000):
        found = await sdk("withdraws.retrieve", uuid=uuid)
        if found.state == "DONE":
            return found  # type: ignore[no-any-return]
    raise AssertionError("the withdrawal never settled")


def test_decimal_amounts_round_trip(sandbox: SandboxThread) -> None:
    """The SDK's string amount is echoed exactly (money stays text end to end)."""
    wire = Wire()
    with sync_client(sandbox.url, wire) as client:
        made = client.withdraws.create_withdrawal(
            currency="BTC", net_type="BTC", amount="0.12345678", address=BTC_ADDRESS
        )
    assert Decimal(made.amount) == Decimal("0.12345678") and made.amount == "0.12345678"
    wire.check()


async def test_a_global_region_fits_the_models_too(seed: Any, make: Callable[..., Any]) -> None:
    """Upbit Singapore: SGD, ``+08:00`` and millisecond stamps; the answers still fit strictly."""
    import dataclasses

    from engine.sandbox.model import Region

    account = dataclasses.replace(seed.accounts[0], balances={**seed.accounts[0].balances, "SGD": Decimal(1000)})
    with SandboxThread(dataclasses.replace(seed, region=Region.SG, accounts=(account,))) as sandbox:
        wire = Wire()
        sdk = Driver(make(sandbox.url, wire))
        assert (await sdk("accounts.list"))[0].currency == "SGD"
        chance = await sdk("withdraws.retrieve_chance", currency="BTC", net_type="BTC")
        assert chance.withdraw_limit.fiat_currency == "SGD"
        made = await sdk(
            "withdraws.create_withdrawal", currency="BTC", net_type="BTC", amount="0.01", address=BTC_ADDRESS
        )
        assert made.created_at.endswith("+08:00") and "." in made.created_at
        assert any(m.market == "SGD-BTC" for m in await sdk("trading_pairs.list", is_details=True))
        assert wire.check() >= {("GET", "/v1/accounts"), ("POST", "/v1/withdraws/coin")}


def test_the_sdks_default_retry_duplicates_a_dropped_post(sandbox: SandboxThread) -> None:
    """Why benchmarks/peers.py exists: a POST carried out and then dropped is sent again by the SDK's
    default retry (new JWT, new nonce), and the exchange makes a second withdrawal."""
    admin(sandbox, "POST", "/sandbox/faults", {"endpoint": "POST /v1/withdraws/coin", "kind": "drop", "times": 1})
    with Upbit(access_key=DEMO_ACCESS_KEY, secret_key=DEMO_SECRET_KEY, base_url=sandbox.url) as client:
        made = client.withdraws.create_withdrawal(currency="BTC", net_type="BTC", amount="0.5", address=BTC_ADDRESS)
    stored = admin(sandbox, "GET", "/sandbox/withdrawals")
    assert len(stored) == 2 and made.uuid == stored[1]["uuid"]
    assert {w["amount"] for w in stored} == {"0.5"}
