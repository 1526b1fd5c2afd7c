"""Where the CLI's workflow commands go: straight to the store, or to a running service over HTTP.

Both backends speak the HTTP API's vocabulary: they take and return the API's JSON views
(:mod:`engine.views`), take list queries as the API's query parameters (parsed by
:func:`engine.query.parse_list_query` on both paths) and fail with :class:`engine.api.ApiError` or an
:class:`~engine.errors.EngineError`, so the CLI renders and maps exit codes once for both.

The store backend opens an :class:`~engine.Engine` with ``run_runner=False`` and no gateways at all (only
the configured account *names*, which a submission is checked against): it writes intents and reads
state; a ``upbit-withdraw run`` service (or any runner on the same store) does the work. It builds no
exchange client and loads no keys: a CLI that only reads and writes the store has no business holding them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from engine.api import ApiError, parse_submission
from engine.bootstrap import open_store, standard_kinds
from engine.clock import SystemClock
from engine.config import Config
from engine.core import Engine
from engine.errors import ConfigError, ServiceUnreachable
from engine.query import parse_list_query
from engine.views import event_view, page_view, workflow_view

__all__ = [
    "API_TOKEN_ENV",
    "Backend",
    "HttpBackend",
    "ServiceUnreachable",
    "StoreBackend",
    "StoreMissing",
    "require_store",
    "sqlite_path",
    "wait_settled",
]

API_TOKEN_ENV = "UPBIT_WITHDRAW_API_TOKEN"  # noqa: S105 - the name of a variable, not a token
#: One list query: the HTTP API's query parameters, in order (``state`` may repeat).
Query = Sequence[tuple[str, str]]


class StoreMissing(ConfigError):
    """The configured store does not exist (only ``run`` and ``migrate`` create one)."""


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` store URL, as :func:`engine.bootstrap.open_store` reads it; None otherwise."""
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def require_store(url: str) -> None:
    """Refuse to go on when the SQLite store is not there (or is an empty file).

    Opening a store creates and migrates it, so without this check a mistyped path (or a relative one
    read from another directory) gave a fresh empty store: ``submit`` said "submitted" to a store no
    runner watches, ``verify-audit`` reported "intact". Only ``run`` and ``migrate`` may create a store.
    A PostgreSQL database must exist before anyone connects, so there is nothing to check there."""
    path = sqlite_path(url)
    if path is not None and (not path.is_file() or path.stat().st_size == 0):
        raise StoreMissing(
            f"no store at {path} (only `upbit-withdraw run` and `upbit-withdraw migrate` create one; "
            "check the path)",
            key="engine.database",
        )


class Backend(Protocol):
    """The workflow commands, in the HTTP API's JSON vocabulary."""

    async def __aenter__(self) -> Backend: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def submit(self, body: Mapping[str, Any], idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
        """(workflow view, True when newly created)."""
        ...

    async def get(self, workflow_id: str) -> dict[str, Any]:
        """The workflow view."""
        ...

    async def page(self, query: Query) -> dict[str, Any]:
        """``{"withdrawals": [...], "next_cursor": ..., "total": ...}`` for the query parameters of
        ``GET /v1/withdrawals``."""
        ...

    async def cancel(self, workflow_id: str) -> dict[str, Any]:
        """Ask to cancel; the workflow view."""
        ...

    async def resolve(self, workflow_id: str, action: str) -> dict[str, Any]:
        """An operator's decision; the workflow view."""
        ...

    async def events(self, workflow_id: str) -> list[dict[str, Any]]:
        """The audit log."""
        ...


class StoreBackend:
    """Reads and writes the store directly (``Engine(run_runner=False)``)."""

    def __init__(self, config: Config) -> None:
        self._url = config.engine.database
        self.engine = Engine(
            store=open_store(config.engine.database),
            gateways={},
            accounts=config.accounts,
            clock=SystemClock(),
            settings=config.workflow,
            policy=config.policy,
            run_runner=False,
            concurrency=config.engine.concurrency,
            lease_seconds=config.engine.lease_seconds,
        )

    async def __aenter__(self) -> StoreBackend:
        require_store(self._url)
        await self.engine.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.__aexit__(*exc)

    async def submit(self, body: Mapping[str, Any], idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
        """Validate (every bad field named), persist, report whether it was new."""
        request, reference, metadata = parse_submission(dict(body))
        wf, created = await self.engine.intake(
            request, idempotency_key=idempotency_key, reference=reference, metadata=metadata
        )
        return workflow_view(wf), created

    async def get(self, workflow_id: str) -> dict[str, Any]:
        """The workflow view."""
        return workflow_view(await self.engine.get(workflow_id))

    async def page(self, query: Query) -> dict[str, Any]:
        """One page, newest first, parsed and checked as the HTTP API does (an unknown cursor included)."""
        where, limit, cursor = parse_list_query(
            query, kind="withdrawal", states=[str(s) for s in self.engine.kinds["withdrawal"].states]
        )
        return page_view(await self.engine.page(where, limit=limit, cursor=cursor))

    async def cancel(self, workflow_id: str) -> dict[str, Any]:
        """Flag for cancellation."""
        return workflow_view(await self.engine.cancel(workflow_id))

    async def resolve(self, workflow_id: str, action: str) -> dict[str, Any]:
        """Record the operator's decision."""
        return workflow_view(await self.engine.resolve(workflow_id, action))

    async def events(self, workflow_id: str) -> list[dict[str, Any]]:
        """Every event so far."""
        return [event_view(e) async for e in self.engine.events(workflow_id, follow=False)]


class HttpBackend:
    """Talks to a running ``upbit-withdraw run`` service."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 15.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"not an http(s) URL: {url!r}", key="--api")
        if not token:
            raise ConfigError(f"set {API_TOKEN_ENV} to the service's API token", key=API_TOKEN_ENV)
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<HttpBackend {self.url}>"

    async def __aenter__(self) -> HttpBackend:
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self, method: str, path: str, *, body: Any = None, headers: Mapping[str, str] | None = None,
        params: Query | None = None,
    ) -> tuple[int, Any]:  # fmt: skip
        if self._session is None:
            raise RuntimeError("use 'async with HttpBackend(...)'")
        data = None if body is None else json.dumps(body).encode()
        sent = {**(headers or {}), **({"Content-Type": "application/json"} if data is not None else {})}
        try:
            async with self._session.request(
                method, f"{self.url}{path}", data=data, headers=sent, params=params
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ServiceUnreachable(f"cannot reach the service at {self.url}: {type(exc).__name__}") from None
        return status, self._decode(status, raw)

    @staticmethod
    def _decode(status: int, raw: bytes) -> Any:
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if status < 400:
            if payload is None:
                raise ServiceUnreachable(f"the service answered {status} without a JSON body")
            return payload
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict):
            raise ApiError(status, str(error.get("name")), str(error.get("message")), error.get("fields"))
        raise ApiError(status, "http_error", f"the service answered {status}")

    async def submit(self, body: Mapping[str, Any], idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
        """POST /v1/withdrawals."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        status, payload = await self._call("POST", "/v1/withdrawals", body=dict(body), headers=headers)
        return payload, status == 201

    async def get(self, workflow_id: str) -> dict[str, Any]:
        """GET /v1/withdrawals/{id}."""
        return dict((await self._call("GET", f"/v1/withdrawals/{workflow_id}"))[1])

    async def page(self, query: Query) -> dict[str, Any]:
        """GET /v1/withdrawals with the query's parameters."""
        return dict((await self._call("GET", "/v1/withdrawals", params=list(query)))[1])

    async def cancel(self, workflow_id: str) -> dict[str, Any]:
        """POST /v1/withdrawals/{id}/cancel."""
        return dict((await self._call("POST", f"/v1/withdrawals/{workflow_id}/cancel"))[1])

    async def resolve(self, workflow_id: str, action: str) -> dict[str, Any]:
        """POST /v1/withdrawals/{id}/resolve."""
        path = f"/v1/withdrawals/{workflow_id}/resolve"
        return dict((await self._call("POST", path, body={"action": action}))[1])

    async def events(self, workflow_id: str) -> list[dict[str, Any]]:
        """GET /v1/withdrawals/{id}/events."""
        return list((await self._call("GET", f"/v1/withdrawals/{workflow_id}/events"))[1]["events"])


async def wait_settled(
    backend: Backend,
    workflow_id: str,
    *,
    on_poll: Callable[[dict[str, Any]], None] | None = None,
    interval: float = 0.25,
) -> dict[str, Any]:
    """Poll until the workflow is terminal or needs an operator; ``on_poll(view)`` after every read.

    Bound it with ``asyncio.timeout``."""
    kind = standard_kinds()["withdrawal"]  # the views the backends speak are the withdrawal's
    while True:
        view = await backend.get(workflow_id)
        if on_poll is not None:
            on_poll(view)
        if kind.settles_in(view["state"]):
            return view
        await asyncio.sleep(interval)
