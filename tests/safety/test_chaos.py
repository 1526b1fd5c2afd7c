"""Chaos, fast size: the real service SIGKILLed three times while 40 withdrawals go through a faulty sandbox.

The harness (``workflows/testing/chaos.py``, shared with ``benchmarks/chaos.py``) says what runs and
what is checked. Here: every property holds, and the run is bounded (it stops by itself well under 60 s).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from workflows.testing.chaos import ChaosSettings, run_chaos

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name != "posix", reason="SIGKILL")]


async def test_kills_and_faults_lose_nothing_and_send_nothing_twice(tmp_path: Path) -> None:
    """M=40, K=3: no duplicate, nothing lost, evidence on every escalation, chains verify, ledger agrees."""
    summary = await run_chaos(ChaosSettings(withdrawals=40, kills=3, max_seconds=90.0), tmp_path)
    print(json.dumps(summary, indent=2, default=str))
    assert summary["violations"] == [], json.dumps(summary, indent=2, default=str)
    assert summary["kills"] == 3 and summary["restarts"] == 3
    assert summary["duplicates"] == 0 and summary["lost"] == 0
    assert summary["workflows_in_store"] == 40 and summary["chains_broken"] == 0
    assert summary["ledger_ok"] and summary["api_5xx"] == 0
    assert summary["submit"]["replayed_200"] >= 40, "every submit was replayed with its key at least once"
    assert summary["timing"]["wall_seconds"] < 60
