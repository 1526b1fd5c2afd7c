"""``upbit-withdraw approve`` / ``reject`` as an operator meets them: subprocesses against a sandbox and a
``run`` service whose policy holds BTC withdrawals above 0.05 (and batches above 0.2) for an approver."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import (
    BTC_ADDRESS,
    TOKEN_ENV,
    Result,
    Service,
    Stack,
    ThreadSandbox,
    clean_env,
    fast_seed,
    free_port,
    run_cli,
    write_config,
)

BTC = ["--currency", "BTC", "--net-type", "BTC", "--address", BTC_ADDRESS]
POLICY = """
[policy]
approval_expires_after = 3600.0

[policy.BTC]
approval_above = "0.05"

[batches]
approval_above = { BTC = "0.2" }
"""


#: Operators of the store: alice (an admin: she may submit and approve) submits, bob and carol approve,
#: dave only submits.
ROLES = {"alice": "admin", "bob": "approver", "carol": "approver", "dave": "submitter"}
TOKENS: dict[str, str] = {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One sandbox and one ``run`` service with the approval policy and three operators, for the module."""
    directory = tmp_path_factory.mktemp("approval")
    with ThreadSandbox(fast_seed()) as sandbox:
        port = free_port()
        config = write_config(directory, sandbox.url, port=port, extra=POLICY)
        service = Service(config, port, log=directory / "run.log")
        try:
            built = Stack(sandbox, service, config)
            for name, role in ROLES.items():
                added = built.cli("store", "--json", "operator", "add", name, "--role", role)
                assert added.code == 0, added.err
                TOKENS[name] = added.json()["token"]
            yield built
        finally:
            assert service.stop() == 0, service.logs()


def as_operator(stack: Stack, name: str, *args: str) -> Result:
    """The CLI over ``--api`` with ``name``'s own token."""
    return run_cli(["--api", stack.service.url, *args], env=clean_env(**{TOKEN_ENV: TOKENS[name]}))


def status(stack: Stack, workflow_id: str) -> dict[str, object]:
    return dict(stack.cli("store", "--json", "status", workflow_id).json())


def wait_for(stack: Stack, workflow_id: str, states: set[str], timeout: float = 30.0) -> dict[str, object]:
    """Poll ``status --json`` until the workflow is in one of ``states`` (fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while (view := status(stack, workflow_id))["state"] not in states:
        assert time.monotonic() < deadline, view
        time.sleep(0.1)
    return view


def held(stack: Stack, amount: str) -> str:
    """Submit a BTC withdrawal above the threshold; ``--wait`` returns once it waits for an approver (exit 1:
    not DONE)."""
    result = stack.cli("store", "--json", "submit", *BTC, "--amount", amount, "--wait")
    assert result.code == 1, result.err
    view = result.json()
    assert view["state"] == "awaiting_approval" and view["approval"]["threshold"] == "0.05", view
    return str(view["id"])


class TestFourEyes:
    def test_over_the_api_the_token_decides(self, stack: Stack) -> None:
        """alice submits with her token; her own approve is refused (exit 8, nothing recorded); bob's goes
        through and the events name both."""
        submitted = as_operator(stack, "alice", "--json", "submit", *BTC, "--amount", "0.071", "--wait")
        assert submitted.code == 1 and submitted.json()["state"] == "awaiting_approval", submitted.err
        workflow_id = submitted.json()["id"]
        own = as_operator(stack, "alice", "approve", workflow_id, "--note", "mine")
        assert own.code == 8 and "alice submitted" in own.err and own.err.count("\n") == 1
        role = as_operator(stack, "dave", "approve", workflow_id, "--note", "not my job")
        assert role.code == 8 and "approve" in role.err  # a submitter's role may not approve at all
        named = as_operator(stack, "bob", "approve", workflow_id, "--note", "ok", "--operator", "carol")
        assert named.code == 2 and "--operator" in named.err  # over --api the token says who
        assert status(stack, workflow_id)["resolution"] is None
        approved = as_operator(stack, "bob", "--json", "approve", workflow_id, "--note", "beneficiary verified")
        assert approved.code == 0, approved.err
        done = wait_for(stack, workflow_id, {"DONE"})
        assert done["approval"]["approved_by"] == "bob"
        history = stack.cli("store", "--json", "history", workflow_id).json()
        assert history[0]["data"]["created_by"] == "alice"
        assert next(e for e in history if e["trigger"] == "approve")["data"]["operator"] == "bob"

    def test_on_the_store_the_submitter_is_refused_too(self, stack: Stack) -> None:
        """--operator alice on alice's own submission: exit 8; an unknown operator: exit 3; carol rejects."""
        submitted = as_operator(stack, "alice", "--json", "submit", *BTC, "--amount", "0.072", "--wait")
        workflow_id = submitted.json()["id"]
        own = stack.cli("store", "approve", workflow_id, "--note", "mine", "--operator", "alice")
        assert own.code == 8 and "alice submitted" in own.err
        unknown = stack.cli("store", "approve", workflow_id, "--note", "who", "--operator", "mallory")
        assert unknown.code == 3 and "mallory" in unknown.err
        rejected = stack.cli("store", "reject", workflow_id, "--note", "wrong amount", "--operator", "carol")
        assert rejected.code == 0, rejected.err
        assert wait_for(stack, workflow_id, {"aborted"})["reason"] == "approval_rejected"


class TestApprove:
    def test_approve_sends_it(self, stack: Stack) -> None:
        """approve --note --operator on the store records the decision; the service sends it once."""
        posts = stack.sandbox.posts()
        workflow_id = held(stack, "0.061")
        assert stack.sandbox.posts() == posts
        result = stack.cli(
            "store", "--json", "approve", workflow_id, "--note", "invoice 12 checked", "--operator", "bob"
        )
        assert result.code == 0, result.err
        assert result.json()["resolution"] == "approve"
        done = wait_for(stack, workflow_id, {"DONE"})
        assert done["approval"]["approved_by"] == "bob" and done["approval"]["note"] == "invoice 12 checked"
        assert stack.sandbox.posts() == posts + 1
        history = stack.cli("store", "--json", "history", workflow_id).json()
        approved = next(e for e in history if e["trigger"] == "approve")
        assert approved["data"] == {"operator": "bob", "note": "invoice 12 checked"}

    def test_table_output_and_listing(self, stack: Stack) -> None:
        """People get a summary; list --state awaiting_approval finds what waits."""
        workflow_id = held(stack, "0.062")
        listed = stack.cli("store", "--json", "list", "--state", "awaiting_approval", "--limit", "1000").json()
        assert workflow_id in [v["id"] for v in listed["withdrawals"]]
        shown = stack.cli("store", "status", workflow_id)
        assert "awaiting_approval" in shown.out and "above 0.05" in shown.out
        result = stack.cli("store", "reject", workflow_id, "--note", "duplicate payout", "--operator", "carol")
        assert result.code == 0 and "reject recorded" in result.out, result.err
        ended = wait_for(stack, workflow_id, {"aborted"})
        assert ended["reason"] == "approval_rejected"

    def test_refusals(self, stack: Stack) -> None:
        """No --operator on the store, no --note, an action the state does not take, a finished workflow:
        each refused with one line and its exit code, nothing recorded."""
        workflow_id = held(stack, "0.063")
        no_operator = stack.cli("store", "approve", workflow_id, "--note", "ok")
        assert no_operator.code == 2 and "--operator" in no_operator.err
        no_note = stack.cli("store", "approve", workflow_id, "--operator", "bob")
        assert no_note.code == 2 and "--note" in no_note.err
        blank = stack.cli("store", "approve", workflow_id, "--operator", "bob", "--note", "  ")
        assert blank.code == 2 and "note" in blank.err and blank.err.count("\n") == 1
        wrong = stack.cli("store", "resolve", workflow_id, "--action", "resubmit", "--note", "n")
        assert wrong.code == 4 and "accepts approve or reject" in wrong.err
        assert status(stack, workflow_id)["resolution"] is None
        stack.cli("store", "cancel", workflow_id)
        assert wait_for(stack, workflow_id, {"CANCELLED"})["exchange_uuid"] is None
        late = stack.cli("store", "approve", workflow_id, "--operator", "bob", "--note", "too late")
        assert late.code == 4 and "CANCELLED" in late.err

    def test_a_batch(self, stack: Stack, tmp_path: Path) -> None:
        """A batch above its approval total waits; approve bt_... dispatches it; its children are not held."""
        items = [
            {"reference": f"p{i}", "currency": "BTC", "net_type": "BTC", "amount": f"0.07{i}", "address": BTC_ADDRESS}
            for i in range(1, 4)
        ]
        payouts = tmp_path / "payouts.json"
        payouts.write_text(json.dumps(items))
        submitted = stack.cli("store", "--json", "batch", "submit", str(payouts))
        assert submitted.code == 0, submitted.err
        batch_id = submitted.json()["id"]
        deadline = time.monotonic() + 30
        while (view := stack.cli("store", "--json", "batch", "status", batch_id).json())[
            "state"
        ] != "awaiting_approval":
            assert time.monotonic() < deadline, view
            time.sleep(0.1)
        assert view["approval"]["over"] == {"BTC": {"total": "0.216", "threshold": "0.2"}}
        result = stack.cli("store", "--json", "approve", batch_id, "--note", "payroll", "--operator", "bob")
        assert result.code == 0, result.err
        assert result.json()["id"] == batch_id
        deadline = time.monotonic() + 60
        while (view := stack.cli("store", "--json", "batch", "status", batch_id).json())["state"] != "settled":
            assert time.monotonic() < deadline, view
            time.sleep(0.2)
        assert view["children"] == {"DONE": 3} and view["approval"]["approved_by"] == "bob"
        shown = stack.cli("store", "batch", "status", batch_id)
        assert "approved by bob" in shown.out and "0.216 BTC > 0.2" in shown.out


def test_help_documents_the_commands() -> None:
    """approve and reject are listed, and their help names --note and --operator."""
    assert {"approve", "reject"} <= set(run_cli(["--help"]).out.split())
    for command in ("approve", "reject"):
        shown = run_cli([command, "--help"])
        assert shown.code == 0 and "--note" in shown.out and "--operator" in shown.out
