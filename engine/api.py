"""The HTTP API (aiohttp.web): submit and follow withdrawals, health, metrics, and the OpenAPI document.

Routes (``engine/openapi.json`` is the contract; a test validates every answer against it)::

    POST /v1/withdrawals                 201 new, 200 replay (same Idempotency-Key, same body), 409, 422
    GET  /v1/withdrawals                 filters (state, several; currency, net_type, account, reason,
                                         reference, idempotency_key, created/updated_after/_before),
                                         limit, cursor (the next_cursor of the previous page); a total
    GET  /v1/withdrawals/{id}            404 when unknown
    POST /v1/withdrawals/{id}/cancel     optional {"note": ...}: 202; 409 when already terminal
    POST /v1/withdrawals/{id}/resolve    {"action": ..., "note": ...}: 202; 409 unless the state accepts
                                         it (resubmit/abandon: needs_review; approve/reject:
                                         awaiting_approval); 403 approve/reject by the submitter
    GET  /v1/withdrawals/{id}/events     the audit log, in order
    GET  /v1/events                      every committed event, live, as Server-Sent Events (engine.api_events)
    GET  /healthz                        liveness: the process and its runner are alive (no authentication)
    GET  /readyz                         readiness: the store answers and the runner can use it (no authentication)
    GET  /metrics                        Prometheus text format
    GET  /openapi.json

:func:`create_metrics_app` is the optional second listener (``api.metrics_port``) that serves only
``GET /metrics``, without a token, for scrapers that cannot send one. Every route of the main app but
``/healthz`` and ``/readyz`` needs ``Authorization: Bearer <token>``: an operator's own token (looked up
by its hash in the store, :mod:`engine.store.operators`) or the deprecated shared ``[api]`` token (compared
in constant time; it acts as :data:`~engine.operators.SHARED_TOKEN_OPERATOR`, an admin). The operator is
put on the request (``request[OPERATOR_KEY]``) and :data:`ROUTE_PERMISSIONS` says what each route needs:
a role without it gets 403 ``forbidden`` (a route missing from the table is refused too: fail closed).
Every mutating route passes the operator (and the note, where there is one) to the engine, so the events
say who did it. Paths under ``/console/`` are the web console's (cookie sessions): this middleware lets
them through untouched. Every error answer has one shape: ``{"error": {"name": ..., "message": ...,
"fields": {...}}}``. Amounts are strings, always. Answers never carry a key, a token or a JWT: the
workflow view holds none, and engine errors are built without them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import structlog
from aiohttp import web

from engine import api_batches
from engine.api_webhooks import register_webhook_routes
from engine.core import Engine
from engine.errors import (
    EngineError,
    Forbidden,
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
from engine.operators import (
    OPERATOR_KEY,
    ROLE_PERMISSIONS,
    SHARED_TOKEN_OPERATOR,
    TOKEN_PREFIX,
    Operator,
    Permission,
    check_note,
    permission_for_resolution,
)
from engine.query import parse_list_query
from engine.references import check_metadata, check_reference
from engine.store.operators import OperatorStore, operator_store
from engine.views import events_view, page_view, workflow_view

__all__ = [
    "OPERATOR_KEY",
    "ROUTE_PERMISSIONS",
    "ApiError",
    "ServerLimits",
    "create_app",
    "create_metrics_app",
    "error_body",
    "openapi_document",
    "operator_of",
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
            operator = request.get(OPERATOR_KEY)
            log.info(
                "api.request", method=request.method, path=request.path, status=status,
                ms=round((time.monotonic() - started) * 1000, 1),
                operator=operator.name if isinstance(operator, Operator) else None,
            )  # fmt: skip

    return errors


#: The answer of each engine error a caller can act on (anything else is a 503).
_ERROR_ANSWERS: tuple[tuple[type[EngineError], int, str], ...] = (
    (WorkflowNotFound, 404, "not_found"),
    (IdempotencyConflict, 409, "idempotency_conflict"),
    (ReferenceConflict, 409, "reference_conflict"),
    (InvalidTransition, 409, "invalid_transition"),
    (Forbidden, 403, "forbidden"),
)


def _engine_error(exc: EngineError) -> ApiError:
    if isinstance(exc, InvalidRequest):
        return ApiError(422, "invalid_request", exc.message, exc.fields or {"body": exc.message})
    for error_type, status, name in _ERROR_ANSWERS:
        if isinstance(exc, error_type):
            return ApiError(status, name, exc.message)
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


_V, _S, _C, _R, _A, _ADM = (
    Permission.VIEW, Permission.SUBMIT, Permission.CANCEL, Permission.RESOLVE, Permission.APPROVE, Permission.ADMIN,
)  # fmt: skip
#: What each route needs, by (method, route template): any one of the permissions listed. A route of the
#: app that is missing here is refused to everyone (fail closed); ``tests/api/test_operator_auth.py``
#: proves every route is listed. ``/healthz`` and ``/readyz`` need no token at all (:data:`PROBES`); the
#: console's ``/console/`` paths authenticate by their own cookie session. A decision's route needs the
#: permission of its action too (:func:`engine.operators.permission_for_resolution`): checked by its handler.
ROUTE_PERMISSIONS: Mapping[tuple[str, str], frozenset[Permission]] = MappingProxyType({
    ("POST", "/v1/withdrawals"): frozenset({_S}),
    ("GET", "/v1/withdrawals"): frozenset({_V}),
    ("GET", "/v1/withdrawals/{id}"): frozenset({_V}),
    ("POST", "/v1/withdrawals/{id}/cancel"): frozenset({_C}),
    ("POST", "/v1/withdrawals/{id}/resolve"): frozenset({_R, _A}),
    ("GET", "/v1/withdrawals/{id}/events"): frozenset({_V}),
    ("GET", "/v1/events"): frozenset({_V}),
    ("GET", "/metrics"): frozenset({_V}),
    ("GET", "/openapi.json"): frozenset({_V}),
    ("POST", "/v1/batches"): frozenset({_S}),
    ("GET", "/v1/batches/{id}"): frozenset({_V}),
    ("GET", "/v1/batches/{id}/report"): frozenset({_V}),
    ("POST", "/v1/batches/{id}/cancel"): frozenset({_C}),
    ("POST", "/v1/batches/{id}/resolve"): frozenset({_R, _A}),
    ("POST", "/v1/webhooks"): frozenset({_ADM}),
    ("GET", "/v1/webhooks"): frozenset({_V}),
    ("GET", "/v1/webhooks/{id}"): frozenset({_V}),
    ("DELETE", "/v1/webhooks/{id}"): frozenset({_ADM}),
    ("POST", "/v1/webhooks/{id}/rotate-secret"): frozenset({_ADM}),
    ("GET", "/v1/webhooks/{id}/deliveries"): frozenset({_V}),
    ("POST", "/v1/webhooks/{id}/redeliver"): frozenset({_ADM}),
})  # fmt: skip
#: The web console's paths: its own handlers authenticate them (a cookie session, CSRF on every form).
CONSOLE_PREFIX = "/console"


def operator_of(request: web.Request) -> Operator:
    """The operator the authentication middleware put on the request."""
    found = request.get(OPERATOR_KEY)
    if not isinstance(found, Operator):  # a handler reached without the middleware: a wiring bug
        raise ApiError(401, "unauthorized", "no authenticated operator")
    return found


def require(request: web.Request, permission: Permission) -> Operator:
    """The request's operator, if their role holds ``permission``; else a 403 ``forbidden``."""
    operator = operator_of(request)
    if not operator.can(permission):
        raise _forbidden(operator, frozenset({permission}), f"{request.method} {request.path}")
    return operator


def _forbidden(operator: Operator, needed: frozenset[Permission], what: str) -> ApiError:
    names = " or ".join(sorted(p.value for p in needed))
    roles = ", ".join(r.value for r, held in ROLE_PERMISSIONS.items() if held & needed)
    return ApiError(
        403, "forbidden",
        f"operator {operator.name!r} (role {operator.role.value}) may not {what}: it needs the {names} "
        f"permission (roles: {roles})",
    )  # fmt: skip


def _bearer(request: web.Request) -> str | None:
    """The presented bearer token, or None (no header, another scheme, bytes that are not UTF-8)."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    token = presented.strip()
    if scheme.lower() != "bearer" or not token or _utf8(token) is None:
        return None
    return token


def _auth_middleware(shared_token: str | None, operators: OperatorStore | None) -> Any:
    expected = None if shared_token is None else shared_token.encode()

    async def authenticate(token: str) -> Operator | None:
        if expected is not None and hmac.compare_digest(token.encode(), expected):
            return SHARED_TOKEN_OPERATOR
        if operators is not None and token.startswith(TOKEN_PREFIX):
            return await operators.by_token(token)
        return None

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in PROBES or path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/"):
            return await handler(request)
        token = _bearer(request)
        operator = None if token is None else await authenticate(token)
        if operator is None:
            error = ApiError(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required")
            return error.response(headers={"WWW-Authenticate": 'Bearer realm="upbit-withdraw"'})
        request[OPERATOR_KEY] = operator
        match = request.match_info
        if match.http_exception is None:  # an unknown route or method answers 404/405 as before
            resource = match.route.resource
            template = resource.canonical if resource is not None else path
            needed = ROUTE_PERMISSIONS.get((request.method, template))
            if needed is None:
                log.error("api.route_without_permission", method=request.method, route=template)
                return _forbidden(operator, frozenset({Permission.ADMIN}), f"{request.method} {template}").response()
            if not any(operator.can(p) for p in needed):
                return _forbidden(operator, needed, f"{request.method} {template}").response()
        return await handler(request)

    return auth


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
    """POST /v1/withdrawals (attributed to the operator: ``created_by``, and the first event)."""
    withdrawal, reference, metadata = parse_submission(await _body(request), request.app[ENGINE].kinds[WITHDRAWAL])
    key = _idempotency_key(request)
    engine = request.app[ENGINE]
    wf, created = await engine.intake(
        withdrawal, idempotency_key=key, reference=reference, metadata=metadata, operator=operator_of(request).name
    )
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
    """POST /v1/withdrawals/{id}/cancel, with an optional body ``{"note": "..."}``."""
    workflow_id = _workflow_id(request)
    note = await cancel_note(request)
    engine = request.app[ENGINE]
    return _json(
        workflow_view(await engine.cancel(workflow_id, operator=operator_of(request).name, note=note)), status=202
    )


async def cancel_note(request: web.Request) -> str | None:
    """The note of a cancel: no body (or ``{}``) for none, else ``{"note": "..."}``; anything else is 422."""
    body = await _body(request)
    if body is None or body == {}:
        return None
    if not isinstance(body, dict) or set(body) != {"note"}:
        raise ApiError(422, "invalid_request", 'the body must be empty or {"note": "..."}', {"body": "unknown field"})
    return _note(body["note"])


def _note(value: object) -> str | None:
    try:
        return check_note(value)
    except InvalidRequest as exc:
        raise ApiError(422, "invalid_request", "invalid note", {"note": exc.message}) from None


def parse_decision(body: object, actions: list[str]) -> tuple[str, str]:
    """``(action, note)`` of a decision's body ``{"action": ..., "note": ...}``; the note is required (it
    goes into the audit chain with the operator's name). Anything else is a 422 naming the fields."""
    fields: dict[str, str] = {}
    if not isinstance(body, dict):
        body = {}
        fields["body"] = "must be a JSON object"
    for key in sorted(set(body) - {"action", "note"}):
        fields[key] = "unknown field"
    action = body.get("action")
    if not isinstance(action, str) or action not in actions:
        fields["action"] = f"must be {' or '.join(actions)}"
    note = body.get("note")
    try:
        if check_note(note) is None:
            fields["note"] = "is required: say why (it is recorded with your name)"
    except InvalidRequest as exc:
        fields["note"] = exc.message
    if fields:
        example = json.dumps({"action": actions[0] if actions else "...", "note": "..."})
        raise ApiError(422, "invalid_request", f"the body must be like {example}", fields)
    assert isinstance(action, str) and isinstance(note, str)
    return action, note.strip()


async def resolve(request: web.Request) -> web.Response:
    """POST /v1/withdrawals/{id}/resolve with ``{"action": ..., "note": "..."}``: the operator's role must
    allow the action (resubmit/abandon: resolve; approve/reject: approve)."""
    workflow_id = _workflow_id(request)
    engine = request.app[ENGINE]
    actions = [str(a) for a in engine.kinds[WITHDRAWAL].resolutions]
    action, note = parse_decision(await _body(request), actions)
    operator = require(request, permission_for_resolution(action))
    return _json(
        workflow_view(await engine.resolve(workflow_id, action, operator=operator.name, note=note)), status=202
    )


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
    token: str | None,
    metrics_registry: Metrics | None = None,
    max_body_bytes: int = 65536,
    events_keepalive: float = 15.0,
) -> web.Application:
    """The API over ``engine`` (entered by the caller). Operators authenticate with their own tokens (the
    store's ``operators`` table); ``token``, the deprecated shared one (None: none), must be at least 16
    characters and acts as an admin named ``shared-token`` (a warning says so once, here).
    ``events_keepalive``: seconds between keep-alive comments of ``GET /v1/events``."""
    from engine.api_events import add_event_routes  # it imports this module

    if token is not None and len(token) < 16:
        raise ValueError("the API token must be at least 16 characters")
    if token is not None:
        log.warning(
            "api.shared_token_deprecated", operator=SHARED_TOKEN_OPERATOR.name, role=SHARED_TOKEN_OPERATOR.role.value,
            advice="give each person or program an operator of their own: upbit-withdraw operator add NAME --role ROLE",
        )  # fmt: skip
    try:
        operators: OperatorStore | None = operator_store(engine.store)
    except EngineError:  # a store without an operators table (a test double): the shared token only
        operators = None
    middlewares = [_error_middleware(), _auth_middleware(token, operators)]
    app = web.Application(middlewares=middlewares, client_max_size=max_body_bytes)
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
