"""The withdrawal's vocabulary: its states, abort reasons, resolutions, reconcile modes, request and data.

Everything here is the withdrawal kind's own (``workflows.withdrawal.KIND`` tells the engine what it
needs through :class:`engine.kinds.WorkflowKind`); the engine treats a state as a plain string and a
request as an opaque value. A :class:`WithdrawalRequest` validates itself on construction, so an invalid
request can never reach the store, let alone the exchange.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, TypedDict, cast

from engine.errors import InvalidRequest

__all__ = [
    "EXCHANGE_NAME_PATTERN",
    "MAX_ADDRESS_LEN",
    "MAX_AMOUNT",
    "MAX_DECIMALS",
    "MAX_SECONDARY_LEN",
    "NON_TERMINAL",
    "TERMINAL",
    "AbortReason",
    "ApprovalInfo",
    "ApprovalRequest",
    "ReconcileInfo",
    "ReconcileMode",
    "Resolution",
    "State",
    "TransactionType",
    "WithdrawalData",
    "WithdrawalRequest",
    "data_of",
]

_CODE_RE = re.compile(r"[A-Z0-9]{1,32}")
_ACCOUNT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_DECIMAL_RE = re.compile(r"[0-9]{1,30}(\.[0-9]{1,30})?")
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
MAX_ADDRESS_LEN = 256
MAX_SECONDARY_LEN = 128
MAX_DECIMALS = 18
MAX_AMOUNT = Decimal(10) ** 18


class State(StrEnum):
    """Workflow states: engine states in lower case, exchange states in Upbit's upper case."""

    PENDING = "pending"
    VERIFYING_ADDRESS = "verifying_address"
    CHECKING_WALLET = "checking_wallet"
    AWAITING_APPROVAL = "awaiting_approval"
    SUBMITTING = "submitting"
    RECONCILING = "reconciling"
    WAITING = "WAITING"
    PROCESSING = "PROCESSING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    ABORTED = "aborted"
    NEEDS_REVIEW = "needs_review"

    @property
    def is_terminal(self) -> bool:
        """DONE, FAILED, CANCELLED, REJECTED and aborted are final."""
        return self in TERMINAL

    @property
    def is_settled(self) -> bool:
        """Terminal, or waiting for an operator (``needs_review``, ``awaiting_approval``): nothing happens
        until someone acts. Such a workflow is settled while no resolution is recorded (``KIND.is_settled``)."""
        return self in TERMINAL or self in (State.NEEDS_REVIEW, State.AWAITING_APPROVAL)

    @property
    def after_submit(self) -> bool:
        """States in which a POST may have reached the exchange."""
        return self in _AFTER_SUBMIT


TERMINAL = frozenset({State.DONE, State.FAILED, State.CANCELLED, State.REJECTED, State.ABORTED})
NON_TERMINAL = frozenset(State) - TERMINAL
_AFTER_SUBMIT = frozenset({State.SUBMITTING, State.RECONCILING, State.WAITING, State.PROCESSING, State.NEEDS_REVIEW})


class AbortReason(StrEnum):
    """Why a workflow ended in ``aborted``. Every abort means: nothing was sent, or it was refused."""

    ADDRESS_NOT_ALLOWED = "address_not_allowed"
    WALLET_UNAVAILABLE = "wallet_unavailable"
    CHANCE_DENIED = "chance_denied"
    POLICY_DENIED = "policy_denied"
    BELOW_MINIMUM = "below_minimum"
    TOO_MANY_DECIMALS = "too_many_decimals"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    INVALID_REQUEST = "invalid_request"
    SUBMIT_REFUSED = "submit_refused"
    DRY_RUN = "dry_run"
    ABANDONED = "abandoned"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    APPROVAL_REJECTED = "approval_rejected"
    APPROVAL_EXPIRED = "approval_expired"


class TransactionType(StrEnum):
    """``default``: on-chain with a fee; ``internal``: Upbit-to-Upbit, no fee."""

    DEFAULT = "default"
    INTERNAL = "internal"


def _parse_amount(value: object) -> Decimal:
    if isinstance(value, bool | float | int):
        raise InvalidRequest(f"must be a Decimal or a decimal string, not {type(value).__name__}", field="amount")
    if isinstance(value, str):
        if not _DECIMAL_RE.fullmatch(value):
            raise InvalidRequest(f"not a plain positive decimal: {value[:40]!r}", field="amount")
        value = Decimal(value)
    if not isinstance(value, Decimal):
        raise InvalidRequest(f"must be a Decimal or a decimal string, not {type(value).__name__}", field="amount")
    try:
        ok = value.is_finite() and value > 0
    except InvalidOperation:
        ok = False
    if not ok:
        raise InvalidRequest("must be a finite number greater than zero", field="amount")
    if value >= MAX_AMOUNT:
        raise InvalidRequest("is absurdly large", field="amount")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > MAX_DECIMALS:
        raise InvalidRequest(f"has more than {MAX_DECIMALS} decimal places", field="amount")
    return value


def _check_code(value: object, name: str) -> str:
    if not isinstance(value, str) or not _CODE_RE.fullmatch(value):
        raise InvalidRequest("must be 1-32 upper-case letters A-Z or digits", field=name)
    return value


def _check_token(value: object, name: str, max_len: int) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest("must be a non-empty string", field=name)
    if len(value) > max_len:
        raise InvalidRequest(f"is longer than {max_len} characters", field=name)
    if not _PRINTABLE_ASCII.fullmatch(value):
        raise InvalidRequest(
            "may only hold printable ASCII without spaces (no whitespace, control or look-alike unicode characters)",
            field=name,
        )
    return value


#: Exchange names as Upbit's allowlist shows them ("Binance", "빗썸"): printable ASCII and Hangul, inner
#: spaces. The OpenAPI document carries the very same pattern, so the two cannot disagree.
EXCHANGE_NAME_PATTERN = "[!-~\uac00-\ud7a3](?:[ !-~\uac00-\ud7a3]{0,126}[!-~\uac00-\ud7a3])?"
_EXCHANGE_NAME_RE = re.compile(EXCHANGE_NAME_PATTERN)


def _is_plain_name(value: object) -> bool:
    """A display name: no control, format (bidi), private-use or unassigned characters, no outer spaces."""
    return isinstance(value, str) and _EXCHANGE_NAME_RE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class WithdrawalRequest:
    """What the caller asks for. Validated on construction; errors name the field.

    ``secondary_address`` (tag/memo) may be omitted: the registered one is used when the allowlist has
    one. ``account`` names the configured exchange account that pays.
    """

    currency: str
    net_type: str
    amount: Decimal
    address: str
    secondary_address: str | None = None
    transaction_type: TransactionType = TransactionType.DEFAULT
    account: str = "default"
    exchange_name: str | None = None

    def __post_init__(self) -> None:
        _check_code(self.currency, "currency")
        _check_code(self.net_type, "net_type")
        object.__setattr__(self, "amount", _parse_amount(self.amount))
        _check_token(self.address, "address", MAX_ADDRESS_LEN)
        if self.secondary_address is not None:
            _check_token(self.secondary_address, "secondary_address", MAX_SECONDARY_LEN)
        try:
            object.__setattr__(self, "transaction_type", TransactionType(self.transaction_type))
        except ValueError:
            raise InvalidRequest("must be 'default' or 'internal'", field="transaction_type") from None
        if not isinstance(self.account, str) or not _ACCOUNT_RE.fullmatch(self.account):
            raise InvalidRequest("must be 1-64 of a-z, 0-9, '_' or '-'", field="account")
        if self.exchange_name is not None and not _is_plain_name(self.exchange_name):
            raise InvalidRequest(
                "must be 1-128 printable ASCII or Hangul characters (inner spaces allowed)",
                field="exchange_name",
            )

    @property
    def lane(self) -> str:
        """(account, currency, net_type, amount): at most one unresolved submit per lane (design §3.3)."""
        return f"{self.account}|{self.currency}|{self.net_type}|{format(self.amount.normalize(), 'f')}"

    def to_dict(self) -> dict[str, str | None]:
        """JSON-ready, amount as an exact string."""
        return {
            "currency": self.currency,
            "net_type": self.net_type,
            "amount": format(self.amount, "f"),
            "address": self.address,
            "secondary_address": self.secondary_address,
            "transaction_type": self.transaction_type.value,
            "account": self.account,
            "exchange_name": self.exchange_name,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WithdrawalRequest:
        """Build from JSON-like data; unknown keys are refused so typos do not pass silently."""
        if not isinstance(data, dict):
            raise InvalidRequest("must be a JSON object")
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])
        missing = [k for k in ("currency", "net_type", "amount", "address") if data.get(k) in (None, "")]
        if missing:
            raise InvalidRequest("is required", field=missing[0])
        kwargs = {k: v for k, v in data.items() if v is not None}
        return cls(**kwargs)

    @property
    def brief(self) -> str:
        """``CUR/NET amount``: how a workflow's repr names its request (no address)."""
        return f"{self.currency}/{self.net_type} {format(self.amount, 'f')}"

    def same_as(self, other: WithdrawalRequest) -> bool:
        """Equal requests (amounts compared by value: "1.0" == "1")."""
        return self.to_dict() | {"amount": None} == other.to_dict() | {"amount": None} and (self.amount == other.amount)


class Resolution(StrEnum):
    """An operator's decision: ``resubmit``/``abandon`` a workflow in ``needs_review``; ``approve``/``reject``
    one in ``awaiting_approval`` (four eyes: never by its submitter)."""

    RESUBMIT = "resubmit"
    ABANDON = "abandon"
    APPROVE = "approve"
    REJECT = "reject"


class ReconcileMode(StrEnum):
    """Why a POST's outcome is being looked for (``data["reconcile"]["mode"]``)."""

    #: 429/418: the exchange did not execute it; may be resent if the listing finds nothing.
    THROTTLED = "throttled"
    #: A timeout or a dropped connection: it may have executed.
    UNKNOWN = "unknown"
    #: Found in ``submitting`` after a restart: the POST may have left before the crash.
    INTERRUPTED = "interrupted"


class ReconcileInfo(TypedDict):
    """``data["reconcile"]``: the unknown outcome being looked for."""

    mode: str
    since: str


class AbsenceInfo(TypedDict, total=False):
    """``data["absence"]``: the listings of an automatic resolution by proven absence."""

    listings: list[dict[str, Any]]
    stopped: str


class ApprovalRequest(TypedDict):
    """``data["approval_request"]``: why the workflow waits for an approver, and until when."""

    at: str
    expires_at: str
    amount: str
    threshold: str


class ApprovalInfo(TypedDict, total=False):
    """``data["approved"]``: the approval that lets the workflow be sent (who, why, when; or the batch's)."""

    by: str | None
    note: str | None
    at: str
    #: Set when the approval is its batch's (the child never asked on its own).
    batch_id: str


class WithdrawalData(TypedDict, total=False):
    """A withdrawal's ``Workflow.data``: what its steps remember between runs (JSON in the store)."""

    #: The allowlist's registered tag/memo, when the request had none.
    secondary_address: str | None
    #: The registered address's network name (shown to operators).
    network_name: str | None
    #: Why the wallet check is waiting (a paused or delayed wallet).
    wallet_wait: str
    reconcile: ReconcileInfo
    #: POSTs whose outcome was never learnt (each may still appear at the exchange).
    uncertain_posts: int
    #: The lane watch after settling with a POST unaccounted for (see ``_new_watch``).
    watch: dict[str, Any]
    absence: AbsenceInfo
    #: Automatic resubmits made by proven absence (at most one).
    auto_resubmits: int
    #: An operator's cancel was noted while in ``needs_review``.
    cancel_noted: bool
    #: The cancel request was sent to the exchange.
    cancel_sent: bool
    #: The open (or last) request for a four-eyes approval.
    approval_request: ApprovalRequest
    #: The recorded approval: the policy's check is satisfied, the workflow is not held again.
    approved: ApprovalInfo


def data_of(data: dict[str, Any]) -> WithdrawalData:
    """A workflow's ``data`` read as the withdrawal's (the store keeps JSON; this names its keys)."""
    return cast(WithdrawalData, data)
