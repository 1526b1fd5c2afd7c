"""The HTTP API (aiohttp.web): submit and follow withdrawals, health, metrics, and the OpenAPI document.

Routes (``engine/openapi.json`` is the contract; a test validates every answer against it)::

    POST /v1/withdrawals                 201 new, 200 replay (same Idempotency-Key, same body), 409, 422
    GET  /v1/withdrawals                 filters (state, several; currency, net_type, account, reason,
                                         reference, idempotency_key, created/updated_after/_before),
                                         limit, cursor (the next_cursor of the previous page); a total
    GET  /v1/withdrawals/{id}            404 when unknown
    POST /v1/withdrawals/{id}/cancel     202; 409 when already terminal
    POST /v1/withdrawals/{id}/resolve    {"action": "resubmit"|"abandon"}: 202; 409 unless needs_review
    GET  /v1/withdrawals/{id}/events     the audit log, in order
    GET  /v1/events                      every committed event, live, as Server-Sent Events (engine.api_events)
    GET  /healthz                        liveness: the process and its runner are alive (no authentication)
    GET  /readyz                         readiness: the store answers and the runner can use it (no authentication)
    GET  /metrics                        Prometheus text format
    GET  /openapi.json

:func:`create_metrics_app` is the optional second listener (``api.metrics_port``) that serves only
``GET /metrics``, without a token, for scrapers that cannot send one. Every route of the main app but
``/healthz`` and ``/readyz`` needs ``Authorization: Bearer <token>`` (compared in constant time). Every
error answer has one shape: ``{"error": {"name": ..., "message": ..., "fields": {...}}}``. Amounts are
strings, always. Answers never carry a key, a token or a JWT: the workflow view holds none, and engine
errors are built without them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from engine import api_batches
from engine.api_webhooks import register_webhook_routes
from engine.core import Engine
from engine.errors import (
    EngineError,
    IdempotencyConflict,
    InvalidRequest,
    InvalidTransition,
    ReferenceConflict,
    WorkflowNotFound,
)
from engine.http_server import ServerLimits, start_site
from engine.kinds import WorkflowKind, default_kinds
from engine.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from engine.metrics import Metrics
from engine.query import parse_list_query
from engine.references import check_metadata, check_reference
from engine.views import events_view, page_view, workflow_view

__all__ = [
    "ApiError",
    "ServerLimits",
    "create_app",
    "create_metrics_app",
    "error_body",
    "openapi_document",
    "parse_submission",
    "parse_withdrawal",
    "start_site",
    "workflow_view",
]

log = structlog.get_logger("engine.api")

ENGINE = web.AppKey("engine", Engine)
#: The workflow kind the /v1/withdrawals routes serve.
WITHDRAWAL = "withdrawal"
METRICS = web.AppKey("metrics", Metrics)
MAX_BODY = web.AppKey("max_body_bytes", int)
OPENAPI = web.AppKey("openapi", bytes)
#: Fields of a submission body beside the withdrawal request itself.
SUBMISSION_EXTRAS = ("reference", "metadata")
_ID_RE = re.compile(r"wd_[0-9a-f]{1,64}")
_REQUIRED = ("currency", "net_type", "amount", "address")
#: Valid stand-ins: a field that failed is replaced by one, so the next failing field shows up too.
_STAND_INS: dict[str, Any] = {
    "currency": "BTC",
    "net_type": "BTC",
    "amount": "1",
    "address": "stand-in",
    "secondary_address": None,
    "transaction_type": "default",
    "account": "default",
    "exchange_name": None,
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answer: HTTP status, a stable machine name, a sentence, and per-field messages."""

    def __init__(self, status: int, name: str, message: str, fields: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.name = name
        self.message = message
        self.fields = dict(fields or {})

    def response(self, headers: Mapping[str, str] | None = None) -> web.Response:
        """The JSON error answer."""
        return _json(error_body(self.name, self.message, self.fields), status=self.status, headers=headers)


def error_body(name: str, message: str, fields: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{"error": {"name", "message"[, "fields"]}}``: the one error shape of the API."""
    error: dict[str, Any] = {"name": name, "message": message}
    if fields:
        error["fields"] = dict(fields)
    return {"error": error}


def parse_withdrawal(data: object, kind: WorkflowKind | None = None) -> Any:
    """A withdrawal request (the kind's request model) from a JSON body, or an :class:`ApiError` (422)
    naming *every* bad field.

    The model validates one field at a time; a failed field is swapped for a valid stand-in and the
    model asked again, so the answer lists all problems at once while the rules stay in one place.
    """
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    parse = (kind or default_kinds()[WITHDRAWAL]).parse_request
    fields = {key: "unknown field" for key in sorted(set(data) - set(_STAND_INS))}
    candidate = {key: value for key, value in data.items() if key in _STAND_INS}
    for key in _REQUIRED:
        if candidate.get(key) in (None, ""):
            fields[key] = "is required"
            candidate[key] = _STAND_INS[key]
    if isinstance(candidate.get("amount"), bool | int | float):
        fields["amount"] = 'must be a string holding a decimal number, e.g. "0.01"'
        candidate["amount"] = _STAND_INS["amount"]
    for _ in range(len(_STAND_INS) + 1):
        try:
            request = parse(candidate)
            break
        except InvalidRequest as exc:
            if exc.field not in _STAND_INS or exc.field in fields:
                fields[exc.field or "body"] = exc.message
                break
            fields[exc.field] = exc.message.removeprefix(f"{exc.field}: ")
            candidate[exc.field] = _STAND_INS[exc.field]
    if fields:
        raise ApiError(422, "invalid_request", "the withdrawal request is invalid", fields)
    return request


def parse_submission(data: object, kind: WorkflowKind | None = None) -> tuple[Any, str | None, dict[str, Any] | None]:
    """``(request, reference, metadata)`` from a submission body, or an :class:`ApiError` (422) naming every
    bad field, the request's and the reference's and metadata's alike."""
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    fields: dict[str, str] = {}
    reference: str | None = None
    metadata: dict[str, Any] | None = None
    try:
        reference = check_reference(data.get("reference"))
    except InvalidRequest as exc:
        fields["reference"] = exc.message.removeprefix("reference: ")
    try:
        metadata = check_metadata(data.get("metadata"))
    except InvalidRequest as exc:
        fields["metadata"] = exc.message.removeprefix("metadata: ")
    try:
        request = parse_withdrawal({k: v for k, v in data.items() if k not in SUBMISSION_EXTRAS}, kind)
    except ApiError as exc:
        fields = {**exc.fields, **fields}
    if fields:
        raise ApiError(422, "invalid_request", "the withdrawal request is invalid", fields)
    return request, reference, metadata


def openapi_document() -> bytes:
    """``engine/openapi.json``, as shipped in the package."""
    return Path(__file__).with_name("openapi.json").read_bytes()


def _json(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":"), default=str).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


# -- middlewares ---------------------------------------------------------------------------------------


def _error_middleware() -> Any:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except ApiError as exc:
            status = exc.status
            return exc.response()
        except EngineError as exc:
            answer = _engine_error(exc)
            status = answer.status
            return answer.response()
        except web.HTTPException as exc:
            status = exc.status
            allow = exc.headers.get("Allow")
            return _http_error(exc).response(headers={"Allow": allow} if allow else None)
        except Exception:
            log.exception("api.crashed", method=request.method, path=request.path)
            return ApiError(500, "internal_error", "internal error; see the service log").response()
        finally:
            log.info(
                "api.request", method=request.method, path=request.path, status=status,
                ms=round((time.monotonic() - started) * 1000, 1),
            )  # fmt: skip

    return errors


def _engine_error(exc: EngineError) -> ApiError:
    if isinstance(exc, InvalidRequest):
        return ApiError(422, "invalid_request", exc.message, exc.fields or {"body": exc.message})
    if isinstance(exc, WorkflowNotFound):
        return ApiError(404, "not_found", exc.message)
    if isinstance(exc, IdempotencyConflict):
        return ApiError(409, "idempotency_conflict", exc.message)
    if isinstance(exc, ReferenceConflict):
        return ApiError(409, "reference_conflict", exc.message)
    if isinstance(exc, InvalidTransition):
        return ApiError(409, "invalid_transition", exc.message)
    log.error("api.engine_error", error=type(exc).__name__, message=exc.message)
    # A write may have committed before the store failed: the answer must not invite a blind retry.
    return ApiError(
        503, "unavailable",
        "the engine could not complete the request (a submission may or may not have been stored: retry it "
        "only with the same Idempotency-Key); see the service log",
    )  # fmt: skip


def _http_error(exc: web.HTTPException) -> ApiError:
    names = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
    name = names.get(exc.status, "http_error")
    message = "no such route" if exc.status == 404 else exc.reason
    if exc.status == 413:
        message = "the body is larger than api.max_body_bytes"
    return ApiError(exc.status, name, message)


def _auth_middleware(token: str) -> Any:
    expected = token.encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PROBES or _is_console(request.path):
            return await handler(request)
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        raw = _utf8(presented.strip())
        if scheme.lower() != "bearer" or raw is None or not hmac.compare_digest(raw, expected):
            error = ApiError(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required")
            return error.response(headers={"WWW-Authenticate": 'Bearer realm="upbit-withdraw"'})
        return await handler(request)

    return auth


def _is_console(path: str) -> bool:
    """The console (engine/console) authenticates by its own session cookie, not by the bearer token."""
    return path == "/console" or path.startswith("/console/")


def _utf8(value: str) -> bytes | None:
    """A header value as UTF-8 bytes; None when the client sent bytes that are not UTF-8.

    aiohttp decodes header bytes with ``surrogateescape``, so such a value holds lone surrogates that
    ``str.encode`` refuses: they must end as a 4xx answer, never as an exception.
    """
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        return None


# -- handlers ------------------------------------------------------------------------------------------


async def _body(request: web.Request) -> Any:
    limit = request.app[MAX_BODY]
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "body_too_large", "the body is larger than api.max_body_bytes")
    raw = await request.read()
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "the body is nested too deeply") from None


def _workflow_id(request: web.Request) -> str:
    workflow_id = request.match_info["id"]
    if not _ID_RE.fullmatch(workflow_id):
        raise ApiError(404, "not_found", f"no workflow has the id {workflow_id[:80]!r}")
    return workflow_id


async def submit(request: web.Request) -> web.Response:
    """POST /v1/withdrawals."""
    withdrawal, reference, metadata = parse_submission(await _body(request), request.app[ENGINE].kinds[WITHDRAWAL])
    key = _idempotency_key(request)
    engine = request.app[ENGINE]
    wf, created = await engine.intake(withdrawal, idempotency_key=key, reference=reference, metadata=metadata)
    return _json(workflow_view(wf), status=201 if created else 200, headers={"Location": f"/v1/withdrawals/{wf.id}"})


def _idempotency_key(request: web.Request) -> str | None:
    """The ``Idempotency-Key`` header: absent (None), or 1-200 characters of UTF-8 text.

    A header that is present but empty is refused rather than ignored: ignoring it would create a new
    withdrawal on every retry of a client that meant to be idempotent.
    """
    if "Idempotency-Key" not in request.headers:
        return None
    key = request.headers["Idempotency-Key"]
    if _utf8(key) is None:
        problem = "must be UTF-8 text"
    elif not 0 < len(key) <= 200:
        problem = "must be 1-200 characters"
    else:
        return key
    raise ApiError(422, "invalid_request", "invalid Idempotency-Key", {"idempotency_key": problem})


async def get_withdrawal(request: web.Request) -> web.Response:
    """GET /v1/withdrawals/{id}."""
    return _json(workflow_view(await request.app[ENGINE].get(_workflow_id(request))))


async def list_withdrawals(request: web.Request) -> web.Response:
    """GET /v1/withdrawals with filters (engine/query.py parses them; an unknown cursor is 422)."""
    engine = request.app[ENGINE]
    where, limit, cursor = parse_list_query(
        request.query.items(), kind=WITHDRAWAL, states=[str(s) for s in engine.kinds[WITHDRAWAL].states]
    )
    return _json(page_view(await engine.page(where, limit=limit, cursor=cursor)))


async def cancel(request: web.Request) -> web.Response:
    """POST /v1/withdrawals/{id}/cancel."""
    return _json(workflow_view(await request.app[ENGINE].cancel(_workflow_id(request))), status=202)


async def resolve(request: web.Request) -> web.Response:
    """POST /v1/withdrawals/{id}/resolve with ``{"action": "resubmit"|"abandon"}``."""
    workflow_id = _workflow_id(request)
    body = await _body(request)
    if not isinstance(body, dict) or set(body) != {"action"} or not isinstance(body["action"], str):
        actions = [str(a) for a in request.app[ENGINE].kinds[WITHDRAWAL].resolutions]
        raise ApiError(
            422, "invalid_request", f"the body must be {' or '.join(json.dumps({'action': a}) for a in actions)}",
            {"action": f"must be {' or '.join(actions)}"},
        )  # fmt: skip
    return _json(workflow_view(await request.app[ENGINE].resolve(workflow_id, body["action"])), status=202)


async def events(request: web.Request) -> web.Response:
    """GET /v1/withdrawals/{id}/events."""
    workflow_id = _workflow_id(request)
    found = [e async for e in request.app[ENGINE].events(workflow_id, follow=False)]
    return _json(events_view(workflow_id, found))


#: Routes a load balancer or an orchestrator probes, without a token.
PROBES = frozenset({"/healthz", "/readyz"})
#: Longest a readiness probe waits for the store (a cut network must not hang the probe).
READY_TIMEOUT = 2.0
#: A runner loop that has not started a round for this long is stuck: liveness fails (restart it).
STALLED_AFTER = 120.0


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz, liveness: 200 while the process serves and its runner (if it runs one) is alive and
    its loop goes round (not stuck for ``STALLED_AFTER`` seconds).

    It does not touch the store: a database outage is waited out (the runner backs off and resumes), so
    restarting the process would not help; ``/readyz`` reports the outage instead."""
    engine = request.app[ENGINE]
    failed = engine.runner_failed
    if failed is not None:
        log.error("api.runner_dead", error=type(failed).__name__)
        return _json({"status": "unavailable", "runner": "dead"}, status=503)
    if engine.runner.stalled(STALLED_AFTER):
        log.error("api.runner_stalled", after=STALLED_AFTER)
        return _json({"status": "unavailable", "runner": "stalled"}, status=503)
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz, readiness: 200 when the store answers (within ``READY_TIMEOUT``) and the runner's
    last store operations succeeded; 503 while the store is unreachable or full, and when the runner is
    dead. Send traffic (and expect progress) only while this says ok."""
    engine = request.app[ENGINE]
    if engine.runner_failed is not None:
        return _json({"status": "unavailable", "runner": "dead"}, status=503)
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await engine.store.ping()
    except (EngineError, TimeoutError) as exc:
        log.warning("api.not_ready", error=type(exc).__name__)
        return _json({"status": "unavailable", "store": "unavailable"}, status=503)
    if engine.runner.running and not engine.runner.store_ready:
        return _json({"status": "unavailable", "store": "unavailable"}, status=503)
    return _json({"status": "ok", "store": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics."""
    registry = request.app[METRICS]
    await registry.refresh()
    response = web.Response(body=registry.render())
    response.headers["Content-Type"] = METRICS_CONTENT_TYPE
    return response


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json."""
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


# -- wiring --------------------------------------------------------------------------------------------


def create_app(
    engine: Engine,
    *,
    token: str,
    metrics_registry: Metrics | None = None,
    max_body_bytes: int = 65536,
    events_keepalive: float = 15.0,
) -> web.Application:
    """The API over ``engine`` (entered by the caller). ``token`` must be at least 16 characters.
    ``events_keepalive``: seconds between keep-alive comments of ``GET /v1/events``."""
    from engine.api_events import add_event_routes  # it imports this module

    if len(token) < 16:
        raise ValueError("the API token must be at least 16 characters")
    app = web.Application(middlewares=[_error_middleware(), _auth_middleware(token)], client_max_size=max_body_bytes)
    app[ENGINE] = engine
    if metrics_registry is None:
        metrics_registry = Metrics()
        metrics_registry.bind(engine)
    app[METRICS] = metrics_registry
    app[MAX_BODY] = max_body_bytes
    app[OPENAPI] = openapi_document()
    app.router.add_post("/v1/withdrawals", submit)
    app.router.add_get("/v1/withdrawals", list_withdrawals, allow_head=False)
    app.router.add_get("/v1/withdrawals/{id}", get_withdrawal, allow_head=False)
    app.router.add_post("/v1/withdrawals/{id}/cancel", cancel)
    app.router.add_post("/v1/withdrawals/{id}/resolve", resolve)
    app.router.add_get("/v1/withdrawals/{id}/events", events, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)
    app.router.add_get("/openapi.json", openapi, allow_head=False)
    api_batches.register(app)
    add_event_routes(app, keepalive=events_keepalive)
    register_webhook_routes(app, engine.store)  # /v1/webhooks (engine/api_webhooks.py)
    return app


def create_metrics_app(metrics_registry: Metrics) -> web.Application:
    """Only ``GET /metrics``, without authentication: the optional listener of ``api.metrics_port``.

    Prometheus scrapers usually cannot send a bearer token; this app lets them scrape from a host and
    port of their own (e.g. an internal interface) while the main API keeps requiring the token.
    """
    app = web.Application(middlewares=[_error_middleware()], client_max_size=1024)
    app[METRICS] = metrics_registry
    app.router.add_get("/metrics", metrics, allow_head=False)
    return app
