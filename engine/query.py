"""Which workflows a list asks for (:class:`ListFilter`), one page of the answer (:class:`Page`), and the one
parser of list queries that the HTTP API and the CLI's store path share (:func:`parse_list_query`).

Filters combine with AND; several states combine with OR. Time bounds are half-open, ``after`` inclusive
and ``before`` exclusive, so consecutive windows (``[09:00, 10:00)``, ``[10:00, 11:00)``) tile without
counting a row twice. A bound must carry a UTC offset: a naive time would mean whatever the server's zone
is, so it is refused rather than guessed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from engine.errors import InvalidRequest
from engine.kinds import RowIndex
from engine.models import Workflow
from engine.references import check_reference

__all__ = [
    "DEFAULT_PAGE",
    "LIST_PARAMETERS",
    "MAX_PAGE",
    "ListFilter",
    "Page",
    "parse_list_query",
]

DEFAULT_PAGE = 50
MAX_PAGE = 1000
_ID_RE = re.compile(r"wd_[0-9a-f]{1,64}")
_CODE_RE = re.compile(r"[A-Z0-9]{1,32}")
_ACCOUNT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_REASON_RE = re.compile(r"[!-~]{1,64}")
_TIME_BOUNDS = ("created_after", "created_before", "updated_after", "updated_before")
#: Every parameter of a list query (HTTP ``GET /v1/withdrawals`` and the CLI's ``list``/``status``).
LIST_PARAMETERS = (
    "state", "currency", "net_type", "account", "reason", "reference", "idempotency_key", *_TIME_BOUNDS,
    "limit", "cursor",
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class ListFilter:
    """What a list or a count selects; every field left empty selects everything.

    Time bounds must be timezone-aware (:class:`~engine.errors.InvalidRequest` otherwise) and are kept in
    UTC, the zone the stores write.
    """

    #: State names (of the listed kind: the caller validates them against it); several combine with OR.
    states: AbstractSet[str] = field(default_factory=frozenset)  # kept as a frozenset
    #: Only workflows of this kind (None: every kind).
    kind: str | None = None
    currency: str | None = None
    net_type: str | None = None
    account: str | None = None
    reason: str | None = None
    reference: str | None = None
    idempotency_key: str | None = None
    #: The exchange's uuid of the withdrawal, and its on-chain transaction id (the console's search; not
    #: list parameters of the HTTP API).
    exchange_uuid: str | None = None
    txid: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "states", frozenset(str(s) for s in self.states))
        for name in _TIME_BOUNDS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _utc(value, name))

    def with_state(self, state: str | None) -> ListFilter:
        """This filter with one more state allowed (None: unchanged), for ``Engine.list(state=...)``: with no
        states given it selects only that one."""
        return self if state is None else replace(self, states=self.states | {str(state)})

    def matches(self, wf: Workflow, index: RowIndex) -> bool:
        """Whether ``wf`` (whose kind indexes its request as ``index``) is selected: the rule the stores' SQL
        implements (the contract suite compares)."""
        equal = (
            (self.kind, wf.kind), (self.currency, index.currency), (self.net_type, index.net_type),
            (self.account, index.account),
            (self.reason, wf.reason), (self.reference, wf.reference), (self.idempotency_key, wf.idempotency_key),
            (self.exchange_uuid, wf.exchange_uuid), (self.txid, wf.txid),
        )  # fmt: skip
        if any(wanted is not None and wanted != value for wanted, value in equal):
            return False
        if self.states and wf.state not in self.states:
            return False
        return _within(wf.created_at, self.created_after, self.created_before) and _within(
            wf.updated_at, self.updated_after, self.updated_before
        )


def _within(value: datetime, after: datetime | None, before: datetime | None) -> bool:
    return (after is None or value >= after) and (before is None or value < before)


def _utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequest("must be an ISO 8601 time with a UTC offset (e.g. 2026-01-01T09:00:00+09:00)", field=name)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidRequest("is out of range", field=name) from None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list, newest first. ``next_cursor`` is set only when another page follows (exactly:
    the store was asked for one row more than the page holds); ``total`` counts every matching row."""

    items: list[Workflow]
    next_cursor: str | None
    total: int


def parse_list_query(
    pairs: Iterable[tuple[str, str]], *, kind: str, states: Collection[str]
) -> tuple[ListFilter, int, str | None]:
    """``(filter, limit, cursor)`` over workflows of ``kind`` (whose state names are ``states``) from query
    parameters (repeatable ``state``, or a comma list), or :class:`~engine.errors.InvalidRequest` whose
    ``fields`` names every bad parameter at once."""
    values: dict[str, list[str]] = {}
    for key, value in pairs:
        values.setdefault(key, []).append(value)
    problems: dict[str, str] = {key: "unknown parameter" for key in sorted(set(values) - set(LIST_PARAMETERS))}
    for key, given in values.items():
        if key in LIST_PARAMETERS and key != "state" and len(given) > 1:
            problems[key] = "given more than once"
    single = {key: given[0] for key, given in values.items() if key in LIST_PARAMETERS and key != "state"}
    kwargs: dict[str, object] = {}
    chosen = _parse_states(values.get("state", []), states, problems)
    for key, raw in single.items():
        if key in problems:
            continue
        try:
            kwargs[key] = _PARSERS[key](raw)
        except InvalidRequest as exc:
            problems[key] = exc.message.removeprefix(f"{key}: ")
    if problems:
        raise InvalidRequest("invalid query parameters", fields=problems)
    text = {k: v for k, v in kwargs.items() if isinstance(v, str)}
    times = {k: v for k, v in kwargs.items() if isinstance(v, datetime)}
    where = ListFilter(
        kind=kind, states=chosen, currency=text.get("currency"), net_type=text.get("net_type"),
        account=text.get("account"), reason=text.get("reason"), reference=text.get("reference"),
        idempotency_key=text.get("idempotency_key"),
        created_after=times.get("created_after"), created_before=times.get("created_before"),
        updated_after=times.get("updated_after"), updated_before=times.get("updated_before"),
    )  # fmt: skip
    limit = kwargs.get("limit", DEFAULT_PAGE)
    return where, limit if isinstance(limit, int) else DEFAULT_PAGE, text.get("cursor")


def _parse_states(given: list[str], known: Collection[str], problems: dict[str, str]) -> frozenset[str]:
    states: set[str] = set()
    for part in (p for value in given for p in value.split(",")):
        if part in known:
            states.add(part)
        else:
            problems["state"] = f"must be one of {', '.join(known)} (repeat it or comma-separate)"
    if given and not states and "state" not in problems:
        problems["state"] = "must not be empty"
    return frozenset(states)


def _matching(pattern: re.Pattern[str], rule: str, name: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not pattern.fullmatch(raw):
            raise InvalidRequest(rule, field=name)
        return raw

    return parse


def _limit(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PAGE:
        raise InvalidRequest(f"must be an integer between 1 and {MAX_PAGE}", field="limit")
    return value


def _time(name: str) -> Callable[[str], datetime]:
    def parse(raw: str) -> datetime:
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            raise InvalidRequest("must be an ISO 8601 time with a UTC offset", field=name) from None
        return _utc(value, name)

    return parse


def _key(raw: str) -> str:
    if not 0 < len(raw) <= 200:
        raise InvalidRequest("must be 1-200 characters", field="idempotency_key")
    return raw


def _reference(raw: str) -> str:
    checked = check_reference(raw)
    assert checked is not None
    return checked


_PARSERS: dict[str, Callable[[str], object]] = {
    "currency": _matching(_CODE_RE, "must be 1-32 upper-case letters A-Z or digits", "currency"),
    "net_type": _matching(_CODE_RE, "must be 1-32 upper-case letters A-Z or digits", "net_type"),
    "account": _matching(_ACCOUNT_RE, "must be 1-64 of a-z, 0-9, '_' or '-'", "account"),
    "reason": _matching(_REASON_RE, "must be 1-64 printable ASCII characters", "reason"),
    "reference": _reference,
    "idempotency_key": _key,
    "limit": _limit,
    "cursor": _matching(_ID_RE, "must be a workflow id (the next_cursor of the previous page)", "cursor"),
    **{name: _time(name) for name in _TIME_BOUNDS},
}
