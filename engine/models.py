"""The engine's records: the withdrawal request, the persisted workflow, and its audit events.

All are frozen, slotted, keyword-only dataclasses. They change by :func:`dataclasses.replace`, and are
converted to and from store rows at the store's edge. A :class:`WithdrawalRequest` validates itself on
construction, so an invalid request can never reach the store, let alone the exchange.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from engine.errors import InvalidRequest

__all__ = [
    "NON_TERMINAL",
    "TERMINAL",
    "AbortReason",
    "Event",
    "State",
    "TransactionType",
    "WithdrawalRequest",
    "Workflow",
    "new_workflow_id",
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


class TransactionType(StrEnum):
    """``default``: on-chain with a fee; ``internal``: Upbit-to-Upbit, no fee."""

    DEFAULT = "default"
    INTERNAL = "internal"


def new_workflow_id(prefix: str = "wd") -> str:
    """A sortable unique id: the kind's prefix, creation microseconds in hex, then 40 random bits."""
    return f"{prefix}_{time.time_ns() // 1000:014x}{secrets.token_hex(5)}"


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Workflow:
    """One workflow's persisted state, of any kind. ``version`` is the compare-and-set token of the store.

    To the engine ``state`` is a string and ``request`` an opaque value: the workflow's kind
    (:class:`engine.kinds.WorkflowKind`) parses both from the store (its state values are its own
    ``StrEnum`` members) and says what they mean. ``parent_id`` names the workflow that created this one
    (a batch's child), if any."""

    id: str
    state: str
    request: Any
    created_at: datetime
    updated_at: datetime
    version: int = 0
    kind: str = "withdrawal"
    idempotency_key: str | None = None
    lane_held: bool = False
    exchange_uuid: str | None = None
    txid: str | None = None
    exchange_state: str | None = None
    attempt: int = 0
    submit_count: int = 0
    next_run_at: datetime | None = None
    deadline_at: datetime | None = None
    submit_body: str | None = None
    submitted_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    resolution: str | None = None
    reason: str | None = None
    error: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    event_seq: int = 0
    last_hash: str = ""
    parent_id: str | None = None

    @property
    def cancel_requested(self) -> bool:
        """An operator asked to cancel (the owner acts on it at its next step)."""
        return self.cancel_requested_at is not None

    @property
    def lane(self) -> str | None:
        """The request's lane, for a kind whose requests have one (a withdrawal's); else None."""
        lane = getattr(self.request, "lane", None)
        return lane if isinstance(lane, str) else None

    def __repr__(self) -> str:
        brief = getattr(self.request, "brief", None)
        what = f" {brief}" if isinstance(brief, str) else f" {self.kind}"
        return f"<Workflow {self.id} {self.state}{what} v{self.version}>"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One line of a workflow's append-only audit log; ``hash`` chains it to the previous one."""

    workflow_id: str
    seq: int
    at: datetime
    trigger: str
    from_state: str | None
    to_state: str
    data: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""

    def _fields(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id,
            "seq": self.seq,
            "at": self.at.isoformat(),
            "trigger": self.trigger,
            "from": self.from_state,
            "to": self.to_state,
            "data": self.data,
        }

    def canonical(self) -> bytes:
        """The bytes the hash covers: every field but the hash itself, as canonical JSON."""
        body = {**self._fields(), "prev": self.prev_hash}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()

    def sealed(self, prev_hash: str) -> Event:
        """This event linked to ``prev_hash``, with its own hash computed."""
        linked = replace(self, prev_hash=prev_hash, hash="")
        return replace(linked, hash=hashlib.sha256(linked.canonical()).hexdigest())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {**self._fields(), "hash": self.hash}
