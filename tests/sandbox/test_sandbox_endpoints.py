"""Every /v1 endpoint over HTTP: happy paths, shapes, status codes and error names (upbit-api.md §4-6)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from engine.sandbox import SandboxServer, default_seed
from engine.sandbox.model import AccountSeed, AddressSeed, SandboxSeed
from engine.upbit.auth import Credentials
from tests.sandbox.conftest import BTC_ADDRESS, LONG_SECRET_A, XRP_ADDRESS, Client, fast, sign

WITHDRAWAL_FIELDS = [
    "type", "uuid", "currency", "net_type", "txid", "state", "created_at", "done_at", "amount", "fee",
    "transaction_type", "is_cancelable",
]  # fmt: skip
KST_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+09:00$")
XRP_BODY = {
    "currency": "XRP",
    "net_type": "XRP",
    "amount": "25",
    "address": XRP_ADDRESS,
    "secondary_address": "1234567",
}


class TestReads:
    async def test_coin_addresses(self, client: Client) -> None:
        """The allowlist rows carry every §5.1 field; XRP has its destination tag."""
        reply = await client.get("/v1/withdraws/coin_addresses")
        assert reply.status == 200
        rows = reply.json
        assert {(r["currency"], r["net_type"]) for r in rows} >= {
            ("BTC", "BTC"), ("ETH", "ETH"), ("USDT", "TRX"), ("USDT", "ETH"), ("XRP", "XRP"), ("DOGE", "DOGE"),
        }  # fmt: skip
        fields = {
            "currency", "net_type", "network_name", "withdraw_address", "secondary_address", "beneficiary_name",
            "beneficiary_type", "beneficiary_company_name", "exchange_name", "wallet_type",
        }  # fmt: skip
        assert all(set(r) == fields for r in rows)
        xrp = next(r for r in rows if r["currency"] == "XRP")
        assert (xrp["withdraw_address"], xrp["secondary_address"]) == (XRP_ADDRESS, "1234567")

    async def test_wallet_status(self, client: Client) -> None:
        """One row per (currency, net_type); DOGE is seeded paused."""
        reply = await client.get("/v1/status/wallet")
        rows = {(r["currency"], r["net_type"]): r for r in reply.json}
        assert reply.status == 200 and len(rows) == 6
        assert set(rows["BTC", "BTC"]) == {
            "currency", "wallet_state", "block_state", "block_height", "block_updated_at",
            "block_elapsed_minutes", "net_type", "network_name",
        }  # fmt: skip
        assert rows["DOGE", "DOGE"]["wallet_state"] == "paused"
        assert rows["USDT", "TRX"]["wallet_state"] == "working"

    async def test_chance(self, client: Client) -> None:
        """The full §5.3 object, decimals as strings and ``fixed`` as an integer."""
        reply = await client.get("/v1/withdraws/chance", [("currency", "BTC"), ("net_type", "BTC")])
        assert reply.status == 200
        body = reply.json
        assert set(body) == {"member_level", "currency", "account", "withdraw_limit"}
        assert body["member_level"]["wallet_locked"] is False
        assert body["currency"] == {
            "code": "BTC", "withdraw_fee": "0.0008", "is_coin": True, "wallet_state": "working",
            "wallet_support": ["deposit", "withdraw"],
        }  # fmt: skip
        assert body["account"] == {
            "currency": "BTC", "balance": "10.0", "locked": "0.0", "avg_buy_price": "140000000",
            "avg_buy_price_modified": False, "unit_currency": "KRW",
        }  # fmt: skip
        limit = body["withdraw_limit"]
        assert limit["minimum"] == "0.00001" and limit["fixed"] == 8
        assert limit["can_withdraw"] is True and limit["fiat_currency"] == "KRW"
        assert limit["remaining_daily_fiat"] == "5000000000"
        for key in ("currency", "remaining_daily_fiat", "withdraw_delayed_fiat"):
            assert isinstance(limit[key], str)
        assert not {"onetime", "daily", "remaining_daily"} & set(limit), "deprecated per-network keys"

    async def test_chance_of_a_paused_wallet(self, client: Client) -> None:
        """A paused network: wallet_support lacks "withdraw" and can_withdraw is false."""
        body = (await client.get("/v1/withdraws/chance", [("currency", "DOGE"), ("net_type", "DOGE")])).json
        assert body["currency"]["wallet_support"] == []
        assert body["withdraw_limit"]["can_withdraw"] is False

    @pytest.mark.parametrize(
        ("pairs", "status", "name"),
        [
            ([("net_type", "BTC")], 400, "validation_error"),
            ([("currency", "BTC")], 400, "validation_error"),
            ([("currency", "FOO"), ("net_type", "FOO")], 404, "currency_not_found"),
            ([("currency", "BTC"), ("net_type", "ETH")], 400, "validation_error"),
        ],
    )
    async def test_chance_errors(self, client: Client, pairs: Any, status: int, name: str) -> None:
        """currency and net_type are both required; unknown ones are refused."""
        reply = await client.get("/v1/withdraws/chance", pairs)
        assert (reply.status, reply.error) == (status, name)

    async def test_accounts(self, client: Client) -> None:
        """Balances as decimal strings, KRW first."""
        reply = await client.get("/v1/accounts")
        rows = reply.json
        assert reply.status == 200 and rows[0]["currency"] == "KRW"
        by_currency = {r["currency"]: r for r in rows}
        assert {"KRW", "BTC", "ETH", "USDT", "XRP", "DOGE"} <= set(by_currency)
        assert by_currency["USDT"]["balance"] == "1000000.0"
        assert set(rows[0]) == {
            "currency",
            "balance",
            "locked",
            "avg_buy_price",
            "avg_buy_price_modified",
            "unit_currency",
        }


class TestWithdraw:
    async def test_created(self, client: Client) -> None:
        """201 with the §6 object: WAITING, no txid, KST timestamp, amount and fee as strings."""
        reply = await client.withdraw()
        assert reply.status == 201
        body = reply.json
        assert list(body) == WITHDRAWAL_FIELDS
        assert body["type"] == "withdraw" and body["state"] == "WAITING" and body["txid"] is None
        assert (body["amount"], body["fee"], body["transaction_type"]) == ("0.01", "0.0008", "default")
        assert KST_STAMP.match(body["created_at"]) and body["done_at"] is None
        assert body["is_cancelable"] is True
        accounts = {r["currency"]: r for r in (await client.get("/v1/accounts")).json}
        assert (accounts["BTC"]["balance"], accounts["BTC"]["locked"]) == ("9.9892", "0.0108")

    async def test_xrp_with_tag_and_internal(self, client: Client) -> None:
        """The registered tag is accepted; internal transfers pay "0.0"."""
        reply = await client.post("/v1/withdraws/coin", {**XRP_BODY, "transaction_type": "internal"})
        assert reply.status == 201
        assert (reply.json["fee"], reply.json["transaction_type"]) == ("0.0", "internal")

    @pytest.mark.parametrize(
        ("overrides", "status", "name"),
        [
            ({"currency": None}, 400, "validation_error"),
            ({"net_type": None}, 400, "validation_error"),
            ({"amount": None}, 400, "validation_error"),
            ({"address": None}, 400, "validation_error"),
            ({"currency": "FOO", "address": None}, 400, "validation_error"),
            ({"currency": "FOO"}, 404, "currency_not_found"),
            ({"currency": "FOO", "amount": "x"}, 404, "currency_not_found"),
            ({"amount": "abc"}, 400, "invalid_parameter"),
            ({"amount": "-1"}, 400, "invalid_parameter"),
            ({"amount": "0"}, 400, "invalid_parameter"),
            ({"amount": "1e-3"}, 400, "invalid_parameter"),
            ({"amount": True}, 400, "invalid_parameter"),
            ({"amount": "abc", "address": "nowhere"}, 400, "invalid_parameter"),
            ({"transaction_type": "instant"}, 400, "validation_error"),
            ({"address": "bc1qsomeoneelse"}, 400, "withdraw_address_not_registered"),
            ({"net_type": "ETH"}, 400, "withdraw_address_not_registered"),
            ({"secondary_address": "1"}, 400, "withdraw_address_not_registered"),
            ({"amount": "0.000001"}, 400, "sandbox_under_min_amount"),
            ({"amount": "0.000010001"}, 400, "sandbox_too_many_decimals"),
            ({"amount": "10"}, 400, "withdraw_insufficient_balance"),
            ({"amount": "0.0000001", "address": "x"}, 400, "withdraw_address_not_registered"),
        ],
    )
    async def test_refusals(self, client: Client, overrides: dict[str, Any], status: int, name: str) -> None:
        """Each refusal has Upbit's status and name (or the sandbox's documented one), first check first."""
        reply = await client.withdraw(**overrides)
        assert (reply.status, reply.error) == (status, name), reply.text
        assert reply.json["error"]["message"]

    async def test_missing_field_message(self, client: Client) -> None:
        """Upbit's wording: "<field>" is missing."""
        reply = await client.withdraw(amount=None)
        assert reply.json["error"]["message"] == '"amount" is missing'

    @pytest.mark.parametrize(
        "body",
        [
            {k: v for k, v in XRP_BODY.items() if k != "secondary_address"},
            {**XRP_BODY, "secondary_address": "7654321"},
            {**XRP_BODY, "secondary_address": "None"},
        ],
    )
    async def test_secondary_address_must_match(self, client: Client, body: dict[str, str]) -> None:
        """A missing or different destination tag is an unregistered address."""
        reply = await client.post("/v1/withdraws/coin", body)
        assert (reply.status, reply.error) == (400, "withdraw_address_not_registered")

    async def test_paused_and_inactive_wallets(self, client: Client, server: SandboxServer) -> None:
        """A paused wallet or an inactive block refuses with sandbox_wallet_unavailable."""
        doge = {
            "currency": "DOGE",
            "net_type": "DOGE",
            "amount": "100",
            "address": "DH5yaieqoZN36fDVciNyRueRGvGLR3mr7L",
        }
        assert (await client.post("/v1/withdraws/coin", doge)).error == "sandbox_wallet_unavailable"
        await client.admin(
            "POST", "/sandbox/wallets", {"currency": "BTC", "net_type": "BTC", "block_state": "inactive"}
        )
        assert (await client.withdraw()).error == "sandbox_wallet_unavailable"
        await client.admin("POST", "/sandbox/wallets", {"currency": "BTC", "net_type": "BTC", "block_state": "normal"})
        await client.admin(
            "POST", "/sandbox/wallets", {"currency": "BTC", "net_type": "BTC", "wallet_state": "withdraw_only"}
        )
        assert (await client.withdraw()).status == 201

    async def test_onetime_and_daily_limits(self, client: Client, server: SandboxServer) -> None:
        """Seeded (deprecated) per-network limits: over onetime, then over the day's remainder."""
        btc = dataclasses.replace(server.seed.networks[0], onetime=Decimal(50), daily=Decimal(100))
        seed = dataclasses.replace(server.seed, networks=(btc, *server.seed.networks[1:]))
        async with SandboxServer(seed) as legacy:
            await self._legacy_limits(client.as_key(client.access_key, client.secret), legacy)

    @staticmethod
    async def _legacy_limits(client: Client, server: SandboxServer) -> None:
        client.base = server.url
        server.exchange.set_balance(None, "BTC", Decimal(1000))
        server.exchange.accounts["demo"].daily_fiat_limit = Decimal(10) ** 12
        assert (await client.withdraw(amount="51")).error == "sandbox_over_onetime_limit"
        assert (await client.withdraw(amount="50")).status == 201
        assert (await client.withdraw(amount="50")).status == 201
        assert (await client.withdraw(amount="0.001")).error == "sandbox_over_daily_limit"
        chance = (await client.get("/v1/withdraws/chance", [("currency", "BTC"), ("net_type", "BTC")])).json
        assert chance["withdraw_limit"]["remaining_daily"] == "0.0"

    async def test_body_must_be_json_object(self, client: Client) -> None:
        """A JSON array body is an invalid_parameter."""
        token = sign(client.access_key, client.secret, None)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        reply = await client.send("POST", client.base + "/v1/withdraws/coin", headers=headers, data="[1]")  # type: ignore[arg-type]
        assert (reply.status, reply.error) == (400, "invalid_parameter")


class TestGetWithdraw:
    async def test_by_uuid_txid_currency_and_latest(self, client: Client, server: SandboxServer) -> None:
        """uuid, txid (once PROCESSING), currency's latest, or the overall latest."""
        first = (await client.withdraw()).json
        second = (await client.post("/v1/withdraws/coin", XRP_BODY)).json
        assert (await client.get("/v1/withdraw", [("uuid", first["uuid"])])).json["uuid"] == first["uuid"]
        assert (await client.get("/v1/withdraw")).json["uuid"] == second["uuid"]
        assert (await client.get("/v1/withdraw", [("currency", "BTC")])).json["uuid"] == first["uuid"]
        server.exchange.advance(server.sandbox.clock.monotonic() + 61)
        txid = server.exchange.by_uuid(first["uuid"]).txid  # type: ignore[union-attr]
        assert txid is not None
        found = await client.get("/v1/withdraw", [("txid", txid)])
        assert (found.json["uuid"], found.json["txid"]) == (first["uuid"], txid)

    @pytest.mark.parametrize("pairs", [[("uuid", "00000000-0000-4000-8000-000000000000")], [("txid", "ab")], []])
    async def test_not_found(self, client: Client, pairs: Any) -> None:
        """Unknown uuid/txid, or no withdrawal at all: 404 withdraw_not_found."""
        reply = await client.get("/v1/withdraw", pairs)
        assert (reply.status, reply.error) == (404, "withdraw_not_found")


class TestListWithdraws:
    async def test_filters_and_pages(self, client: Client) -> None:
        """Newest first, limit/page, asc, from/to cursors, currency and uuids[]."""
        uuids = [(await client.withdraw(amount=f"0.0{i + 1}")).json["uuid"] for i in range(5)]
        xrp = (await client.post("/v1/withdraws/coin", XRP_BODY)).json["uuid"]
        listed = await client.get("/v1/withdraws", [("currency", "BTC")])
        assert listed.status == 200 and [w["uuid"] for w in listed.json] == uuids[::-1]
        assert list(listed.json[0]) == WITHDRAWAL_FIELDS
        page = await client.get("/v1/withdraws", [("currency", "BTC"), ("limit", "2"), ("page", "2")])
        assert [w["uuid"] for w in page.json] == [uuids[2], uuids[1]]
        asc = await client.get("/v1/withdraws", [("order_by", "asc"), ("from", uuids[3])])
        assert [w["uuid"] for w in asc.json] == [uuids[4], xrp]
        before = await client.get("/v1/withdraws", [("to", uuids[2])])
        assert [w["uuid"] for w in before.json] == [uuids[1], uuids[0]]
        chosen = await client.get("/v1/withdraws", [("uuids[]", uuids[0]), ("uuids[]", xrp)])
        assert [w["uuid"] for w in chosen.json] == [xrp, uuids[0]]
        waiting = await client.get("/v1/withdraws", [("state", "WAITING")])
        assert len(waiting.json) == 6 and (await client.get("/v1/withdraws", [("state", "DONE")])).json == []

    async def test_a_hundred_uuids(self, client: Client, server: SandboxServer) -> None:
        """uuids[] takes up to 100 uuids in one call; 101 is a validation_error; not with txids[]."""
        account = server.exchange.account()
        body = {"currency": "BTC", "net_type": "BTC", "amount": "0.0001", "address": BTC_ADDRESS}
        made = [server.exchange.create_withdrawal(account, body).uuid for _ in range(120)]
        reply = await client.get("/v1/withdraws", [("uuids[]", u) for u in made[:100]])
        assert reply.status == 200 and len(reply.json) == 100
        too_many = await client.get("/v1/withdraws", [("uuids[]", u) for u in made[:101]])
        assert (too_many.status, too_many.error) == (400, "validation_error")
        both = await client.get("/v1/withdraws", [("uuids[]", made[0]), ("txids[]", "x")])
        assert (both.status, both.error) == (400, "validation_error")

    async def test_default_limit_is_a_hundred(self, client: Client, server: SandboxServer) -> None:
        """Without filters: the latest 100."""
        account = server.exchange.account()
        body = {"currency": "BTC", "net_type": "BTC", "amount": "0.0001", "address": BTC_ADDRESS}
        made = [server.exchange.create_withdrawal(account, body).uuid for _ in range(130)]
        reply = await client.get("/v1/withdraws")
        assert [w["uuid"] for w in reply.json] == made[::-1][:100]


class TestCancel:
    async def test_cancel_waiting_then_again(self, client: Client) -> None:
        """Cancel in WAITING: 200, CANCELLED; again: is_cancelable false, state unchanged."""
        created = (await client.withdraw()).json
        first = await client.delete("/v1/withdraws/coin", [("uuid", created["uuid"])])
        assert first.status == 200 and list(first.json) == WITHDRAWAL_FIELDS
        assert (first.json["state"], first.json["is_cancelable"]) == ("CANCELLED", True)
        assert first.json["done_at"] is not None
        again = await client.delete("/v1/withdraws/coin", [("uuid", created["uuid"])])
        assert (again.json["state"], again.json["is_cancelable"]) == ("CANCELLED", False)
        accounts = {r["currency"]: r for r in (await client.get("/v1/accounts")).json}
        assert (accounts["BTC"]["balance"], accounts["BTC"]["locked"]) == ("10.0", "0.0")

    async def test_cancel_errors(self, client: Client) -> None:
        """Unknown uuid: 404 withdraw_not_found; no uuid: 400 validation_error."""
        unknown = await client.delete("/v1/withdraws/coin", [("uuid", "nope")])
        assert (unknown.status, unknown.error) == (404, "withdraw_not_found")
        missing = await client.delete("/v1/withdraws/coin")
        assert (missing.status, missing.error) == (400, "validation_error")


class TestLifecycleOverHttp:
    @pytest.fixture(name="seed")
    def _fast_seed(self) -> SandboxSeed:
        return fast(default_seed())

    async def test_reaches_done_and_moves_the_ledger(self, client: Client) -> None:
        """With 0.05 s steps a withdrawal is DONE within a second; funds leave for good."""
        created = (await client.withdraw()).json
        seen = set()
        for _ in range(100):
            state = (await client.get("/v1/withdraw", [("uuid", created["uuid"])])).json
            seen.add(state["state"])
            if state["state"] == "DONE":
                break
            await asyncio.sleep(0.01)
        assert state["state"] == "DONE" and {"WAITING", "PROCESSING"} <= seen
        assert state["txid"] and state["done_at"] and state["is_cancelable"] is False
        accounts = {r["currency"]: r for r in (await client.get("/v1/accounts")).json}
        assert (accounts["BTC"]["balance"], accounts["BTC"]["locked"]) == ("9.9892", "0.0")
        ledger = await client.admin("GET", "/sandbox/ledger")
        assert ledger["done_totals"]["BTC"] == "0.0108"

    async def test_outcome_rule_rejects(self, client: Client) -> None:
        """The default seed's XRP 13.13 rule ends REJECTED, refunded."""
        created = (await client.post("/v1/withdraws/coin", {**XRP_BODY, "amount": "13.13"})).json
        await asyncio.sleep(0.15)
        final = (await client.get("/v1/withdraw", [("uuid", created["uuid"])])).json
        assert (final["state"], final["txid"]) == ("REJECTED", None)
        xrp = next(r for r in (await client.get("/v1/accounts")).json if r["currency"] == "XRP")
        assert (xrp["balance"], xrp["locked"]) == ("1000000.0", "0.0")


class TestAccounts:
    @pytest.fixture(name="seed")
    def _two_accounts(self) -> SandboxSeed:
        base = default_seed()
        other = AccountSeed(
            name="other",
            keys=(Credentials("other-access-key-1", LONG_SECRET_A),),
            balances={"BTC": Decimal("1")},
            addresses=(
                AddressSeed(currency="BTC", net_type="BTC", network_name="Bitcoin", withdraw_address="bc1qother"),
            ),
        )
        return dataclasses.replace(base, accounts=(*base.accounts, other))

    async def test_accounts_are_separate(self, client: Client) -> None:
        """Each account has its own balances, allowlist and withdrawals."""
        other = client.as_key("other-access-key-1", LONG_SECRET_A)
        mine = (await client.withdraw()).json
        assert (await other.withdraw()).error == "withdraw_address_not_registered"
        theirs = await other.withdraw(address="bc1qother", amount="0.5")
        assert theirs.status == 201
        assert (await other.get("/v1/withdraw", [("uuid", mine["uuid"])])).status == 404
        assert [w["uuid"] for w in (await other.get("/v1/withdraws")).json] == [theirs.json["uuid"]]
        balances = {r["currency"]: r["balance"] for r in (await other.get("/v1/accounts")).json}
        assert balances == {"BTC": "0.4992"}
        assert len((await other.get("/v1/withdraws/coin_addresses")).json) == 1


async def test_unknown_path_is_not_found(server: SandboxServer) -> None:
    """Paths the sandbox does not serve are plain 404s."""
    async with aiohttp.ClientSession() as session, session.get(server.url + "/v1/orders") as response:
        assert response.status == 404
