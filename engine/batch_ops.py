"""What the engine's batch API asks of the payout batch kind, as a protocol.

``Engine.submit_batch``, ``get_batch``, ``batch_report`` and the HTTP and CLI batch commands reach the
batch kind through the registry (``engine.kinds["batch"]``) and see it as :class:`BatchOps`: pure
operations on a payout file, a batch and its children (the engine does the I/O). The engine thus never
imports a workflow module; ``workflows.batch.kind.BatchKind`` implements it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from decimal import Decimal
from typing import Any, Protocol

from engine.models import Workflow

__all__ = ["BATCH_KIND", "BatchOps"]

#: The registered name of the payout batch kind.
BATCH_KIND = "batch"


class BatchOps(Protocol):
    """The batch kind's batch-only operations."""

    def read(self, text: str | object, fmt: str) -> tuple[list[Any], dict[str, Decimal]]:
        """A payout file's items and its own per-currency caps (``csv`` or ``json``; JSON may come parsed)."""
        ...

    def accept(
        self, items: Any, *, skip_invalid: bool, max_total: Mapping[str, Decimal] | None, accounts: Collection[str],
        limits: Mapping[str, Decimal],
    ) -> Any:  # fmt: skip
        """The validated batch request (every item checked; ``InvalidBatch`` names each problem), under the
        per-currency ``limits``."""
        ...

    def status(self, wf: Workflow, counts: Mapping[str, int]) -> dict[str, Any]:
        """The batch's view with its children's counts by state."""
        ...

    def report(self, wf: Workflow, children: Iterable[Workflow]) -> dict[str, Any]:
        """The settlement report, given every child."""
        ...

    def render_csv(self, report: Mapping[str, Any]) -> str:
        """A report's items as CSV."""
        ...
