"""The Upbit Exchange API client: one async method per endpoint the engine uses, over one aiohttp session.

Every call passes the account's :class:`~engine.upbit.ratelimit.RateLimiter`, carries a freshly signed
JWT, has a timeout, and has its failures translated once, here, into :mod:`engine.errors`. The
translation encodes what is known about the outcome: a 4xx with an Upbit error object (either shape the
official SDK reads, see :mod:`engine.upbit.errors`) is a refusal (nothing happened), 429/418 is a throttle
(not executed), and a timeout, a reset, a 5xx or an unreadable answer is
:class:`~engine.errors.OutcomeUnknown`. Reads that hit a 429 wait for the next second and try again; a POST
never repeats itself here: whether to send it again is the workflow's decision. A 418 blocks the account
for the time the exchange names, or for a growing time when it names none (see
:meth:`~engine.upbit.ratelimit.RateLimiter.penalised`), and is logged as ``exchange.blocked``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from ipaddress import ip_address
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import structlog
import yarl

from engine.clock import Clock, SystemClock
from engine.errors import (
    ConfigError,
    ExchangeBadResponse,
    ExchangeBlocked,
    ExchangeConnectionError,
    ExchangeServerError,
    ExchangeThrottled,
    ExchangeTimeout,
)
from engine.upbit.auth import Algorithm, Credentials, Params, TokenSigner, encode_params
from engine.upbit.errors import parse_error_body, refusal, seconds_in_text, snippet
from engine.upbit.ratelimit import Priority, RateLimiter
from engine.upbit.skew import SkewEstimator
from engine.upbit.types import AccountBalance, AllowedAddress, Chance, ExchangeState, WalletStatus, Withdrawal

__all__ = [
    "REGIONS",
    "CallObserver",
    "UpbitClient",
    "WithdrawBody",
    "expect_list",
    "parse_list",
    "parse_one",
    "parse_remaining_req",
    "resolve_base_url",
]

REGIONS: dict[str, str] = {
    "kr": "https://api.upbit.com",
    "sg": "https://sg-api.upbit.com",
    "id": "https://id-api.upbit.com",
    "th": "https://th-api.upbit.com",
}
MAX_LIST_IDS = 100
_T = TypeVar("_T")
_REMAINING_RE = re.compile(r"group=(?P<group>[\w-]+).*?sec=(?P<sec>\d+)")
log = structlog.get_logger("engine.upbit")

#: Called after every exchange call with (endpoint, status or 0 for no answer, seconds taken).
CallObserver = Callable[[str, int, float], None]


def resolve_base_url(region: str | None = None, base_url: str | None = None) -> str:
    """An explicit base URL wins; else the region's host. Errors name what was wrong."""
    if base_url:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"not an http(s) URL: {base_url!r}", key="base_url")
        return base_url.rstrip("/")
    if region is None:
        raise ConfigError("give a region (kr, sg, id, th) or a base_url", key="region")
    try:
        return REGIONS[region.lower()]
    except KeyError:
        raise ConfigError(f"unknown region {region!r}; use one of {sorted(REGIONS)}", key="region") from None


def is_loopback_url(url: str) -> bool:
    """True when the URL's host is localhost or a loopback address."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def plain_decimal(value: Decimal) -> str:
    """``Decimal("25.10")`` -> ``"25.1"``; ``Decimal("1E+2")`` -> ``"100"``: no exponent, no trailing zeros,
    so the decimals sent are the decimals checked against ``withdraw_limit.fixed``."""
    text = format(value.normalize(), "f")
    return text


def parse_remaining_req(header: str | None) -> tuple[str, int] | None:
    """``group=default; min=1800; sec=29`` -> ("default", 29); None when absent or unreadable."""
    if not header:
        return None
    match = _REMAINING_RE.search(header)
    return (match["group"], int(match["sec"])) if match else None


@dataclass(frozen=True, slots=True, kw_only=True)
class WithdrawBody:
    """The exact body of POST /v1/withdraws/coin, in the order it is sent and hashed."""

    currency: str
    net_type: str
    amount: Decimal
    address: str
    secondary_address: str | None = None
    transaction_type: str = "default"

    def params(self) -> list[tuple[str, str]]:
        """Ordered string params; optional keys omitted rather than null (reference §2.3)."""
        pairs = [
            ("currency", self.currency),
            ("net_type", self.net_type),
            ("amount", plain_decimal(self.amount)),
            ("address", self.address),
        ]
        if self.secondary_address:
            pairs.append(("secondary_address", self.secondary_address))
        pairs.append(("transaction_type", self.transaction_type))
        return pairs


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    retry_after: float | None


class UpbitClient:
    """Async client for the endpoints a withdrawal needs. Use as ``async with`` or call ``aclose()``."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        region: str | None = None,
        base_url: str | None = None,
        limiter: RateLimiter | None = None,
        timeout: float = 10.0,
        algorithm: Algorithm = Algorithm.HS256,
        session: aiohttp.ClientSession | None = None,
        clock: Clock | None = None,
        read_retries_on_429: int = 5,
        observer: CallObserver | None = None,
    ) -> None:
        self.base_url = resolve_base_url(region, base_url)
        if credentials.is_demo and not is_loopback_url(self.base_url):
            raise ConfigError(
                "the sandbox's demo keys are only ever sent to a loopback sandbox, not to "
                f"{urlsplit(self.base_url).hostname}",
                key="credentials",
            )
        if timeout <= 0:
            raise ConfigError("must be positive", key="timeout")
        self._credentials = credentials
        self._clock = clock or SystemClock()
        self.limiter = limiter or RateLimiter(clock=self._clock)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._algorithm = algorithm
        self._signer = TokenSigner(credentials, algorithm)
        self._session = session
        self._owns_session = session is None
        self._read_retries = read_retries_on_429
        self._observer = observer
        self.calls: Counter[str] = Counter()
        self.statuses: Counter[tuple[str, int]] = Counter()
        #: The exchange's clock offset, measured from every answer's ``Date`` header (reconciliation reads it).
        self.skew = SkewEstimator()

    def __repr__(self) -> str:
        return (
            f"<UpbitClient {self.base_url} key={self._credentials.redacted_access_key} "
            f"calls={sum(self.calls.values())}>"
        )

    async def __aenter__(self) -> UpbitClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session if this client made it."""
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    # -- endpoints ---------------------------------------------------------------------------------

    async def coin_addresses(self) -> list[AllowedAddress]:
        """GET /v1/withdraws/coin_addresses: the Open API withdrawal allowlist."""
        data = await self._json_list("GET", "/v1/withdraws/coin_addresses", ())
        return parse_list(data, AllowedAddress.from_json, "/v1/withdraws/coin_addresses")

    async def wallet_status(self) -> list[WalletStatus]:
        """GET /v1/status/wallet: one row per (currency, net_type)."""
        data = await self._json_list("GET", "/v1/status/wallet", ())
        return parse_list(data, WalletStatus.from_json, "/v1/status/wallet")

    async def chance(self, currency: str, net_type: str) -> Chance:
        """GET /v1/withdraws/chance for one (currency, net_type)."""
        path = "/v1/withdraws/chance"
        data = await self._call("GET", path, [("currency", currency), ("net_type", net_type)])
        return parse_one(data, Chance.from_json, path)

    async def accounts(self) -> list[AccountBalance]:
        """GET /v1/accounts: balances of the account (KR: pocket) the key belongs to."""
        data = await self._json_list("GET", "/v1/accounts", ())
        return parse_list(data, AccountBalance.from_json, "/v1/accounts")

    async def withdraw_coin(self, body: WithdrawBody, *, slot_reserved: bool = False) -> Withdrawal:
        """POST /v1/withdraws/coin. Never retried here: an OutcomeUnknown must be reconciled.

        ``slot_reserved``: the caller already holds a rate-limit slot (``limiter.acquire(WRITE)``)."""
        path = "/v1/withdraws/coin"
        data = await self._call("POST", path, body.params(), priority=Priority.WRITE, reserved=slot_reserved)
        return parse_one(data, Withdrawal.from_json, path)

    async def get_withdraw(
        self, *, uuid: str | None = None, txid: str | None = None, currency: str | None = None
    ) -> Withdrawal:
        """GET /v1/withdraw by uuid or txid; with neither, the most recent (for ``currency``)."""
        params = [(k, v) for k, v in (("uuid", uuid), ("txid", txid), ("currency", currency)) if v]
        data = await self._call("GET", "/v1/withdraw", params)
        return parse_one(data, Withdrawal.from_json, "/v1/withdraw")

    async def list_withdraws(
        self,
        *,
        currency: str | None = None,
        state: ExchangeState | str | None = None,
        uuids: Sequence[str] = (),
        txids: Sequence[str] = (),
        limit: int = 100,
        page: int | None = None,
        order_by: str = "desc",
        from_: str | None = None,
        to: str | None = None,
        slot_reserved: bool = False,
    ) -> list[Withdrawal]:
        """GET /v1/withdraws. ``uuids`` or ``txids`` (not both, at most 100), newest first by default.

        ``slot_reserved``: the caller already holds a rate-limit slot (``limiter.acquire(READ)``)."""
        self._check_list_args(uuids, txids, limit, order_by)
        params: list[tuple[str, str | Sequence[str]]] = []
        scalars = (("currency", currency), ("state", str(state) if state else None))
        params.extend((k, v) for k, v in scalars if v)
        if uuids:
            params.append(("uuids[]", list(uuids)))
        if txids:
            params.append(("txids[]", list(txids)))
        params.append(("limit", str(limit)))
        extra = (("page", str(page) if page else None), ("order_by", order_by), ("from", from_), ("to", to))
        params.extend((k, v) for k, v in extra if v)
        data = await self._json_list("GET", "/v1/withdraws", params, reserved=slot_reserved)
        return parse_list(data, Withdrawal.from_json, "/v1/withdraws")

    async def cancel_withdraw(self, uuid: str) -> Withdrawal:
        """DELETE /v1/withdraws/coin?uuid=: ask to cancel; ``is_cancelable`` says if it was accepted."""
        path = "/v1/withdraws/coin"
        data = await self._call("DELETE", path, [("uuid", uuid)], priority=Priority.WRITE)
        return parse_one(data, Withdrawal.from_json, path)

    # -- machinery ---------------------------------------------------------------------------------

    @staticmethod
    def _check_list_args(uuids: Sequence[str], txids: Sequence[str], limit: int, order_by: str) -> None:
        if uuids and txids:
            raise ValueError("uuids and txids cannot be combined (Upbit refuses it)")
        if len(uuids) > MAX_LIST_IDS or len(txids) > MAX_LIST_IDS:
            raise ValueError(f"at most {MAX_LIST_IDS} uuids or txids per call")
        if not 1 <= limit <= MAX_LIST_IDS:
            raise ValueError("limit must be between 1 and 100")
        if order_by not in ("asc", "desc"):
            raise ValueError("order_by must be 'asc' or 'desc'")

    async def _json_list(self, method: str, path: str, params: Params, *, reserved: bool = False) -> list[Any]:
        return expect_list(await self._call(method, path, params, reserved=reserved), f"{method} {path}")

    async def _call(
        self, method: str, path: str, params: Params, *, priority: Priority = Priority.READ, reserved: bool = False
    ) -> Any:
        endpoint = f"{method} {path}"
        encoded = encode_params(params, as_body=method == "POST")
        url = f"{self.base_url}{path}" + (f"?{encoded.query}" if encoded.query else "")
        attempt = 0
        while True:
            if not reserved:
                await self.limiter.acquire(priority)
            reserved = False
            try:
                answer = await self._send(method, url, encoded.body, encoded.hashed, endpoint)
            finally:
                self.limiter.release()
            try:
                return self._interpret(answer, endpoint)
            except ExchangeThrottled as exc:
                retryable = method == "GET" and not isinstance(exc, ExchangeBlocked)
                if not retryable or attempt >= self._read_retries:
                    raise
                attempt += 1

    async def _send(self, method: str, url: str, body: bytes, hashed: str, endpoint: str) -> _Answer:
        token = self._signer.sign(hashed or None)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if method == "POST":
            headers["Content-Type"] = "application/json; charset=utf-8"
        started = self._clock.monotonic()
        sent_at = self._clock.now()
        status = 0
        try:
            session = self._ensure_session()
            async with session.request(
                method, yarl.URL(url, encoded=True), data=body or None, headers=headers, timeout=self._timeout
            ) as response:
                status = response.status
                raw = await response.read()
                self.skew.observe(sent_at, self._clock.now(), response.headers.get("Date"))
                self._observe_headers(response.headers)
                return _Answer(status, raw, _retry_after(response.headers))
        except TimeoutError as exc:
            raise ExchangeTimeout(f"no answer within {self._timeout.total:g} s", endpoint=endpoint) from exc
        except aiohttp.ClientError as exc:
            raise ExchangeConnectionError(type(exc).__name__, endpoint=endpoint) from exc
        finally:
            self._record(endpoint, status, self._clock.monotonic() - started)

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=64, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector)
            self._owns_session = True
        # aiohttp silently resends a GET/DELETE once when a kept-alive connection drops, with the same
        # Authorization header: the exchange then answers nonce_used, and a DELETE that was executed
        # would read as refused. Every exchange call is decided here, so no hidden resend (aiohttp's
        # own test client turns it off the same way; there is no public switch).
        if hasattr(self._session, "_retry_connection"):
            self._session._retry_connection = False
        return self._session

    def _observe_headers(self, headers: Any) -> None:
        remaining = parse_remaining_req(headers.get("Remaining-Req"))
        if remaining is not None and remaining[0] == "default":
            self.limiter.observe_remaining(remaining[1])

    def _record(self, endpoint: str, status: int, seconds: float) -> None:
        self.calls[endpoint] += 1
        self.statuses[(endpoint, status)] += 1
        if self._observer is not None:
            self._observer(endpoint, status, seconds)

    def _interpret(self, answer: _Answer, endpoint: str) -> Any:
        status = answer.status
        if status == 429:
            self.limiter.throttled()
            raise ExchangeThrottled("too many requests", retry_after=self.limiter.window, status=429, endpoint=endpoint)
        if status == 418:
            raise self._blocked(answer, endpoint)
        if status >= 500:
            error = parse_error_body(answer.body)
            name, message = (error.name, error.message) if error else (None, "")
            raise ExchangeServerError(message or snippet(answer.body), status=status, name=name, endpoint=endpoint)
        self.limiter.served()
        if 200 <= status < 300:
            data = _loads(answer.body)
            if data is _UNREADABLE:
                raise ExchangeBadResponse("body is not JSON", status=status, endpoint=endpoint)
            return data
        raise refusal(status, answer.body, endpoint)

    def _blocked(self, answer: _Answer, endpoint: str) -> ExchangeBlocked:
        """A 418: block the account for the time named (header, then message) or a growing one; log it."""
        in_text = seconds_in_text(answer.body)
        stated = answer.retry_after if answer.retry_after is not None else in_text
        source = "retry_after" if answer.retry_after is not None else "message" if in_text is not None else "backoff"
        seconds = self.limiter.penalised(stated)
        error = parse_error_body(answer.body)
        log.warning(
            "exchange.blocked",
            endpoint=endpoint,
            seconds=round(seconds, 3),
            source=source,
            strike=self.limiter.strikes,
            name=error.name if error else None,
        )
        return ExchangeBlocked(
            (error.message if error else "") or f"account blocked for {seconds:g} s",
            retry_after=seconds,
            status=418,
            name=error.name if error else None,
            endpoint=endpoint,
        )


def expect_list(data: Any, endpoint: str) -> list[Any]:
    """The decoded 2xx body of a list endpoint; anything but a JSON array is unreadable."""
    if not isinstance(data, list):
        raise ExchangeBadResponse("expected a JSON array", endpoint=endpoint, status=200)
    return data


def parse_one(data: Any, parse: Callable[[Any], _T], endpoint: str) -> _T:
    """Parse one decoded answer; what the parser cannot read is :class:`ExchangeBadResponse` (typed).

    Only the fields without which the answer means nothing are required (see :mod:`engine.upbit.types`);
    a missing one is named in the message."""
    try:
        return parse(data)
    except KeyError as exc:
        raise ExchangeBadResponse(f"unreadable answer: missing field {exc}", endpoint=endpoint) from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise ExchangeBadResponse(f"unreadable answer: {exc}", endpoint=endpoint) from exc


def parse_list(data: list[Any], parse: Callable[[Any], _T], endpoint: str) -> list[_T]:
    """Parse every row of a decoded list answer (see :func:`parse_one`)."""
    return [parse_one(item, parse, endpoint) for item in data]


_UNREADABLE = object()


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _UNREADABLE


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
