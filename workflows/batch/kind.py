"""The payout batch as a workflow kind (:class:`BatchKind`), registered by ``engine.bootstrap``.

Beyond what every kind gives the engine, a batch's kind offers the batch-only operations the engine's
batch API uses (``Engine.submit_batch``, ``batch_report``...): reading a payout file, accepting a batch
under the configured caps, and building its status and report from the rows the engine read. The engine
reaches them through the registry (``engine.kinds["batch"]``), so it never imports a workflow module.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from engine.errors import InvalidBatch
from engine.kinds import WorkflowKind
from engine.models import Workflow
from workflows.batch.intake import BatchRequest, ItemError, build_batch, check_limits, items_from_text
from workflows.batch.machine import MACHINE, TERMINAL, BatchResolution, BatchState
from workflows.batch.report import ChildOutcome, build_report, render_csv
from workflows.batch.steps import STEPS, expire, past_deadline

__all__ = ["KIND", "BatchKind", "view"]

B = BatchState
NAME = "batch"


def _request(wf: Workflow) -> BatchRequest:
    request = wf.request
    assert isinstance(request, BatchRequest)
    return request


def view(wf: Workflow) -> dict[str, Any]:
    """The batch as callers see it (without its items: the report lists them)."""
    request = _request(wf)
    return {
        "id": wf.id,
        "kind": wf.kind,
        "state": str(wf.state),
        "items": len(request.items),
        "dispatched": int(wf.data.get("dispatched", 0)),
        "totals": {cur: format(v, "f") for cur, v in sorted(request.totals().items())},
        "max_total": {cur: format(v, "f") for cur, v in sorted(request.max_total.items())},
        "skipped": [e.to_dict() for e in request.skipped],
        "cancel_requested": wf.cancel_requested,
        "reason": wf.reason,
        "approval": _approval_view(wf.data),
        "created_at": wf.created_at.isoformat(),
        "updated_at": wf.updated_at.isoformat(),
    }


def _approval_view(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The batch's approval as callers see it: why it was asked (the currencies over their threshold), until
    when, and who approved it with which note (None: the batch never needed one)."""
    request, approval = data.get("approval_request"), data.get("approved")
    if request is None and approval is None:
        return None
    request, approval = request or {}, approval or {}
    return {
        "over": request.get("over", {}), "expires_at": request.get("expires_at"), "approved_by": approval.get("by"),
        "approved_at": approval.get("at"), "note": approval.get("note"),
    }  # fmt: skip


def _outcome(child: Workflow) -> ChildOutcome:
    fee = child.data.get("fee")
    return ChildOutcome(
        workflow_id=child.id,
        state=str(child.state),
        exchange_uuid=child.exchange_uuid,
        txid=child.txid,
        reason=child.reason,
        fee=Decimal(str(fee)) if fee is not None else None,
    )


def _index_of(batch_id: str, child: Workflow) -> int | None:
    """The item a child was created for, from its derived idempotency key."""
    key = child.idempotency_key or ""
    prefix = f"batch:{batch_id}:"
    return int(key.removeprefix(prefix)) if key.startswith(prefix) and key[len(prefix) :].isdigit() else None


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchKind(WorkflowKind):
    """The batch kind, with the batch-only operations of the engine's batch API (pure: no I/O)."""

    def read(self, text: str | object, fmt: str) -> tuple[list[Any], dict[str, Decimal]]:
        """A payout file's items and its own caps (``fmt``: ``csv`` or ``json``)."""
        return items_from_text(text, fmt)

    def accept(
        self,
        items: Sequence[object] | BatchRequest,
        *,
        skip_invalid: bool,
        max_total: Mapping[str, Decimal] | None,
        accounts: Collection[str],
        limits: Mapping[str, Decimal],
    ) -> BatchRequest:
        """Validate every item (``InvalidBatch`` naming each problem) and the caps; nothing is stored."""
        if isinstance(items, BatchRequest):  # built by the caller: its accounts are checked here
            batch = items if max_total is None else replace(items, max_total=dict(max_total), stored=None)
            unknown = [i for i in batch.items if i.request.account not in accounts]
            if unknown:
                raise InvalidBatch(errors=[_no_account(i.index, i.reference, i.request.account) for i in unknown])
        else:
            batch = build_batch(items, skip_invalid=skip_invalid, max_total=max_total, accounts=accounts)
        check_limits(batch, limits)
        return batch

    def status(self, wf: Workflow, counts: Mapping[str, int]) -> dict[str, Any]:
        """The batch's view plus its children's counts by state."""
        return {**view(wf), "children": dict(sorted(counts.items()))}

    def report(self, wf: Workflow, children: Iterable[Workflow]) -> dict[str, Any]:
        """The settlement report of ``wf`` given all its children."""
        outcomes: dict[int, ChildOutcome] = {}
        for child in children:
            index = _index_of(wf.id, child)
            if index is not None:
                outcomes[index] = _outcome(child)
        return build_report(wf.id, str(wf.state), _request(wf), outcomes)

    def render_csv(self, report: Mapping[str, Any]) -> str:
        """The report's items as CSV."""
        return render_csv(report)


def _no_account(index: int, reference: str, account: str) -> dict[str, object]:
    return ItemError(index, reference, "account", f"no account named {account!r} is configured").to_dict()


def _same(a: BatchRequest, b: BatchRequest) -> bool:
    return a.same_as(b)


def _dump(request: BatchRequest) -> dict[str, Any]:
    return request.to_dict()


KIND = BatchKind(
    name=NAME,
    request_type=BatchRequest,
    states=tuple(BatchState),
    initial=B.ACCEPTED,
    parse_state=BatchState,
    parse_request=BatchRequest.from_dict,
    dump_request=_dump,
    same_request=_same,
    machine=MACHINE,
    steps=STEPS,
    terminal=frozenset(TERMINAL),
    awaiting_operator=frozenset({B.NEEDS_ATTENTION, B.AWAITING_APPROVAL}),
    # needs_attention is resolved child by child; a batch itself only takes an approver's decision.
    resolutions=tuple(BatchResolution),
    accepts={B.NEEDS_ATTENTION: (), B.AWAITING_APPROVAL: tuple(BatchResolution)},
    four_eyes=frozenset(BatchResolution),
    past_deadline=past_deadline,
    expire=expire,
    alerting=frozenset({B.NEEDS_ATTENTION}),
    accounts=lambda request: sorted(request.accounts()),
    id_prefix="bt",
    view=view,
)
