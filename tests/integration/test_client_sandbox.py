"""Our UpbitClient over real HTTP against the sandbox on 127.0.0.1: every endpoint, every error name the
sandbox can produce, the auth refusals, throttling (Remaining-Req, 429, 418), timeouts and faults, and no
secret in any error text.

No aioresponses here: the requests really leave the client, the sandbox verifies them independently
(its own JWT checks, its own rate buckets) and its admin routes say what it received. Time is real; the
tests that depend on the sandbox's fixed one-second windows start right after a second boundary of the
monotonic clock the in-process sandbox uses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import jwt
import pytest
import yarl

import engine.upbit.client as client_module
from engine.errors import (
    ExchangeBadResponse,
    ExchangeBlocked,
    ExchangeConnectionError,
    ExchangeError,
    ExchangeNotFound,
    ExchangeRefused,
    ExchangeServerError,
    ExchangeThrottled,
    ExchangeTimeout,
    OutcomeUnknown,
)
from engine.sandbox import SandboxServer, default_seed
from engine.upbit.auth import (
    DEMO_ACCESS_KEY,
    DEMO_SECRET_KEY,
    Algorithm,
    Credentials,
    encode_params,
    make_token,
)
from engine.upbit.client import UpbitClient, WithdrawBody
from engine.upbit.ratelimit import RateLimiter
from engine.upbit.types import AccountBalance, AllowedAddress, Chance, ExchangeState, WalletStatus, Withdrawal
from tests.conftest import SandboxAdmin

DEMO = Credentials.demo()
BTC_ADDRESS = "bc1qsandbox0demo0wallet0000000000000000000"
ETH_ADDRESS = "0x5a0b54d5dc17e0aadc383d2db43b0a0d3e029c4c"
XRP_ADDRESS = "rN7n7otQDd6FczFgLdSqtcsAUxDkw6fzRH"
DOGE_ADDRESS = "DH5yaieqoZN36fDVciNyRueRGvGLR3mr7L"
POST_COIN = "POST /v1/withdraws/coin"
KST = timedelta(hours=9)

#: A second key of the demo account, and a key of another account (custom seed of the Remaining-Req test).
SECOND_KEY = Credentials("second-key-of-demo-account-0000000000000", "second-secret-of-the-demo-account-" + "1" * 30)
OTHER_KEY = Credentials("key-of-another-account-00000000000000000", "secret-of-another-account-" + "2" * 38)


def btc(amount: str = "0.01", **kw: Any) -> WithdrawBody:
    """A BTC withdrawal to the demo account's allowlisted address."""
    return WithdrawBody(
        **{"currency": "BTC", "net_type": "BTC", "amount": Decimal(amount), "address": BTC_ADDRESS, **kw}
    )


def eth(amount: str = "0.1") -> WithdrawBody:
    return WithdrawBody(currency="ETH", net_type="ETH", amount=Decimal(amount), address=ETH_ADDRESS)


class Wire:
    """Client middleware: keeps every token our client put on the wire; ``strip`` drops the header."""

    def __init__(self, *, strip: bool = False) -> None:
        self.tokens: list[str] = []
        self.strip = strip

    async def __call__(self, request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            self.tokens.append(auth.removeprefix("Bearer "))
        if self.strip:
            del request.headers["Authorization"]
        return await handler(request)  # type: ignore[no-any-return]


class SlowStart:
    """Client middleware: the first ``calls`` requests take ``delay`` seconds longer to reach the server."""

    def __init__(self, *, calls: int, delay: float) -> None:
        self.left = calls
        self.delay = delay

    async def __call__(self, request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        if self.left > 0:
            self.left -= 1
            await asyncio.sleep(self.delay)
        return await handler(request)  # type: ignore[no-any-return]


@asynccontextmanager
async def connect(
    url: str,
    *,
    credentials: Credentials = DEMO,
    limiter: RateLimiter | None = None,
    timeout: float = 2.0,
    wire: Wire | None = None,
    middleware: Any = None,
    session: aiohttp.ClientSession | None = None,
    **kw: Any,
) -> AsyncIterator[UpbitClient]:
    """Our client for the sandbox at ``url``; with ``wire`` (or another middleware), over a session of ours."""
    middleware = middleware or wire
    own = aiohttp.ClientSession(middlewares=(middleware,)) if middleware is not None and session is None else None
    try:
        async with UpbitClient(
            credentials, base_url=url, limiter=limiter or RateLimiter(30), timeout=timeout,
            session=session or own, **kw,
        ) as client:  # fmt: skip
            yield client
    finally:
        if own is not None:
            await own.close()


@pytest.fixture
async def client(sandbox: SandboxServer) -> AsyncIterator[UpbitClient]:
    async with connect(sandbox.url) as upbit:
        yield upbit


async def expect(
    call: Awaitable[Any], cls: type[ExchangeError], *, status: int | None, name: str | None, endpoint: str
) -> ExchangeError:
    """Await ``call``; it must raise exactly ``cls`` with this status, Upbit error name and endpoint."""
    with pytest.raises(ExchangeError) as info:
        await call
    exc = info.value
    assert type(exc) is cls, repr(exc)
    assert (exc.status, exc.name, exc.endpoint) == (status, name, endpoint), repr(exc)
    return exc


async def posts(admin: SandboxAdmin) -> int:
    return int((await admin.stats())["by_endpoint"].get(POST_COIN, 0))


async def sent(admin: SandboxAdmin, endpoint: str) -> int:
    return int((await admin.stats())["by_endpoint"].get(endpoint, 0))


async def settle(admin: SandboxAdmin, count: int, *, state: str = "DONE", within: float = 5.0) -> list[dict[str, Any]]:
    """Wait (via the admin routes: no rate budget spent) until ``count`` withdrawals are in ``state``."""
    deadline = time.monotonic() + within
    while True:
        rows = [w for w in await admin.withdrawals() if w["state"] == state]
        if len(rows) >= count:
            return rows
        assert time.monotonic() < deadline, f"only {len(rows)} withdrawals reached {state}"
        await asyncio.sleep(0.03)


async def second_start(latest: float = 0.1) -> None:
    """Sleep until just after a boundary of the sandbox's fixed one-second rate windows (monotonic)."""
    fraction = time.monotonic() % 1.0
    if fraction > latest:
        await asyncio.sleep(1.0 - fraction + 0.003)


async def raw(
    url: str, method: str, path: str, *, query: str = "", body: bytes = b"", token: str | None
) -> tuple[int, Any]:
    """One request built by hand (no client): status and parsed JSON (or text)."""
    headers = {"Content-Type": "application/json; charset=utf-8"} if body else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    target = yarl.URL(f"{url}{path}" + (f"?{query}" if query else ""), encoded=True)
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, target, data=body or None, headers=headers) as response,
    ):
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


# --------------------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------------------


class TestEndpoints:
    async def test_coin_addresses(self, client: UpbitClient) -> None:
        rows = await client.coin_addresses()
        assert all(isinstance(r, AllowedAddress) for r in rows)
        by_key = {(r.currency, r.net_type): r for r in rows}
        assert set(by_key) == {("BTC", "BTC"), ("ETH", "ETH"), ("USDT", "TRX"), ("USDT", "ETH"), ("XRP", "XRP"),
                               ("DOGE", "DOGE")}  # fmt: skip
        assert by_key["XRP", "XRP"].withdraw_address == XRP_ADDRESS
        assert by_key["XRP", "XRP"].secondary_address == "1234567"
        assert by_key["BTC", "BTC"].secondary_address is None
        assert by_key["USDT", "TRX"].beneficiary_type == "corporate"
        assert by_key["USDT", "TRX"].exchange_name == "Binance"

    async def test_wallet_status(self, client: UpbitClient) -> None:
        rows = await client.wallet_status()
        assert all(isinstance(r, WalletStatus) for r in rows)
        by_key = {(r.currency, r.net_type): r for r in rows}
        assert by_key["BTC", "BTC"].wallet_state == "working"
        assert by_key["BTC", "BTC"].block_state == "normal"
        assert by_key["BTC", "BTC"].block_height == 930412
        assert by_key["DOGE", "DOGE"].wallet_state == "paused"
        updated = by_key["BTC", "BTC"].block_updated_at
        assert updated is not None and updated.tzinfo is not None

    async def test_chance(self, client: UpbitClient) -> None:
        chance = await client.chance("BTC", "BTC")
        assert isinstance(chance, Chance)
        assert chance.currency == "BTC"
        assert chance.withdraw_fee == Decimal("0.0008") and isinstance(chance.withdraw_fee, Decimal)
        assert chance.minimum == Decimal("0.00001")
        assert chance.fixed == 8
        assert chance.onetime is None  # deprecated per-network limit: Upbit enforces the fiat daily limit
        assert chance.balance == Decimal("10")
        assert "withdraw" in chance.wallet_support
        assert chance.can_withdraw and not chance.member_locked and not chance.wallet_locked
        doge = await client.chance("DOGE", "DOGE")
        assert "withdraw" not in doge.wallet_support and not doge.can_withdraw

    async def test_accounts(self, client: UpbitClient) -> None:
        rows = await client.accounts()
        assert all(isinstance(r, AccountBalance) for r in rows)
        assert rows[0].currency == "KRW"
        balances = {r.currency: r for r in rows}
        assert balances["BTC"].balance == Decimal("10") and balances["BTC"].locked == 0
        assert balances["KRW"].balance == Decimal("100000000")

    async def test_withdraw_coin_201(self, client: UpbitClient, admin: SandboxAdmin) -> None:
        withdrawal = await client.withdraw_coin(btc("0.0100"))
        assert isinstance(withdrawal, Withdrawal)
        assert client.statuses[(POST_COIN, 201)] == 1
        assert withdrawal.amount == Decimal("0.01") and isinstance(withdrawal.amount, Decimal)
        assert withdrawal.fee == Decimal("0.0008") and isinstance(withdrawal.fee, Decimal)
        assert withdrawal.created_at.tzinfo is not None
        assert withdrawal.created_at.utcoffset() == KST
        assert abs(withdrawal.created_at - datetime.now(withdrawal.created_at.tzinfo)) < timedelta(seconds=30)
        assert withdrawal.state is ExchangeState.WAITING and withdrawal.txid is None
        assert (withdrawal.currency, withdrawal.net_type, withdrawal.transaction_type) == ("BTC", "BTC", "default")
        assert withdrawal.is_cancelable is True
        # The body arrived in the order it was hashed, every value a string, the amount without trailing zeros.
        log = (await admin.call("GET", "requests"))["requests"]
        assert list(log[-1]["body"].items()) == [
            ("currency", "BTC"), ("net_type", "BTC"), ("amount", "0.01"), ("address", BTC_ADDRESS),
            ("transaction_type", "default"),
        ]  # fmt: skip
        balances = {b.currency: b for b in await client.accounts()}
        assert balances["BTC"].balance == Decimal("9.9892")
        assert balances["BTC"].locked == Decimal("0.0108")

    async def test_withdraw_with_tag_and_internal(self, client: UpbitClient, admin: SandboxAdmin) -> None:
        tagged = WithdrawBody(
            currency="XRP", net_type="XRP", amount=Decimal("25"), address=XRP_ADDRESS, secondary_address="1234567"
        )
        xrp = await client.withdraw_coin(tagged)
        assert (xrp.amount, xrp.fee) == (Decimal("25"), Decimal("0.4"))
        internal = await client.withdraw_coin(btc("0.5", transaction_type="internal"))
        assert internal.transaction_type == "internal"
        assert internal.fee == 0
        created = {w["uuid"]: w for w in await admin.withdrawals()}
        assert created[xrp.uuid]["secondary_address"] == "1234567"
        assert created[internal.uuid]["transaction_type"] == "internal"

    async def test_get_withdraw_by_uuid_txid_and_latest(self, client: UpbitClient, admin: SandboxAdmin) -> None:
        first = await client.withdraw_coin(btc("0.01"))
        second = await client.withdraw_coin(eth("0.1"))
        await settle(admin, 2)
        by_uuid = await client.get_withdraw(uuid=first.uuid)
        assert by_uuid.uuid == first.uuid and by_uuid.state is ExchangeState.DONE
        assert by_uuid.txid is not None and len(by_uuid.txid) == 64
        assert by_uuid.done_at is not None and by_uuid.done_at.tzinfo is not None
        assert (await client.get_withdraw(txid=by_uuid.txid)).uuid == first.uuid
        assert (await client.get_withdraw()).uuid == second.uuid
        assert (await client.get_withdraw(currency="BTC")).uuid == first.uuid
        assert (await client.get_withdraw(currency="ETH")).uuid == second.uuid

    async def test_list_withdraws(self, client: UpbitClient, admin: SandboxAdmin) -> None:
        created = [
            await client.withdraw_coin(body) for body in (btc("0.01"), eth("0.1"), btc("0.02"), eth("0.2"), btc("0.03"))
        ]
        b1, e1, b2, e2, b3 = (w.uuid for w in created)
        await settle(admin, 5)

        async def uuids(**kw: Any) -> list[str]:
            rows = await client.list_withdraws(**kw)
            assert all(isinstance(r, Withdrawal) and isinstance(r.amount, Decimal) for r in rows)
            return [r.uuid for r in rows]

        assert await uuids() == [b3, e2, b2, e1, b1]
        assert await uuids(order_by="asc") == [b1, e1, b2, e2, b3]
        assert await uuids(currency="BTC") == [b3, b2, b1]
        assert await uuids(currency="ETH", order_by="asc") == [e1, e2]
        assert await uuids(state=ExchangeState.DONE) == [b3, e2, b2, e1, b1]
        assert await uuids(state="CANCELLED") == []
        assert await uuids(limit=2) == [b3, e2]
        assert await uuids(limit=2, page=2) == [b2, e1]
        assert await uuids(limit=2, page=3) == [b1]
        assert await uuids(from_=b1) == [b3, e2, b2, e1]
        assert await uuids(to=b3) == [e2, b2, e1, b1]
        assert await uuids(from_=e1, to=b3, order_by="asc") == [b2, e2]
        # uuids[]: up to 100 in one call (unknown ones are simply absent), combinable with currency.
        many = [w.uuid for w in created] + [str(uuid.uuid4()) for _ in range(95)]
        assert len(many) == 100
        assert await uuids(uuids=many) == [b3, e2, b2, e1, b1]
        assert await uuids(uuids=many, currency="BTC", order_by="asc") == [b1, b2, b3]
        # txids[]: the txids appeared while PROCESSING.
        rows = await client.list_withdraws(uuids=[b1, e1])
        txids = [r.txid for r in rows if r.txid]
        assert len(txids) == 2
        assert await uuids(txids=txids) == [e1, b1]
        # Refused before anything is sent: more than 100 ids, uuids with txids.
        before = await sent(admin, "GET /v1/withdraws")
        with pytest.raises(ValueError, match="100"):
            await client.list_withdraws(uuids=[*many, str(uuid.uuid4())])
        with pytest.raises(ValueError, match="combined"):
            await client.list_withdraws(uuids=[b1], txids=txids)
        assert await sent(admin, "GET /v1/withdraws") == before

    async def test_cancel_withdraw(self, client: UpbitClient, admin: SandboxAdmin) -> None:
        await admin.configure(waiting_seconds=30)
        withdrawal = await client.withdraw_coin(btc("0.01"))
        cancelled = await client.cancel_withdraw(withdrawal.uuid)
        assert isinstance(cancelled, Withdrawal)
        assert cancelled.uuid == withdrawal.uuid
        assert cancelled.is_cancelable is True
        assert cancelled.state is ExchangeState.CANCELLED
        again = await client.cancel_withdraw(withdrawal.uuid)
        assert again.is_cancelable is False and again.state is ExchangeState.CANCELLED
        assert [w.uuid for w in await client.list_withdraws(state="CANCELLED")] == [withdrawal.uuid]
        balances = {b.currency: b for b in await client.accounts()}
        assert (balances["BTC"].balance, balances["BTC"].locked) == (Decimal("10"), Decimal(0))


# --------------------------------------------------------------------------------------------------
# Every error name the sandbox produces for a well-signed request
# --------------------------------------------------------------------------------------------------

Call = Callable[[UpbitClient], Awaitable[Any]]
Setup = Callable[[UpbitClient, SandboxAdmin], Awaitable[None]]


async def _rich(client: UpbitClient, admin: SandboxAdmin) -> None:
    await admin.call("POST", "balances", {"currency": "BTC", "balance": "1000"})


async def _rich_and_fiat_limit_partly_used(client: UpbitClient, admin: SandboxAdmin) -> None:
    await _rich(client, admin)
    await client.withdraw_coin(btc("30"))  # 4.2 of the demo account's 5 billion KRW a day


def _post(body: WithdrawBody) -> Call:
    return lambda client: client.withdraw_coin(body)


def _xrp(tag: str | None = None) -> WithdrawBody:
    return WithdrawBody(currency="XRP", net_type="XRP", amount=Decimal(5), address=XRP_ADDRESS, secondary_address=tag)


CHANCE, ONE, LIST, CANCEL = (
    "GET /v1/withdraws/chance", "GET /v1/withdraw", "GET /v1/withdraws", "DELETE /v1/withdraws/coin"
)  # fmt: skip
DOGE = WithdrawBody(currency="DOGE", net_type="DOGE", amount=Decimal(100), address=DOGE_ADDRESS)
#: (id, setup, call, exception class, HTTP status, error.name, endpoint)
ERROR_CASES: list[tuple[str, Setup | None, Call, type[ExchangeError], int, str, str]] = [
    ("chance-missing-net_type", None, lambda c: c.chance("BTC", ""), ExchangeRefused, 400, "validation_error",
     CHANCE),
    ("chance-unknown-net_type", None, lambda c: c.chance("BTC", "ETH"), ExchangeRefused, 400, "validation_error",
     CHANCE),
    ("post-bad-transaction_type", None, _post(btc(transaction_type="express")), ExchangeRefused, 400,
     "validation_error", POST_COIN),
    ("list-bad-state", None, lambda c: c.list_withdraws(state="BOGUS"), ExchangeRefused, 400, "validation_error",
     LIST),
    ("post-negative-amount", None, _post(btc("-1")), ExchangeRefused, 400, "invalid_parameter", POST_COIN),
    ("post-zero-amount", None, _post(btc("0")), ExchangeRefused, 400, "invalid_parameter", POST_COIN),
    ("chance-unknown-currency", None, lambda c: c.chance("NOPE", "NOPE"), ExchangeNotFound, 404,
     "currency_not_found", CHANCE),
    ("post-unknown-currency", None, _post(btc(currency="NOPE")), ExchangeNotFound, 404, "currency_not_found",
     POST_COIN),
    ("post-unknown-address", None, _post(btc(address="bc1qsomebodyelse")), ExchangeRefused, 400,
     "withdraw_address_not_registered", POST_COIN),
    ("post-missing-tag", None, _post(_xrp()), ExchangeRefused, 400, "withdraw_address_not_registered", POST_COIN),
    ("post-wrong-tag", None, _post(_xrp("7654321")), ExchangeRefused, 400, "withdraw_address_not_registered",
     POST_COIN),
    ("post-paused-wallet", None, _post(DOGE), ExchangeRefused, 400, "sandbox_wallet_unavailable", POST_COIN),
    ("post-under-minimum", None, _post(btc("0.000001")), ExchangeRefused, 400, "sandbox_under_min_amount",
     POST_COIN),
    ("post-too-many-decimals", None, _post(btc("0.123456789")), ExchangeRefused, 400, "sandbox_too_many_decimals",
     POST_COIN),
    ("post-insufficient-balance", None, _post(btc("20")), ExchangeRefused, 400, "withdraw_insufficient_balance",
     POST_COIN),
    ("post-over-fiat-daily", _rich, _post(btc("36")), ExchangeRefused, 400, "sandbox_over_daily_fiat_limit",
     POST_COIN),
    ("post-over-fiat-daily-left", _rich_and_fiat_limit_partly_used, _post(btc("6")), ExchangeRefused, 400,
     "sandbox_over_daily_fiat_limit", POST_COIN),
    ("get-unknown-uuid", None, lambda c: c.get_withdraw(uuid=str(uuid.uuid4())), ExchangeNotFound, 404,
     "withdraw_not_found", ONE),
    ("get-unknown-txid", None, lambda c: c.get_withdraw(txid="ab" * 32), ExchangeNotFound, 404,
     "withdraw_not_found", ONE),
    ("get-latest-of-none", None, lambda c: c.get_withdraw(currency="ETH"), ExchangeNotFound, 404,
     "withdraw_not_found", ONE),
    ("list-unknown-cursor", None, lambda c: c.list_withdraws(from_=str(uuid.uuid4())), ExchangeNotFound, 404,
     "withdraw_not_found", LIST),
    ("cancel-unknown-uuid", None, lambda c: c.cancel_withdraw(str(uuid.uuid4())), ExchangeNotFound, 404,
     "withdraw_not_found", CANCEL),
]  # fmt: skip


@pytest.mark.parametrize(
    ("setup", "call", "cls", "status", "name", "endpoint"),
    [pytest.param(*case[1:], id=case[0]) for case in ERROR_CASES],
)
async def test_error_names_map_to_exceptions(
    client: UpbitClient,
    admin: SandboxAdmin,
    setup: Setup | None,
    call: Call,
    cls: type[ExchangeError],
    status: int,
    name: str,
    endpoint: str,
) -> None:
    if setup is not None:
        await setup(client, admin)
    created_before = (await admin.stats())["withdrawals_total"]
    sent_before = await sent(admin, endpoint)
    exc = await expect(call(client), cls, status=status, name=name, endpoint=endpoint)
    assert isinstance(exc, ExchangeRefused) and not isinstance(exc, OutcomeUnknown)
    assert exc.detail and exc.detail != name  # the sandbox's message is kept
    assert exc.as_dict()["name"] == name
    assert await sent(admin, endpoint) == sent_before + 1  # a refusal is never repeated
    assert (await admin.stats())["withdrawals_total"] == created_before  # and created nothing


# --------------------------------------------------------------------------------------------------
# Auth
# --------------------------------------------------------------------------------------------------


def _signer_of(sign: Callable[..., str]) -> type:
    """A stand-in for the client's :class:`~engine.upbit.auth.TokenSigner` whose tokens come from ``sign``
    (``make_token``'s signature): how a test makes the client sign what it should not."""

    class Signer:
        def __init__(self, credentials: Credentials, algorithm: Algorithm = Algorithm.HS256) -> None:
            self.credentials, self.algorithm = credentials, algorithm

        def sign(self, hashed: str | None, *, nonce: str | None = None) -> str:
            return sign(self.credentials, hashed, algorithm=self.algorithm, nonce=nonce)

    return Signer


class TestAuth:
    @pytest.mark.parametrize("algorithm", [Algorithm.HS256, Algorithm.HS512])
    async def test_both_algorithms_accepted(self, sandbox: SandboxServer, algorithm: Algorithm) -> None:
        wire = Wire()
        async with connect(sandbox.url, algorithm=algorithm, wire=wire) as upbit:
            await upbit.coin_addresses()  # no params: no query_hash
            await upbit.chance("BTC", "BTC")  # query
            created = await upbit.withdraw_coin(btc("0.01"))  # body
            await upbit.list_withdraws(uuids=[created.uuid, str(uuid.uuid4())])  # array params
            await upbit.cancel_withdraw(created.uuid)  # DELETE
        assert len(wire.tokens) == 5
        assert {jwt.get_unverified_header(t)["alg"] for t in wire.tokens} == {algorithm.value}
        claims = [jwt.decode(t, DEMO_SECRET_KEY, algorithms=[algorithm.value]) for t in wire.tokens]
        assert "query_hash" not in claims[0]
        assert all(c["query_hash_alg"] == "SHA512" for c in claims[1:])
        assert len({c["nonce"] for c in claims}) == 5

    @pytest.mark.parametrize(
        "credentials",
        [
            pytest.param(Credentials(DEMO_ACCESS_KEY, "not-the-secret-" + "x" * 50), id="wrong-secret"),
            pytest.param(Credentials("unknown-access-key-000000000000000000000", "y" * 64), id="unknown-key"),
        ],
    )
    async def test_bad_credentials(self, sandbox: SandboxServer, admin: SandboxAdmin, credentials: Credentials) -> None:
        name = "jwt_verification" if credentials.access_key == DEMO_ACCESS_KEY else "invalid_access_key"
        async with connect(sandbox.url, credentials=credentials) as upbit:
            await expect(upbit.coin_addresses(), ExchangeRefused, status=401, name=name,
                         endpoint="GET /v1/withdraws/coin_addresses")  # fmt: skip
            await expect(upbit.chance("BTC", "BTC"), ExchangeRefused, status=401, name=name, endpoint=CHANCE)
            await expect(upbit.withdraw_coin(btc()), ExchangeRefused, status=401, name=name, endpoint=POST_COIN)
        assert await posts(admin) == 1
        assert (await admin.stats())["withdrawals_total"] == 0

    async def test_tampered_body_and_query_by_hand(self, sandbox: SandboxServer, admin: SandboxAdmin) -> None:
        signed = encode_params(btc("0.01").params(), as_body=True)
        other = encode_params(btc("0.02").params(), as_body=True)
        status, answer = await raw(sandbox.url, "POST", "/v1/withdraws/coin", body=other.body,
                                   token=make_token(DEMO, signed.hashed))  # fmt: skip
        assert (status, answer["error"]["name"]) == (401, "invalid_query_payload")
        # Same pairs, another order: the hash covers the order too.
        pairs = btc("0.01").params()
        swapped = encode_params([pairs[1], pairs[0], *pairs[2:]], as_body=True)
        status, answer = await raw(sandbox.url, "POST", "/v1/withdraws/coin", body=swapped.body,
                                   token=make_token(DEMO, signed.hashed))  # fmt: skip
        assert (status, answer["error"]["name"]) == (401, "invalid_query_payload")
        query = encode_params([("currency", "BTC"), ("net_type", "BTC")], as_body=False)
        tampered = encode_params([("currency", "ETH"), ("net_type", "ETH")], as_body=False)
        status, answer = await raw(sandbox.url, "GET", "/v1/withdraws/chance", query=tampered.query,
                                   token=make_token(DEMO, query.hashed))  # fmt: skip
        assert (status, answer["error"]["name"]) == (401, "invalid_query_payload")
        # The untampered twins pass: the refusals were about the mismatch only.
        status, _ = await raw(sandbox.url, "GET", "/v1/withdraws/chance", query=query.query,
                              token=make_token(DEMO, query.hashed))  # fmt: skip
        assert status == 200
        status, _ = await raw(sandbox.url, "POST", "/v1/withdraws/coin", body=signed.body,
                              token=make_token(DEMO, signed.hashed))  # fmt: skip
        assert status == 201
        assert (await admin.stats())["withdrawals_total"] == 1

    async def test_tampered_signature_through_client(
        self, sandbox: SandboxServer, admin: SandboxAdmin, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The client signs one string and sends another: invalid_query_payload, mapped to a refusal."""

        monkeypatch.setattr(client_module, "TokenSigner", _signer_of(lambda cred, hashed, **kw: make_token(
            cred, (hashed or "") + "&tampered=1", **kw)))  # fmt: skip
        async with connect(sandbox.url) as upbit:
            await expect(upbit.chance("BTC", "BTC"), ExchangeRefused, status=401, name="invalid_query_payload",
                         endpoint=CHANCE)  # fmt: skip
            await expect(upbit.withdraw_coin(btc()), ExchangeRefused, status=401, name="invalid_query_payload",
                         endpoint=POST_COIN)  # fmt: skip
            await expect(upbit.cancel_withdraw(str(uuid.uuid4())), ExchangeRefused, status=401,
                         name="invalid_query_payload", endpoint=CANCEL)  # fmt: skip
            # Parameters where there are none: a query_hash on a parameterless call is a mismatch too.
            await expect(upbit.accounts(), ExchangeRefused, status=401, name="invalid_query_payload",
                         endpoint="GET /v1/accounts")  # fmt: skip
        assert (await admin.stats())["withdrawals_total"] == 0

    async def test_reused_nonce(
        self, sandbox: SandboxServer, admin: SandboxAdmin, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        fixed = str(uuid.uuid4())
        query = encode_params([("currency", "BTC"), ("net_type", "BTC")], as_body=False)
        first = await raw(sandbox.url, "GET", "/v1/withdraws/chance", query=query.query,
                          token=make_token(DEMO, query.hashed, nonce=fixed))  # fmt: skip
        second = await raw(sandbox.url, "GET", "/v1/withdraws/chance", query=query.query,
                           token=make_token(DEMO, query.hashed, nonce=fixed))  # fmt: skip
        assert first[0] == 200
        assert (second[0], second[1]["error"]["name"]) == (401, "nonce_used")

        # Through the client: a token factory stuck on one nonce.
        stuck = str(uuid.uuid4())
        monkeypatch.setattr(client_module, "TokenSigner", _signer_of(lambda cred, hashed, **kw: make_token(
            cred, hashed, **{**kw, "nonce": stuck})))  # fmt: skip
        async with connect(sandbox.url) as upbit:
            await upbit.wallet_status()
            await expect(upbit.wallet_status(), ExchangeRefused, status=401, name="nonce_used",
                         endpoint="GET /v1/status/wallet")  # fmt: skip
            await expect(upbit.withdraw_coin(btc()), ExchangeRefused, status=401, name="nonce_used",
                         endpoint=POST_COIN)  # fmt: skip
        assert (await admin.stats())["withdrawals_total"] == 0

    async def test_missing_authorization_header(self, sandbox: SandboxServer, admin: SandboxAdmin) -> None:
        status, answer = await raw(sandbox.url, "GET", "/v1/accounts", token=None)
        assert (status, answer["error"]["name"]) == (401, "no_authorization_token")
        async with connect(sandbox.url, wire=Wire(strip=True)) as upbit:
            await expect(upbit.accounts(), ExchangeRefused, status=401, name="no_authorization_token",
                         endpoint="GET /v1/accounts")  # fmt: skip
            await expect(upbit.withdraw_coin(btc()), ExchangeRefused, status=401, name="no_authorization_token",
                         endpoint=POST_COIN)  # fmt: skip
        assert (await admin.stats())["withdrawals_total"] == 0

    @pytest.mark.parametrize(
        "value", ["B TC", "비트코인", "BTC ", "A&B=C+D%20E#F", "x[]=y;z", "코인 & 토큰 + 50%"], ids=repr
    )
    async def test_spaces_and_non_ascii_in_hashed_params(
        self, client: UpbitClient, admin: SandboxAdmin, value: str
    ) -> None:
        """Such values are hashed as Upbit does: the sandbox answers the request, never invalid_query_payload."""
        await expect(client.chance(value, "BTC"), ExchangeNotFound, status=404, name="currency_not_found",
                     endpoint=CHANCE)  # fmt: skip
        await expect(client.get_withdraw(txid=value), ExchangeNotFound, status=404, name="withdraw_not_found",
                     endpoint=ONE)  # fmt: skip
        assert await client.list_withdraws(currency=value, state="DONE") == []
        await expect(client.withdraw_coin(btc(address=value, secondary_address=value)), ExchangeRefused, status=400,
                     name="withdraw_address_not_registered", endpoint=POST_COIN)  # fmt: skip
        # The sandbox decoded exactly what we meant.
        log = (await admin.call("GET", "requests"))["requests"]
        assert log[-1]["body"]["address"] == value
        assert log[-2]["path"] == "/v1/withdraws" and value not in log[-2]["query"]  # percent-encoded on the URL


# --------------------------------------------------------------------------------------------------
# Throttling: the limiter, Remaining-Req, 429 and 418
# --------------------------------------------------------------------------------------------------


class TestThrottling:
    async def test_limiter_at_30_per_second_never_meets_a_429(
        self, sandbox: SandboxServer, admin: SandboxAdmin
    ) -> None:
        """100 reads, 40 one after the other then 60 at once, at 30/s: the sandbox never answers 429.

        The session's connections are opened beforehand (on the unlimited admin routes), so that every
        call's way to the exchange takes about as long as every other's; when that is not so, see
        ``test_uneven_transit_times_break_the_sliding_window`` below."""
        limiter = RateLimiter(30)
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(session.get(f"{sandbox.url}/sandbox/") for _ in range(30)))
            async with connect(sandbox.url, limiter=limiter, session=session) as upbit:
                reads = [upbit.wallet_status, upbit.accounts, upbit.coin_addresses]
                started = time.monotonic()
                for i in range(40):
                    await reads[i % 3]()
                results = await asyncio.gather(*(reads[i % 3]() for i in range(60)))
                elapsed = time.monotonic() - started
        assert len(results) == 60
        stats = await admin.stats()
        assert stats["requests_total"] == 100
        assert stats["status_429"] == 0
        assert limiter.stats.throttles == 0
        assert elapsed >= 3.0  # 100 calls at 30/s: the 31st, 61st and 91st waited for a free second

    async def test_uneven_transit_times_stay_within_the_budget(
        self, sandbox: SandboxServer, admin: SandboxAdmin
    ) -> None:
        """A burst slowed in transit (cold connections) does not push the next burst into its second."""
        slow_start = SlowStart(calls=30, delay=0.15)
        async with connect(sandbox.url, limiter=RateLimiter(30), middleware=slow_start) as upbit:
            # Start 100 ms before a sandbox second ends: the first 30 calls arrive 50 ms into the next one,
            # and so does the 31st, 1.0 s after them, 100 ms before that second ends.
            await asyncio.sleep((0.9 - time.monotonic() % 1.0) % 1.0)
            await asyncio.gather(*(upbit.wallet_status() for _ in range(31)))
        assert (await admin.stats())["status_429"] == 0

    async def test_limiter_books_foreign_usage_from_remaining_req(self) -> None:
        """Remaining-Req is read on every answer (2xx and 4xx): another key of the same account spending the
        budget shows up as phantom calls in our limiter; another account's calls do not."""
        seed = default_seed()
        demo = seed.accounts[0]
        other = dataclasses.replace(demo, name="other", keys=(OTHER_KEY,))
        seed = dataclasses.replace(seed, accounts=(dataclasses.replace(demo, keys=(DEMO, SECOND_KEY)), other))
        async with SandboxServer(seed) as server:
            mine = RateLimiter(30)
            async with connect(server.url, limiter=mine) as ours, \
                    connect(server.url, credentials=SECOND_KEY) as colleague, \
                    connect(server.url, credentials=OTHER_KEY) as stranger:  # fmt: skip
                await second_start(0.3)
                await ours.wallet_status()
                for _ in range(10):
                    await stranger.wallet_status()
                await ours.accounts()
                assert mine.stats.phantom == 0
                for _ in range(7):
                    await colleague.accounts()
                await ours.chance("BTC", "BTC")  # 200
                assert mine.stats.phantom == 7
                for _ in range(5):
                    await colleague.accounts()
                with pytest.raises(ExchangeNotFound):
                    await ours.chance("NOPE", "NOPE")  # 404, still carries Remaining-Req
                assert mine.stats.phantom == 12
                await ours.withdraw_coin(btc())  # 201
                assert mine.stats.phantom == 12

    async def test_disabled_limiter_still_sees_the_429s(self, sandbox: SandboxServer, admin: SandboxAdmin) -> None:
        """With our limiter disabled a burst does meet the sandbox's 429s (the test below relies on it)."""
        await admin.configure(block_after_429s=10_000)
        async with connect(sandbox.url, limiter=RateLimiter(enabled=False), read_retries_on_429=0) as upbit:
            await second_start()
            results = await asyncio.gather(*(upbit.wallet_status() for _ in range(60)), return_exceptions=True)
        throttled = [r for r in results if isinstance(r, ExchangeThrottled)]
        assert len(throttled) == (await admin.stats())["status_429"] >= 20
        assert all(type(e) is ExchangeThrottled and e.status == 429 for e in throttled)
        assert all(e.endpoint == "GET /v1/status/wallet" and e.retry_after > 0 for e in throttled)

    async def test_disabled_limiter_reads_recover_from_429(self, sandbox: SandboxServer, admin: SandboxAdmin) -> None:
        await admin.configure(block_after_429s=10_000)
        async with connect(sandbox.url, limiter=RateLimiter(enabled=False)) as upbit:
            await second_start()
            results = await asyncio.gather(*(upbit.wallet_status() for _ in range(60)), return_exceptions=True)
        assert (await admin.stats())["status_429"] > 0
        assert [type(r).__name__ for r in results if isinstance(r, BaseException)] == []

    async def test_reads_recover_from_429_by_waiting_for_the_next_second(
        self, sandbox: SandboxServer, admin: SandboxAdmin
    ) -> None:
        """Our limiter allows more than the exchange (100/s vs 30/s): the 429'd reads wait and succeed."""
        await admin.configure(block_after_429s=10_000)
        limiter = RateLimiter(100)
        async with connect(sandbox.url, limiter=limiter) as upbit:
            await second_start()
            started = time.monotonic()
            results = await asyncio.gather(*(upbit.wallet_status() for _ in range(60)))
            elapsed = time.monotonic() - started
        assert len(results) == 60
        stats = await admin.stats()
        assert stats["status_429"] >= 20
        assert stats["by_endpoint_status"]["GET /v1/status/wallet"]["200"] == 60
        assert limiter.stats.throttles >= 1
        assert elapsed >= 0.8  # the retries waited for the next window

    async def test_post_is_never_retried_after_a_429(self, client: UpbitClient, admin: SandboxAdmin) -> None:
        await admin.fault(endpoint=POST_COIN, kind="burst_429", count=1, times=1)
        exc = await expect(client.withdraw_coin(btc()), ExchangeThrottled, status=429, name=None, endpoint=POST_COIN)
        assert isinstance(exc, ExchangeThrottled) and exc.retry_after > 0
        assert await posts(admin) == 1
        assert (await admin.stats())["withdrawals_total"] == 0
        # A read meeting the same burst is retried (after the limiter's pause) and succeeds.
        await admin.fault(endpoint="GET /v1/accounts", kind="burst_429", count=2, times=1)
        assert await client.accounts()
        assert await sent(admin, "GET /v1/accounts") == 3

    async def test_418_blocks_every_call_of_the_account_for_retry_after(
        self, sandbox: SandboxServer, admin: SandboxAdmin
    ) -> None:
        await admin.configure(block_after_429s=3, block_window_seconds=10, block_seconds=2)
        limiter = RateLimiter(200)  # enabled, but above the sandbox's 30/s: the burst provokes the block
        async with connect(sandbox.url, limiter=limiter, read_retries_on_429=0) as upbit:
            await second_start()
            results = await asyncio.gather(*(upbit.accounts() for _ in range(50)), return_exceptions=True)
            blocked = [r for r in results if isinstance(r, ExchangeBlocked)]
            throttled = [r for r in results if type(r) is ExchangeThrottled]
            assert len(throttled) == 3
            assert len(blocked) == 50 - 30 - 3
            for exc in blocked:
                assert (exc.status, exc.endpoint) == (418, "GET /v1/accounts")
                assert exc.retry_after == 2.0  # Retry-After: 2
            assert 1.5 < limiter.blocked_for <= 2.0
            # Every call now waits for the block to end, writes included; none reaches the sandbox before.
            waited = time.monotonic()
            status_rows, created = await asyncio.gather(upbit.wallet_status(), upbit.withdraw_coin(btc()))
            assert time.monotonic() - waited >= 1.5
        assert status_rows and created.state is ExchangeState.WAITING
        stats = await admin.stats()
        assert stats["status_418"] == len(blocked)  # nothing after the burst met the block
        log = (await admin.call("GET", "requests"))["requests"]
        third_429 = [r for r in log if r["status"] == 429][2]
        block_end = datetime.fromisoformat(third_429["received_at"]) + timedelta(seconds=2)
        assert [r["status"] for r in log[-2:]] in ([200, 201], [201, 200])
        assert all(datetime.fromisoformat(r["received_at"]) >= block_end for r in log[-2:])

    async def test_418_keeps_the_error_name(self, sandbox: SandboxServer, admin: SandboxAdmin) -> None:
        await admin.configure(block_after_429s=1, block_seconds=1)
        async with connect(sandbox.url, limiter=RateLimiter(enabled=False), read_retries_on_429=0) as upbit:
            await second_start()
            results = await asyncio.gather(*(upbit.accounts() for _ in range(35)), return_exceptions=True)
        blocked = [r for r in results if isinstance(r, ExchangeBlocked)]
        assert blocked
        assert blocked[0].name == "too_many_requests_blocked"


# --------------------------------------------------------------------------------------------------
# Timeouts, dropped connections, unreadable answers, server errors
# --------------------------------------------------------------------------------------------------

TIMEOUT = 0.5


class TestFaults:
    async def test_get_hang_times_out(self, sandbox: SandboxServer, admin: SandboxAdmin) -> None:
        await admin.fault(endpoint="GET /v1/accounts", kind="hang", seconds=2.0, times=1)
        async with connect(sandbox.url, timeout=TIMEOUT) as upbit:
            started = time.monotonic()
            exc = await expect(upbit.accounts(), ExchangeTimeout, status=None, name=None, endpoint="GET /v1/accounts")
            assert TIMEOUT - 0.05 <= time.monotonic() - started <= TIMEOUT + 0.3
            assert isinstance(exc, OutcomeUnknown)
            assert await upbit.accounts()  # the next call is fine
        assert await sent(admin, "GET /v1/accounts") == 2

    @pytest.mark.parametrize(
        ("fault", "cls", "status"),
        [
            pytest.param({"kind": "hang", "seconds": 2.0}, ExchangeTimeout, None, id="hang"),
            pytest.param({"kind": "drop"}, ExchangeConnectionError, None, id="drop"),
            pytest.param({"kind": "malformed"}, ExchangeBadResponse, 201, id="malformed"),
        ],
    )
    async def test_post_outcome_unknown_but_created(
        self, sandbox: SandboxServer, admin: SandboxAdmin, fault: dict[str, Any], cls: type[ExchangeError],
        status: int | None,
    ) -> None:  # fmt: skip
        await admin.fault(endpoint=POST_COIN, times=1, **fault)
        async with connect(sandbox.url, timeout=TIMEOUT) as upbit:
            started = time.monotonic()
            exc = await expect(upbit.withdraw_coin(btc("0.0123")), cls, status=status, name=None, endpoint=POST_COIN)
            assert time.monotonic() - started <= TIMEOUT + 0.3
        assert isinstance(exc, OutcomeUnknown)
        assert await posts(admin) == 1  # sent exactly once
        created = await admin.withdrawals()
        assert [(w["currency"], w["amount"]) for w in created] == [("BTC", "0.0123")]  # and it did act

    @pytest.mark.parametrize(("status", "body"), [(500, "html"), (502, "html"), (503, "json"), (504, "json")], ids=str)
    async def test_post_server_error_creates_nothing(
        self, client: UpbitClient, admin: SandboxAdmin, status: int, body: str
    ) -> None:
        await admin.fault(endpoint=POST_COIN, kind="error", status=status, body=body, times=1)
        name = "server_error" if body == "json" else None  # Upbit's error object is kept when there is one
        exc = await expect(client.withdraw_coin(btc()), ExchangeServerError, status=status, name=name,
                           endpoint=POST_COIN)  # fmt: skip
        assert isinstance(exc, OutcomeUnknown)
        assert await posts(admin) == 1
        assert (await admin.stats())["withdrawals_total"] == 0

    async def test_get_faults(self, client: UpbitClient, admin: SandboxAdmin) -> None:
        await admin.fault(endpoint="GET /v1/status/wallet", kind="malformed", times=1)
        await expect(client.wallet_status(), ExchangeBadResponse, status=200, name=None,
                     endpoint="GET /v1/status/wallet")  # fmt: skip
        await admin.fault(endpoint="GET /v1/status/wallet", kind="error", status=503, times=1)
        await expect(client.wallet_status(), ExchangeServerError, status=503, name=None,
                     endpoint="GET /v1/status/wallet")  # fmt: skip
        assert await sent(admin, "GET /v1/status/wallet") == 2  # a 5xx on a read is not retried by the client

    async def test_get_drop_is_a_connection_error(self, client: UpbitClient, admin: SandboxAdmin) -> None:
        await admin.fault(endpoint="GET /v1/accounts", kind="drop", times=1)
        try:
            await expect(client.accounts(), ExchangeConnectionError, status=None, name=None,
                         endpoint="GET /v1/accounts")  # fmt: skip
        finally:
            assert await sent(admin, "GET /v1/accounts") == 1

    async def test_cancel_drop_is_outcome_unknown(self, client: UpbitClient, admin: SandboxAdmin) -> None:
        await admin.configure(waiting_seconds=30)
        withdrawal = await client.withdraw_coin(btc())
        await admin.fault(endpoint=CANCEL, kind="drop", times=1)
        try:
            await expect(client.cancel_withdraw(withdrawal.uuid), ExchangeConnectionError, status=None, name=None,
                         endpoint=CANCEL)  # fmt: skip
        finally:
            assert [w["state"] for w in await admin.withdrawals()] == ["CANCELLED"]  # it did act
            assert await sent(admin, CANCEL) == 1


# --------------------------------------------------------------------------------------------------
# No secret, no token in any error
# --------------------------------------------------------------------------------------------------


async def test_no_secret_or_token_in_errors(sandbox: SandboxServer, admin: SandboxAdmin) -> None:
    wire = Wire()
    wrong = Credentials(DEMO_ACCESS_KEY, "wrong-secret-that-must-not-leak-" + "z" * 40)
    errors: list[BaseException] = []
    reprs: list[str] = []

    async def collect(call: Awaitable[Any]) -> None:
        with pytest.raises(ExchangeError) as info:
            await call
        errors.append(info.value)

    async with connect(sandbox.url, timeout=0.3, wire=wire, read_retries_on_429=0) as upbit:
        await collect(upbit.withdraw_coin(btc(address="nowhere")))
        await collect(upbit.get_withdraw(uuid=str(uuid.uuid4())))
        await admin.fault(endpoint="GET /v1/accounts", kind="hang", seconds=1.0, times=1)
        await collect(upbit.accounts())
        for kind in ("drop", "malformed", "error", "burst_429"):
            await admin.fault(endpoint=POST_COIN, kind=kind, times=1)
            await collect(upbit.withdraw_coin(btc()))
        reprs += [repr(upbit), str(upbit), repr(upbit.limiter)]
    async with connect(sandbox.url, credentials=wrong, wire=wire) as upbit:
        await collect(upbit.chance("BTC", "BTC"))
        reprs += [repr(upbit), str(upbit)]
    reprs += [repr(DEMO), str(DEMO), repr(wrong), str(wrong)]
    kinds = {type(e) for e in errors}
    assert {ExchangeRefused, ExchangeNotFound, ExchangeTimeout, ExchangeConnectionError, ExchangeBadResponse,
            ExchangeServerError, ExchangeThrottled} <= kinds  # fmt: skip

    texts = list(reprs)
    for exc in errors:
        chain: BaseException | None = exc
        while chain is not None:
            texts += [str(chain), repr(chain), repr(chain.args)]
            chain = chain.__cause__ or chain.__context__
        assert isinstance(exc, ExchangeError)
        texts.append(json.dumps(exc.as_dict()))
    secrets = [DEMO_SECRET_KEY, DEMO_ACCESS_KEY, wrong.secret_key]
    for token in wire.tokens:
        secrets.append(token)
        secrets += token.split(".")[1:]  # the claims and the signature on their own
    assert len(wire.tokens) == 8
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"{secret[:12]}... leaked into {text[:200]!r}"
