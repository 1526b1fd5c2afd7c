"""``GET /v1/withdraws``: its parameters, and selecting a page from creation-ordered lists.

Candidates are lists sorted by creation (``seq``): an account's withdrawals, one currency's, or the
handful named by ``uuids[]``/``txids[]``. Cursors (``from``/``to``, each a uuid) are bisections, and a
page is read lazily from the right end, so the cost is about the page size, not the history size
(a rare ``state`` filter is the exception: it scans until the page is full).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

from engine.sandbox.errors import SandboxError, invalid_value
from engine.sandbox.model import WithdrawalState
from engine.sandbox.records import Withdrawal

__all__ = ["MAX_IDS", "MAX_LIMIT", "ListQuery", "parse_list_query", "select_page"]

MAX_LIMIT = 100
MAX_IDS = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class ListQuery:
    """The parameters of one list call, validated."""

    currency: str | None = None
    state: WithdrawalState | None = None
    uuids: tuple[str, ...] = ()
    txids: tuple[str, ...] = ()
    limit: int = MAX_LIMIT
    page: int = 1
    descending: bool = True
    from_uuid: str | None = None
    to_uuid: str | None = None


def parse_list_query(pairs: Iterable[tuple[str, str]]) -> ListQuery:
    """Validate the query parameters; unknown parameters are ignored, as servers usually do."""
    single: dict[str, str] = {}
    uuids: list[str] = []
    txids: list[str] = []
    for key, value in pairs:
        if key in ("uuids[]", "uuids"):
            uuids.append(value)
        elif key in ("txids[]", "txids"):
            txids.append(value)
        else:
            single[key] = value
    if uuids and txids:
        raise SandboxError(400, "validation_error", "uuids and txids cannot be used together")
    if len(uuids) > MAX_IDS or len(txids) > MAX_IDS:
        raise SandboxError(400, "validation_error", f"at most {MAX_IDS} uuids or txids per call")
    return ListQuery(
        currency=single.get("currency") or None,
        state=_state(single.get("state")),
        uuids=tuple(uuids),
        txids=tuple(txids),
        limit=_bounded_int(single, "limit", MAX_LIMIT, MAX_LIMIT),
        page=_bounded_int(single, "page", 1, None),
        descending=_descending(single.get("order_by")),
        from_uuid=single.get("from") or None,
        to_uuid=single.get("to") or None,
    )


def _state(value: str | None) -> WithdrawalState | None:
    if not value:
        return None
    try:
        return WithdrawalState(value)
    except ValueError:
        raise invalid_value("state") from None


def _bounded_int(params: dict[str, str], key: str, default: int, maximum: int | None) -> int:
    raw = params.get(key)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < 1 or (maximum is not None and int(raw) > maximum):
        raise invalid_value(key)
    return int(raw)


def _descending(value: str | None) -> bool:
    if value in (None, "", "desc"):
        return True
    if value == "asc":
        return False
    raise invalid_value("order_by")


def select_page(
    candidates: Sequence[Withdrawal],
    query: ListQuery,
    *,
    after_seq: int | None = None,
    before_seq: int | None = None,
) -> list[Withdrawal]:
    """The requested page of ``candidates`` (sorted by seq), between the cursors, filtered, ordered."""
    start = 0 if after_seq is None else bisect_right(candidates, after_seq, key=_seq)
    stop = len(candidates) if before_seq is None else bisect_left(candidates, before_seq, key=_seq)
    window = _walk(candidates, start, stop, descending=query.descending)
    matching = (w for w in window if _matches(w, query))
    offset = (query.page - 1) * query.limit
    return list(islice(matching, offset, offset + query.limit))


def _seq(withdrawal: Withdrawal) -> int:
    return withdrawal.seq


def _walk(items: Sequence[Withdrawal], start: int, stop: int, *, descending: bool) -> Iterator[Withdrawal]:
    indexes = range(stop - 1, start - 1, -1) if descending else range(start, stop)
    return (items[i] for i in indexes)


def _matches(withdrawal: Withdrawal, query: ListQuery) -> bool:
    if query.currency is not None and withdrawal.currency != query.currency:
        return False
    return query.state is None or withdrawal.state is query.state
