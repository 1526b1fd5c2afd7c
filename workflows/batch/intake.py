"""A payout batch as the caller submits it: items read from CSV or JSON, every item validated first.

Each item is a :class:`~engine.models.WithdrawalRequest` (its own validation, reused: never copied) plus
the caller's ``reference``, unique within the batch. Validation looks at every item and every field
before deciding, so a refused batch names all its problems in one answer (``InvalidBatch.errors``), and
nothing of it is stored. With ``skip_invalid`` the valid items are accepted and the bad ones listed.

CSV columns (a header row is required; names as below, any order)::

    reference, currency, net_type, amount, address              required
    secondary_address, transaction_type, account, exchange_name optional (empty cell = not given)

JSON: a list of objects with the same keys, or ``{"items": [...], "max_total": {"BTC": "1.5"}}``.
Amounts are strings (exact decimals), as everywhere in the engine.

Policy: a maximum total per currency per batch (``[batches] max_total`` in the configuration); a batch may
carry its own ``max_total``, which can only lower the configured one. A batch over it is refused whole.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from engine.errors import InvalidBatch, InvalidRequest
from engine.models import WithdrawalRequest

__all__ = [
    "CSV_COLUMNS",
    "MAX_ITEMS",
    "REQUIRED_COLUMNS",
    "BatchItem",
    "BatchRequest",
    "ItemError",
    "build_batch",
    "check_limits",
    "effective_limits",
    "items_from_text",
    "limit_breaches",
    "parse_csv",
    "parse_json",
    "parse_limits",
    "validate_item",
]

MAX_ITEMS = 10_000
MAX_REFERENCE_LEN = 128
REQUIRED_COLUMNS = ("reference", "currency", "net_type", "amount", "address")
CSV_COLUMNS = (*REQUIRED_COLUMNS, "secondary_address", "transaction_type", "account", "exchange_name")
_REQUEST_FIELDS = CSV_COLUMNS[1:]
_REFERENCE_RE = re.compile(r"[^\x00-\x1f\x7f]+")
_DECIMAL_RE = re.compile(r"[0-9]{1,30}(\.[0-9]{1,30})?")
#: Valid stand-ins: a field that failed is replaced by one and the request validated again, so every bad
#: field of an item is named while the rules stay in ``WithdrawalRequest`` alone.
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


@dataclass(frozen=True, slots=True)
class ItemError:
    """One problem of one item: its position in the submitted list (0-based), its reference, the field."""

    index: int
    reference: str | None
    field: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"index": self.index, "reference": self.reference, "field": self.field, "message": self.message}


class BatchItem:
    """One payout: the withdrawal request, the caller's reference, and its position in the submitted list
    (which the child's idempotency key derives from, so it never changes once accepted).

    Read back from the store, an item keeps its stored form and validates it into a
    :class:`WithdrawalRequest` only when ``request`` is first asked for: the batch's row is read and
    written at every step of the batch, and re-validating 10,000 requests each time would cost ~0.2 s
    of CPU per step for nothing (a step dispatching a chunk needs the chunk's requests only)."""

    __slots__ = ("_raw", "_request", "index", "reference")

    def __init__(
        self, *, index: int, reference: str, request: WithdrawalRequest | None = None,
        raw: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        if request is None and raw is None:
            raise TypeError("a BatchItem needs its request (or its stored form)")
        self.index = index
        self.reference = reference
        self._request = request
        self._raw = raw

    @property
    def request(self) -> WithdrawalRequest:
        """The item's withdrawal request (validated on first use when read from the store)."""
        if self._request is None:
            assert self._raw is not None
            self._request = WithdrawalRequest.from_dict(dict(self._raw))
        return self._request

    @property
    def currency(self) -> str:
        """The request's currency (without validating a stored item)."""
        return str(self._raw["currency"]) if self._request is None and self._raw is not None else self.request.currency

    @property
    def amount(self) -> Decimal:
        """The request's exact amount (without validating a stored item)."""
        return (
            Decimal(str(self._raw["amount"]))
            if self._request is None and self._raw is not None
            else (self.request.amount)
        )

    def __repr__(self) -> str:
        return f"<BatchItem #{self.index} {self.reference!r}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BatchItem):
            return NotImplemented
        return (self.index, self.reference) == (other.index, other.reference) and self.request.same_as(other.request)

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the request's amount as an exact string)."""
        request = dict(self._raw) if self._request is None and self._raw is not None else self.request.to_dict()
        return {"index": self.index, "reference": self.reference, "request": request}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchItem:
        """From :meth:`to_dict`'s shape (a stored batch); the request is validated on first use."""
        return cls(index=int(data["index"]), reference=str(data["reference"]), raw=dict(data["request"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchRequest:
    """A validated batch: its items, the caller's own per-currency caps, and the items skipped at intake."""

    items: tuple[BatchItem, ...]
    max_total: Mapping[str, Decimal] = field(default_factory=dict)
    skipped: tuple[ItemError, ...] = ()
    #: The stored form this batch was read from (:meth:`to_dict` gives it back as is: a batch's row is
    #: written at every step of the batch, and rebuilding 10,000 items' dicts each time costs ~0.1 s).
    stored: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.items:
            raise InvalidRequest("a batch needs at least one valid item", field="items")
        if len(self.items) > MAX_ITEMS:
            raise InvalidRequest(f"a batch holds at most {MAX_ITEMS} items", field="items")

    def __repr__(self) -> str:
        return f"<BatchRequest {len(self.items)} items, {len(self.skipped)} skipped>"

    @property
    def brief(self) -> str:
        """How a workflow's repr names its request (no addresses)."""
        return f"batch of {len(self.items)}"

    def totals(self) -> dict[str, Decimal]:
        """The sum of the items' amounts per currency."""
        sums: dict[str, Decimal] = {}
        for item in self.items:
            sums[item.currency] = sums.get(item.currency, Decimal(0)) + item.amount
        return sums

    def accounts(self) -> frozenset[str]:
        """The accounts the items pay from."""
        return frozenset(item.request.account for item in self.items)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, amounts as exact strings."""
        if self.stored is not None:
            return dict(self.stored)
        return {
            "items": [item.to_dict() for item in self.items],
            "max_total": {cur: format(v, "f") for cur, v in sorted(self.max_total.items())},
            "skipped": [e.to_dict() for e in self.skipped],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchRequest:
        """From :meth:`to_dict`'s shape (a stored batch)."""
        return cls(
            items=tuple(BatchItem.from_dict(item) for item in data["items"]),
            max_total={cur: Decimal(v) for cur, v in dict(data.get("max_total") or {}).items()},
            skipped=tuple(ItemError(**e) for e in data.get("skipped") or ()),
            stored=data,
        )

    def same_as(self, other: BatchRequest) -> bool:
        """Equal batches (amounts compared by value)."""
        return (
            len(self.items) == len(other.items)
            and all(
                a.index == b.index and a.reference == b.reference and a.request.same_as(b.request)
                for a, b in zip(self.items, other.items, strict=True)
            )
            and dict(self.max_total) == dict(other.max_total)
        )


# -- reading files -------------------------------------------------------------------------------------


def parse_csv(text: str) -> list[dict[str, Any]]:
    """Rows of a CSV payout file as objects (empty cells left out). The header must name the required
    columns and nothing unknown; a row with more cells than the header gets an ``extra`` key (refused)."""
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff")), restkey="__extra__", strict=True)
    try:
        header = [name.strip() for name in reader.fieldnames or ()]
    except csv.Error as exc:
        raise InvalidRequest(f"not readable as CSV: {exc}", field="csv") from None
    if not header:
        raise InvalidRequest("the file is empty; a header row is required", field="csv")
    unknown = sorted(set(header) - set(CSV_COLUMNS))
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if unknown or missing:
        problems = [*(f"unknown column {c!r}" for c in unknown), *(f"missing column {c!r}" for c in missing)]
        raise InvalidRequest("; ".join(problems) + f" (columns: {', '.join(CSV_COLUMNS)})", field="csv")
    reader.fieldnames = header
    rows: list[dict[str, Any]] = []
    try:
        for raw in reader:
            if len(rows) >= MAX_ITEMS:
                raise InvalidRequest(f"a batch holds at most {MAX_ITEMS} items", field="items")
            row: dict[str, Any] = {
                k: v.strip() for k, v in raw.items() if k != "__extra__" and isinstance(v, str) and v.strip()
            }
            if raw.get("__extra__"):
                row["__extra__"] = True
            rows.append(row)
    except csv.Error as exc:
        raise InvalidRequest(f"not readable as CSV (line {reader.line_num}): {exc}", field="csv") from None
    return rows


def parse_json(data: object) -> tuple[list[Any], dict[str, Any] | None]:
    """(items, the batch's own ``max_total`` or None) from a JSON list or ``{"items": [...], ...}``."""
    if isinstance(data, list):
        return data, None
    if not isinstance(data, dict):
        raise InvalidRequest('must be a list of items or an object {"items": [...]}', field="body")
    unknown = sorted(set(data) - {"items", "max_total"})
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])
    items = data.get("items")
    if not isinstance(items, list):
        raise InvalidRequest("must be a list of items", field="items")
    limits = data.get("max_total")
    if limits is not None and not isinstance(limits, dict):
        raise InvalidRequest('must be an object of currency -> decimal string, e.g. {"BTC": "1.5"}', field="max_total")
    return items, limits


def parse_limits(data: Mapping[str, Any] | None, *, key: str = "max_total") -> dict[str, Decimal]:
    """``{"BTC": "1.5"}`` -> exact per-currency caps (positive decimal strings only)."""
    limits: dict[str, Decimal] = {}
    for currency, value in (data or {}).items():
        if not isinstance(currency, str) or not re.fullmatch(r"[A-Z0-9]{1,32}", currency):
            raise InvalidRequest(f"{str(currency)[:40]!r} is not a currency code", field=key)
        text = format(value, "f") if isinstance(value, Decimal) else value
        if not isinstance(text, str) or not _DECIMAL_RE.fullmatch(text) or Decimal(text) <= 0:
            raise InvalidRequest(f"{currency} must be a positive decimal string", field=key)
        limits[currency] = Decimal(text)
    return limits


# -- validation ----------------------------------------------------------------------------------------


def _reference(index: int, obj: Mapping[str, Any], seen: dict[str, int]) -> tuple[str | None, list[ItemError]]:
    ref = obj.get("reference")
    if ref is None or ref == "":
        return None, [ItemError(index, None, "reference", "is required")]
    if not isinstance(ref, str):
        return None, [ItemError(index, None, "reference", "must be a string")]
    if len(ref) > MAX_REFERENCE_LEN or not _REFERENCE_RE.fullmatch(ref):
        message = f"must be 1-{MAX_REFERENCE_LEN} characters without control characters"
        return None, [ItemError(index, ref[:MAX_REFERENCE_LEN], "reference", message)]
    if ref in seen:
        return ref, [ItemError(index, ref, "reference", f"duplicates the reference of item {seen[ref]}")]
    seen[ref] = index
    return ref, []


def _request(
    index: int, ref: str | None, obj: Mapping[str, Any], accounts: Collection[str] | None
) -> tuple[WithdrawalRequest | None, list[ItemError]]:
    """The item's withdrawal request, or every bad field of it (stand-ins reveal the next one)."""
    problems: dict[str, str] = {k: "unknown field" for k in sorted(set(obj) - {"reference", *_REQUEST_FIELDS})}
    if "__extra__" in problems:
        problems = {k: v for k, v in problems.items() if k != "__extra__"} | {"row": "more cells than columns"}
    candidate = {k: v for k, v in obj.items() if k in _STAND_INS}
    for key in REQUIRED_COLUMNS[1:]:
        if candidate.get(key) in (None, ""):
            problems[key] = "is required"
            candidate[key] = _STAND_INS[key]
    request: WithdrawalRequest | None = None
    for _ in range(len(_STAND_INS) + 1):
        try:
            request = WithdrawalRequest.from_dict(candidate)
            break
        except InvalidRequest as exc:
            name = exc.field or "item"
            problems.setdefault(name, exc.message.removeprefix(f"{name}: "))
            if name not in _STAND_INS or candidate.get(name) == _STAND_INS[name]:
                break
            candidate[name] = _STAND_INS[name]
    if request is not None and accounts is not None and request.account not in accounts:
        problems.setdefault("account", f"no account named {request.account!r} is configured")
    errors = [ItemError(index, ref, name, message) for name, message in problems.items()]
    return (None if errors else request), errors


def validate_item(
    index: int, obj: object, seen: dict[str, int], accounts: Collection[str] | None = None
) -> tuple[BatchItem | None, list[ItemError]]:
    """One item: the accepted item, or all its errors (``seen``: references so far, for uniqueness)."""
    if not isinstance(obj, Mapping):
        return None, [ItemError(index, None, "item", "must be an object")]
    ref, errors = _reference(index, obj, seen)
    request, request_errors = _request(index, ref, obj, accounts)
    errors.extend(request_errors)
    if errors or request is None or ref is None:
        return None, errors
    return BatchItem(index=index, reference=ref, request=request), []


def build_batch(
    raw_items: Sequence[object],
    *,
    skip_invalid: bool = False,
    max_total: Mapping[str, Decimal] | None = None,
    accounts: Collection[str] | None = None,
) -> BatchRequest:
    """Validate every item, then accept the batch, or refuse it whole with every problem named
    (``InvalidBatch``). With ``skip_invalid`` the bad items are left out and listed in ``skipped``."""
    if len(raw_items) > MAX_ITEMS:
        raise InvalidRequest(f"a batch holds at most {MAX_ITEMS} items, not {len(raw_items)}", field="items")
    seen: dict[str, int] = {}
    items: list[BatchItem] = []
    errors: list[ItemError] = []
    for index, obj in enumerate(raw_items):
        item, problems = validate_item(index, obj, seen, accounts)
        errors.extend(problems)
        if item is not None:
            items.append(item)
    if errors and not skip_invalid:
        raise InvalidBatch(errors=[e.to_dict() for e in errors])
    if not items:
        raise InvalidBatch("no valid item in the batch", errors=[e.to_dict() for e in errors])
    return BatchRequest(items=tuple(items), max_total=dict(max_total or {}), skipped=tuple(errors))


# -- policy --------------------------------------------------------------------------------------------


def effective_limits(configured: Mapping[str, Decimal], override: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """The caps that apply: the configured ones, lowered by the batch's own. A batch's cap above the
    configured one is refused (an override can only lower the limit, never raise it)."""
    raised = sorted(cur for cur, v in override.items() if cur in configured and v > configured[cur])
    if raised:
        detail = ", ".join(f"{cur} {format(override[cur], 'f')} > {format(configured[cur], 'f')}" for cur in raised)
        raise InvalidRequest(f"can only lower the configured limit ({detail})", field="max_total")
    return {**configured, **override}


def limit_breaches(totals: Mapping[str, Decimal], limits: Mapping[str, Decimal]) -> list[dict[str, str]]:
    """Currencies whose batch total is over its cap (empty: within every limit)."""
    return [
        {"currency": cur, "total": format(total, "f"), "max_total": format(limits[cur], "f")}
        for cur, total in sorted(totals.items())
        if cur in limits and total > limits[cur]
    ]


def check_limits(batch: BatchRequest, configured: Mapping[str, Decimal]) -> None:
    """Refuse a batch over a per-currency cap (``InvalidRequest`` on ``max_total``), before anything exists."""
    breaches = limit_breaches(batch.totals(), effective_limits(configured, batch.max_total))
    if breaches:
        detail = "; ".join(f"{b['currency']} total {b['total']} > {b['max_total']}" for b in breaches)
        raise InvalidRequest(f"the batch is over its per-currency limit: {detail}", field="max_total")


def items_from_text(text: str | object, fmt: str) -> tuple[list[Any], dict[str, Decimal]]:
    """Items (and the batch's own caps, JSON only) from a payout file's text, ``fmt`` ``csv`` or ``json``;
    for JSON, ``text`` may also be the already parsed document."""
    if fmt == "csv":
        if not isinstance(text, str):
            raise InvalidRequest("must be CSV text", field="csv")
        return list(parse_csv(text)), {}
    if fmt != "json":
        raise InvalidRequest("must be csv or json", field="format")
    data = text
    if isinstance(text, str):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise InvalidRequest("not valid JSON", field="body") from None
    items, limits = parse_json(data)
    return items, parse_limits(limits)
