"""The webhook routes of the HTTP API (registered by ``create_app``; same token, same error shape)::

    POST   /v1/webhooks                          {"url", "events"?, "secret"?}: 201, the secret shown ONCE
    GET    /v1/webhooks                          live subscriptions (API and config ones), never a secret
    GET    /v1/webhooks/{id}                     404 when unknown or deleted
    DELETE /v1/webhooks/{id}                     200 (the deleted one); 409 for a subscription from the config file
    POST   /v1/webhooks/{id}/rotate-secret       {"secret"?, "keep_previous"?: true}: the new secret, once
    GET    /v1/webhooks/{id}/deliveries          ?status=&limit=&cursor=: the delivery log, newest first
    POST   /v1/webhooks/{id}/redeliver           {"event_ids": [...]} or {"since", "until"?}: 202

Secrets are stored as given (HMAC signing needs them, so they cannot be hashed), answered only by the
request that creates or rotates them, and never logged or listed. Targets must be http(s) URLs; loopback
and private addresses are refused unless ``webhook_delivery.allow_private_targets``.
"""

from __future__ import annotations

import json
import re
import secrets as secrets_module
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from engine.errors import InvalidRequest, WebhookNotFound
from engine.store.base import Store
from engine.store.webhooks import STATUSES, Delivery, Subscription, WebhookStore, webhook_store
from engine.webhook_delivery import DeliverySettings
from engine.webhooks import EVENT_TYPES, TRANSITION, target_problem

__all__ = ["WEBHOOK_SETTINGS", "WEBHOOK_WAKE", "delivery_view", "register_webhook_routes", "subscription_view"]

WEBHOOK_SETTINGS = web.AppKey("webhook_settings", DeliverySettings)
#: Set by the service: wakes its delivery worker (after a redelivery request).
WEBHOOK_WAKE: web.AppKey[Callable[[], None]] = web.AppKey("webhook_wake")
_STORE: web.AppKey[Store] = web.AppKey("webhook_store")
_ID_RE = re.compile(r"(wh|cfg)_[A-Za-z0-9_-]{1,64}")
_SECRET_RE = re.compile(r"[\x21-\x7e]{16,256}")
_MAX_IDS = 1000


def register_webhook_routes(app: web.Application, store: Store) -> None:
    """Add the ``/v1/webhooks`` routes over ``store`` to ``app``."""
    app[_STORE] = store
    app.router.add_post("/v1/webhooks", create_webhook)
    app.router.add_get("/v1/webhooks", list_webhooks, allow_head=False)
    app.router.add_get("/v1/webhooks/{id}", get_webhook, allow_head=False)
    app.router.add_delete("/v1/webhooks/{id}", delete_webhook)
    app.router.add_post("/v1/webhooks/{id}/rotate-secret", rotate_secret)
    app.router.add_get("/v1/webhooks/{id}/deliveries", list_deliveries, allow_head=False)
    app.router.add_post("/v1/webhooks/{id}/redeliver", redeliver)


def _iso(value: float | None) -> str | None:
    return None if value is None else datetime.fromtimestamp(value, UTC).isoformat()


def subscription_view(sub: Subscription) -> dict[str, Any]:
    """A subscription as the API shows it: never its secrets."""
    return {
        "id": sub.id, "url": sub.url, "events": list(sub.events), "source": sub.source,
        "created_at": _iso(sub.created_at), "secrets": len(sub.secrets),
    }  # fmt: skip


def delivery_view(d: Delivery) -> dict[str, Any]:
    """One line of the delivery log."""
    return {
        "id": d.id, "event_id": d.event_id, "workflow_id": d.workflow_id, "seq": d.seq, "type": d.event_type,
        "status": d.status, "attempts": d.attempts, "event_at": _iso(d.event_at),
        "last_attempt_at": _iso(d.last_attempt_at), "last_status": d.last_status, "last_error": d.last_error,
        "next_attempt_at": _iso(d.next_attempt_at), "delivered_at": _iso(d.delivered_at),
        "payload": json.loads(d.body),
    }  # fmt: skip


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda v: json.dumps(v, separators=(",", ":")))


def _error(status: int, name: str, message: str) -> web.Response:
    return _json({"error": {"name": name, "message": message, "fields": {}}}, status=status)


def _hooks(request: web.Request) -> WebhookStore:
    return webhook_store(request.app[_STORE])


def _settings(request: web.Request) -> DeliverySettings:
    return request.app.get(WEBHOOK_SETTINGS) or DeliverySettings()


async def _body(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    raw = await request.read()
    if not raw and not required:
        return {}
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidRequest("the body is not valid JSON", field="body") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object", field="body")
    return body


def _sub_id(request: web.Request) -> str | None:
    value = request.match_info["id"]
    return value if _ID_RE.fullmatch(value) else None


def _not_found(sub_id: str) -> web.Response:
    return _error(404, "not_found", f"no webhook subscription {sub_id[:80]!r}")


def _events(value: Any) -> tuple[str, ...]:
    if value is None:
        return (TRANSITION,)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"must be a non-empty list of {list(EVENT_TYPES)}", field="events")
    unknown = sorted(set(value) - set(EVENT_TYPES))
    if unknown:
        raise InvalidRequest(f"unknown event types {unknown} (known: {list(EVENT_TYPES)})", field="events")
    return tuple(dict.fromkeys(value))


def _secret(value: Any) -> str:
    if value is None:
        return secrets_module.token_urlsafe(32)
    if not isinstance(value, str) or not _SECRET_RE.fullmatch(value):
        raise InvalidRequest("must be 16-256 printable ASCII characters", field="secret")
    return value


async def create_webhook(request: web.Request) -> web.Response:
    """POST /v1/webhooks."""
    body = await _body(request)
    unknown = sorted(set(body) - {"url", "events", "secret"})
    if unknown:
        raise InvalidRequest(f"unknown keys {unknown}", field="body")
    url = body.get("url")
    if not isinstance(url, str):
        raise InvalidRequest("must be a string", field="url")
    problem = target_problem(url, allow_private=_settings(request).allow_private_targets)
    if problem is not None:
        raise InvalidRequest(problem, field="url")
    secret = _secret(body.get("secret"))
    sub = Subscription(
        id=f"wh_{secrets_module.token_hex(8)}", url=url, events=_events(body.get("events")), secrets=(secret,),
        source="api", created_at=time.time(),
    )  # fmt: skip
    stored = await _hooks(request).create_subscription(sub)
    view = subscription_view(stored) | {"secret": secret}
    response = _json(view, status=201)
    response.headers["Location"] = f"/v1/webhooks/{stored.id}"
    response.headers["Cache-Control"] = "no-store"
    return response


async def list_webhooks(request: web.Request) -> web.Response:
    """GET /v1/webhooks."""
    return _json({"items": [subscription_view(sub) for sub in await _hooks(request).list_subscriptions()]})


async def get_webhook(request: web.Request) -> web.Response:
    """GET /v1/webhooks/{id}."""
    sub_id = _sub_id(request)
    if sub_id is None:
        return _not_found(request.match_info["id"])
    try:
        return _json(subscription_view(await _hooks(request).get_subscription(sub_id)))
    except WebhookNotFound:
        return _not_found(sub_id)


async def delete_webhook(request: web.Request) -> web.Response:
    """DELETE /v1/webhooks/{id}."""
    sub_id = _sub_id(request)
    if sub_id is None:
        return _not_found(request.match_info["id"])
    hooks = _hooks(request)
    try:
        sub = await hooks.get_subscription(sub_id)
        if sub.source == "config":
            return _error(409, "conflict", "this subscription comes from the config file; remove it there")
        await hooks.delete_subscription(sub_id, at=time.time())
    except WebhookNotFound:
        return _not_found(sub_id)
    return _json(subscription_view(sub))


async def rotate_secret(request: web.Request) -> web.Response:
    """POST /v1/webhooks/{id}/rotate-secret: a new current secret; the old one stays valid beside it
    (both signatures are sent) unless ``keep_previous`` is false."""
    sub_id = _sub_id(request)
    if sub_id is None:
        return _not_found(request.match_info["id"])
    body = await _body(request, required=False)
    unknown = sorted(set(body) - {"secret", "keep_previous"})
    if unknown:
        raise InvalidRequest(f"unknown keys {unknown}", field="body")
    keep = body.get("keep_previous", True)
    if not isinstance(keep, bool):
        raise InvalidRequest("must be true or false", field="keep_previous")
    secret = _secret(body.get("secret"))
    hooks = _hooks(request)
    try:
        sub = await hooks.get_subscription(sub_id)
        if sub.source == "config":
            return _error(409, "conflict", "this subscription's secret comes from the config file")
        await hooks.set_secrets(sub_id, [secret, sub.secrets[0]] if keep else [secret])
    except WebhookNotFound:
        return _not_found(sub_id)
    response = _json({"id": sub_id, "secret": secret, "secrets": 2 if keep else 1})
    response.headers["Cache-Control"] = "no-store"
    return response


def _int_param(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise InvalidRequest(f"must be an integer from {low} to {high}", field=name)
    return int(raw)


async def list_deliveries(request: web.Request) -> web.Response:
    """GET /v1/webhooks/{id}/deliveries?status=&limit=&cursor=."""
    sub_id = _sub_id(request)
    if sub_id is None:
        return _not_found(request.match_info["id"])
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"must be one of {list(STATUSES)}", field="status")
    limit = _int_param(request, "limit", 100, 1, 1000) or 100
    cursor = _int_param(request, "cursor", None, 1, 2**62)
    hooks = _hooks(request)
    try:
        await hooks.get_subscription(sub_id)
    except WebhookNotFound:
        return _not_found(sub_id)
    rows = await hooks.deliveries(sub_id, status=status, limit=limit + 1, before_id=cursor)
    page = rows[:limit]
    next_cursor = str(page[-1].id) if len(rows) > limit else None
    return _json({"items": [delivery_view(d) for d in page], "next_cursor": next_cursor})


def _time(value: Any, field: str) -> float | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InvalidRequest("must be an ISO-8601 time with a UTC offset", field=field)
    return parsed.timestamp()


async def redeliver(request: web.Request) -> web.Response:
    """POST /v1/webhooks/{id}/redeliver: by event ids, or by the events' time range [since, until)."""
    sub_id = _sub_id(request)
    if sub_id is None:
        return _not_found(request.match_info["id"])
    body = await _body(request)
    unknown = sorted(set(body) - {"event_ids", "since", "until"})
    if unknown:
        raise InvalidRequest(f"unknown keys {unknown}", field="body")
    ids = body.get("event_ids")
    since, until = _time(body.get("since"), "since"), _time(body.get("until"), "until")
    if ids is not None:
        if not isinstance(ids, list) or not 0 < len(ids) <= _MAX_IDS or not all(isinstance(i, str) for i in ids):
            raise InvalidRequest(f"must be a list of 1-{_MAX_IDS} event ids", field="event_ids")
    elif since is None:
        raise InvalidRequest("give event_ids, or since (and optionally until)", field="body")
    try:
        count = await _hooks(request).redeliver(sub_id, at=time.time(), event_ids=ids, since=since, until=until)
    except WebhookNotFound:
        return _not_found(sub_id)
    wake = request.app.get(WEBHOOK_WAKE)
    if wake is not None:
        wake()
    return _json({"redelivered": count}, status=202)
