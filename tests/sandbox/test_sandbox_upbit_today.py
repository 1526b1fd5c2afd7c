"""What Upbit accepts and enforces today (issue #10), over HTTP with the independent test signer.

JSON-number amounts (ccxt's ``withdraw()``), ``null`` optional keys and how they are hashed, bare
``uuids``, the account's fiat daily limit, per-network ``is_cancelable``, regions, the spec's
``beneficiary_name``/``wallet_type`` rule, the public market list, and 418 blocks that grow and may
come without ``Retry-After``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlencode

import aiohttp
import pytest
from yarl import URL

from engine.clock import FakeClock
from engine.sandbox import SandboxServer
from engine.sandbox.auth import hashed_body
from engine.sandbox.model import RateLimitSettings, Region, SandboxSeed
from engine.sandbox.ratelimit import RateLimiter, VerdictKind
from tests.sandbox.conftest import BTC_ADDRESS, BTC_BODY, XRP_ADDRESS, Client, sign


async def post_hashing(client: Client, body: dict[str, Any], hashed: str | None, raw: str | None = None) -> Any:
    """POST ``body`` (or the ``raw`` JSON text) with a token over exactly ``hashed``."""
    token = sign(client.access_key, client.secret, hashed)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    data = raw if raw is not None else json.dumps(body)
    return await client.send("POST", URL(client.base + "/v1/withdraws/coin"), headers=headers, data=data)


class TestWhatUpbitAccepts:
    async def test_a_json_number_amount_is_accepted_and_hashed_as_sent(self, client: Client) -> None:
        """ccxt sends ``"amount": 0.01`` and hashes ``amount=0.01``: 201, echoed as a string."""
        body = {**BTC_BODY, "amount": 0.01}
        reply = await post_hashing(client, body, unquote(urlencode(list(body.items()))))
        assert reply.status == 201, reply.text
        assert reply.json["amount"] == "0.01"

    async def test_an_integer_amount_and_its_text_are_kept(self, client: Client) -> None:
        """The number's text as sent is what was hashed (``1.50`` stays ``1.50`` in the hash)."""
        raw = f'{{"currency": "ETH", "net_type": "ETH", "amount": 1.50, "address": "{_ETH}"}}'
        reply = await post_hashing(client, {}, f"currency=ETH&net_type=ETH&amount=1.50&address={_ETH}", raw=raw)
        assert reply.status == 201, reply.text
        assert Decimal(reply.json["amount"]) == Decimal("1.5")

    @pytest.mark.parametrize("form", ["sdk", "recipe"])
    async def test_a_null_optional_key_is_accepted_hashed_either_way(self, client: Client, form: str) -> None:
        """The SDK leaves a null key out of the hash; Upbit's Python recipe (and ccxt) write ``None``."""
        body = {**BTC_BODY, "secondary_address": None, "transaction_type": None}
        hashed = unquote(urlencode(list((BTC_BODY if form == "sdk" else body).items())))
        assert "None" in hashed or form == "sdk"
        reply = await post_hashing(client, body, hashed)
        assert reply.status == 201, reply.text
        assert reply.json["transaction_type"] == "default"

    async def test_a_null_hashed_as_an_empty_value_is_refused(self, client: Client) -> None:
        """Neither Upbit-published client writes ``key=`` for null: such a token does not match."""
        body = {**BTC_BODY, "secondary_address": None}
        reply = await post_hashing(client, body, unquote(urlencode(list(BTC_BODY.items()))) + "&secondary_address=")
        assert (reply.status, reply.error) == (401, "invalid_query_payload")

    def test_the_hashed_strings_of_a_body(self) -> None:
        """One candidate when both writers agree; two when a null, a boolean or an array is present."""
        assert hashed_body(b'{"a": "x", "b": 0.5}') == ("a=x&b=0.5",)
        assert hashed_body(b'{"a": "x", "b": null, "c": true}') == ("a=x&c=true", "a=x&b=None&c=True")
        assert hashed_body(b'{"ids": ["1", "2"]}') == ("ids[]=1&ids[]=2", "ids=1&ids=2")
        assert hashed_body(b"{}") == ()

    async def test_bare_uuids_are_accepted(self, client: Client) -> None:
        """Upbit documents ``uuids[]``; bare ``uuids`` is read too (a documented leniency)."""
        made = (await client.withdraw()).json
        for key in ("uuids[]", "uuids"):
            reply = await client.get("/v1/withdraws", [(key, made["uuid"])])
            assert [w["uuid"] for w in reply.json] == [made["uuid"]]


_ETH = "0x5a0b54d5dc17e0aadc383d2db43b0a0d3e029c4c"


class TestFiatDailyLimit:
    async def test_the_fiat_limit_is_reported_and_enforced(self, client: Client, server: SandboxServer) -> None:
        """5e9 KRW a day at 140e6 KRW per BTC: 36 BTC is too much; after 35, 1 more is too."""
        server.exchange.set_balance(None, "BTC", Decimal(1000))
        assert (await client.withdraw(amount="36")).error == "sandbox_over_daily_fiat_limit"
        assert (await client.withdraw(amount="35")).status == 201
        chance = (await client.get("/v1/withdraws/chance", [("currency", "BTC"), ("net_type", "BTC")])).json
        limit = chance["withdraw_limit"]
        assert (limit["remaining_daily_fiat"], limit["fiat_currency"], limit["can_withdraw"]) == (
            "100000000",
            "KRW",
            True,
        )
        refused = await client.withdraw(amount="1")
        assert refused.error == "sandbox_over_daily_fiat_limit"
        assert "KRW" in refused.json["error"]["message"]
        assert (await client.withdraw(amount="0.7")).status == 201
        chance = (await client.get("/v1/withdraws/chance", [("currency", "BTC"), ("net_type", "BTC")])).json
        assert (chance["withdraw_limit"]["remaining_daily_fiat"], chance["withdraw_limit"]["can_withdraw"]) == (
            "2000000",
            True,
        )
        server.exchange.accounts["demo"].daily_fiat_limit = Decimal(4_998_000_000)
        chance = (await client.get("/v1/withdraws/chance", [("currency", "BTC"), ("net_type", "BTC")])).json
        assert (chance["withdraw_limit"]["remaining_daily_fiat"], chance["withdraw_limit"]["can_withdraw"]) == (
            "0",
            False,
        )

    async def test_a_refunded_withdrawal_gives_its_fiat_back(self, client: Client) -> None:
        """A cancelled withdrawal no longer counts toward the day."""
        made = (await client.withdraw(amount="1")).json
        await client.delete("/v1/withdraws/coin", [("uuid", made["uuid"])])
        chance = (await client.get("/v1/withdraws/chance", [("currency", "BTC"), ("net_type", "BTC")])).json
        assert chance["withdraw_limit"]["remaining_daily_fiat"] == "5000000000"


def _with_network(seed: SandboxSeed, currency: str, **changes: Any) -> SandboxSeed:
    networks = tuple(dataclasses.replace(n, **changes) if n.currency == currency else n for n in seed.networks)
    return dataclasses.replace(seed, networks=networks)


async def _client_for(server: SandboxServer, session: aiohttp.ClientSession) -> Client:
    key = server.seed.accounts[0].keys[0]
    return Client(session, server.url, key.access_key, key.secret_key)


class TestCancelable:
    async def test_a_network_without_cancel_shows_false_and_refuses(self, seed: SandboxSeed) -> None:
        """As in Upbit's tutorial: a fresh WAITING withdrawal with ``is_cancelable: false``; DELETE changes nothing."""
        async with SandboxServer(_with_network(seed, "BTC", cancelable=False)) as server, aiohttp.ClientSession() as s:
            client = await _client_for(server, s)
            made = (await client.withdraw()).json
            assert (made["state"], made["is_cancelable"]) == ("WAITING", False)
            answer = (await client.delete("/v1/withdraws/coin", [("uuid", made["uuid"])])).json
            assert (answer["state"], answer["is_cancelable"]) == ("WAITING", False)

    def test_the_default_seed_keeps_cancel_while_waiting(self, seed: SandboxSeed) -> None:
        assert all(n.cancelable for n in seed.networks)


class TestRegions:
    @pytest.mark.parametrize(
        ("region", "fiat", "offset"),
        [(Region.SG, "SGD", "+08:00"), (Region.ID, "IDR", "+07:00"), (Region.TH, "THB", "+07:00")],
    )
    async def test_a_global_region_has_its_fiat_and_millisecond_stamps(
        self, seed: SandboxSeed, region: Region, fiat: str, offset: str
    ) -> None:
        account = dataclasses.replace(seed.accounts[0], balances={**seed.accounts[0].balances, fiat: Decimal(1000)})
        regional = dataclasses.replace(seed, region=region, accounts=(account,))
        async with SandboxServer(regional) as server, aiohttp.ClientSession() as session:
            client = await _client_for(server, session)
            made = (await client.withdraw()).json
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}" + re.escape(offset), made["created_at"])
            balances = (await client.get("/v1/accounts")).json
            assert balances[0]["currency"] == fiat and {b["unit_currency"] for b in balances} == {fiat}
            chance = (await client.get("/v1/withdraws/chance", [("currency", "BTC"), ("net_type", "BTC")])).json
            assert chance["withdraw_limit"]["fiat_currency"] == fiat
            async with session.get(server.url + "/v1/market/all") as response:
                assert f"{fiat}-BTC" in {m["market"] for m in await response.json()}

    async def test_korea_stamps_to_the_second_in_kst(self, client: Client) -> None:
        made = (await client.withdraw()).json
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+09:00", made["created_at"])


class TestCoinAddresses:
    async def test_beneficiary_name_only_for_exchange_wallets(self, client: Client) -> None:
        """Spec: beneficiary_name is null for personal wallets; wallet_type names a personal wallet."""
        rows = {(r["currency"], r["net_type"]): r for r in (await client.get("/v1/withdraws/coin_addresses")).json}
        personal, exchange = rows["BTC", "BTC"], rows["XRP", "XRP"]
        assert personal["withdraw_address"] == BTC_ADDRESS and personal["exchange_name"] is None
        assert (personal["beneficiary_name"], personal["wallet_type"]) == (None, "Ledger")
        assert exchange["withdraw_address"] == XRP_ADDRESS and exchange["exchange_name"] == "Bithumb"
        assert (exchange["beneficiary_name"], exchange["wallet_type"]) == ("Kim Sandbox", None)


class TestMarketAll:
    async def test_public_and_shaped_like_upbits(self, server: SandboxServer) -> None:
        """No JWT needed; ``is_details=true`` adds market_event; recorded like any other call."""
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/v1/market/all") as response:
                plain = await response.json()
            async with session.get(server.url + "/v1/market/all?is_details=true") as response:
                detailed = await response.json()
        assert {"market": "KRW-BTC", "korean_name": "비트코인", "english_name": "Bitcoin"} in plain
        assert {"KRW-ETH", "BTC-ETH", "USDT-XRP"} <= {m["market"] for m in plain}
        assert all(m["market_event"]["warning"] is False for m in detailed)
        assert server.sandbox.recorder.stats()["by_endpoint"]["GET /v1/market/all"] == 2


def _limiter(clock: list[float], **settings: Any) -> RateLimiter:
    base = {"per_second": 1, "block_after_429s": 2, "block_window_seconds": 100.0, "block_seconds": 10.0}
    return RateLimiter(RateLimitSettings(**{**base, **settings}), lambda: clock[0])


def _block(limiter: RateLimiter, clock: list[float]) -> float:
    """Strike until blocked; returns the block's length."""
    for _ in range(10):
        verdict = limiter.check("a")
        if verdict.kind is VerdictKind.BLOCKED:
            return verdict.retry_after
        clock[0] += 0.001
    raise AssertionError("never blocked")


class TestBlocks:
    def test_blocks_grow_on_repeat_up_to_the_cap(self) -> None:
        clock = [0.0]
        limiter = _limiter(clock, block_growth=3.0, block_max_seconds=50.0)
        lengths = []
        for _ in range(3):
            lengths.append(round(_block(limiter, clock)))
            clock[0] += 1000.0
        assert lengths == [10, 30, 50]

    def test_default_blocks_do_not_grow(self) -> None:
        clock = [0.0]
        limiter = _limiter(clock)
        first = _block(limiter, clock)
        clock[0] += 1000.0
        assert round(_block(limiter, clock)) == round(first) == 10

    async def test_an_unannounced_block_has_no_retry_after_and_no_figure(self, seed: SandboxSeed) -> None:
        limits = RateLimitSettings(per_second=1, block_after_429s=1, block_seconds=600.0, announce_block=False)
        frozen = FakeClock()  # one window for the whole test, however slow the machine
        async with (
            SandboxServer(dataclasses.replace(seed, rate_limit=limits), clock=frozen) as server,
            aiohttp.ClientSession() as s,
        ):
            client = await _client_for(server, s)
            statuses = [(await client.get("/v1/accounts")).status for _ in range(2)]
            blocked = await client.get("/v1/accounts")
        assert statuses == [200, 429]
        assert (blocked.status, blocked.error) == (418, "too_many_requests_blocked")
        assert "Retry-After" not in blocked.headers
        assert not re.search(r"\d", blocked.json["error"]["message"])

    def test_the_hash_helper_matches_the_signer(self) -> None:
        """Sanity: the tests' signer hashes what the sandbox expects for a plain body."""
        text = unquote(urlencode(list(BTC_BODY.items())))
        assert hashed_body(json.dumps(BTC_BODY).encode()) == (text,)
        assert hashlib.sha512(text.encode()).hexdigest()


class TestSeedKeys:
    def test_the_new_seed_keys_load_from_toml(self, tmp_path: Any) -> None:
        """region, per-network cancelable/onetime/daily and the 418 settings are read and checked."""
        from engine.sandbox.seed import DEFAULT_SEED_PATH, load_seed

        text = DEFAULT_SEED_PATH.read_text(encoding="utf-8")
        text = text.replace('region = "kr"', 'region = "sg"').replace("block_growth = 1.0", "block_growth = 2.0")
        text = text.replace("announce_block = true", "announce_block = false")
        text = text.replace(
            'network_name = "Bitcoin"\n', 'network_name = "Bitcoin"\ncancelable = false\nonetime = "5"\n', 1
        )
        path = tmp_path / "seed.toml"
        path.write_text(text, encoding="utf-8")
        seed = load_seed(path)
        btc = next(n for n in seed.networks if n.currency == "BTC")
        assert (seed.region, seed.region.fiat) == (Region.SG, "SGD")
        assert (btc.cancelable, btc.onetime, btc.daily) == (False, Decimal(5), None)
        assert (seed.rate_limit.block_growth, seed.rate_limit.announce_block) == (2.0, False)

    def test_blocks_may_not_shrink(self, tmp_path: Any) -> None:
        from engine.sandbox.model import SeedError
        from engine.sandbox.seed import rate_limit_from

        with pytest.raises(SeedError, match="block_growth"):
            rate_limit_from({"block_growth": 0.5})
        with pytest.raises(SeedError, match="region"):
            from engine.sandbox.seed import seed_from_mapping

            seed_from_mapping({"region": "us", "accounts": [{"name": "a"}], "networks": []})

    async def test_the_418_settings_change_live(self, client: Client) -> None:
        answer = await client.admin(
            "POST", "/sandbox/config", {"rate_limit": {"announce_block": False, "block_growth": 3}}
        )
        assert answer["rate_limit"]["announce_block"] is False and answer["rate_limit"]["block_growth"] == 3.0
