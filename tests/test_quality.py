"""The code standards are checked like behaviour: ruff clean and ruff-formatted on the whole tree, mypy
strict on the packages (engine/ and workflows/, as configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )


def test_ruff_is_clean() -> None:
    """`ruff check .` finds nothing."""
    result = _run("ruff", "check", ".", "--output-format", "concise")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    """`ruff format --check .` would change nothing (the style is pinned in [tool.ruff.format])."""
    result = _run("ruff", "format", "--check", ".", "--output-format", "concise")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    """`mypy` (strict, engine/ and workflows/) finds nothing."""
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
