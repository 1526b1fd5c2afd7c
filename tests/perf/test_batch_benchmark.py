"""The pieces of benchmarks/batches.py work (no timing is asserted: figures come from running it)."""

from __future__ import annotations

from pathlib import Path

from benchmarks import batches as bench
from workflows.batch.intake import build_batch, parse_csv


def test_payout_file_has_distinct_lanes() -> None:
    """The benchmark's payouts are all valid and each in a lane of its own (none waits for another)."""
    batch = build_batch(parse_csv(bench.payout_csv(500)))
    assert len(batch.items) == 500
    assert len({item.request.lane for item in batch.items}) == 500


async def test_intake_figures(tmp_path: Path) -> None:
    """Intake stores the whole batch in one write and reports its figures."""
    figures = await bench.intake(300, tmp_path)
    assert figures["items"] == 300
    assert figures["store_writes"] == 1 and figures["store_write_transactions"] == 1
    assert figures["stored_request_bytes"] > 300 * 100
    assert set(figures) >= {"parse_seconds", "validate_seconds", "store_seconds", "total_seconds", "cpu_seconds"}


def test_arguments() -> None:
    """Defaults: a 10,000-item intake and a 1,000-item end-to-end run in realistic mode."""
    args = bench.parse_args([])
    assert (args.intake, args.e2e, args.rate, args.latency_ms) == (10_000, 1000, 30, 20.0)
