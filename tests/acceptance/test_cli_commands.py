"""Every workflow command against the store (``--config``) and against the running service (``--api``),
plus the exchange commands, all as subprocesses against a sandbox and a ``run`` service."""

from __future__ import annotations

import time

import pytest

from engine.upbit.auth import DEMO_SECRET_KEY
from tests.acceptance.conftest import BTC_ADDRESS, DOGE_ADDRESS, TOKEN, Stack, run_cli

MODES = ["store", "api"]
BTC = ["--currency", "BTC", "--net-type", "BTC", "--address", BTC_ADDRESS]


def wait_for(stack: Stack, workflow_id: str, states: set[str], timeout: float = 15.0) -> dict[str, object]:
    """Poll ``status --json`` until the workflow is in one of ``states``."""
    deadline = time.monotonic() + timeout
    while True:
        view = stack.cli("store", "--json", "status", workflow_id).json()
        if view["state"] in states or time.monotonic() > deadline:
            return dict(view)
        time.sleep(0.1)


@pytest.mark.parametrize("mode", MODES)
class TestSubmit:
    def test_wait_until_done(self, stack: Stack, mode: str) -> None:
        """submit --wait follows the workflow to DONE and exits 0; --json prints the workflow view."""
        result = stack.cli(mode, "--json", "submit", *BTC, "--amount", "0.011", "--wait")
        assert result.code == 0, result.err
        view = result.json()
        assert view["state"] == "DONE" and view["request"]["amount"] == "0.011" and view["txid"]
        assert "submitted" in result.err

    def test_table_output(self, stack: Stack, mode: str) -> None:
        """Without --json, people get a readable summary."""
        result = stack.cli(mode, "submit", *BTC, "--amount", "0.012", "--wait")
        assert result.code == 0, result.err
        assert "DONE" in result.out and "0.012 BTC on BTC" in result.out and "txid" in result.out

    def test_idempotent_replay_and_conflict(self, stack: Stack, mode: str) -> None:
        """The same key and request give the same workflow; another request under it exits 4."""
        key = ["--idempotency-key", f"invoice-{mode}"]
        first = stack.cli(mode, "--json", "submit", *BTC, "--amount", "0.013", *key)
        again = stack.cli(mode, "--json", "submit", *BTC, "--amount", "0.0130", *key)
        assert (first.code, again.code) == (0, 0), again.err
        assert first.json()["id"] == again.json()["id"]
        assert "already submitted" in again.err
        other = stack.cli(mode, "submit", *BTC, "--amount", "0.014", *key)
        assert other.code == 4
        assert "idempotency key" in other.err and other.err.count("\n") == 1

    def test_invalid_request_exits_2_naming_fields(self, stack: Stack, mode: str) -> None:
        """A bad request is refused before anything is stored, naming every bad field."""
        result = stack.cli(
            mode, "submit", "--currency", "BTC", "--net-type", "BTC", "--amount", "1.2.3", "--address", "a b"
        )
        assert result.code == 2
        assert "amount" in result.err and "address" in result.err and result.err.count("\n") == 1

    def test_failure_exits_1(self, stack: Stack, mode: str) -> None:
        """--wait exits 1 when the workflow does not end DONE (here: address not allowlisted)."""
        result = stack.cli(
            mode, "--json", "submit", *BTC[:4], "--address", "bc1qnotregistered00000", "--amount", "0.015", "--wait"
        )
        assert result.code == 1
        assert (result.json()["state"], result.json()["reason"]) == ("aborted", "address_not_allowed")

    def test_missing_option_is_usage_error(self, stack: Stack, mode: str) -> None:
        """click's own usage errors exit 2 too."""
        result = stack.cli(mode, "submit", "--currency", "BTC")
        assert result.code == 2 and "Missing option" in result.err


@pytest.mark.parametrize("mode", MODES)
class TestRead:
    def test_status(self, stack: Stack, mode: str) -> None:
        """status shows the same view from the store and from the service."""
        wf = stack.cli("store", "--json", "submit", *BTC, "--amount", "0.021", "--wait").json()
        view = stack.cli(mode, "--json", "status", wf["id"]).json()
        assert view == wf
        table = stack.cli(mode, "status", wf["id"])
        assert table.code == 0 and wf["id"] in table.out and "exchange uuid" in table.out

    def test_status_unknown_exits_3(self, stack: Stack, mode: str) -> None:
        """An unknown id exits 3 with one line on stderr."""
        result = stack.cli(mode, "status", "wd_00000000000000")
        assert result.code == 3 and result.err.startswith("upbit-withdraw: error:")

    def test_list_pages(self, stack: Stack, mode: str) -> None:
        """list pages newest first; next_cursor continues where the page ended."""
        for amount in ("0.031", "0.032", "0.033"):
            stack.cli("store", "submit", *BTC, "--amount", amount)
        first = stack.cli(mode, "--json", "list", "--limit", "2").json()
        assert len(first["withdrawals"]) == 2 and first["next_cursor"] == first["withdrawals"][-1]["id"]
        second = stack.cli(mode, "--json", "list", "--limit", "2", "--cursor", first["next_cursor"]).json()
        assert second["withdrawals"][0]["id"] < first["withdrawals"][-1]["id"]
        table = stack.cli(mode, "list", "--limit", "2")
        assert "more: --cursor" in table.out and "BTC/BTC" in table.out

    def test_list_by_state(self, stack: Stack, mode: str) -> None:
        """--state filters; an unknown state is a usage error."""
        done = stack.cli(mode, "--json", "list", "--state", "DONE", "--limit", "1000").json()["withdrawals"]
        assert done and all(v["state"] == "DONE" for v in done)
        assert stack.cli(mode, "list", "--state", "done").code == 2

    def test_history(self, stack: Stack, mode: str) -> None:
        """history lists the audit events from create to the terminal state."""
        wf = stack.cli("store", "--json", "submit", *BTC, "--amount", "0.041", "--wait").json()
        events = stack.cli(mode, "--json", "history", wf["id"]).json()
        assert events[0]["trigger"] == "create" and events[-1]["to"] == "DONE"
        table = stack.cli(mode, "history", wf["id"])
        assert "verifying_address" in table.out and "mark_done" in table.out
        assert stack.cli(mode, "history", "wd_00000000000000").code == 3


@pytest.mark.parametrize("mode", MODES)
class TestChange:
    def test_cancel_before_submit(self, stack: Stack, mode: str) -> None:
        """A withdrawal held by a paused wallet is cancelled (exit 0) and ends CANCELLED; again: exit 4."""
        wf = stack.cli(
            "store",
            "--json",
            "submit",
            "--currency",
            "DOGE",
            "--net-type",
            "DOGE",
            "--amount",
            "100",
            "--address",
            DOGE_ADDRESS,
        ).json()
        wait_for(stack, wf["id"], {"checking_wallet"})
        posts = stack.sandbox.posts()
        result = stack.cli(mode, "--json", "cancel", wf["id"])
        assert result.code == 0, result.err
        assert result.json()["cancel_requested"] is True
        assert wait_for(stack, wf["id"], {"CANCELLED"})["state"] == "CANCELLED"
        assert stack.sandbox.posts() == posts
        again = stack.cli(mode, "cancel", wf["id"])
        assert again.code == 4 and "CANCELLED" in again.err

    def test_resolve(self, stack: Stack, mode: str) -> None:
        """A POST whose outcome is unknown ends in needs_review (exit 1); resolve decides it."""
        stack.sandbox.admin("POST", "faults", {"kind": "error", "endpoint": "POST /v1/withdraws/coin", "times": 1})
        stuck = stack.cli(mode, "--json", "submit", *BTC, "--amount", "0.051", "--wait")
        assert stuck.code == 1 and stuck.json()["state"] == "needs_review", stuck.out
        workflow_id = stuck.json()["id"]
        action = "abandon" if mode == "store" else "resubmit"
        unexplained = stack.cli(mode, "resolve", workflow_id, "--action", action)
        assert unexplained.code == 2 and "--note" in unexplained.err  # every decision says why
        result = stack.cli(mode, "--json", "resolve", workflow_id, "--action", action, "--note", "checked the exchange")
        assert result.code == 0, result.err
        assert result.json()["resolution"] == action
        final = wait_for(stack, workflow_id, {"aborted", "DONE"})
        assert final["state"] == ("aborted" if action == "abandon" else "DONE")
        decided = [e for e in stack.cli("store", "--json", "history", workflow_id).json() if e["trigger"] == action]
        assert decided and decided[0]["data"]["note"] == "checked the exchange"
        assert decided[0]["data"]["operator"] == (True if mode == "store" else "shared-token")
        again = stack.cli(mode, "resolve", workflow_id, "--action", "abandon", "--note", "n")
        assert again.code == 4 and "not needs_review" in again.err
        assert stack.cli(mode, "resolve", workflow_id, "--action", "retry", "--note", "n").code == 2


class TestExchangeCommands:
    def test_addresses(self, stack: Stack) -> None:
        """addresses lists the allowlist (table and JSON)."""
        rows = stack.cli("store", "--json", "addresses").json()
        assert {(r["currency"], r["net_type"]) for r in rows} >= {("BTC", "BTC"), ("DOGE", "DOGE")}
        assert BTC_ADDRESS in stack.cli("store", "addresses", "--currency", "btc").out

    def test_wallet_status(self, stack: Stack) -> None:
        """wallet-status shows the paused DOGE wallet."""
        rows = stack.cli("store", "--json", "wallet-status", "--currency", "DOGE").json()
        assert [(r["currency"], r["wallet_state"]) for r in rows] == [("DOGE", "paused")]
        assert "paused" in stack.cli("store", "wallet-status").out

    def test_chance(self, stack: Stack) -> None:
        """chance shows fee, minimum and balance with exact decimal strings."""
        result = stack.cli("store", "--json", "chance", "--currency", "BTC", "--net-type", "BTC").json()
        assert result["withdraw_fee"] == "0.0008" and result["minimum"] == "0.00001" and result["can_withdraw"] is True
        assert "withdraw_fee" in stack.cli("store", "chance", "--currency", "BTC", "--net-type", "BTC").out

    @pytest.mark.parametrize(
        "command", [["addresses"], ["wallet-status"], ["chance", "--currency", "BTC", "--net-type", "BTC"]]
    )
    def test_not_over_api(self, stack: Stack, command: list[str]) -> None:
        """Exchange commands need the configured account, not the service: --api is a usage error."""
        result = stack.cli("api", *command)
        assert result.code == 2 and "drop --api" in result.err

    def test_unknown_account_exits_2(self, stack: Stack) -> None:
        """An account that is not configured is named in the error."""
        result = stack.cli("store", "addresses", "--account", "treasury")
        assert result.code == 2 and "accounts.treasury" in result.err


def test_global_options_after_the_command(stack: Stack) -> None:
    """--config/--json work after the command name too."""
    result = run_cli(["list", "--config", str(stack.config), "--json", "--limit", "1"], env=stack.env())
    assert result.code == 0 and "withdrawals" in result.json()


def test_outputs_never_show_the_token(stack: Stack) -> None:
    """Neither the API token nor the demo secret appears in any output or in the service log."""
    result = stack.cli("api", "--json", "list", "--limit", "5")
    for text in (result.out, result.err, stack.service.logs()):
        assert TOKEN not in text and DEMO_SECRET_KEY not in text


def test_help_lists_exit_codes() -> None:
    """--help documents the commands and the exit codes."""
    result = run_cli(["--help"])
    assert result.code == 0
    for word in (
        "demo",
        "sandbox",
        "run",
        "submit",
        "status",
        "list",
        "history",
        "cancel",
        "resolve",
        "addresses",
        "wallet-status",
        "chance",
        "Exit codes",
    ):
        assert word in result.out
