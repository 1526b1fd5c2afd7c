"""The one exception hierarchy of the engine.

Every error the engine raises derives from :class:`EngineError`. Exchange errors say, in their type,
what is known about the outcome of the call, because that decides whether a withdrawal may be retried::

    EngineError
    ├── ConfigError                      bad configuration; names the key
    ├── InvalidRequest                   a WithdrawalRequest failed validation; names the field
    │   └── InvalidBatch                 a payout batch failed validation; names every bad item and field
    ├── IdempotencyConflict              known idempotency key, different request
    ├── ReferenceConflict                the account already has a withdrawal with this reference
    ├── WorkflowNotFound
    ├── WebhookNotFound                  no live webhook subscription has this id
    ├── OperatorNotFound                 no operator has this name
    ├── Forbidden                        the operator's role does not allow this (HTTP 403)
    ├── InvalidTransition                trigger not allowed from the current state
    │   └── GuardRejected                the transition exists, its guard said no
    ├── WaitTimeout                      stopped waiting for a workflow to settle; it goes on
    ├── ServiceUnreachable               the HTTP service (CLI ``--api``) could not be reached or read
    ├── StoreError                       the store failed (a driver error never leaves the store as itself)
    │   ├── StaleVersion                 compare-and-set lost: someone else moved the workflow
    │   ├── LaneBusy                     another unresolved submit holds the lane (design §3.3)
    │   ├── StoreUnavailable             cannot reach or write the store now (connection lost, disk full):
    │   │                                nothing is wrong with the request; the same call may work later
    │   ├── StoreInUse                   another runner process owns this SQLite store
    │   └── InvalidCursor                a feed cursor that is malformed or names no stored event
    └── ExchangeError                    anything from talking to Upbit (status, name, message, endpoint)
        ├── ExchangeRefused              a 4xx with an Upbit error object: nothing was created
        │   └── ExchangeNotFound         404 (withdraw_not_found, currency_not_found)
        ├── ExchangeThrottled            429: not executed; retry after ``retry_after`` seconds
        │   └── ExchangeBlocked          418: every call of the account paused for ``retry_after``
        └── OutcomeUnknown               timeout, reset, 5xx, unreadable answer: the call may have acted
            ├── ExchangeTimeout
            ├── ExchangeConnectionError
            ├── ExchangeServerError      5xx
            └── ExchangeBadResponse      2xx/4xx body we could not read

The typed HTTP client (:mod:`engine.client`) raises the same semantic classes as the local engine, so a
caller catches ``WorkflowNotFound`` whether it runs the engine or talks to the service::

    EngineError
    ├── ServiceUnreachable               the HTTP service could not be reached, or answered nonsense
    └── ServiceError                     the HTTP service answered an error (status, name, message, fields)
        ├── ServiceUnavailable           5xx: a submission may or may not have been stored (retry only
        │                                with the same Idempotency-Key)
        ├── RemoteInvalidRequest         422; also an InvalidRequest
        ├── RemoteNotFound               404; also a WorkflowNotFound
        ├── RemoteIdempotencyConflict    409 idempotency_conflict; also an IdempotencyConflict
        ├── RemoteReferenceConflict      409 reference_conflict; also a ReferenceConflict
        ├── RemoteInvalidTransition      409 invalid_transition; also an InvalidTransition
        └── RemoteForbidden              403 forbidden; also a Forbidden

A class docstring is its default message (as in procrastinate), so every error reads well without one.
No error ever carries a key, a secret or a token: the client builds them from status, Upbit's error name
and message, and the endpoint path only.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EngineError",
    "ExchangeBadResponse",
    "ExchangeBlocked",
    "ExchangeConnectionError",
    "ExchangeError",
    "ExchangeNotFound",
    "ExchangeRefused",
    "ExchangeServerError",
    "ExchangeThrottled",
    "ExchangeTimeout",
    "Forbidden",
    "GuardRejected",
    "IdempotencyConflict",
    "InvalidBatch",
    "InvalidCursor",
    "InvalidRequest",
    "InvalidTransition",
    "LaneBusy",
    "OperatorNotFound",
    "OutcomeUnknown",
    "ReferenceConflict",
    "RemoteForbidden",
    "RemoteIdempotencyConflict",
    "RemoteInvalidRequest",
    "RemoteInvalidTransition",
    "RemoteNotFound",
    "RemoteReferenceConflict",
    "ServiceError",
    "ServiceUnavailable",
    "ServiceUnreachable",
    "StaleVersion",
    "StoreError",
    "StoreInUse",
    "StoreUnavailable",
    "WaitTimeout",
    "WebhookNotFound",
    "WorkflowNotFound",
]


class EngineError(Exception):
    """The engine failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip().splitlines()[0])

    @property
    def message(self) -> str:
        """The human-readable message."""
        return str(self.args[0])


class ConfigError(EngineError):
    """The configuration is invalid."""

    def __init__(self, message: str | None = None, *, key: str | None = None) -> None:
        self.key = key
        text = message or "invalid value"
        super().__init__(f"{key}: {text}" if key else text)


class InvalidRequest(EngineError):
    """The withdrawal request is invalid.

    ``field`` names the one bad field; ``fields`` (field -> problem) is set when several were checked at
    once (a list query), so an answer can name every one of them instead of the first.
    """

    def __init__(
        self, message: str | None = None, *, field: str | None = None, fields: dict[str, str] | None = None
    ) -> None:
        self.field = field if field is not None else next(iter(fields or {}), None)
        self.fields = dict(fields) if fields else ({field: message or "invalid value"} if field else {})
        text = message or "invalid value"
        super().__init__(f"{field}: {text}" if field else text)


class IdempotencyConflict(EngineError):
    """This idempotency key was already used for a different request."""


class ReferenceConflict(EngineError):
    """The account already has a withdrawal with this reference (under another idempotency key)."""


class WaitTimeout(EngineError):
    """Stopped waiting; the workflow goes on."""


class ServiceUnreachable(EngineError):
    """The service (or the exchange) could not be reached."""


class WorkflowNotFound(EngineError):
    """No workflow has this id."""


class InvalidTransition(EngineError):
    """That trigger is not allowed from the workflow's current state."""


class StoreError(EngineError):
    """The store failed."""


class StaleVersion(StoreError):
    """The workflow changed since it was read (compare-and-set lost)."""


class LaneBusy(StoreError):
    """Another unresolved submit holds this lane (account, currency, net_type, amount)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or written right now; try again later."""


class StoreInUse(StoreError):
    """Another runner process owns this store."""


class ExchangeError(EngineError):
    """The exchange call failed."""

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int | None = None,
        name: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.status = status
        self.name = name
        self.endpoint = endpoint
        parts = [p for p in (endpoint, str(status) if status else None, name) if p]
        base = message or (self.__doc__ or "").strip().splitlines()[0]
        super().__init__(f"{' '.join(parts)}: {base}" if parts else base)
        self.detail = base

    def as_dict(self) -> dict[str, str | int | None]:
        """A JSON-ready view for events and API answers."""
        return {
            "error": type(self).__name__,
            "status": self.status,
            "name": self.name,
            "message": self.detail,
            "endpoint": self.endpoint,
        }


class ExchangeRefused(ExchangeError):
    """The exchange refused the request; nothing was created."""


class ExchangeNotFound(ExchangeRefused):
    """The exchange does not know that object."""


class ExchangeThrottled(ExchangeError):
    """The exchange throttled the request (429); it was not executed."""

    def __init__(self, message: str | None = None, *, retry_after: float = 1.0, **kw: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]


class ExchangeBlocked(ExchangeThrottled):
    """The exchange blocked the account for a while (418) after repeated throttling."""


class OutcomeUnknown(ExchangeError):
    """The call may or may not have acted at the exchange; it must not be repeated blindly."""


class ExchangeTimeout(OutcomeUnknown):
    """The exchange did not answer in time."""


class ExchangeConnectionError(OutcomeUnknown):
    """The connection to the exchange failed or was dropped."""


class ExchangeServerError(OutcomeUnknown):
    """The exchange answered with a server error (5xx)."""


class ExchangeBadResponse(OutcomeUnknown):
    """The exchange's answer could not be read."""


class GuardRejected(InvalidTransition):
    """The transition exists but its guard refused it."""


class InvalidBatch(InvalidRequest):
    """The payout batch is invalid; ``errors`` names every bad item and field."""

    def __init__(self, message: str | None = None, *, errors: list[dict[str, object]] | None = None) -> None:
        self.errors: list[dict[str, object]] = list(errors or [])
        super().__init__(message or f"{len(self.errors)} item(s) of the batch are invalid", field="items")


class InvalidCursor(StoreError):
    """This cursor is malformed or names no position of this store (the API answers 422)."""


class ServiceError(EngineError):
    """The service answered with an error.

    ``status`` is the HTTP status, ``name`` the API's stable error name (``not_found``, ...), ``fields`` the
    per-field messages of a 422; ``detail`` is the service's sentence as it sent it."""

    def __init__(
        self, message: str | None = None, *, status: int = 0, name: str = "http_error",
        fields: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        detail = message or (self.__doc__ or "").strip().splitlines()[0]
        super().__init__(detail)  # first: a semantic base class (InvalidRequest) sets attributes of its own
        self.status = status
        self.name = name
        self.fields = dict(fields or {})
        self.detail = detail


class ServiceUnavailable(ServiceError):
    """The service could not complete the call (5xx); a submission may or may not have been stored."""


class RemoteInvalidRequest(ServiceError, InvalidRequest):
    """The service refused the request as invalid (422)."""

    def __init__(self, message: str | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.field = next(iter(self.fields), None)


class RemoteNotFound(ServiceError, WorkflowNotFound):
    """The service knows no such workflow (404)."""


class RemoteIdempotencyConflict(ServiceError, IdempotencyConflict):
    """The service has this idempotency key for a different request (409)."""


class RemoteReferenceConflict(ServiceError, ReferenceConflict):
    """The service says this reference is already used on the account (409 reference_conflict)."""


class RemoteInvalidTransition(ServiceError, InvalidTransition):
    """The service refused the action in the workflow's current state (409)."""


class WebhookNotFound(EngineError):
    """No live webhook subscription has this id."""


class OperatorNotFound(EngineError):
    """No operator has this name."""


class Forbidden(EngineError):
    """This operator's role does not allow this action (the HTTP API answers 403 ``forbidden``)."""


class RemoteForbidden(ServiceError, Forbidden):
    """The service refused the action for this token's operator (403)."""
