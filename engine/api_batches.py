"""The HTTP API of payout batches (registered on the main app by :func:`register`)::

    POST /v1/batches                 JSON (a list, or {"items": [...], "max_total": {...}}) or text/csv;
                                     ?skip_invalid=true; Idempotency-Key. 201 new, 200 replay, 409, 413, 422
    GET  /v1/batches/{id}            the batch and its children's counts by state
    GET  /v1/batches/{id}/report     the settlement report: JSON, or CSV with ?format=csv / Accept: text/csv
    POST /v1/batches/{id}/cancel     optional {"note": ...}: 202; 409 when already terminal
    POST /v1/batches/{id}/resolve    {"action": "approve"|"reject", "note": ...}: 202; 409 unless
                                     awaiting_approval; 403 for the batch's own submitter

A refused batch answers 422 ``invalid_request`` with ``error.items``: every bad item (index, reference,
field, message); nothing is stored. A batch's body may be far larger than a withdrawal's, so it has its
own limit (``[batches] max_body_bytes``) and is read here, not by the app's ``client_max_size``.
"""

from __future__ import annotations

import asyncio
import json
import re
from decimal import Decimal
from typing import Any

from aiohttp import web

# A module import: engine.api registers these routes and this module uses its app key and error type,
# so each imports the other as a module (attributes are read at call time, in either import order).
from engine import api
from engine.batch_ops import BATCH_KIND
from engine.core import Engine
from engine.errors import InvalidBatch
from engine.operators import permission_for_resolution

__all__ = ["BATCH_ID_PATTERN", "register"]

BATCH_ID_PATTERN = "bt_[0-9a-f]{1,64}"
_ID_RE = re.compile(BATCH_ID_PATTERN)
_CHUNK = 64 * 1024
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


def _answer(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":"), default=str).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _batch_id(request: web.Request) -> str:
    batch_id = request.match_info["id"]
    if not _ID_RE.fullmatch(batch_id):
        raise api.ApiError(404, "not_found", f"no batch has the id {batch_id[:80]!r}")
    return batch_id


async def _read(request: web.Request, limit: int) -> bytes:
    """The body, up to ``limit`` bytes (413 beyond), read from the stream (the app's own, smaller
    ``client_max_size`` governs only ``request.read()``)."""
    if request.content_length is not None and request.content_length > limit:
        raise api.ApiError(413, "body_too_large", "the body is larger than batches.max_body_bytes")
    body = bytearray()
    while chunk := await request.content.read(_CHUNK):
        body.extend(chunk)
        if len(body) > limit:
            raise api.ApiError(413, "body_too_large", "the body is larger than batches.max_body_bytes")
    return bytes(body)


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "").lower()
    if value not in _TRUE + _FALSE:
        raise api.ApiError(422, "invalid_request", f"invalid {name}", {name: "must be true or false"})
    return value in _TRUE


def _format(request: web.Request) -> str:
    """``csv`` or ``json``: ``?format=`` first, else the ``Accept`` header."""
    wanted = request.query.get("format")
    if wanted is None:
        return "csv" if "text/csv" in request.headers.get("Accept", "") else "json"
    if wanted not in ("csv", "json"):
        raise api.ApiError(422, "invalid_request", "invalid format", {"format": "must be csv or json"})
    return wanted


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise api.ApiError(400, "malformed_json", "the body is not UTF-8 text") from None


def _parse(engine: Engine, text: str, fmt: str) -> tuple[list[Any], dict[str, Decimal]]:
    """The body's items and caps; JSON that does not parse is a 400 (malformed), not an invalid batch."""
    source: object = text
    if fmt == "json":
        try:
            source = json.loads(text)
        except (ValueError, RecursionError):
            raise api.ApiError(400, "malformed_json", "the body is not valid JSON") from None
    return engine.read_batch(source, fmt)


async def submit_batch(request: web.Request) -> web.Response:
    """POST /v1/batches."""
    engine = request.app[api.ENGINE]
    key = api._idempotency_key(request)  # the one reading of the header, shared with withdrawals
    skip_invalid = _flag(request, "skip_invalid")
    fmt = "csv" if request.content_type == "text/csv" else "json"
    text = _text(await _read(request, engine.batch_max_body_bytes))
    try:
        # Off the event loop, like the validation: a batch's body may be megabytes.
        items, caps = await asyncio.to_thread(_parse, engine, text, fmt)
        wf, created = await engine.intake_batch(
            items, skip_invalid=skip_invalid, max_total=caps or None, idempotency_key=key,
            operator=api.operator_of(request).name,
        )  # fmt: skip
    except InvalidBatch as exc:
        body = api.error_body("invalid_request", exc.message, {"items": f"{len(exc.errors)} problem(s)"})
        body["error"]["items"] = exc.errors
        return _answer(body, status=422)
    view = await engine.get_batch(wf.id)
    return _answer(view, status=201 if created else 200, headers={"Location": f"/v1/batches/{wf.id}"})


async def get_batch(request: web.Request) -> web.Response:
    """GET /v1/batches/{id}."""
    return _answer(await request.app[api.ENGINE].get_batch(_batch_id(request)))


async def batch_report(request: web.Request) -> web.Response:
    """GET /v1/batches/{id}/report."""
    fmt = _format(request)
    engine: Engine = request.app[api.ENGINE]
    report = await engine.batch_report(_batch_id(request))
    if fmt == "csv":
        return web.Response(text=engine.batch_report_csv(report), content_type="text/csv", charset="utf-8")
    return _answer(report)


async def cancel_batch(request: web.Request) -> web.Response:
    """POST /v1/batches/{id}/cancel, with an optional body ``{"note": "..."}`` (attributed to the operator,
    as are the cancels of its children)."""
    engine: Engine = request.app[api.ENGINE]
    batch_id = _batch_id(request)
    note = await api.cancel_note(request)
    wf = await engine.cancel_batch(batch_id, operator=api.operator_of(request).name, note=note)
    return _answer(await engine.get_batch(wf.id), status=202)


async def resolve_batch(request: web.Request) -> web.Response:
    """POST /v1/batches/{id}/resolve: an approver's decision for a batch awaiting approval."""
    engine: Engine = request.app[api.ENGINE]
    batch_id = _batch_id(request)
    actions = [str(a) for a in engine.kinds[BATCH_KIND].resolutions]
    action, note = api.parse_decision(await api._body(request), actions)
    operator = api.require(request, permission_for_resolution(action))
    await engine.get_batch(batch_id)  # 404 for an id that is not a batch
    wf = await engine.resolve(batch_id, action, operator=operator.name, note=note)
    return _answer(await engine.get_batch(wf.id), status=202)


def register(app: web.Application) -> None:
    """Add the batch routes to the main app (its error and authentication middlewares apply)."""
    app.router.add_post("/v1/batches", submit_batch)
    app.router.add_get("/v1/batches/{id}", get_batch, allow_head=False)
    app.router.add_get("/v1/batches/{id}/report", batch_report, allow_head=False)
    app.router.add_post("/v1/batches/{id}/cancel", cancel_batch)
    app.router.add_post("/v1/batches/{id}/resolve", resolve_batch)
