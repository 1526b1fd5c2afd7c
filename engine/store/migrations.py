"""Schema migrations, numbered, one schema file per SQL dialect: ``engine/store/sql/sqlite.sql`` and
``engine/store/sql/postgres.sql``. A store applies every migration above its recorded version, in order.

Each file is a series of ``-- migration N`` sections (N ascending); the text of a section is run as one
script. Keeping the SQL in ``.sql`` files (not in Python strings) lets a reviewer read each dialect's whole
schema in one place and an editor highlight it; both dialects keep the same tables, columns and
constraints, so both stores pass one contract suite.
"""

from __future__ import annotations

import re
from importlib import resources

__all__ = ["POSTGRES_MIGRATIONS", "SQLITE_MIGRATIONS", "load_migrations"]

_HEADER = re.compile(r"^-- migration (\d+)\s*$", re.MULTILINE)


def load_migrations(dialect: str) -> list[tuple[int, str]]:
    """``[(version, script), ...]`` from ``sql/<dialect>.sql``, checked to ascend strictly."""
    text = resources.files("engine.store").joinpath("sql", f"{dialect}.sql").read_text(encoding="utf-8")
    marks = list(_HEADER.finditer(text))
    found: list[tuple[int, str]] = []
    for mark, after in zip(marks, [*marks[1:], None], strict=True):
        script = text[mark.end() : None if after is None else after.start()].strip()
        found.append((int(mark.group(1)), script))
    versions = [version for version, _ in found]
    if not versions or versions != sorted(set(versions)):
        raise RuntimeError(f"{dialect}.sql: migrations must be numbered in ascending order, got {versions}")
    return found


SQLITE_MIGRATIONS = load_migrations("sqlite")
POSTGRES_MIGRATIONS = load_migrations("postgres")
