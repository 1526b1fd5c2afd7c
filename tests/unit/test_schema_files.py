"""One schema file per SQL dialect (engine/store/sql/): each parses into ascending migrations, and the
dialects keep the same numbered steps (PostgreSQL has one more: the shared rate budget of several workers)."""

from __future__ import annotations

import re

from engine.store.migrations import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS


def _tables(migrations: list[tuple[int, str]]) -> set[str]:
    return {m.lower() for _, sql in migrations for m in re.findall(r"CREATE TABLE (\w+)", sql)}


def test_each_dialect_is_numbered_in_order_with_no_empty_step() -> None:
    for migrations in (SQLITE_MIGRATIONS, POSTGRES_MIGRATIONS):
        versions = [version for version, _ in migrations]
        assert versions == sorted(set(versions)) and versions[0] == 1
        assert all(sql.strip() and "-- migration" not in sql for _, sql in migrations)


def test_the_dialects_share_their_steps_and_tables() -> None:
    assert {v for v, _ in SQLITE_MIGRATIONS} <= {v for v, _ in POSTGRES_MIGRATIONS}
    assert _tables(POSTGRES_MIGRATIONS) - _tables(SQLITE_MIGRATIONS) == {"budget_shares"}
