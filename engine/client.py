"""A typed async client for the service's HTTP API: ``async with WithdrawClient(url, token) as client``.

It returns the engine's own records where they fit (:class:`~engine.models.WithdrawalRequest`,
:class:`~engine.models.State`, :class:`~engine.models.Event`, :class:`~engine.store.base.FeedItem`) and
small frozen views where the API shows less than the record (:class:`WithdrawalView`, :class:`Page`).
``verify_signature`` (from :mod:`engine.webhooks`) checks a webhook delivery's signature on the receiving
side. Errors are the engine's tree (:mod:`engine.errors`): a 404 is a ``WorkflowNotFound`` here as in the
Python API (precisely a ``RemoteNotFound``, which is also a ``ServiceError`` carrying the HTTP status,
the API's error name and per-field messages); a 403 is a ``RemoteForbidden`` (a ``Forbidden``: the token's
operator lacks the permission); no answer at all is ``ServiceUnreachable``.

Retries: reads and submits are retried on a connection failure, a timeout or a 5xx answer (tenacity,
exponential backoff with jitter). A submit is safe to retry because it always carries an
``Idempotency-Key``: the caller's, or one generated per logical :meth:`WithdrawClient.submit` call and
reused by each of its retries, so a retry after a lost answer finds the withdrawal the first attempt
created instead of creating a second one. Cancel and resolve are not retried (a second call after a
first one that acted would answer 409).

:meth:`WithdrawClient.stream` follows ``GET /v1/events`` (Server-Sent Events) and reconnects on its own
with ``Last-Event-ID``, so a dropped connection costs neither a gap nor a duplicate. Every call has a
timeout; the token never appears in a repr, a log line or an error.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import random
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from engine.errors import (
    RemoteForbidden,
    RemoteIdempotencyConflict,
    RemoteInvalidRequest,
    RemoteInvalidTransition,
    RemoteNotFound,
    RemoteReferenceConflict,
    ServiceError,
    ServiceUnavailable,
    ServiceUnreachable,
)
from engine.models import Event, State, WithdrawalRequest
from engine.store.base import FeedItem
from engine.webhooks import verify_signature

__all__ = [
    "Health",
    "Page",
    "SSEMessage",
    "SSEParser",
    "Submitted",
    "WithdrawClient",
    "WithdrawalView",
    "feed_item",
    "verify_signature",
]

log = structlog.get_logger("engine.client")

#: Longest a stream may stay silent (not even a keep-alive comment) before the client reconnects.
STREAM_IDLE = 60.0
#: Cap of the wait between two reconnects of a stream.
RECONNECT_MAX = 5.0


# -- typed results -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WithdrawalView:
    """A withdrawal as the API shows it. ``raw`` is the JSON object exactly as received (fields a newer
    service adds are there before this class knows them)."""

    id: str
    state: State
    request: WithdrawalRequest
    exchange_uuid: str | None
    txid: str | None
    exchange_state: str | None
    reason: str | None
    error: dict[str, Any] | None
    submit_count: int
    cancel_requested: bool
    resolution: str | None
    created_at: datetime
    updated_at: datetime
    lane: str
    reference: str | None = None
    """The caller's payout id, when the service has references (None otherwise)."""
    metadata: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any) -> WithdrawalView:
        """Parse the API's workflow view; ``ServiceUnreachable`` when it is not one."""
        try:
            return cls(
                id=str(data["id"]), state=State(data["state"]), request=WithdrawalRequest.from_dict(data["request"]),
                exchange_uuid=data["exchange_uuid"], txid=data["txid"], exchange_state=data["exchange_state"],
                reason=data["reason"], error=data["error"], submit_count=int(data["submit_count"]),
                cancel_requested=bool(data["cancel_requested"]), resolution=data["resolution"],
                created_at=datetime.fromisoformat(data["created_at"]),
                updated_at=datetime.fromisoformat(data["updated_at"]), lane=str(data["lane"]),
                reference=data.get("reference"), metadata=data.get("metadata"), raw=dict(data),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ServiceUnreachable(f"the service answered an unreadable withdrawal ({type(exc).__name__})") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """One page of ``GET /v1/withdrawals``: newest first; ``next_cursor`` is None on the last page."""

    withdrawals: tuple[WithdrawalView, ...]
    next_cursor: str | None
    total: int | None = None
    """How many withdrawals match the filters, when the service counts them (None otherwise)."""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any) -> Page:
        """Parse a page; ``ServiceUnreachable`` when it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("withdrawals"), list):
            raise ServiceUnreachable("the service answered an unreadable page")
        items = tuple(WithdrawalView.from_json(item) for item in data["withdrawals"])
        total = data.get("total")
        return cls(
            withdrawals=items, next_cursor=data.get("next_cursor"), total=total if isinstance(total, int) else None,
            raw=data,
        )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Submitted:
    """What :meth:`WithdrawClient.submit` did: the withdrawal, whether this call created it, and the
    idempotency key it went under (keep it to retry the submit later without risk)."""

    withdrawal: WithdrawalView
    created: bool
    idempotency_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Health:
    """``GET /healthz``: ``ok`` when the service and its runner are alive; ``detail`` is its JSON."""

    ok: bool
    detail: dict[str, Any]


def _event(data: Mapping[str, Any], prev_hash: str) -> Event:
    return Event(
        workflow_id=str(data["workflow_id"]), seq=int(data["seq"]), at=datetime.fromisoformat(data["at"]),
        trigger=str(data["trigger"]), from_state=data["from"], to_state=str(data["to"]), data=dict(data["data"]),
        prev_hash=prev_hash, hash=str(data["hash"]),
    )  # fmt: skip


def feed_item(cursor: str, payload: Mapping[str, Any]) -> FeedItem:
    """A streamed event (``id`` and parsed ``data`` of ``GET /v1/events``) as the engine's feed record."""
    try:
        reference, batch = payload.get("reference"), payload.get("batch_id")
        return FeedItem(
            cursor,
            _event(payload, str(payload["prev"])),
            str(payload["kind"]),
            str(payload["account"]),
            None if reference is None else str(reference),
            None if batch is None else str(batch),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ServiceUnreachable(f"the service streamed an unreadable event ({type(exc).__name__})") from None


# -- Server-Sent Events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SSEMessage:
    """One dispatched SSE message (comments and keep-alives are not messages)."""

    id: str | None
    event: str
    data: str


class SSEParser:
    """The event-stream format of the HTML standard ("Server-sent events", parsing an event stream):
    lines end in CR, LF or CRLF; ``:`` starts a comment; a blank line dispatches the message; ``data``
    lines join with LF; ``id`` persists as the last event id. Feed it bytes as they arrive."""

    def __init__(self) -> None:
        self._buffer = b""
        self._after_cr = False
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.last_id: str | None = None
        self.comments = 0

    def feed(self, chunk: bytes) -> builtins.list[SSEMessage]:
        """The messages completed by ``chunk``."""
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across two chunks
        self._buffer += chunk
        self._after_cr = False
        messages: builtins.list[SSEMessage] = []
        while True:
            cut = min((i for i in (self._buffer.find(b"\n"), self._buffer.find(b"\r")) if i >= 0), default=-1)
            if cut < 0:
                return messages
            line, end = self._buffer[:cut], self._buffer[cut : cut + 2]
            self._buffer = self._buffer[cut + (2 if end == b"\r\n" else 1) :]
            self._after_cr = end == b"\r" and not self._buffer  # a CR that ends the chunk: its LF may come next
            message = self._line(line.decode("utf-8", errors="replace"))
            if message is not None:
                messages.append(message)

    def _line(self, line: str) -> SSEMessage | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SSEMessage | None:
        if self._id is not None:
            self.last_id = self._id
        message = SSEMessage(self.last_id, self._event or "message", "\n".join(self._data)) if self._data else None
        self._event, self._data = "", []
        return message


# -- the client ----------------------------------------------------------------------------------------


#: (status, the API's error name) -> the class raised; anything else is a plain ServiceError (a 5xx:
#: ServiceUnavailable).
_BY_NAME: dict[tuple[int, str], type[ServiceError]] = {
    (403, "forbidden"): RemoteForbidden,
    (404, "not_found"): RemoteNotFound,
    (409, "idempotency_conflict"): RemoteIdempotencyConflict,
    (409, "invalid_transition"): RemoteInvalidTransition,
    (409, "reference_conflict"): RemoteReferenceConflict,
    (422, "invalid_request"): RemoteInvalidRequest,
}


def _raise_for(status: int, payload: Any) -> None:
    """Map an error answer to the engine's tree (2xx/3xx: nothing)."""
    if status < 400:
        return
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        error = {"name": "http_error", "message": f"the service answered {status}"}
    name, message = str(error.get("name")), str(error.get("message"))
    fields = {str(k): str(v) for k, v in (error.get("fields") or {}).items()}
    kind: type[ServiceError] = _BY_NAME.get((status, name), ServiceError)
    if status >= 500:
        kind = ServiceUnavailable
    raise kind(message, status=status, name=name, fields=fields)


class WithdrawClient:
    """The service's HTTP API, typed. Use ``async with WithdrawClient(url, token) as client``.

    ``timeout`` bounds every call (seconds, connect to last byte); ``retries`` is how many times a read
    or a submit is tried in all when the service cannot be reached or answers 5xx.
    """

    def __init__(self, base_url: str, token: str, *, timeout: float = 15.0, retries: int = 3) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {base_url[:80]!r}")
        if retries < 1:
            raise ValueError("retries must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<WithdrawClient {self.base_url}>"

    async def __aenter__(self) -> WithdrawClient:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- plumbing ------------------------------------------------------------------------------------

    def _retrying(self) -> AsyncRetrying:
        """Up to ``retries`` tries while the service is unreachable or answers 5xx, backing off with jitter."""
        return AsyncRetrying(
            retry=retry_if_exception_type((ServiceUnreachable, ServiceUnavailable)),
            wait=wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.2),
            stop=stop_after_attempt(self.retries),
            reraise=True,
        )

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use 'async with WithdrawClient(...)'")
        return self._session

    async def request(
        self, method: str, path: str, *, body: Any = None, headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | builtins.list[tuple[str, str]] | None = None, retry: bool = False,
    ) -> tuple[int, Any]:  # fmt: skip
        """One API call: ``(status, JSON)`` of a 2xx answer, else the mapped error. With ``retry``, tried
        up to ``retries`` times on ``ServiceUnreachable`` / ``ServiceUnavailable`` (same headers each time)."""
        if not retry:
            return await self._once(method, path, body=body, headers=headers, params=params)
        retrying = self._retrying()
        async for attempt in retrying:
            with attempt:
                return await self._once(method, path, body=body, headers=headers, params=params)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _once(
        self, method: str, path: str, *, body: Any, headers: Mapping[str, str] | None,
        params: Mapping[str, str] | builtins.list[tuple[str, str]] | None,
    ) -> tuple[int, Any]:  # fmt: skip
        data = None if body is None else json.dumps(body).encode()
        sent = {**(headers or {}), **({"Content-Type": "application/json"} if data is not None else {})}
        try:
            async with self._open().request(
                method, f"{self.base_url}{path}", data=data, headers=sent, params=params
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ServiceUnreachable(f"cannot reach the service at {self.base_url}: {type(exc).__name__}") from None
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        _raise_for(status, payload)
        if payload is None:
            raise ServiceUnreachable(f"the service answered {status} without a JSON body")
        return status, payload

    # -- the API -------------------------------------------------------------------------------------

    async def submit(
        self, request: WithdrawalRequest | Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Submitted:
        """POST /v1/withdrawals, retried safely under one Idempotency-Key (the caller's or a new one).

        ``created`` is True when this call created the withdrawal: a replay answer (200) to a retry of a
        generated key means an earlier attempt of this same call created it."""
        key = idempotency_key or f"client-{secrets.token_hex(16)}"
        body = request.to_dict() if isinstance(request, WithdrawalRequest) else dict(request)
        attempts = 0

        async def once() -> tuple[int, Any]:
            nonlocal attempts
            attempts += 1
            return await self._once("POST", "/v1/withdrawals", body=body, headers={"Idempotency-Key": key}, params=None)

        retrying = self._retrying()
        answer: tuple[int, Any] = await retrying(once)
        status, payload = answer
        created = status == 201 or (idempotency_key is None and attempts > 1)
        return Submitted(withdrawal=WithdrawalView.from_json(payload), created=created, idempotency_key=key)

    async def get(self, workflow_id: str) -> WithdrawalView:
        """GET /v1/withdrawals/{id}."""
        return WithdrawalView.from_json((await self.request("GET", f"/v1/withdrawals/{workflow_id}", retry=True))[1])

    async def list(
        self, *, state: State | str | None = None, limit: int = 50, cursor: str | None = None,
        filters: Mapping[str, str | Collection[str]] | None = None,
    ) -> Page:  # fmt: skip
        """GET /v1/withdrawals, newest first. ``filters``: further query parameters the service knows
        (a collection repeats the parameter)."""
        params: builtins.list[tuple[str, str]] = [("limit", str(limit))]
        if state is not None:
            params.append(("state", state.value if isinstance(state, State) else state))
        if cursor is not None:
            params.append(("cursor", cursor))
        for key, value in (filters or {}).items():
            params.extend((key, v) for v in ([value] if isinstance(value, str) else value))
        return Page.from_json((await self.request("GET", "/v1/withdrawals", params=params, retry=True))[1])

    async def cancel(self, workflow_id: str, *, note: str | None = None) -> WithdrawalView:
        """POST /v1/withdrawals/{id}/cancel, with the operator's ``note`` if given (not retried). The token's
        operator needs the cancel permission (else ``RemoteForbidden``)."""
        body = None if note is None else {"note": note}
        path = f"/v1/withdrawals/{workflow_id}/cancel"
        return WithdrawalView.from_json((await self.request("POST", path, body=body))[1])

    async def resolve(self, workflow_id: str, action: str, *, note: str | None = None) -> WithdrawalView:
        """POST /v1/withdrawals/{id}/resolve: ``resubmit``/``abandon`` a needs_review withdrawal, ``approve``/
        ``reject`` one awaiting approval, with the ``note`` the service requires for every decision (it is
        recorded with the operator's name; without one the answer is a ``RemoteInvalidRequest`` on ``note``).
        Not retried. The token's operator needs the resolve (or approve) permission, and never approves
        their own submission (else ``RemoteForbidden``)."""
        body: dict[str, str] = {"action": action}
        if note is not None:
            body["note"] = note
        path = f"/v1/withdrawals/{workflow_id}/resolve"
        return WithdrawalView.from_json((await self.request("POST", path, body=body))[1])

    async def approve(self, workflow_id: str, *, note: str) -> WithdrawalView:
        """Approve a withdrawal awaiting approval (four eyes: the token's operator must not be its submitter)."""
        return await self.resolve(workflow_id, "approve", note=note)

    async def reject(self, workflow_id: str, *, note: str) -> WithdrawalView:
        """Reject a withdrawal awaiting approval: it ends aborted (approval_rejected), nothing sent."""
        return await self.resolve(workflow_id, "reject", note=note)

    async def resolve_batch(self, batch_id: str, action: str, *, note: str | None = None) -> dict[str, Any]:
        """POST /v1/batches/{id}/resolve: ``approve``/``reject`` a batch awaiting approval, with the required
        ``note`` (its JSON view; not retried)."""
        body: dict[str, str] = {"action": action}
        if note is not None:
            body["note"] = note
        return dict((await self.request("POST", f"/v1/batches/{batch_id}/resolve", body=body))[1])

    async def events(self, workflow_id: str) -> builtins.list[Event]:
        """GET /v1/withdrawals/{id}/events: the audit log in order, as the engine's records (each
        ``prev_hash`` is the hash before it, as in the store's chain)."""
        _, payload = await self.request("GET", f"/v1/withdrawals/{workflow_id}/events", retry=True)
        events: builtins.list[Event] = []
        try:
            for item in payload["events"]:
                events.append(_event(item, events[-1].hash if events else ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise ServiceUnreachable(f"the service answered an unreadable audit log ({type(exc).__name__})") from None
        return events

    async def healthz(self) -> Health:
        """GET /healthz: whether the service and its runner are alive (a 503 is an answer, not an error)."""
        try:
            async with self._open().get(f"{self.base_url}/healthz") as response:
                body = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise ServiceUnreachable(f"cannot reach the service at {self.base_url}: {type(exc).__name__}") from None
        return Health(ok=status == 200, detail=dict(body) if isinstance(body, dict) else {})

    async def stream(
        self, *, after: str | None = None, workflow_id: str | None = None, account: str | None = None,
        event_types: Collection[str] | None = None, idle_timeout: float = STREAM_IDLE, batch_id: str | None = None,
        give_up_after: float | None = None,
    ) -> AsyncIterator[FeedItem]:  # fmt: skip
        """Follow GET /v1/events (endless; leave the loop to stop). ``after``: an item's cursor, or
        ``"start"`` for every stored event; None: from now. On a dropped or silent (``idle_timeout``)
        connection it reconnects with ``Last-Event-ID`` = the last cursor it yielded, with capped backoff;
        ``give_up_after``: seconds of failing reconnects before ``ServiceUnreachable`` (None: never).
        An error answer (401, 422, ...) is raised at once."""
        params: builtins.list[tuple[str, str]] = []
        if workflow_id is not None:
            params.append(("workflow", workflow_id))
        if account is not None:
            params.append(("account", account))
        if batch_id is not None:
            params.append(("batch", batch_id))
        params.extend(("type", t) for t in (event_types or ()))
        cursor, failures, failing_since = after, 0, None
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with contextlib.aclosing(self._connect(params, cursor, idle_timeout)) as items:
                    async for item in items:
                        cursor, failures, failing_since = item.cursor, 0, None
                        yield item
            except (ServiceUnreachable, ServiceUnavailable) as exc:
                failing_since = failing_since if failing_since is not None else loop.time()
                if give_up_after is not None and loop.time() - failing_since > give_up_after:
                    raise
                log.info("client.stream_reconnect", error=type(exc).__name__, after=cursor)
            failures += 1
            await asyncio.sleep(min(RECONNECT_MAX, 0.1 * 2 ** min(failures, 10)) * (0.5 + random.random() / 2))  # noqa: S311

    async def _connect(
        self, params: builtins.list[tuple[str, str]], cursor: str | None, idle_timeout: float
    ) -> AsyncGenerator[FeedItem, None]:
        """One connection of :meth:`stream`: its items until the server ends it (an ``error`` event, EOF)."""
        headers = {"Accept": "text/event-stream"}
        if cursor is not None:
            headers["Last-Event-ID"] = cursor
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=idle_timeout)
        parser = SSEParser()
        try:
            async with self._open().get(
                f"{self.base_url}/v1/events", params=params, headers=headers, timeout=timeout
            ) as response:
                if response.status >= 300:
                    raw = await response.read()
                    _raise_for(response.status, _json_or_none(raw))
                    raise ServiceUnreachable(f"the service answered {response.status} to GET /v1/events")
                async for chunk in response.content.iter_any():
                    for message in parser.feed(chunk):
                        if message.event == "error":
                            raise ServiceUnavailable(message.data[:200], status=503, name="unavailable")
                        yield feed_item(message.id or "", json.loads(message.data))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise ServiceUnreachable(f"the stream from {self.base_url} broke: {type(exc).__name__}") from None
        raise ServiceUnreachable(f"the service at {self.base_url} closed the stream")


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
