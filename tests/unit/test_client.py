"""engine.upbit.client over aioresponses: error mapping, throttling, signing on the wire, and no leaked secrets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import aiohttp
import jwt
import pytest
import structlog
from aioresponses import aioresponses
from aioresponses.core import RequestCall

from engine.clock import FakeClock
from engine.errors import (
    ConfigError,
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
from engine.upbit.auth import Algorithm, Credentials, encode_params
from engine.upbit.client import UpbitClient, WithdrawBody, parse_remaining_req
from engine.upbit.ratelimit import RateLimiter
from engine.upbit.types import ExchangeState

BASE = "https://upbit.test"
ACCESS = "AKclientAccessKey0123456789abcdefghijklmn"
SECRET = "client-secret-key-long-enough-for-hs512-signing-0123456789abcdef"

WITHDRAWAL: dict[str, Any] = {
    "type": "withdraw",
    "uuid": "35a4f1dc-1db5-4d6b-89b5-7ec137875956",
    "currency": "XRP",
    "net_type": "XRP",
    "txid": None,
    "state": "WAITING",
    "created_at": "2026-05-01T12:00:00+09:00",
    "done_at": None,
    "amount": "25.5",
    "fee": "1.0",
    "transaction_type": "default",
    "is_cancelable": True,
}
BODY = WithdrawBody(currency="XRP", net_type="XRP", amount=Decimal("25.5"), address="rAddr", secondary_address="123")


class _SentWriter:
    """Stands in for the stream writer of a request that was already sent."""

    output_size = 0


class CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without aiohttp 3.14's required ``stream_writer``; supply one."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _SentWriter())
        super().__init__(method, url, **kwargs)


class Exchange:
    """Canned answers per (method, path), and the requests the client sent."""

    def __init__(self, mocked: aioresponses) -> None:
        self._mocked = mocked

    def reply(self, method: str, path: str, status: int = 200, **kwargs: Any) -> None:
        """Answer the next ``method path`` call (any query) once."""
        url = re.compile(re.escape(BASE + path) + r"(\?.*)?$")
        self._mocked.add(url, method, status=status, response_class=CompatResponse, **kwargs)

    def sent(self, method: str, path: str) -> list[tuple[Any, RequestCall]]:
        """(url, call) of every request sent to ``method path``, in order."""
        return [
            (url, call)
            for (m, url), calls in self._mocked.requests.items()
            if m == method and url.path == path
            for call in calls
        ]

    def token(self, method: str, path: str, index: int = 0) -> str:
        """The bearer token of one sent request."""
        header: str = self.sent(method, path)[index][1].kwargs["headers"]["Authorization"]
        assert header.startswith("Bearer ")
        return header.removeprefix("Bearer ")


@pytest.fixture(name="exchange")
def _exchange() -> Iterator[Exchange]:
    """An aioresponses-backed fake Upbit."""
    with aioresponses() as mocked:
        yield Exchange(mocked)


@pytest.fixture(name="clock")
def _clock() -> FakeClock:
    """The clock of the client and its limiter; sleeping jumps."""
    return FakeClock()


@pytest.fixture(name="make_client")
async def _make_client(clock: FakeClock) -> AsyncIterator[Callable[..., UpbitClient]]:
    """Build clients on the fake clock and close them all at the end."""
    clients: list[UpbitClient] = []

    def make(credentials: Credentials | None = None, **kwargs: Any) -> UpbitClient:
        kwargs.setdefault("base_url", BASE)
        client = UpbitClient(credentials or Credentials(ACCESS, SECRET), clock=clock, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def claims(token: str) -> dict[str, str]:
    """Verified claims of a token signed with SECRET."""
    return dict(jwt.decode(token, SECRET, algorithms=["HS512", "HS256"]))


def sha512(text: str) -> str:
    """Hex SHA-512 of UTF-8 text."""
    return hashlib.sha512(text.encode()).hexdigest()


def upbit_error(name: str, message: str = "") -> dict[str, Any]:
    """Upbit's error object."""
    return {"error": {"name": name, "message": message or f"{name} happened"}}


class TestErrorMapping:
    """Each answer maps to the error type that says what is known of the outcome."""

    @pytest.mark.parametrize(
        ("status", "name", "cls"),
        [
            (400, "validation_error", ExchangeRefused),
            (400, "withdraw_address_not_registered", ExchangeRefused),
            (400, "invalid_parameter", ExchangeRefused),
            (401, "jwt_verification", ExchangeRefused),
            (401, "invalid_query_payload", ExchangeRefused),
            (401, "no_authorization_ip", ExchangeRefused),
            (401, "expired_access_key", ExchangeRefused),
            (401, "nonce_used", ExchangeRefused),
            (401, "out_of_scope", ExchangeRefused),
            (403, "out_of_scope", ExchangeRefused),
            (403, "open_api_withdraw_locked", ExchangeRefused),
            (404, "currency_not_found", ExchangeNotFound),
        ],
    )
    async def test_refusals(
        self,
        exchange: Exchange,
        make_client: Callable[..., UpbitClient],
        status: int,
        name: str,
        cls: type[ExchangeError],
    ) -> None:
        """A 4xx with Upbit's error object is a refusal carrying name, status, endpoint and message."""
        exchange.reply("POST", "/v1/withdraws/coin", status, payload=upbit_error(name, "amount is missing"))
        with pytest.raises(ExchangeRefused) as caught:
            await make_client().withdraw_coin(BODY)
        exc = caught.value
        assert type(exc) is cls
        assert (exc.name, exc.status, exc.endpoint) == (name, status, "POST /v1/withdraws/coin")
        assert "amount is missing" in str(exc)
        assert not isinstance(exc, OutcomeUnknown)
        assert len(exchange.sent("POST", "/v1/withdraws/coin")) == 1

    @pytest.mark.parametrize(
        ("status", "payload", "cls", "name", "message"),
        [
            (400, {"name": "validation_error", "message": "amount is missing"}, ExchangeRefused,
             "validation_error", "amount is missing"),
            (401, {"name": "jwt_verification", "message": "bad token"}, ExchangeRefused, "jwt_verification",
             "bad token"),
            (403, {"name": "out_of_scope"}, ExchangeRefused, "out_of_scope", "out_of_scope"),
            (404, {"name": "withdraw_not_found", "message": "none"}, ExchangeNotFound, "withdraw_not_found", "none"),
            (400, {"name": 400, "message": "Quotation style"}, ExchangeRefused, "400", "Quotation style"),
            (400, {"error": {"name": "invalid_parameter", "message": None}}, ExchangeRefused, "invalid_parameter",
             "invalid_parameter"),
        ],
        ids=["top-level-400", "top-level-401", "top-level-no-message", "top-level-404", "integer-name",
             "nested-null-message"],
    )  # fmt: skip
    async def test_both_error_shapes(
        self,
        exchange: Exchange,
        make_client: Callable[..., UpbitClient],
        status: int,
        payload: dict[str, Any],
        cls: type[ExchangeError],
        name: str,
        message: str,
    ) -> None:
        """A 4xx in the top-level ``{"name", "message"}`` shape (read by Upbit's official SDK as well as the
        nested one) is a refusal too: nothing created, not an unknown outcome."""
        exchange.reply("POST", "/v1/withdraws/coin", status, payload=payload)
        with pytest.raises(ExchangeRefused) as caught:
            await make_client().withdraw_coin(BODY)
        exc = caught.value
        assert type(exc) is cls and not isinstance(exc, OutcomeUnknown)
        assert (exc.name, exc.status, exc.detail) == (name, status, message)

    async def test_server_error_top_level_name(
        self, exchange: Exchange, make_client: Callable[..., UpbitClient]
    ) -> None:
        """A 5xx stays an unknown outcome whatever its shape, and keeps the name it carries."""
        exchange.reply("POST", "/v1/withdraws/coin", 503, payload={"name": "server_error", "message": "later"})
        with pytest.raises(ExchangeServerError) as caught:
            await make_client().withdraw_coin(BODY)
        assert (caught.value.name, caught.value.detail) == ("server_error", "later")

    async def test_not_found(self, exchange: Exchange, make_client: Callable[..., UpbitClient]) -> None:
        """A 404 withdraw_not_found is ExchangeNotFound (a refusal) for GET /v1/withdraw."""
        exchange.reply("GET", "/v1/withdraw", 404, payload=upbit_error("withdraw_not_found"))
        with pytest.raises(ExchangeNotFound) as caught:
            await make_client().get_withdraw(uuid="nope")
        assert (caught.value.name, caught.value.status, caught.value.endpoint) == (
            "withdraw_not_found", 404, "GET /v1/withdraw",
        )  # fmt: skip
        assert isinstance(caught.value, ExchangeRefused)

    @pytest.mark.parametrize("status", [500, 502, 503, 504])
    async def test_server_errors(
        self, exchange: Exchange, make_client: Callable[..., UpbitClient], status: int
    ) -> None:
        """A 5xx on the POST is ExchangeServerError, an OutcomeUnknown, and is not repeated."""
        exchange.reply("POST", "/v1/withdraws/coin", status, body="upstream broke")
        with pytest.raises(ExchangeServerError) as caught:
            await make_client().withdraw_coin(BODY)
        assert isinstance(caught.value, OutcomeUnknown)
        assert caught.value.status == status
        assert len(exchange.sent("POST", "/v1/withdraws/coin")) == 1

    @pytest.mark.parametrize(
        ("status", "kwargs"),
        [
            (201, {"body": "<html>oops</html>"}),
            (201, {"body": ""}),
            (201, {"body": b"\xff\xfe"}),
            (201, {"payload": {"uuid": "only-a-uuid"}}),
            (201, {"payload": {**WITHDRAWAL, "amount": 25.5}}),
            (400, {"body": "Bad Request", "content_type": "text/plain"}),
            (400, {"payload": {"message": "no error object"}}),
            (400, {"payload": {"error": {}}}),
            (400, {"payload": {"error": "flat string"}}),
            (403, {"payload": ["not", "an", "object"]}),
        ],
        ids=[
            "2xx-html", "2xx-empty", "2xx-not-utf8", "2xx-missing-fields", "2xx-float-amount", "4xx-plain-text",
            "4xx-no-error-key", "4xx-empty-error", "4xx-error-not-object", "4xx-array",
        ],
    )  # fmt: skip
    async def test_unreadable(
        self, exchange: Exchange, make_client: Callable[..., UpbitClient], status: int, kwargs: dict[str, Any]
    ) -> None:
        """An answer the client cannot read is ExchangeBadResponse, an OutcomeUnknown, never a refusal."""
        exchange.reply("POST", "/v1/withdraws/coin", status, **kwargs)
        with pytest.raises(ExchangeBadResponse) as caught:
            await make_client().withdraw_coin(BODY)
        assert isinstance(caught.value, OutcomeUnknown)
        assert not isinstance(caught.value, ExchangeRefused)

    @pytest.mark.parametrize("field", ["uuid", "currency", "created_at", "amount"])
    async def test_accepted_answer_without_required_field(
        self, exchange: Exchange, make_client: Callable[..., UpbitClient], field: str
    ) -> None:
        """A 201 whose withdrawal lacks a field the engine cannot do without (its uuid, currency, creation
        time, amount; all required in the official model) is ExchangeBadResponse naming the field: the
        withdrawal may exist, so the outcome is unknown and the workflow reconciles it."""
        exchange.reply("POST", "/v1/withdraws/coin", 201, payload={k: v for k, v in WITHDRAWAL.items() if k != field})
        with pytest.raises(ExchangeBadResponse, match=f"missing field '{field}'") as caught:
            await make_client().withdraw_coin(BODY)
        assert isinstance(caught.value, OutcomeUnknown)

    async def test_list_endpoint_needs_array(self, exchange: Exchange, make_client: Callable[..., UpbitClient]) -> None:
        """A list endpoint answering an object is unreadable."""
        exchange.reply("GET", "/v1/withdraws/coin_addresses", payload={"currency": "BTC"})
        with pytest.raises(ExchangeBadResponse):
            await make_client().coin_addresses()

    @pytest.mark.parametrize(
        ("exception", "cls"),
        [
            (aiohttp.ClientConnectionError("refused"), ExchangeConnectionError),
            (aiohttp.ServerDisconnectedError(), ExchangeConnectionError),
            (aiohttp.ClientPayloadError("truncated"), ExchangeConnectionError),
            (TimeoutError(), ExchangeTimeout),
            (aiohttp.ServerTimeoutError("read timeout"), ExchangeTimeout),
        ],
        ids=["connection-refused", "disconnected", "payload", "timeout", "server-timeout"],
    )
    async def test_transport_failures(
        self,
        exchange: Exchange,
        make_client: Callable[..., UpbitClient],
        exception: Exception,
        cls: type[OutcomeUnknown],
    ) -> None:
        """Transport failures are OutcomeUnknown subclasses naming the endpoint, and the POST is not repeated."""
        exchange.reply("POST", "/v1/withdraws/coin", exception=exception)
        with pytest.raises(OutcomeUnknown) as caught:
            await make_client().withdraw_coin(BODY)
        assert type(caught.value) is cls
        assert caught.value.endpoint == "POST /v1/withdraws/coin"
        assert caught.value.__cause__ is exception
        assert len(exchange.sent("POST", "/v1/withdraws/coin")) == 1


class TestThrottling:
    """429 and 418."""

    async def test_get_429_retried(
        self, exchange: Exchange, make_client: Callable[..., UpbitClient], clock: FakeClock
    ) -> None:
        """A 429 on a GET waits for the next window and retries, then returns the answer."""
        exchange.reply("GET", "/v1/withdraw", 429, body="Too many API requests.", content_type="text/plain")
        exchange.reply("GET", "/v1/withdraw", 200, payload=WITHDRAWAL)
        client = make_client()
        withdrawal = await client.get_withdraw(uuid=WITHDRAWAL["uuid"])
        assert withdrawal.uuid == WITHDRAWAL["uuid"]
        assert len(exchange.sent("GET", "/v1/withdraw")) == 2
        assert client.limiter.stats.throttles == 1
        assert clock.monotonic() >= 1.0
        nonces = {claims(exchange.token("GET", "/v1/withdraw", i))["nonce"] for i in range(2)}
        assert len(nonces) == 2

    async def test_get_429_gives_up(self, exchange: Exchange, make_client: Callable[..., UpbitClient]) -> None:
        """A GET throttled more often than its retry budget raises ExchangeThrottled."""
        for _ in range(3):
            exchange.reply("GET", "/v1/accounts", 429, body="Too many API requests.")
        with pytest.raises(ExchangeThrottled):
            await make_client(read_retries_on_429=2).accounts()
        assert len(exchange.sent("GET", "/v1/accounts")) == 3

    async def test_post_429_not_retried(self, exchange: Exchange, make_client: Callable[..., UpbitClient]) -> None:
        """A 429 on the POST raises ExchangeThrottled after exactly one request."""
        exchange.reply("POST", "/v1/withdraws/coin", 429, body="Too many API requests.")
        exchange.reply("POST", "/v1/withdraws/coin", 201, payload=WITHDRAWAL)
        client = make_client()
        with pytest.raises(ExchangeThrottled) as caught:
            await client.withdraw_coin(BODY)
        assert type(caught.value) is ExchangeThrottled
        assert (caught.value.status, caught.value.retry_after) == (429, 1.0)
        assert len(exchange.sent("POST", "/v1/withdraws/coin")) == 1
        assert client.limiter.blocked_for > 0

    async def test_delete_429_not_retried(self, exchange: Exchange, make_client: Callable[..., UpbitClient]) -> None:
        """A 429 on the cancel (DELETE) is not repeated either."""
        exchange.reply("DELETE", "/v1/withdraws/coin", 429, body="Too many API requests.")
        with pytest.raises(ExchangeThrottled):
            await make_client().cancel_withdraw("u1")
        assert len(exchange.sent("DELETE", "/v1/withdraws/coin")) == 1

    @pytest.mark.parametrize(
        ("kwargs", "seconds"),
        [
            ({"headers": {"Retry-After": "30"}, "body": ""}, 30.0),
            ({"headers": {"Retry-After": "2.5"}, "body": ""}, 2.5),
            ({"body": "blocked for 12 seconds"}, 12.0),
            ({"body": "120초 동안 차단"}, 120.0),
            ({"payload": {"error": {"name": "too_many_requests", "message": "blocked for 300 seconds"}}}, 300.0),
        ],
        ids=["retry-after", "retry-after-fraction", "seconds-in-text", "korean-text", "error-object-message"],
    )
    @pytest.mark.parametrize("method", ["GET", "POST"])
    async def test_418_blocks(
        self,
        exchange: Exchange,
        make_client: Callable[..., UpbitClient],
        kwargs: dict[str, Any],
        seconds: float,
        method: str,
    ) -> None:
        """A 418 raises ExchangeBlocked with the named duration, blocks the limiter that long, and is not retried."""
        path = "/v1/withdraw" if method == "GET" else "/v1/withdraws/coin"
        exchange.reply(method, path, 418, **kwargs)
        client = make_client()
        call = client.get_withdraw(uuid="u1") if method == "GET" else client.withdraw_coin(BODY)
        with pytest.raises(ExchangeBlocked) as caught:
            await call
        assert caught.value.retry_after == seconds
        assert caught.value.status == 418
        assert client.limiter.blocked_for == pytest.approx(seconds)
        assert len(exchange.sent(method, path)) == 1


class TestBlockSchedule:
    """A 418 that names no block time: a growing block (Upbit lengthens it on repeat), logged as an event."""

    TEAPOT: dict[str, Any] = {"body": "I'm a teapot"}

    async def _blocked(self, exchange: Exchange, client: UpbitClient, **kwargs: Any) -> ExchangeBlocked:
        exchange.reply("GET", "/v1/accounts", 418, **(kwargs or self.TEAPOT))
        with pytest.raises(ExchangeBlocked) as caught:
            await client.accounts()
        return caught.value

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"body": "I'm a teapot"},
            {"body": ""},
            {"headers": {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}, "body": ""},
            {"payload": {"name": "too_many_requests", "message": "blocked"}},
        ],
        ids=["text-without-number", "empty", "http-date", "top-level-error-no-number"],
    )
    async def test_first_block_is_a_minute(
        self, exchange: Exchange, make_client: Callable[..., UpbitClient], kwargs: dict[str, Any]
    ) -> None:
        """The first unstated block is about a minute (60 s plus up to 6 s of jitter), on the limiter too."""
        client = make_client()
        blocked = await self._blocked(exchange, client, **kwargs)
        assert 60.0 <= blocked.retry_after <= 66.0
        assert client.limiter.blocked_for == pytest.approx(blocked.retry_after)
        assert client.limiter.strikes == 1

    async def test_grows_on_repeat_and_resets_after_success(
        self, exchange: Exchange, make_client: Callable[..., UpbitClient], clock: FakeClock
    ) -> None:
        """Each 418 after the previous block ended doubles the block (60, 120, 240, ... capped at 1800 s);
        a call served after a block starts the schedule over."""
        client = make_client()
        seen = []
        for _ in range(7):
            blocked = await self._blocked(exchange, client)
            seen.append(blocked.retry_after)
            clock.advance(blocked.retry_after)  # the block is waited out, then the next call is blocked again
        for got, base in zip(seen, [60, 120, 240, 480, 960, 1800, 1800], strict=True):
            assert base <= got <= min(base + 6.0, 1800.0)
        exchange.reply("GET", "/v1/accounts", payload=[])
        assert await client.accounts() == []
        assert client.limiter.strikes == 0
        again = await self._blocked(exchange, client)
        assert 60.0 <= again.retry_after <= 66.0

    async def test_stated_time_wins_but_counts(
        self, exchange: Exchange, make_client: Callable[..., UpbitClient], clock: FakeClock
    ) -> None:
        """A stated time is taken as is; the strike still counts towards the next unstated block."""
        client = make_client()
        stated = await self._blocked(exchange, client, headers={"Retry-After": "5"}, body="")
        assert stated.retry_after == 5.0
        clock.advance(5.0)
        unstated = await self._blocked(exchange, client)
        assert 120.0 <= unstated.retry_after <= 126.0

    async def test_418s_during_a_block_add_no_strike(
        self, exchange: Exchange, make_client: Callable[..., UpbitClient], clock: FakeClock
    ) -> None:
        """418s answering calls sent before the block belong to it: no strike, the block is not changed;
        and an answer served during a block (a call sent before it) does not reset the schedule."""
        client = make_client(limiter=RateLimiter(clock=clock, enabled=False))
        first = await self._blocked(exchange, client)
        clock.advance(1.0)
        limiter = client.limiter
        assert limiter.penalised(None) == pytest.approx(first.retry_after - 1.0)
        limiter.served()
        assert limiter.strikes == 1
        assert limiter.blocked_for == pytest.approx(first.retry_after - 1.0)

    async def test_block_logged(self, exchange: Exchange, make_client: Callable[..., UpbitClient]) -> None:
        """Every 418 is one ``exchange.blocked`` warning naming the endpoint, the time, where it came from
        and the strike; never a key or token."""
        client = make_client()
        with structlog.testing.capture_logs() as logs:
            blocked = await self._blocked(exchange, client)
        [event] = [e for e in logs if e["event"] == "exchange.blocked"]
        assert event["log_level"] == "warning"
        assert (event["endpoint"], event["source"], event["strike"]) == ("GET /v1/accounts", "backoff", 1)
        assert event["seconds"] == pytest.approx(blocked.retry_after, abs=0.001)
        token = exchange.token("GET", "/v1/accounts")
        assert all(secret not in json.dumps(event) for secret in (SECRET, ACCESS, token))


class TestRemainingReq:
    """The Remaining-Req header."""

    @pytest.mark.parametrize(
        ("header", "parsed"),
        [
            ("group=default; min=1800; sec=29", ("default", 29)),
            ("group=order-test; min=1800; sec=7", ("order-test", 7)),
            ("group=order-cancel-all; min=1; sec=0", ("order-cancel-all", 0)),
            ("group=default;sec=3", ("default", 3)),
            (None, None),
            ("", None),
            ("garbage", None),
            ("group=default; min=1800", None),
            ("min=1800; sec=5", None),
            ("group=default; min=1800; sec=many", None),
        ],
        ids=["default", "hyphen", "two-hyphens", "no-spaces", "missing", "empty", "garbage", "no-sec", "no-group",
             "sec-not-number"],
    )  # fmt: skip
    def test_parse(self, header: str | None, parsed: tuple[str, int] | None) -> None:
        """Group names may hold hyphens; a missing or unreadable header is None."""
        assert parse_remaining_req(header) == parsed

    async def test_default_group_books_foreign_usage(
        self, exchange: Exchange, make_client: Callable[..., UpbitClient]
    ) -> None:
        """``sec=3`` on the default group books the calls we did not make."""
        exchange.reply("GET", "/v1/accounts", payload=[], headers={"Remaining-Req": "group=default; min=1800; sec=3"})
        client = make_client()
        await client.accounts()
        assert client.limiter.stats.phantom == 30 - 3 - 1

    @pytest.mark.parametrize("header", ["group=order; min=1800; sec=0", "nonsense"])
    async def test_other_headers_ignored(
        self, exchange: Exchange, make_client: Callable[..., UpbitClient], header: str
    ) -> None:
        """Another group's budget, or an unreadable header, books nothing."""
        exchange.reply("GET", "/v1/accounts", payload=[], headers={"Remaining-Req": header})
        client = make_client()
        await client.accounts()
        assert client.limiter.stats.phantom == 0


class TestRequests:
    """What the client puts on the wire."""

    async def test_post_body_and_token(self, exchange: Exchange, make_client: Callable[..., UpbitClient]) -> None:
        """The POST sends a JSON body of strings in hash order, a JSON content type, and a matching query_hash."""
        exchange.reply("POST", "/v1/withdraws/coin", 201, payload=WITHDRAWAL)
        withdrawal = await make_client().withdraw_coin(BODY)
        assert (withdrawal.state, withdrawal.amount) == (ExchangeState.WAITING, Decimal("25.5"))
        [(_, call)] = exchange.sent("POST", "/v1/withdraws/coin")
        assert call.kwargs["headers"]["Content-Type"] == "application/json; charset=utf-8"
        pairs = json.loads(call.kwargs["data"], object_pairs_hook=list)
        assert pairs == [
            ("currency", "XRP"), ("net_type", "XRP"), ("amount", "25.5"), ("address", "rAddr"),
            ("secondary_address", "123"), ("transaction_type", "default"),
        ]  # fmt: skip
        token = exchange.token("POST", "/v1/withdraws/coin")
        assert jwt.get_unverified_header(token)["alg"] == "HS256"
        assert claims(token)["query_hash"] == sha512("&".join(f"{k}={v}" for k, v in pairs))
        assert claims(token)["access_key"] == ACCESS

    @pytest.mark.parametrize(
        ("amount", "sent"),
        [(Decimal("1E+2"), "100"), (Decimal("0.00000001"), "0.00000001"), (Decimal("1E-8"), "0.00000001")],
    )
    async def test_amount_plain_string(
        self, exchange: Exchange, make_client: Callable[..., UpbitClient], amount: Decimal, sent: str
    ) -> None:
        """The amount is a plain decimal string, never scientific notation or a number."""
        exchange.reply("POST", "/v1/withdraws/coin", 201, payload=WITHDRAWAL)
        body = WithdrawBody(currency="BTC", net_type="BTC", amount=amount, address="bc1q")
        await make_client().withdraw_coin(body)
        [(_, call)] = exchange.sent("POST", "/v1/withdraws/coin")
        sent_body = json.loads(call.kwargs["data"])
        assert sent_body["amount"] == sent
        assert "secondary_address" not in sent_body

    async def test_hs512_selectable(self, exchange: Exchange, make_client: Callable[..., UpbitClient]) -> None:
        """A client set to HS512 signs with HS512 (HS256 is the default)."""
        exchange.reply("GET", "/v1/accounts", payload=[])
        await make_client(algorithm=Algorithm.HS512).accounts()
        assert jwt.get_unverified_header(exchange.token("GET", "/v1/accounts"))["alg"] == "HS512"

    async def test_list_with_uuids(self, exchange: Exchange, make_client: Callable[..., UpbitClient]) -> None:
        """uuids[] travel as repeated query keys, are hashed unencoded in order, and no body is sent."""
        exchange.reply("GET", "/v1/withdraws", payload=[WITHDRAWAL])
        found = await make_client().list_withdraws(currency="XRP", uuids=["a", "b"])
        assert [w.uuid for w in found] == [WITHDRAWAL["uuid"]]
        [(url, call)] = exchange.sent("GET", "/v1/withdraws")
        assert url.query.getall("uuids[]") == ["a", "b"]
        assert call.kwargs["data"] is None
        assert "Content-Type" not in call.kwargs["headers"]
        token = exchange.token("GET", "/v1/withdraws")
        assert claims(token)["query_hash"] == sha512("currency=XRP&uuids[]=a&uuids[]=b&limit=100&order_by=desc")

    async def test_no_params_no_hash(self, exchange: Exchange, make_client: Callable[..., UpbitClient]) -> None:
        """A call without parameters signs a token without query_hash."""
        exchange.reply("GET", "/v1/withdraws/coin_addresses", payload=[])
        await make_client().coin_addresses()
        assert set(claims(exchange.token("GET", "/v1/withdraws/coin_addresses"))) == {"access_key", "nonce"}

    async def test_fresh_nonce_per_call(self, exchange: Exchange, make_client: Callable[..., UpbitClient]) -> None:
        """Two calls carry two different nonces."""
        exchange.reply("GET", "/v1/accounts", payload=[])
        exchange.reply("GET", "/v1/accounts", payload=[])
        client = make_client()
        await client.accounts()
        await client.accounts()
        nonces = {claims(exchange.token("GET", "/v1/accounts", i))["nonce"] for i in range(2)}
        assert len(nonces) == 2

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"uuids": ["a"], "txids": ["b"]},
            {"uuids": [f"u{i}" for i in range(101)]},
            {"txids": [f"t{i}" for i in range(101)]},
            {"limit": 0},
            {"limit": 101},
            {"order_by": "newest"},
        ],
        ids=["uuids-and-txids", "101-uuids", "101-txids", "limit-0", "limit-101", "bad-order"],
    )
    async def test_list_arguments_refused(
        self, exchange: Exchange, make_client: Callable[..., UpbitClient], kwargs: dict[str, Any]
    ) -> None:
        """Arguments Upbit would refuse are refused before any request is sent."""
        with pytest.raises(ValueError):
            await make_client().list_withdraws(**kwargs)
        assert exchange.sent("GET", "/v1/withdraws") == []

    async def test_hundred_uuids_allowed(self, exchange: Exchange, make_client: Callable[..., UpbitClient]) -> None:
        """Exactly 100 uuids is within the limit."""
        exchange.reply("GET", "/v1/withdraws", payload=[])
        assert await make_client().list_withdraws(uuids=[f"u{i}" for i in range(100)]) == []

    async def test_observer_and_counters(self, exchange: Exchange, make_client: Callable[..., UpbitClient]) -> None:
        """Every call is counted and reported to the observer with its status."""
        seen: list[tuple[str, int]] = []
        exchange.reply("GET", "/v1/accounts", payload=[])
        exchange.reply("GET", "/v1/accounts", exception=aiohttp.ClientConnectionError())
        client = make_client(observer=lambda endpoint, status, _seconds: seen.append((endpoint, status)))
        await client.accounts()
        with pytest.raises(ExchangeConnectionError):
            await client.accounts()
        assert seen == [("GET /v1/accounts", 200), ("GET /v1/accounts", 0)]
        assert client.calls["GET /v1/accounts"] == 2


class TestConfiguration:
    """Base URL, demo keys and timeouts."""

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"base_url": "https://api.upbit.com"},
            {"base_url": "https://sg-api.upbit.com/"},
            {"region": "kr", "base_url": None},
            {"base_url": "http://localhost.evil.test"},
            {"base_url": "http://127.0.0.1.nip.io"},
            {"base_url": "http://10.0.0.1:8080"},
            {"base_url": "http://0.0.0.0:8080"},
        ],
        ids=["kr", "sg", "region", "localhost-prefix", "loopback-prefix", "private-ip", "unspecified"],
    )
    @pytest.mark.parametrize(
        "credentials",
        [
            Credentials.demo(),
            Credentials(Credentials.demo().access_key, SECRET),
            Credentials(ACCESS, Credentials.demo().secret_key),
        ],
        ids=["demo-pair", "demo-access", "demo-secret"],
    )
    def test_demo_keys_refused_off_loopback(self, kwargs: dict[str, Any], credentials: Credentials) -> None:
        """The published demo keys are never sent to a non-loopback host."""
        with pytest.raises(ConfigError) as caught:
            UpbitClient(credentials, **kwargs)
        assert caught.value.key == "credentials"

    @pytest.mark.parametrize(
        "base_url", ["http://127.0.0.1", "http://127.0.0.1:8080/", "http://localhost:9000", "http://[::1]:9000",
                     "http://127.0.0.2"],
    )  # fmt: skip
    async def test_demo_keys_allowed_on_loopback(self, base_url: str) -> None:
        """The demo keys work against a loopback sandbox."""
        client = UpbitClient(Credentials.demo(), base_url=base_url)
        assert client.base_url == base_url.rstrip("/")
        await client.aclose()

    @pytest.mark.parametrize(
        ("kwargs", "key"),
        [
            ({"base_url": "ftp://upbit.test"}, "base_url"),
            ({"base_url": "upbit.test"}, "base_url"),
            ({"region": "us"}, "region"),
            ({}, "region"),
            ({"base_url": BASE, "timeout": 0}, "timeout"),
        ],
    )
    def test_bad_configuration(self, kwargs: dict[str, Any], key: str) -> None:
        """Bad configuration raises ConfigError naming the key."""
        with pytest.raises(ConfigError) as caught:
            UpbitClient(Credentials(ACCESS, SECRET), **kwargs)
        assert caught.value.key == key

    @pytest.mark.parametrize(("region", "url"), [("kr", "https://api.upbit.com"), ("SG", "https://sg-api.upbit.com")])
    async def test_regions(self, region: str, url: str) -> None:
        """A region picks its host."""
        client = UpbitClient(Credentials(ACCESS, SECRET), region=region)
        assert client.base_url == url
        await client.aclose()


@pytest.fixture(name="wire")
async def _wire() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A bare HTTP server on 127.0.0.1 that answers ``[]`` and records each raw request line."""
    lines: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines.append(head.split(b"\r\n")[0])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n")
        writer.write(b"Connection: close\r\n\r\n[]")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", lines
    server.close()
    await server.wait_closed()


class TestWire:
    """The request line that really leaves the client (aioresponses normalises URLs, so a bare server looks)."""

    async def test_query_sent_as_encoded(
        self, wire: tuple[str, list[bytes]], make_client: Callable[..., UpbitClient]
    ) -> None:
        """The query on the wire is exactly encode_params' query: literal ``[]`` keys, percent-encoded values."""
        url, lines = wire
        await make_client(base_url=url).list_withdraws(currency="BTC", uuids=["a/b", "c d"])
        params = [("currency", "BTC"), ("uuids[]", ["a/b", "c d"]), ("limit", "100"), ("order_by", "desc")]
        expected = encode_params(params, as_body=False).query
        assert expected == "currency=BTC&uuids[]=a%2Fb&uuids[]=c+d&limit=100&order_by=desc"
        assert lines == [f"GET /v1/withdraws?{expected} HTTP/1.1".encode()]


class TestNoSecretsLeak:
    """Errors and reprs never carry the secret, the access key or the JWT."""

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"status": 400, "payload": upbit_error("validation_error")},
            {"status": 401, "payload": upbit_error("jwt_verification")},
            {"status": 404, "payload": upbit_error("withdraw_not_found")},
            {"status": 429, "body": "Too many API requests."},
            {"status": 418, "headers": {"Retry-After": "5"}},
            {"status": 500, "body": "internal"},
            {"status": 400, "body": "not json"},
            {"status": 201, "body": "not json"},
            {"exception": aiohttp.ClientConnectionError("reset")},
            {"exception": TimeoutError()},
        ],
        ids=["400", "401", "404", "429", "418", "500", "4xx-text", "2xx-text", "reset", "timeout"],
    )
    async def test_errors_clean(
        self, exchange: Exchange, make_client: Callable[..., UpbitClient], kwargs: dict[str, Any]
    ) -> None:
        """No rendering of an exchange error contains the secret, the access key or the token sent."""
        exchange.reply("POST", "/v1/withdraws/coin", **kwargs)
        client = make_client()
        with pytest.raises(ExchangeError) as caught:
            await client.withdraw_coin(BODY)
        token = exchange.token("POST", "/v1/withdraws/coin")
        exc = caught.value
        for text in (str(exc), repr(exc), json.dumps(exc.as_dict()), repr(client), str(client)):
            for secret in (SECRET, ACCESS, token, token.split(".")[2]):
                assert secret not in text

    def test_client_repr(self, make_client: Callable[..., UpbitClient]) -> None:
        """The client's repr shows its host, a redacted key and the call count."""
        assert repr(make_client()) == f"<UpbitClient {BASE} key={ACCESS[:4]}*** calls=0>"
