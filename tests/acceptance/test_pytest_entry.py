"""``pytest`` alone collects exactly what ``python -m pytest`` collects (the tests import ``tests.*``; only
``python -m`` put the project root on sys.path, until ``pythonpath = ["."]`` in pyproject)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTEST_SCRIPT = Path(sys.executable).with_name("pytest")


def start(command: list[str]) -> subprocess.Popen[str]:
    """``command --collect-only -q``, started (both entry points collect at once: the suite's wall time)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    return subprocess.Popen(
        [*command, "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip


def collected(started: subprocess.Popen[str]) -> int:
    """How many tests the collection collected; any collection error fails the test."""
    stdout, stderr = started.communicate(timeout=300)
    proc = subprocess.CompletedProcess(started.args, started.returncode, stdout, stderr)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    assert proc.returncode == 0 and "error" not in tail, proc.stdout[-3000:] + proc.stderr[-2000:]
    match = re.match(r"(\d+) tests? collected", tail)
    assert match, tail
    return int(match.group(1))


@pytest.mark.slow
@pytest.mark.skipif(not PYTEST_SCRIPT.exists(), reason="the pytest console script is not installed here")
def test_pytest_script_collects_the_same_as_python_m_pytest() -> None:
    """Both entry points collect the whole suite, the same count, without an error."""
    module, script = start([sys.executable, "-m", "pytest"]), start([str(PYTEST_SCRIPT)])
    by_module, by_script = collected(module), collected(script)
    assert by_script == by_module > 1000
