"""The Exchange API under ``/v1``: one pipeline for every endpoint, and the endpoints as plain functions.

Per request, in order: record the time and apply due lifecycle steps; charge the rate bucket of the
account the token *claims* (a 429/418 is answered before anything else, so a throttled call is never
processed and does not even spend its nonce); roll the fault dice (latency, then ``error``/``burst_429``
which answer without processing); verify the JWT against the request exactly as received; run the
endpoint; then let an ``after`` fault (``hang``, ``drop``, ``malformed``) spoil the answer. Every
answer carries ``Remaining-Req``, and every request lands in the recorder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from engine.sandbox.auth import claimed_access_key, hashed_body, hashed_query
from engine.sandbox.errors import SandboxError
from engine.sandbox.faults import FaultKind, FaultRule
from engine.sandbox.listing import parse_list_query
from engine.sandbox.markets import market_list
from engine.sandbox.ratelimit import RateLimiter, Verdict, VerdictKind
from engine.sandbox.records import Account
from engine.sandbox.runtime import SANDBOX_KEY, Sandbox

__all__ = ["ROUTES", "Call", "add_routes"]

_THROTTLED_TEXT = "Too many API requests."
_HTML_ERROR = (
    "<html><head><title>{status} {reason}</title></head><body><center><h1>{status} {reason}</h1>"
    "</center><hr><center>nginx</center></body></html>"
)
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclass(frozen=True, slots=True)
class Call:
    """The parameters of one call: query pairs (GET/DELETE) or the JSON body (POST)."""

    pairs: tuple[tuple[str, str], ...]
    body: dict[str, Any]

    def get(self, name: str) -> str | None:
        """The first value of a query parameter, or None (empty values count as absent)."""
        return next((value for key, value in self.pairs if key == name and value), None)


Route = Callable[[Sandbox, Account, Call], tuple[int, Any]]


def _coin_addresses(sandbox: Sandbox, account: Account, call: Call) -> tuple[int, Any]:
    return 200, sandbox.exchange.coin_addresses(account)


def _wallet_status(sandbox: Sandbox, account: Account, call: Call) -> tuple[int, Any]:
    return 200, sandbox.exchange.wallet_status()


def _chance(sandbox: Sandbox, account: Account, call: Call) -> tuple[int, Any]:
    return 200, sandbox.exchange.chance(account, call.get("currency"), call.get("net_type"))


def _accounts(sandbox: Sandbox, account: Account, call: Call) -> tuple[int, Any]:
    return 200, sandbox.exchange.balances(account)


def _create(sandbox: Sandbox, account: Account, call: Call) -> tuple[int, Any]:
    withdrawal = sandbox.exchange.create_withdrawal(account, call.body)
    sandbox.recorder.created(call.body)
    return 201, withdrawal.to_upbit()


def _get_one(sandbox: Sandbox, account: Account, call: Call) -> tuple[int, Any]:
    found = sandbox.exchange.find_withdrawal(
        account, uuid=call.get("uuid"), txid=call.get("txid"), currency=call.get("currency")
    )
    return 200, found.to_upbit()


def _list(sandbox: Sandbox, account: Account, call: Call) -> tuple[int, Any]:
    query = parse_list_query(call.pairs)
    return 200, [w.to_upbit() for w in sandbox.exchange.list_withdrawals(account, query)]


def _cancel(sandbox: Sandbox, account: Account, call: Call) -> tuple[int, Any]:
    return 200, sandbox.exchange.cancel_withdrawal(account, call.get("uuid"))


#: (method, path, endpoint function): the Exchange API the sandbox serves.
ROUTES: tuple[tuple[str, str, Route], ...] = (
    ("GET", "/v1/withdraws/coin_addresses", _coin_addresses),
    ("GET", "/v1/status/wallet", _wallet_status),
    ("GET", "/v1/withdraws/chance", _chance),
    ("GET", "/v1/accounts", _accounts),
    ("POST", "/v1/withdraws/coin", _create),
    ("DELETE", "/v1/withdraws/coin", _cancel),
    ("GET", "/v1/withdraw", _get_one),
    ("GET", "/v1/withdraws", _list),
)


def add_routes(app: web.Application) -> None:
    """Register every ``/v1`` endpoint behind the pipeline, and the public market list beside it."""
    for method, path, route in ROUTES:
        app.router.add_route(method, path, _handler(route))
    app.router.add_get("/v1/market/all", _market_all)


async def _market_all(request: web.Request) -> web.Response:
    """``GET /v1/market/all``: public, like Upbit's (no JWT, no Exchange API rate bucket, no faults)."""
    sandbox = request.app[SANDBOX_KEY]
    details = request.query.get("is_details", "false").lower() == "true"
    body = json.dumps(market_list(sandbox.seed, details=details), ensure_ascii=False, separators=(",", ":"))
    sandbox.recorder.log(
        method="GET",
        path=request.path,
        query=request.rel_url.raw_query_string,
        body=None,
        status=200,
        access_key=None,
        received_at=sandbox.now().isoformat(timespec="milliseconds"),
        fault=None,
    )
    return web.Response(body=body.encode(), content_type="application/json", charset="utf-8")


def _handler(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await _Pipeline(request, route).serve()

    return handle


class _Pipeline:
    """The pipeline for one request (see the module docstring)."""

    def __init__(self, request: web.Request, route: Route) -> None:
        self.request = request
        self.route = route
        self.sandbox = request.app[SANDBOX_KEY]
        self.received_at = self.sandbox.now().isoformat(timespec="milliseconds")
        self.claimed = claimed_access_key(request.headers.get("Authorization"))
        self.raw_body = b""

    async def serve(self) -> web.StreamResponse:
        sandbox, request = self.sandbox, self.request
        sandbox.exchange.advance()
        if request.method == "POST":
            self.raw_body = await request.read()
        bucket = self._bucket()
        verdict = sandbox.limiter.check(bucket)
        if not verdict.allowed:
            return self._finish(_refusal(verdict, sandbox.limiter), int(verdict.kind))
        plan = sandbox.faults.plan(f"{request.method} {request.path}")
        if plan.latency_ms:
            await sandbox.clock.sleep(plan.latency_ms / 1000)
        if plan.before is not None:
            if plan.before.kind is FaultKind.BURST_429:
                sandbox.limiter.strike(bucket)
            return self._finish(_fault_answer(plan.before, verdict), None, plan.before.kind)
        status, payload = self._process()
        response = _json(status, payload, verdict.header)
        if plan.after is not None:
            return await self._spoil(plan.after, response)
        return self._finish(response, status)

    def _bucket(self) -> str:
        account = self.sandbox.exchange.account_for_key(self.claimed) if self.claimed else None
        return f"account:{account.name}" if account else f"ip:{self.request.remote}"

    def _process(self) -> tuple[int, Any]:
        request, sandbox = self.request, self.sandbox
        try:
            body = _json_body(request, self.raw_body)
            post = request.method == "POST"
            if post:
                hashed = hashed_body(self.raw_body) if body else ()
            else:
                hashed = hashed_query(request.rel_url.raw_query_string)
            access_key = sandbox.verifier.verify(request.headers.get("Authorization"), hashed=hashed)
            account = sandbox.exchange.account(access_key)
            sandbox.exchange.advance()  # again: an injected latency may have let steps fall due
            return self.route(sandbox, account, Call(tuple(request.query.items()), body))
        except SandboxError as exc:
            return exc.status, exc.body()

    async def _spoil(self, fault: FaultRule, response: web.Response) -> web.StreamResponse:
        if fault.kind is FaultKind.HANG:
            self._finish(response, response.status, fault.kind)
            await self.sandbox.clock.sleep(float(fault.params["seconds"]))
            return response
        if fault.kind is FaultKind.DROP:
            self._finish(response, "dropped", fault.kind)
            if self.request.transport is not None:
                self.request.transport.abort()
            return response
        body = response.body if isinstance(response.body, bytes) else b"{}"
        spoiled = body[: len(body) // 2] + b"\xe2\x80\xa6<truncated"
        return self._finish(_raw(response.status, spoiled, response.headers), response.status, fault.kind)

    def _finish(self, response: web.Response, status: int | str | None, fault: str | None = None) -> web.Response:
        request = self.request
        self.sandbox.recorder.log(
            method=request.method,
            path=request.path,
            query=request.rel_url.raw_query_string,
            body=_loggable(self.raw_body),
            status=response.status if status is None else status,
            access_key=self.claimed,
            received_at=self.received_at,
            fault=fault,
        )
        return response


def _json_body(request: web.Request, raw: bytes) -> dict[str, Any]:
    """The POST body's parameters. A non-JSON body carries none (Upbit stopped reading form bodies)."""
    if request.method != "POST" or not raw or request.content_type != "application/json":
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise SandboxError(400, "invalid_parameter", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise SandboxError(400, "invalid_parameter", "the body must be a JSON object")
    return body


def _loggable(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw[:2000].decode("utf-8", "replace")


def _json(status: int, payload: Any, remaining: str) -> web.Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return _raw(status, body, {"Remaining-Req": remaining})


def _raw(status: int, body: bytes, headers: Any, content_type: str = "application/json") -> web.Response:
    response = web.Response(status=status, body=body, content_type=content_type, charset="utf-8")
    response.headers["Remaining-Req"] = headers.get("Remaining-Req", "group=default; min=1800; sec=0")
    return response


def _refusal(verdict: Verdict, limiter: RateLimiter) -> web.Response:
    """429 (plain text, like Upbit's gateway) or 418 (JSON naming the block, plus Retry-After if announced)."""
    if verdict.kind is VerdictKind.THROTTLED:
        return _raw(429, _THROTTLED_TEXT.encode(), {"Remaining-Req": verdict.header}, "text/plain")
    error = SandboxError(418, "too_many_requests_blocked", limiter.block_message(verdict.retry_after))
    response = _json(418, error.body(), verdict.header)
    if limiter.settings.announce_block:
        response.headers["Retry-After"] = str(max(1, math.ceil(verdict.retry_after)))
    return response


def _fault_answer(fault: FaultRule, verdict: Verdict) -> web.Response:
    """The answer of an ``error`` or ``burst_429`` fault: nothing was processed."""
    if fault.kind is FaultKind.BURST_429:
        zero = Verdict(VerdictKind.THROTTLED, 0)
        return _raw(429, _THROTTLED_TEXT.encode(), {"Remaining-Req": zero.header}, "text/plain")
    status = int(fault.params["status"])
    reason = _REASONS.get(status, "Server Error")
    headers = {"Remaining-Req": verdict.header}
    if fault.params["body"] == "json":
        payload = {"error": {"name": "server_error", "message": reason}}
        return _raw(status, json.dumps(payload).encode(), headers)
    return _raw(status, _HTML_ERROR.format(status=status, reason=reason).encode(), headers, "text/html")
