"""Admin routes under ``/sandbox/``: inspect what the sandbox received, and change it while it runs.

No JWT and no rate limit (the server binds loopback only unless told otherwise). Every route answers
JSON; a bad payload gets 400 ``{"error": {"name": "sandbox_invalid_admin_request", "message": ...}}``
whose message names the key. Shapes are documented in ``engine/sandbox/README.md``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from aiohttp import web

from engine.sandbox.errors import SandboxError
from engine.sandbox.faults import parse_fault_rule
from engine.sandbox.model import (
    BlockState,
    RateLimitSettings,
    SeedError,
    Timings,
    WalletState,
    WithdrawalState,
)
from engine.sandbox.recorder import redact
from engine.sandbox.records import fmt, fmt_amount
from engine.sandbox.runtime import SANDBOX_KEY, Sandbox
from engine.sandbox.seed import outcome_rules_from, outcome_weights_from, rate_limit_from, timings_from, to_decimal

__all__ = ["ADMIN_ROUTES", "add_admin_routes"]

AdminHandler = Callable[[Sandbox, web.Request], Awaitable[Any]]


def _admin(handler: AdminHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Bring lifecycles up to date, run the handler, answer JSON; bad input is a 400 naming the key."""

    async def handle(request: web.Request) -> web.Response:
        sandbox = request.app[SANDBOX_KEY]
        sandbox.exchange.advance()
        try:
            payload = await handler(sandbox, request)
        except SandboxError as exc:
            return web.json_response(exc.body(), status=exc.status)
        except (SeedError, ValueError, TypeError, KeyError) as exc:
            error = {"name": "sandbox_invalid_admin_request", "message": str(exc)}
            return web.json_response({"error": error}, status=400)
        return web.json_response(payload)

    return handle


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise SeedError(f"the body is not valid JSON: {exc}") from exc


async def _object(request: web.Request) -> dict[str, Any]:
    body = await _body(request)
    if not isinstance(body, dict):
        raise SeedError("the body must be a JSON object")
    return body


async def _index(sandbox: Sandbox, request: web.Request) -> Any:
    return {"routes": [f"{method} {path}" for method, path, _ in ADMIN_ROUTES]}


async def _requests(sandbox: Sandbox, request: web.Request) -> Any:
    since = int(request.query.get("since", "0"))
    limit = int(request.query["limit"]) if "limit" in request.query else None
    records = sandbox.recorder.since(since, limit)
    return {
        "total": sandbox.recorder.total,
        "next_since": records[-1].seq if records else max(since, 0),
        "requests": [r.to_json() for r in records],
    }


async def _stats(sandbox: Sandbox, request: web.Request) -> Any:
    counts = sandbox.exchange.state_counts
    return {
        **sandbox.recorder.stats(),
        "withdrawals_total": len(sandbox.exchange.withdrawals()),
        "withdrawals_by_state": {state.value: counts[state] for state in WithdrawalState},
    }


async def _withdrawals(sandbox: Sandbox, request: web.Request) -> Any:
    account, state, currency = (request.query.get(k) for k in ("account", "state", "currency"))
    rows = [
        w.to_admin()
        for w in sandbox.exchange.withdrawals()
        if (account is None or w.account == account)
        and (state is None or w.state.value == state)
        and (currency is None or w.currency == currency)
    ]
    return rows


async def _wallets(sandbox: Sandbox, request: web.Request) -> Any:
    return sandbox.exchange.wallet_status()


async def _set_wallet(sandbox: Sandbox, request: web.Request) -> Any:
    body = await _object(request)
    support = body.get("wallet_support")
    if support is not None and not (isinstance(support, list) and all(isinstance(s, str) for s in support)):
        raise SeedError("wallet_support: expected a list of strings")
    return sandbox.exchange.set_wallet(
        str(body["currency"]),
        str(body["net_type"]),
        wallet_state=WalletState(body["wallet_state"]) if "wallet_state" in body else None,
        block_state=BlockState(body["block_state"]) if "block_state" in body else None,
        wallet_support=None if support is None else tuple(support),
    )


async def _faults(sandbox: Sandbox, request: web.Request) -> Any:
    return {"faults": sandbox.faults.to_json()}


async def _add_faults(sandbox: Sandbox, request: web.Request) -> Any:
    body = await _body(request)
    items = body if isinstance(body, list) else [body]
    rules = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise SeedError(f"faults[{i}]: expected an object")
        try:
            rules.append(parse_fault_rule(item))
        except ValueError as exc:
            raise SeedError(f"faults[{i}]: {exc}") from exc
    return {"added": sandbox.faults.add(rules), "faults": sandbox.faults.to_json()}


async def _clear_faults(sandbox: Sandbox, request: web.Request) -> Any:
    rule_id = request.query.get("id")
    return {"removed": sandbox.faults.clear(None if rule_id is None else int(rule_id))}


def _config(sandbox: Sandbox) -> dict[str, Any]:
    exchange = sandbox.exchange
    return {
        "timings": dataclasses.asdict(exchange.timings),
        "outcome_weights": {state.value: weight for state, weight in exchange.outcome_weights.items()},
        "outcome_rules": [
            {"currency": r.currency, "amount": fmt(r.amount), "outcome": r.outcome.value}
            for r in exchange.outcome_rules
        ],
        "rate_limit": dataclasses.asdict(sandbox.limiter.settings),
    }


async def _get_config(sandbox: Sandbox, request: web.Request) -> Any:
    return _config(sandbox)


async def _set_config(sandbox: Sandbox, request: web.Request) -> Any:
    """Validate every part first, then apply them together: a bad payload changes nothing."""
    body = _nest(await _object(request))
    exchange = sandbox.exchange
    timings = timings_from(body["timings"], exchange.timings) if "timings" in body else None
    weights = outcome_weights_from(body["outcome_weights"]) if "outcome_weights" in body else None
    rules = outcome_rules_from(body["outcome_rules"]) if "outcome_rules" in body else None
    limits = rate_limit_from(body["rate_limit"], sandbox.limiter.settings) if "rate_limit" in body else None
    exchange.configure(timings=timings, outcome_weights=weights, outcome_rules=rules)
    if limits is not None:
        sandbox.limiter.settings = limits
    return _config(sandbox)


_TIMING_KEYS = frozenset(f.name for f in dataclasses.fields(Timings))
_RATE_KEYS = frozenset(f.name for f in dataclasses.fields(RateLimitSettings))


def _nest(body: dict[str, Any]) -> dict[str, Any]:
    """Accept timing and rate-limit keys at the top level too; ``jitter`` sets both jitters."""
    nested: dict[str, Any] = {}
    for key, value in body.items():
        if key in ("timings", "rate_limit"):
            if not isinstance(value, dict):
                raise SeedError(f"{key}: expected an object")
            nested.setdefault(key, {}).update(value)
        elif key in _TIMING_KEYS:
            nested.setdefault("timings", {})[key] = value
        elif key == "jitter":
            nested.setdefault("timings", {}).update(waiting_jitter=value, processing_jitter=value)
        elif key in _RATE_KEYS:
            nested.setdefault("rate_limit", {})[key] = value
        elif key in ("outcome_weights", "outcome_rules"):
            nested[key] = value
        else:
            raise SeedError(f"{key}: unknown key")
    return nested


async def _set_balance(sandbox: Sandbox, request: web.Request) -> Any:
    body = await _object(request)
    currency = str(body["currency"])
    balance = to_decimal(body["balance"], "balance")
    if balance < 0:
        raise SeedError("balance: must not be negative")
    access_key = body.get("access_key")
    account = sandbox.exchange.set_balance(None if access_key is None else str(access_key), currency, balance)
    return {"account": account.name, "currency": currency, "balance": fmt_amount(account.balance(currency))}


async def _reset(sandbox: Sandbox, request: web.Request) -> Any:
    sandbox.reset()
    return {"reset": True}


async def _ledger(sandbox: Sandbox, request: web.Request) -> Any:
    totals: dict[str, Decimal] = {}
    accounts = []
    for account in sandbox.exchange.accounts.values():
        currencies = sorted(set(account.balances) | set(account.locked) | set(account.done_totals))
        rows = {}
        for currency in currencies:
            done = account.done_totals.get(currency, Decimal(0))
            totals[currency] = totals.get(currency, Decimal(0)) + done
            rows[currency] = {
                "balance": fmt_amount(account.balance(currency)),
                "locked": fmt_amount(account.held(currency)),
                "done": fmt_amount(done),
            }
        keys = [redact(k) for k in account.access_keys]
        accounts.append({"name": account.name, "access_keys": keys, "currencies": rows})
    return {"accounts": accounts, "done_totals": {c: fmt_amount(v) for c, v in sorted(totals.items())}}


#: (method, path, handler) of every admin route.
ADMIN_ROUTES: tuple[tuple[str, str, AdminHandler], ...] = (
    ("GET", "/sandbox/", _index),
    ("GET", "/sandbox/requests", _requests),
    ("GET", "/sandbox/stats", _stats),
    ("GET", "/sandbox/withdrawals", _withdrawals),
    ("GET", "/sandbox/wallets", _wallets),
    ("POST", "/sandbox/wallets", _set_wallet),
    ("GET", "/sandbox/faults", _faults),
    ("POST", "/sandbox/faults", _add_faults),
    ("DELETE", "/sandbox/faults", _clear_faults),
    ("GET", "/sandbox/config", _get_config),
    ("POST", "/sandbox/config", _set_config),
    ("POST", "/sandbox/balances", _set_balance),
    ("POST", "/sandbox/reset", _reset),
    ("GET", "/sandbox/ledger", _ledger),
)


def add_admin_routes(app: web.Application) -> None:
    """Register every admin route."""
    for method, path, handler in ADMIN_ROUTES:
        app.router.add_route(method, path, _admin(handler))
