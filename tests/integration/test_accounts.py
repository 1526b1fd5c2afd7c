"""Several accounts in one engine: each has its own keys, rate budget, ledger and policy."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from pathlib import Path

import pytest

from engine import CurrencyPolicy, Engine, InvalidRequest, Policy, State, WithdrawalRequest
from engine.sandbox import SandboxServer, default_seed
from engine.store.sqlite import SQLiteStore
from engine.upbit.auth import Credentials
from engine.upbit.client import UpbitClient
from engine.upbit.gateway import Gateway
from tests.conftest import FAST, FAST_EXCHANGE, SandboxAdmin

TREASURY = Credentials("treasury-access-key-00000000000000000000", "treasury-secret-" + "t" * 60)
HOT = Credentials("hot-wallet-access-key-0000000000000000000", "hot-wallet-secret-" + "h" * 60)


def _two_account_seed() -> object:
    seed = default_seed()
    base = seed.accounts[0]
    treasury = dataclasses.replace(base, name="treasury", keys=(TREASURY,))
    hot = dataclasses.replace(base, name="hot", keys=(HOT,), balances={**base.balances, "BTC": Decimal("1")})
    return dataclasses.replace(seed, accounts=(treasury, hot))


def _gateway(url: str, creds: Credentials) -> Gateway:
    return Gateway(UpbitClient(creds, base_url=url, timeout=2.0), wallet_ttl=0.05, chance_ttl=0.05, poll_window=0.01)


class TestTwoAccounts:
    async def test_each_withdrawal_pays_from_its_account_under_its_policy(self, db_path: Path) -> None:
        """Withdrawals name their account: each account's ledger moves, and the hot wallet's tighter
        per-account limit refuses what the treasury may send."""
        async with SandboxServer(seed=_two_account_seed()) as sandbox:  # type: ignore[arg-type]
            admin = SandboxAdmin(sandbox.url)
            await admin.configure(**FAST_EXCHANGE)
            async with UpbitClient(TREASURY, base_url=sandbox.url) as client:
                address = next(a.withdraw_address for a in await client.coin_addresses() if a.currency == "BTC")
            policy = Policy(accounts={"hot": {"BTC": CurrencyPolicy(max_per_withdrawal=Decimal("0.1"))}})
            gateways = {"treasury": _gateway(sandbox.url, TREASURY), "hot": _gateway(sandbox.url, HOT)}
            async with Engine(store=SQLiteStore(db_path), gateways=gateways, settings=FAST, policy=policy) as engine:

                def req(account: str, amount: str) -> WithdrawalRequest:
                    return WithdrawalRequest(
                        currency="BTC", net_type="BTC", amount=Decimal(amount), address=address, account=account
                    )

                ids = [
                    (await engine.submit(req(a, x))).id
                    for a, x in [("treasury", "0.5"), ("hot", "0.05"), ("hot", "0.5")]
                ]
                finals = [await engine.wait(i, timeout=15) for i in ids]
                stats = engine.stats()
            ledger = await admin.call("GET", "ledger")
        assert [f.state for f in finals] == [State.DONE, State.DONE, State.ABORTED]
        assert finals[2].reason == "policy_denied"
        by_account = {a["name"]: a["currencies"]["BTC"] for a in ledger["accounts"]}
        assert Decimal(by_account["treasury"]["balance"]) < Decimal("10") - Decimal("0.5")
        assert Decimal(by_account["hot"]["balance"]) < Decimal("1") - Decimal("0.05")
        assert Decimal(by_account["hot"]["balance"]) > Decimal("0.9")
        assert stats["treasury"]["calls"]["POST /v1/withdraws/coin"] == 1
        assert stats["hot"]["calls"]["POST /v1/withdraws/coin"] == 1

    async def test_unknown_account_is_refused_at_intake(self, db_path: Path) -> None:
        """A request naming an account the engine does not have is refused, nothing stored."""
        async with Engine(store=SQLiteStore(db_path), gateways={"treasury": _gateway("http://127.0.0.1:9", TREASURY)},
                          run_runner=False) as engine:  # fmt: skip
            with pytest.raises(InvalidRequest, match="account"):
                await engine.submit(
                    WithdrawalRequest(currency="BTC", net_type="BTC", amount=Decimal("1"), address="x1", account="nope")
                )
            assert await engine.list() == []
