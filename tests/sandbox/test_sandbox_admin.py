"""Admin routes under /sandbox/: what was received, counters, withdrawals, live changes, reset, ledger."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest

from engine.sandbox import SandboxServer, default_seed
from engine.sandbox.model import SandboxSeed
from tests.sandbox.conftest import BTC_BODY, XRP_ADDRESS, Client, fast


async def test_index_lists_routes(client: Client) -> None:
    """GET /sandbox/ lists the admin routes."""
    routes = (await client.admin("GET", "/sandbox/"))["routes"]
    assert "GET /sandbox/requests" in routes and "POST /sandbox/reset" in routes


async def test_requests_log(client: Client) -> None:
    """Every /v1 request with seq, method, path, query, parsed body, status and a redacted key."""
    await client.get("/v1/withdraws", [("currency", "BTC")])
    await client.withdraw()
    await client.get("/v1/accounts")
    log = await client.admin("GET", "/sandbox/requests")
    assert log["total"] == 3 and [r["seq"] for r in log["requests"]] == [1, 2, 3]
    get, post, _ = log["requests"]
    assert (get["method"], get["path"], get["query"], get["status"]) == ("GET", "/v1/withdraws", "currency=BTC", 200)
    assert post["body"] == BTC_BODY and post["status"] == 201
    assert post["access_key"] == client.access_key[:4] + "***"
    assert post["received_at"] and post["fault"] is None
    later = await client.admin("GET", "/sandbox/requests?since=2")
    assert [r["seq"] for r in later["requests"]] == [3] and later["next_since"] == 3


async def test_stats(client: Client) -> None:
    """Counts by endpoint and status, throttles, withdrawals by state, and creations per body."""
    await client.withdraw()
    await client.withdraw()
    await client.withdraw(amount="0.02")
    await client.withdraw(amount="nope")
    stats = await client.admin("GET", "/sandbox/stats")
    assert stats["by_endpoint"]["POST /v1/withdraws/coin"] == 4
    assert stats["by_endpoint_status"]["POST /v1/withdraws/coin"] == {"201": 3, "400": 1}
    assert stats["withdrawals_by_state"]["WAITING"] == 3 and stats["withdrawals_total"] == 3
    canonical = json.dumps(BTC_BODY, sort_keys=True, separators=(",", ":"))
    assert stats["creations_by_body"][canonical] == 2
    assert sorted(stats["creations_by_body"].values()) == [1, 2]
    assert (stats["status_429"], stats["status_418"], stats["dropped"]) == (0, 0, 0)


async def test_withdrawals_show_everything(client: Client) -> None:
    """Admin withdrawals include address, tag, account and the creating body (Upbit's never do)."""
    body = {
        "currency": "XRP",
        "net_type": "XRP",
        "amount": "25",
        "address": XRP_ADDRESS,
        "secondary_address": "1234567",
    }
    await client.post("/v1/withdraws/coin", body)
    rows = await client.admin("GET", "/sandbox/withdrawals")
    assert len(rows) == 1
    row = rows[0]
    assert (row["address"], row["secondary_address"], row["account"]) == (XRP_ADDRESS, "1234567", "demo")
    assert row["body"] == body and row["state"] == "WAITING" and row["planned_outcome"] == "DONE"
    assert await client.admin("GET", "/sandbox/withdrawals?state=DONE") == []


async def test_wallets_change_live(client: Client) -> None:
    """POST /sandbox/wallets changes status/wallet, chance and what POST accepts."""
    row = await client.admin(
        "POST", "/sandbox/wallets", {"currency": "BTC", "net_type": "BTC", "wallet_state": "paused"}
    )
    assert row["wallet_state"] == "paused" and row["wallet_support"] == []
    status = {r["currency"]: r for r in (await client.get("/v1/status/wallet")).json}
    assert status["BTC"]["wallet_state"] == "paused"
    assert (await client.withdraw()).error == "sandbox_wallet_unavailable"
    await client.admin("POST", "/sandbox/wallets", {"currency": "BTC", "net_type": "BTC", "wallet_state": "working"})
    assert (await client.withdraw()).status == 201


async def test_config_changes_outcomes_and_timings(client: Client) -> None:
    """POST /sandbox/config: new weights and timings apply to new withdrawals; GET shows them."""
    config = await client.admin(
        "POST", "/sandbox/config",
        {"timings": {"waiting_seconds": 0.02, "waiting_jitter": 0}, "outcome_weights": {"REJECTED": 1.0}},
    )  # fmt: skip
    assert config["outcome_weights"] == {"REJECTED": 1.0} and config["timings"]["waiting_seconds"] == 0.02
    created = (await client.withdraw()).json
    await asyncio.sleep(0.05)
    assert (await client.get("/v1/withdraw", [("uuid", created["uuid"])])).json["state"] == "REJECTED"
    assert (await client.admin("GET", "/sandbox/config"))["outcome_weights"] == {"REJECTED": 1.0}


async def test_config_flat_keys_and_rules(client: Client) -> None:
    """Timing and rate-limit keys may sit at the top level; ``jitter`` sets both jitters."""
    config = await client.admin(
        "POST", "/sandbox/config",
        {"waiting_seconds": 0.5, "jitter": 0.0, "block_after_429s": 3,
         "outcome_rules": [{"currency": "BTC", "amount": "0.07", "outcome": "FAILED"}]},
    )  # fmt: skip
    assert config["timings"]["waiting_seconds"] == 0.5 and config["timings"]["processing_jitter"] == 0.0
    assert config["rate_limit"]["block_after_429s"] == 3
    assert config["outcome_rules"] == [{"currency": "BTC", "amount": "0.07", "outcome": "FAILED"}]


@pytest.mark.parametrize(
    "payload",
    [
        {"timings": {"waiting_seconds": -1}},
        {"outcome_weights": {"WAITING": 1}},
        {"outcome_weights": {"DONE": 0}},
        {"rate_limit": {"per_second": 0}},
        {"outcome_rules": [{"currency": "BTC", "amount": 1.5, "outcome": "DONE"}]},
        {"colour": "blue"},
        {"timings": {"waiting_seconds": 1}, "outcome_weights": {"NOPE": 1}},
    ],
)
async def test_bad_config_changes_nothing(client: Client, payload: object) -> None:
    """A bad config payload is a 400 naming the key, and nothing is applied."""
    before = await client.admin("GET", "/sandbox/config")
    async with client.session.post(client.base + "/sandbox/config", json=payload) as response:
        assert response.status == 400
        assert (await response.json())["error"]["name"] == "sandbox_invalid_admin_request"
    assert await client.admin("GET", "/sandbox/config") == before


async def test_set_balance(client: Client) -> None:
    """POST /sandbox/balances sets an available balance (first account by default)."""
    answer = await client.admin("POST", "/sandbox/balances", {"currency": "BTC", "balance": "0.005"})
    assert answer == {"account": "demo", "currency": "BTC", "balance": "0.005"}
    assert (await client.withdraw()).error == "withdraw_insufficient_balance"
    await client.admin(
        "POST", "/sandbox/balances", {"access_key": client.access_key, "currency": "SOL", "balance": "3"}
    )
    assert any(r["currency"] == "SOL" for r in (await client.get("/v1/accounts")).json)
    async with client.session.post(
        client.base + "/sandbox/balances", json={"access_key": "nobody", "currency": "BTC", "balance": "1"}
    ) as response:
        assert response.status == 404


async def test_reset(client: Client, server: SandboxServer) -> None:
    """POST /sandbox/reset: back to the seed (withdrawals, balances, wallets, faults, logs)."""
    await client.withdraw()
    await client.admin("POST", "/sandbox/wallets", {"currency": "BTC", "net_type": "BTC", "wallet_state": "paused"})
    await client.admin("POST", "/sandbox/faults", {"kind": "latency", "ms": 1})
    assert (await client.admin("POST", "/sandbox/reset")) == {"reset": True}
    assert server.exchange.withdrawals() == []
    assert (await client.admin("GET", "/sandbox/faults"))["faults"] == []
    stats = await client.admin("GET", "/sandbox/stats")
    assert stats["requests_total"] == 0 and stats["creations_by_body"] == {}
    assert (await client.withdraw()).status == 201
    btc = next(r for r in (await client.get("/v1/accounts")).json if r["currency"] == "BTC")
    assert btc["balance"] == "9.9892"


class TestLedger:
    @pytest.fixture(name="seed")
    def _fast_seed(self) -> SandboxSeed:
        return fast(default_seed(), 0.02)

    async def test_balances_and_done_totals_agree(self, client: Client, server: SandboxServer) -> None:
        """balance + locked + done equals the seeded balance, per currency, at every moment."""
        for amount in ("0.01", "0.02", "0.03"):
            await client.withdraw(amount=amount)
        await client.delete("/v1/withdraws/coin", [("uuid", server.exchange.withdrawals()[0].uuid)])
        for _ in range(50):
            ledger = await client.admin("GET", "/sandbox/ledger")
            btc = ledger["accounts"][0]["currencies"]["BTC"]
            total = Decimal(btc["balance"]) + Decimal(btc["locked"]) + Decimal(btc["done"])
            assert total == Decimal(10)
            if btc["locked"] == "0.0":
                break
            await asyncio.sleep(0.01)
        assert ledger["done_totals"]["BTC"] == "0.0516"
        assert ledger["accounts"][0]["access_keys"] == [client.access_key[:4] + "***"]
