"""Seeds: the TOML default equals the built-in one, env keys, validation, multi-key accounts, replay."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.sandbox import SandboxServer, create_app, default_seed, load_seed, run_sandbox
from engine.sandbox.model import SeedError, WalletState, WithdrawalState
from engine.sandbox.seed import DEFAULT_SEED_PATH, seed_from_mapping
from engine.upbit.auth import DEMO_ACCESS_KEY, DEMO_SECRET_KEY
from tests.sandbox.conftest import LONG_SECRET_A, LONG_SECRET_B, Client

DEFAULT_TOML = DEFAULT_SEED_PATH.read_text()


def _data() -> dict[str, Any]:
    return tomllib.loads(DEFAULT_TOML)


def test_toml_default_equals_builtin() -> None:
    """default_seed.toml parses into exactly the built-in default seed."""
    assert load_seed(DEFAULT_SEED_PATH) == default_seed()


def test_default_seed_contents() -> None:
    """Demo keys, generous balances, the required networks, and a paused DOGE wallet."""
    seed = default_seed()
    (account,) = seed.accounts
    assert [(k.access_key, k.secret_key) for k in account.keys] == [(DEMO_ACCESS_KEY, DEMO_SECRET_KEY)]
    assert account.balances["BTC"] == 10 and account.balances["USDT"] == 1_000_000
    networks = {n.key: n for n in seed.networks}
    assert {("BTC", "BTC"), ("ETH", "ETH"), ("USDT", "TRX"), ("USDT", "ETH"), ("XRP", "XRP")} <= set(networks)
    assert networks["DOGE", "DOGE"].wallet_state is WalletState.PAUSED
    assert {(a.currency, a.net_type) for a in account.addresses} == set(networks)
    assert seed.outcome_weights[WithdrawalState.DONE] == 1.0 and seed.rate_limit.per_second == 30


def test_environment_keys_replace_the_demo_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    """With both UPBIT_ACCESS_KEY and UPBIT_SECRET_KEY set, the default account uses them."""
    monkeypatch.setenv("UPBIT_ACCESS_KEY", "my-access")
    assert default_seed().accounts[0].keys[0].access_key == DEMO_ACCESS_KEY
    monkeypatch.setenv("UPBIT_SECRET_KEY", LONG_SECRET_A)
    assert default_seed().accounts[0].keys[0].access_key == "my-access"
    assert load_seed(DEFAULT_SEED_PATH) == default_seed()


def test_accounts_with_several_keys() -> None:
    """An account may have access_key/secret_key plus more under keys."""
    data = _data()
    data["accounts"].append({
        "name": "ops", "access_key": "ops-1", "secret_key": LONG_SECRET_A,
        "keys": [{"access_key": "ops-2", "secret_key": LONG_SECRET_B}],
        "balances": {"BTC": "1.5"},
    })  # fmt: skip
    seed = seed_from_mapping(data)
    assert [k.access_key for k in seed.accounts[1].keys] == ["ops-1", "ops-2"]
    assert str(seed.accounts[1].balances["BTC"]) == "1.5"


def test_faults_in_the_seed() -> None:
    """[[faults]] entries become live rules."""
    data = _data()
    data["faults"] = [{"endpoint": "POST /v1/withdraws/coin", "kind": "drop", "probability": 0.5, "times": 2}]
    (rule,) = seed_from_mapping(data).faults
    assert (rule.kind.value, rule.probability, rule.times) == ("drop", 0.5, 2)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda d: d["networks"][0].update(withdraw_fee=0.0008), "networks[0].withdraw_fee"),
        (lambda d: d["networks"][0].update(colour="red"), "networks[0].colour"),
        (lambda d: d["networks"][0].update(wallet_state="sleepy"), "networks[0].wallet_state"),
        (lambda d: d["networks"][0].update(fixed="8"), "networks[0].fixed"),
        (lambda d: d["accounts"][0]["balances"].update(BTC="lots"), "accounts[0].balances.BTC"),
        (lambda d: d["accounts"][0]["addresses"][0].update(net_type="LN"), "no network BTC/LN"),
        (lambda d: d["accounts"][0].update(access_key="a"), "accounts[0].secret_key"),
        (lambda d: d["accounts"].append({**d["accounts"][0]}), "used twice"),
        (lambda d: d.update(outcome_weights={"DONE": 0}), "outcome_weights"),
        (lambda d: d.update(timings={"waiting_seconds": "soon"}), "timings.waiting_seconds"),
        (lambda d: d.update(faults=[{"kind": "boom"}]), "faults[0]"),
        (lambda d: d.update(accounts=[]), "accounts"),
    ],
)
def test_invalid_seeds_name_the_key(change: Any, key: str) -> None:
    """A bad seed fails with a SeedError whose message names what is wrong."""
    data = _data()
    change(data)
    with pytest.raises(SeedError, match=key.replace("[", r"\[").replace("]", r"\]")):
        seed_from_mapping(data)


def test_bad_toml_file(tmp_path: Path) -> None:
    """An unparseable file is a SeedError naming the file."""
    path = tmp_path / "bad.toml"
    path.write_text("random_seed = [")
    with pytest.raises(SeedError, match=r"bad\.toml"):
        load_seed(path)


async def _history(seed: Any) -> list[tuple[str, str]]:
    weights = {WithdrawalState.DONE: 1.0, WithdrawalState.FAILED: 1.0, WithdrawalState.REJECTED: 1.0}
    timings = dataclasses.replace(seed.timings, waiting_seconds=0.01, processing_seconds=0.01,
                                  waiting_jitter=0.01, processing_jitter=0.01)  # fmt: skip
    seed = dataclasses.replace(seed, outcome_weights=weights, timings=timings)
    async with SandboxServer(seed) as server, aiohttp.ClientSession() as session:
        key = seed.accounts[0].keys[0]
        client = Client(session, server.url, key.access_key, key.secret_key)
        uuids = [(await client.withdraw(amount=f"0.0{i + 1}")).json["uuid"] for i in range(8)]
        await asyncio.sleep(0.1)
        listed = (await client.get("/v1/withdraws", [("uuids[]", u) for u in uuids])).json
    return sorted((w["uuid"], w["state"]) for w in listed)


async def test_same_seed_same_outcomes_over_http() -> None:
    """Two sandboxes from the same seed give the same uuids and outcomes for the same requests."""
    first, second = await _history(default_seed()), await _history(default_seed())
    assert first == second and len({state for _, state in first}) > 1
    other = await _history(dataclasses.replace(default_seed(), random_seed=99))
    assert other != first


class TestServing:
    def test_refuses_non_loopback(self) -> None:
        """Binding beyond loopback needs allow_non_loopback=True."""
        with pytest.raises(ValueError, match="loopback"):
            SandboxServer(host="0.0.0.0")
        with pytest.raises(ValueError, match="loopback"):
            run_sandbox(host="example.com", port=0)
        assert SandboxServer(host="0.0.0.0", allow_non_loopback=True).host == "0.0.0.0"
        assert SandboxServer(host="::1").host == "::1"

    async def test_server_url_and_lifecycle(self) -> None:
        """The URL carries the real ephemeral port; stopping twice is fine; the app stands alone too."""
        server = SandboxServer()
        with pytest.raises(RuntimeError):
            _ = server.url
        async with server:
            assert server.url.startswith("http://127.0.0.1:") and server.port > 0
            assert "SandboxServer(http://127.0.0.1:" in repr(server)
        await server.stop()
        assert create_app(default_seed()).router is not None

    def test_run_sandbox_prints_and_serves(self) -> None:
        """run_sandbox prints one line with the URL and the demo access key, serves, and stops on SIGINT."""
        code = "from engine.sandbox import run_sandbox; import sys; run_sandbox('127.0.0.1', 0, sys.argv[1])"
        with subprocess.Popen(
            [sys.executable, "-c", code, str(DEFAULT_SEED_PATH)],
            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
        ) as process:  # fmt: skip
            try:
                assert process.stdout is not None
                line = process.stdout.readline()
                assert DEMO_ACCESS_KEY in line and "http://127.0.0.1:" in line
                url = line.split()[3]
                assert asyncio.run(_probe(url + "/sandbox/stats")) == 200
            finally:
                process.send_signal(signal.SIGINT)
                assert process.wait(timeout=10) == 0


async def _probe(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status
