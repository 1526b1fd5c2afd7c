"""The chaos run's checks: what the store and the sandbox must agree on once everything settled.

Each ``check_*`` reads the evidence (the store's workflows and events, the sandbox's withdrawals, ledger,
stats and POST records) and returns the summary fields it contributes and the properties it found broken;
:func:`analyse` runs them all. The run itself is :mod:`workflows.testing.chaos`."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.audit import verify_store
from engine.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from workflows.testing.chaos import Chaos

SETTLED_EXTRA = {"needs_review"}
TERMINAL = {"DONE", "FAILED", "CANCELLED", "REJECTED", "aborted"}
EXCHANGE_TERMINAL = {"DONE", "FAILED", "CANCELLED", "REJECTED"}
EVIDENCE_KEYS = {"mode", "searched", "since", "matches"}


def request_key(body: dict[str, Any]) -> tuple[str, str, Decimal]:
    """How a sandbox withdrawal is matched to its workflow: currency, network and exact amount."""
    return (str(body["currency"]), str(body.get("net_type") or body["currency"]), Decimal(str(body["amount"])))


def settled(view: dict[str, Any]) -> bool:
    """A workflow view that is terminal, or in needs_review and not resolved yet."""
    return view["state"] in TERMINAL or (view["state"] == "needs_review" and view["resolution"] is None)


async def read_store(db: Path) -> dict[str, Any]:
    """Every workflow, its events, and the audit verification, read from the SQLite file."""
    async with SQLiteStore(db) as store:
        checked, broken = await verify_store(store)
        workflows = []
        before = None
        while True:
            page = await store.list(limit=1000, before_id=before)
            workflows.extend(page)
            if len(page) < 1000:
                break
            before = page[-1].id
        events = {wf.id: await store.events(wf.id) for wf in workflows}
    return {"checked": checked, "broken": broken, "workflows": workflows, "events": events}


# -- the checks -----------------------------------------------------------------------------------------


def _event_problems(wf: Any, events: list[Any]) -> list[str]:
    problems = []
    if not events or events[0].trigger != "create" or events[0].to_state != "pending":
        problems.append("the log does not start with create -> pending")
    for before, after in itertools.pairwise(events):
        if after.at < before.at:
            problems.append(f"event {after.seq} is older than event {before.seq}")
        if after.from_state != before.to_state:
            problems.append(
                f"event {after.seq} starts in {after.from_state}, the one before ended in {before.to_state}"
            )
    if events and events[-1].to_state != wf.state.value:
        problems.append(f"the last event ends in {events[-1].to_state} but the workflow is {wf.state.value}")
    return problems


def _escalation_problem(events: list[Any]) -> str | None:
    escalations = [e for e in events if e.trigger == "escalate"]
    if not escalations:
        return "no escalate event"
    evidence = escalations[-1].data.get("evidence")
    if not isinstance(evidence, dict) or not set(evidence) >= EVIDENCE_KEYS or not escalations[-1].data.get("why"):
        return f"escalate event without evidence: {escalations[-1].data}"
    return None


Check = tuple[dict[str, Any], list[str]]
"""What one check contributes: summary fields, and the properties it found broken."""


def _key_text(key: tuple[str, str, Decimal]) -> str:
    return f"{key[0]}/{key[1]} {key[2]}"


def check_duplicates(sandbox: dict[str, Any]) -> Check:
    """Several sandbox withdrawals for one workflow's (currency, network, amount)."""
    per_key = Counter(request_key(w) for w in sandbox["withdrawals"])
    duplicates = {_key_text(k): n for k, n in per_key.items() if n > 1}
    by_body = {body: n for body, n in sandbox["stats"]["creations_by_body"].items() if n > 1}
    count = sum(n - 1 for n in per_key.values() if n > 1)
    broken = [f"duplicates: {duplicates} (creations_by_body > 1: {by_body})"] if count or by_body else []
    return {"duplicates": count}, broken


def check_lost(workflows: list[Any], sandbox: dict[str, Any]) -> Check:
    """Created at the sandbox but owned by nobody (and no needs_review match), or stuck in the store."""
    by_key = {wf_key(wf): wf for wf in workflows}
    owned = {wf.exchange_uuid for wf in workflows if wf.exchange_uuid}
    lost: list[dict[str, Any]] = []
    unowned_review = 0
    for w in sandbox["withdrawals"]:
        if w["uuid"] in owned:
            continue
        owner = by_key.get(request_key(w))
        if owner is not None and owner.state.value == "needs_review":
            unowned_review += 1
            continue
        where = None if owner is None else f"{owner.id} {owner.state.value}"
        lost.append({"sandbox_uuid": w["uuid"], "body": w["body"], "state": w["state"], "workflow": where})
    lost += [
        {"stuck": f"{wf.id} {wf.state.value}"} for wf in workflows if wf.state.value not in TERMINAL | SETTLED_EXTRA
    ]
    fields = {"lost": len(lost), "needs_review_with_unowned_withdrawal": unowned_review}
    return fields, [f"lost: {lost[:10]}"] if lost else []


def check_never_twice(workflows: list[Any], events: dict[str, list[Any]], sandbox: dict[str, Any]) -> Check:
    """At the wire: no POST of a body after one of its POSTs may have been executed. Also: which
    needs_review workflows never had a POST reach the exchange at all."""
    posts = _posts_by_key(sandbox["posts"])
    created = Counter(request_key(w) for w in sandbox["withdrawals"])
    # An automatic resubmit (proof of absence, with its evidence) is a resend after a possible effect by
    # design; it is allowed only when the sandbox indeed created at most one withdrawal for that body.
    auto = {wf_key(wf) for wf in workflows if any(e.trigger == "auto_resubmit" for e in events[wf.id])}
    resent_keys = {k for k, rs in posts.items() if _resent(rs)}
    by_auto = {k for k in resent_keys if k in auto and created[k] <= 1}
    resent = {_key_text(k): [r["status"] for r in posts[k]] for k in resent_keys - by_auto}
    review = [wf for wf in workflows if wf.state.value == "needs_review"]
    never_sent = [wf for wf in review if not posts.get(wf_key(wf))]
    triggers = Counter(e.data.get("note", e.trigger) for wf in workflows for e in events[wf.id])
    fields = {
        "posts_received_per_workflow_max": max((len(r) for r in posts.values()), default=0),
        "posts_resent_after_possible_effect": len(resent),
        "posts_resent_by_auto_resolution": len(by_auto),
        "auto_resubmits": triggers["auto_resubmit"],
        "auto_resolve_stopped": triggers["auto_resolve_stopped"],
        "needs_review": len(review),
        "needs_review_modes": dict(Counter(_review_mode(events[wf.id]) for wf in review)),
        "needs_review_never_sent": len(never_sent),
        "needs_review_never_sent_modes": dict(Counter(_review_mode(events[wf.id]) for wf in never_sent)),
    }
    broken = [f"a POST was sent again after one that may have been executed: {resent}"] if resent else []
    return fields, broken


def check_events(workflows: list[Any], events: dict[str, list[Any]], store: dict[str, Any]) -> Check:
    """Hash chains verify; logs are gap-free, ordered, continuous; every escalation has its evidence."""
    review = [wf for wf in workflows if wf.state.value == "needs_review"]
    no_evidence = {wf.id: p for wf in review if (p := _escalation_problem(events[wf.id]))}
    chains = [asdict(b) for b in store["broken"]]
    order = {wf.id: found for wf in workflows if (found := _event_problems(wf, events[wf.id]))}
    broken = []
    if no_evidence:
        broken.append(f"needs_review without evidence: {no_evidence}")
    if chains:
        broken.append(f"hash chain broken: {chains[:10]}")
    if order:
        broken.append(f"event logs out of order: {dict(list(order.items())[:10])}")
    fields = {
        "needs_review_without_evidence": len(no_evidence),
        "chains_checked": store["checked"],
        "chains_broken": len(chains),
        "event_order_problems": len(order),
    }
    return fields, broken


def check_ledger(workflows: list[Any], sandbox: dict[str, Any], initial: dict[str, Any]) -> Check:
    """The sandbox's books agree with the DONE withdrawals and the store; aborted sent nothing."""
    problems = _ledger_problems(workflows, sandbox, initial)
    created = {request_key(w) for w in sandbox["withdrawals"]}
    sent_aborted = [wf.id for wf in workflows if wf.state.value == "aborted" and wf_key(wf) in created]
    broken = [f"ledger: {p}" for p in problems]
    if sent_aborted:
        broken.append(f"aborted workflows with a withdrawal at the sandbox: {sent_aborted}")
    return {"ledger_ok": not problems, "aborted_but_created": len(sent_aborted)}, broken


def check_intake(chaos: Chaos, workflows: list[Any]) -> Check:
    """Idempotent intake, no 5xx, no crash of the API."""
    tally = chaos.tally
    broken = _idempotency_problems(chaos, workflows)
    if tally.api_5xx:
        broken.append(f"the API answered 5xx: {tally.api_5xx[:5]}")
    if tally.unexpected_answers:
        broken.append(f"unexpected submit answers: {tally.unexpected_answers[:5]}")
    logs = scan_logs(chaos.dir)
    if logs["api.crashed"]:
        broken.append(f"the API crashed {logs['api.crashed']} times (see service logs)")
    fields = {
        "submit": {
            "http_attempts": tally.submit_attempts,
            "connection_errors": tally.submit_connection_errors,
            "created_201": tally.submit_created,
            "replayed_200": tally.submit_replayed,
            "replay_mismatches": len(tally.replay_mismatches),
        },
        "api_statuses": {str(k): v for k, v in sorted(tally.api_statuses.items())},
        "api_5xx": len(tally.api_5xx),
        "log_events": logs,
    }
    return fields, broken


def sandbox_counts(chaos: Chaos, sandbox: dict[str, Any]) -> dict[str, Any]:
    """What the exchange saw."""
    stats = sandbox["stats"]
    return {
        "posts_sent": stats["by_endpoint"].get("POST /v1/withdraws/coin", 0),
        "post_statuses": stats["by_endpoint_status"].get("POST /v1/withdraws/coin", {}),
        "withdrawals_created_at_sandbox": len(sandbox["withdrawals"]),
        "sandbox_by_state": stats["withdrawals_by_state"],
        "exchange_calls": stats["requests_total"],
        "exchange_calls_by_endpoint": stats["by_endpoint"],
        "status_429": stats["status_429"],
        "status_418": stats["status_418"],
        "dropped": stats["dropped"],
        "faults_fired": {_fault_name(f): f["fired"] for f in chaos.faults_fired},
        "wallet_toggles": chaos.tally.wallet_toggles,
    }


async def analyse(chaos: Chaos, evidence: dict[str, Any]) -> dict[str, Any]:
    """The summary: counts, and every property that does not hold under ``violations``."""
    store, sandbox = evidence["store"], evidence["sandbox"]
    workflows, events = store["workflows"], store["events"]
    summary: dict[str, Any] = {
        "withdrawals": len(chaos.bodies),
        "kills": chaos.tally.kills,
        "restarts": chaos.tally.restarts,
        "submitted_via": "HTTP API (POST /v1/withdrawals with Idempotency-Key, retried across restarts)",
        "auto_resolve": chaos.s.auto_resolve,
        "workflows_in_store": len(workflows),
        "by_state": dict(sorted(Counter(wf.state.value for wf in workflows).items())),
        "abort_reasons": dict(Counter(wf.reason for wf in workflows if wf.state.value == "aborted")),
    }
    violations: list[str] = []
    checks = (
        check_duplicates(sandbox),
        check_lost(workflows, sandbox),
        check_never_twice(workflows, events, sandbox),
        check_events(workflows, events, store),
        check_ledger(workflows, sandbox, chaos.initial_ledger),
        check_intake(chaos, workflows),
    )
    for fields, broken in checks:
        summary.update(fields)
        violations += broken
    summary.update(sandbox_counts(chaos, sandbox))
    summary["violations"] = violations
    return summary


def _fault_name(fault: dict[str, Any]) -> str:
    return f"{fault['kind']} {fault['endpoint']} {fault['params'].get('status', '')}".strip()


def _posts_by_key(records: list[dict[str, Any]]) -> dict[tuple[str, str, Decimal], list[dict[str, Any]]]:
    grouped: dict[tuple[str, str, Decimal], list[dict[str, Any]]] = {}
    for record in records:
        body = record["body"]
        if isinstance(body, dict) and "currency" in body and "amount" in body:
            grouped.setdefault(request_key(body), []).append(record)
    return grouped


def _may_have_executed(status: int | str) -> bool:
    """Anything but a definite refusal (a 4xx, incl. 429/418) may have created the withdrawal."""
    return not (isinstance(status, int) and 400 <= status < 500)


def _resent(records: list[dict[str, Any]]) -> bool:
    first = next((i for i, r in enumerate(records) if _may_have_executed(r["status"])), None)
    return first is not None and first < len(records) - 1


def wf_key(wf: Any) -> tuple[str, str, Decimal]:
    return (wf.request.currency, wf.request.net_type, wf.request.amount)


def _review_mode(events: list[Any]) -> str:
    escalations = [e for e in events if e.trigger == "escalate"]
    if not escalations:
        return "?"
    data = escalations[-1].data
    return f"{data.get('evidence', {}).get('mode')}: {data.get('why')}"


def _ledger_problems(workflows: list[Any], sandbox: dict[str, Any], initial: dict[str, Any]) -> list[str]:
    sw_by_uuid = {w["uuid"]: w for w in sandbox["withdrawals"]}
    problems = []
    done_sum: dict[str, Decimal] = {}
    for w in sandbox["withdrawals"]:
        if w["state"] == "DONE":
            done_sum[w["currency"]] = done_sum.get(w["currency"], Decimal(0)) + Decimal(w["amount"]) + Decimal(w["fee"])
    totals = {c: Decimal(v) for c, v in sandbox["ledger"]["done_totals"].items()}
    for currency in sorted(set(done_sum) | {c for c, v in totals.items() if v}):
        if totals.get(currency, Decimal(0)) != done_sum.get(currency, Decimal(0)):
            problems.append(f"{currency}: done_totals {totals.get(currency)} != sum of DONE {done_sum.get(currency)}")
    for wf in workflows:
        if wf.state.value not in EXCHANGE_TERMINAL:
            continue
        found = sw_by_uuid.get(wf.exchange_uuid)
        if found is None:
            problems.append(f"{wf.id} is {wf.state.value} with uuid {wf.exchange_uuid} unknown to the sandbox")
        elif found["state"] != wf.state.value:
            problems.append(f"{wf.id} is {wf.state.value} but the sandbox says {found['state']}")
        elif Decimal(found["amount"]) != wf.request.amount:
            problems.append(f"{wf.id} amount {wf.request.amount} but the sandbox's is {found['amount']}")
    problems += _conservation_problems(initial, sandbox["ledger"])
    return problems


def _conservation_problems(initial: dict[str, Any], final: dict[str, Any]) -> list[str]:
    """balance + locked + done of every currency equals the starting balance (nothing appears or vanishes)."""
    problems = []
    start = {a["name"]: a["currencies"] for a in initial.get("accounts", [])}
    for account in final["accounts"]:
        for currency, row in account["currencies"].items():
            before = start.get(account["name"], {}).get(currency)
            if before is None:
                continue
            total = Decimal(row["balance"]) + Decimal(row["locked"]) + Decimal(row["done"])
            first = Decimal(before["balance"]) + Decimal(before["locked"]) + Decimal(before["done"])
            if total != first:
                problems.append(f"{account['name']} {currency}: balance+locked+done {total} != starting {first}")
    return problems


def _idempotency_problems(chaos: Chaos, workflows: list[Any]) -> list[str]:
    problems = []
    keys = Counter(wf.idempotency_key for wf in workflows)
    twice = {k: n for k, n in keys.items() if n > 1}
    if twice:
        problems.append(f"idempotency keys with several workflows: {twice}")
    if len(workflows) != len(chaos.bodies):
        problems.append(f"{len(workflows)} workflows in the store for {len(chaos.bodies)} distinct submits")
    if chaos.tally.replay_mismatches:
        problems.append(f"replays that did not return the first workflow: {chaos.tally.replay_mismatches[:5]}")
    ids = {wf.id for wf in workflows}
    unknown = [i for i, wf_id in chaos.tally.ids_by_index.items() if wf_id not in ids]
    if unknown:
        problems.append(f"acknowledged submits missing from the store: {unknown[:10]}")
    return problems


def scan_logs(workdir: Path) -> dict[str, int]:
    """Counts of the log events that point at bugs or trouble, over every service incarnation."""
    names = ("api.crashed", "workflow.step_crashed", "workflow.step_refused", "workflow.retry_later",
             "exchange.unknown_state", "exchange.unexpected_state", "workflow.moved_elsewhere")  # fmt: skip
    counts = dict.fromkeys(names, 0)
    for path in sorted(workdir.glob("service-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            for name in names:
                if f'"{name}"' in line:
                    counts[name] += 1
    return counts
