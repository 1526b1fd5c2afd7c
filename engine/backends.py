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
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from engine.api import ApiError, parse_submission
from engine.batch_ops import BATCH_KIND
from engine.bootstrap import open_store, standard_kinds
from engine.client import WithdrawClient
from engine.clock import SystemClock
from engine.config import Config
from engine.core import Engine
from engine.errors import (
    ConfigError,
    Forbidden,
    InvalidRequest,
    OperatorNotFound,
    ServiceError,
    ServiceUnreachable,
)
from engine.operators import Permission, check_name, permission_for_resolution
from engine.query import parse_list_query
from engine.store.base import FeedItem
from engine.store.operators import operator_store
from engine.views import event_view, page_view, workflow_view

__all__ = [
    "API_TOKEN_ENV",
    "Backend",
    "HttpBackend",
    "ServiceUnreachable",
    "StoreBackend",
    "StoreMissing",
    "is_batch_id",
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


def is_batch_id(workflow_id: str) -> bool:
    """The id names a batch (its kind's id prefix): its decisions go to the batch routes over HTTP."""
    return workflow_id.startswith(f"{standard_kinds()[BATCH_KIND].id_prefix}_")


def require_store(url: str) -> None:
    """Refuse to go on when the SQLite store is not there (or is an empty file).

    Opening a store creates and migrates it, so without this check a mistyped path (or a relative one
    read from another directory) gave a fresh empty store: ``submit`` said "submitted" to a store no
    runner watches, ``verify-audit`` reported "intact". Only ``run`` and ``migrate`` may create a store.
    A PostgreSQL database must exist before anyone connects, so there is nothing to check there."""
    path = sqlite_path(url)
    if path is not None and (not path.is_file() or path.stat().st_size == 0):
        raise StoreMissing(
            f"no store at {path} (only `upbit-withdraw run` and `upbit-withdraw migrate` create one; check the path)",
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

    async def cancel(self, workflow_id: str, *, operator: str | None = None, note: str | None = None) -> dict[str, Any]:
        """Ask to cancel (with who and why); the workflow view."""
        ...

    async def resolve(
        self, workflow_id: str, action: str, *, operator: str | None = None, note: str | None = None
    ) -> dict[str, Any]:
        """An operator's decision (with who and why) on a withdrawal or a batch; its view (a batch's for a
        batch)."""
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

    async def cancel(self, workflow_id: str, *, operator: str | None = None, note: str | None = None) -> dict[str, Any]:
        """Flag for cancellation, attributed to ``operator`` (a known one whose role may cancel)."""
        await self.check_operator(operator, Permission.CANCEL)
        return workflow_view(await self.engine.cancel(workflow_id, operator=operator, note=note))

    async def resolve(
        self, workflow_id: str, action: str, *, operator: str | None = None, note: str | None = None
    ) -> dict[str, Any]:
        """Record the operator's decision, attributed to ``operator`` (a known one whose role allows it), on
        a workflow of any kind: a withdrawal's view, or a batch's."""
        await self.check_operator(operator, permission_for_resolution(action))
        wf = await self.engine.resolve(workflow_id, action, operator=operator, note=note)
        if wf.kind == BATCH_KIND:
            return await self.engine.get_batch(wf.id)
        return workflow_view(wf)

    async def check_operator(self, name: str | None, permission: Permission) -> None:
        """``name`` must be an operator of the store whose role holds ``permission`` (None: unattributed,
        as the store path always was). ``OperatorNotFound`` / ``Forbidden`` otherwise."""
        if name is None:
            return
        operator = await operator_store(self.engine.store).get(check_name(name))
        if operator is None:
            raise OperatorNotFound(f"no operator named {name!r} (see: upbit-withdraw operator list)")
        if not operator.can(permission):
            raise Forbidden(
                f"operator {name!r} (role {operator.role.value}) may not do this: it needs the {permission.value} "
                "permission"
            )

    async def events(self, workflow_id: str) -> list[dict[str, Any]]:
        """Every event so far."""
        return [event_view(e) async for e in self.engine.events(workflow_id, follow=False)]


class HttpBackend:
    """Talks to a running ``upbit-withdraw run`` service: a thin adapter over :class:`engine.client.WithdrawClient`
    that gives the CLI the API's JSON views as they came (``raw``) and its errors as :class:`ApiError`."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 15.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"not an http(s) URL: {url!r}", key="--api")
        if not token:
            raise ConfigError(f"set {API_TOKEN_ENV} to the service's API token", key=API_TOKEN_ENV)
        self.url = url.rstrip("/")
        self.client = WithdrawClient(self.url, token, timeout=timeout)

    def __repr__(self) -> str:
        return f"<HttpBackend {self.url}>"

    async def __aenter__(self) -> HttpBackend:
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.__aexit__(*exc)

    async def submit(self, body: Mapping[str, Any], idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
        """POST /v1/withdrawals (retried under one Idempotency-Key)."""
        with _as_api_error():
            done = await self.client.submit(body, idempotency_key=idempotency_key)
        return done.withdrawal.raw, done.created

    async def get(self, workflow_id: str) -> dict[str, Any]:
        """GET /v1/withdrawals/{id}."""
        with _as_api_error():
            return (await self.client.get(workflow_id)).raw

    async def page(self, query: Query) -> dict[str, Any]:
        """GET /v1/withdrawals with the query's parameters."""
        with _as_api_error():
            _, payload = await self.client.request("GET", "/v1/withdrawals", params=list(query), retry=True)
        return dict(payload)

    async def _call(
        self, method: str, path: str, *, body: Any = None, headers: Mapping[str, str] | None = None,
        params: Query | None = None,
    ) -> tuple[int, Any]:  # fmt: skip
        """One call through the client (the batch commands' routes), its errors as :class:`ApiError`."""
        with _as_api_error():
            return await self.client.request(
                method, path, body=body, headers=headers, params=None if params is None else list(params)
            )

    async def cancel(self, workflow_id: str, *, operator: str | None = None, note: str | None = None) -> dict[str, Any]:
        """POST /v1/withdrawals/{id}/cancel (the token says who: no ``operator`` here)."""
        _no_operator(operator)
        with _as_api_error():
            return (await self.client.cancel(workflow_id, note=note)).raw

    async def resolve(
        self, workflow_id: str, action: str, *, operator: str | None = None, note: str | None = None
    ) -> dict[str, Any]:
        """POST /v1/withdrawals/{id}/resolve, or /v1/batches/{id}/resolve for a batch's id (the token says
        who: no ``operator`` here)."""
        _no_operator(operator)
        with _as_api_error():
            if is_batch_id(workflow_id):
                return await self.client.resolve_batch(workflow_id, action, note=note)
            return (await self.client.resolve(workflow_id, action, note=note)).raw

    async def events(self, workflow_id: str) -> list[dict[str, Any]]:
        """GET /v1/withdrawals/{id}/events, as the service sent them."""
        with _as_api_error():
            _, payload = await self.client.request("GET", f"/v1/withdrawals/{workflow_id}/events", retry=True)
        return list(payload["events"])

    async def stream(
        self, *, after: str | None, workflow_id: str | None, account: str | None, event_types: Sequence[str]
    ) -> AsyncIterator[FeedItem]:
        """GET /v1/events, followed (and resumed after a drop) by the client."""
        with _as_api_error():
            async for item in self.client.stream(
                after=after, workflow_id=workflow_id, account=account, event_types=event_types
            ):
                yield item


def _no_operator(operator: str | None) -> None:
    """Over the API the token is the operator: naming another one is a usage error, not a silent lie."""
    if operator is not None:
        raise InvalidRequest(
            "--operator is for the store path; over --api the token says who you are", field="operator"
        )


@contextlib.contextmanager
def _as_api_error() -> Iterator[None]:
    """The client's :class:`ServiceError` as the :class:`ApiError` the CLI renders for both backends."""
    try:
        yield
    except ServiceError as exc:
        raise ApiError(exc.status, exc.name, exc.detail, exc.fields) from None


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
