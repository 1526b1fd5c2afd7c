"""The pieces of benchmarks/peers.py work (tiny N, no timing asserted: figures come from running it)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from benchmarks import peers
from benchmarks.withdrawals import Admin


def test_faults_are_on_the_post_only_and_hangs_outlast_the_timeout() -> None:
    args = peers.parse_args([])
    assert (args.n, args.drop, args.error, args.hang) == (200, 0.02, 0.03, 0.01)
    rules = peers.faults(args)
    assert {r["endpoint"] for r in rules} == {peers.POST}
    assert [r["kind"] for r in rules] == ["drop", "error", "hang"]
    assert rules[2]["params"]["seconds"] > args.timeout


def test_exchange_view_counts_duplicates_per_request() -> None:
    requests = peers.make_requests(3)
    amounts = [r.amount for r in requests]
    made = [{"currency": "USDT", "amount": str(a)} for a in (amounts[0], amounts[0], amounts[0], amounts[1])]
    made.append({"currency": "BTC", "amount": str(amounts[2])})  # another currency's is not ours
    view = peers.exchange_view(made, requests, unknown=[amounts[1], amounts[2]])
    assert view == {
        "unknown_but_created": 1, "created": 4, "requests_with_a_withdrawal": 2, "duplicated_requests": 1,
        "duplicates": 2,
    }  # fmt: skip


def test_markdown_table() -> None:
    row = {"side": "x", "created_per_requested": 1.0, "duplicates": 0, "caller_could_not_tell": 2,
           "unknown_but_created": 1, "api_calls_per_withdrawal": 1.5, "wall_seconds": 3.21}  # fmt: skip
    lines = peers.markdown([row]).splitlines()
    assert lines[2] == "| x | 1.000 | 0 | 2 (1) | 1.50 | 3.2 |"


@pytest.mark.parametrize("side", peers.SIDES)
async def test_every_side_makes_each_withdrawal_once_without_faults(sandbox: Any, side: str, tmp_path: Path) -> None:
    """N = 2, no faults: each side creates exactly what it was asked for and knows it."""
    args = peers.parse_args(["-n", "2", "--drop", "0", "--error", "0", "--hang", "0", "--poll", "0.05"])
    async with Admin(sandbox.url) as admin:
        result = await peers.run_side(side, sandbox.url, admin, args, tmp_path)
    assert (result["created"], result["duplicates"], result["caller_could_not_tell"]) == (2, 0, 0)
    assert result["created_per_requested"] == 1.0 and result["post_calls"] == 2
    assert Decimal(result["api_calls_per_withdrawal"]) >= 1
