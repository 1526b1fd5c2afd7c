"""The SQL of a :class:`~engine.query.ListFilter`, shared by both stores (only the placeholder differs).

Every value is bound as a parameter, never spliced into the text. Time bounds compare ISO-8601 text: both
stores write every timestamp as UTC ``isoformat()`` (always with microseconds or none, always ``+00:00``),
and that text sorts in time order byte by byte (PostgreSQL's timestamp columns are ``COLLATE "C"``).
"""

from __future__ import annotations

from typing import Any, Literal

from engine.query import ListFilter

__all__ = ["SqlArgs", "filter_sql"]


class SqlArgs:
    """Collects bound values and hands out placeholders: ``?`` (SQLite) or ``$n`` (PostgreSQL)."""

    def __init__(self, style: Literal["qmark", "numeric"]) -> None:
        self.style = style
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        """Bind ``value``; its placeholder."""
        self.values.append(value)
        return "?" if self.style == "qmark" else f"${len(self.values)}"


def filter_sql(where: ListFilter, bind: SqlArgs) -> str:
    """The WHERE condition selecting what ``where`` selects (``1 = 1`` for everything)."""
    clauses: list[str] = []
    if where.states:
        marks = ", ".join(bind(state) for state in sorted(where.states))
        clauses.append(f"state IN ({marks})")
    equal = (
        ("kind", where.kind), ("currency", where.currency), ("net_type", where.net_type), ("account", where.account),
        ("reason", where.reason), ("reference", where.reference), ("idempotency_key", where.idempotency_key),
        ("exchange_uuid", where.exchange_uuid), ("txid", where.txid),
    )  # fmt: skip
    clauses.extend(f"{column} = {bind(value)}" for column, value in equal if value is not None)
    bounds = (
        ("created_at", ">=", where.created_after), ("created_at", "<", where.created_before),
        ("updated_at", ">=", where.updated_after), ("updated_at", "<", where.updated_before),
    )  # fmt: skip
    clauses.extend(f"{column} {op} {bind(value.isoformat())}" for column, op, value in bounds if value is not None)
    return " AND ".join(clauses) or "1 = 1"
