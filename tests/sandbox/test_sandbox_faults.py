"""Fault injection: each kind, and whether the withdrawal exists afterwards (it must be exactly known)."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from engine.sandbox import SandboxServer
from engine.sandbox.faults import FaultInjector, FaultKind, FaultRule, parse_fault_rule
from tests.sandbox.conftest import Client

POST = "POST /v1/withdraws/coin"


async def add_fault(client: Client, **rule: Any) -> Any:
    return await client.admin("POST", "/sandbox/faults", rule)


class TestKinds:
    async def test_error_creates_nothing(self, client: Client, server: SandboxServer) -> None:
        """error: a 500 with an HTML body, before processing: no withdrawal, no creation counted."""
        await add_fault(client, endpoint=POST, kind="error", params={"status": 500})
        reply = await client.withdraw()
        assert reply.status == 500 and "<html>" in reply.text
        assert server.exchange.withdrawals() == []
        stats = await client.admin("GET", "/sandbox/stats")
        assert stats["creations_by_body"] == {} and stats["by_endpoint_status"][POST] == {"500": 1}

    async def test_error_503_json(self, client: Client) -> None:
        """error can answer 503 with a JSON error object."""
        await add_fault(client, endpoint=POST, kind="error", status=503, body="json")
        reply = await client.withdraw()
        assert (reply.status, reply.error) == (503, "server_error")

    async def test_drop_after_creating(self, client: Client, server: SandboxServer) -> None:
        """drop: the POST is processed, then the connection closes without an HTTP response."""
        await add_fault(client, endpoint=POST, kind="drop")
        with pytest.raises(aiohttp.ClientError):
            await client.withdraw()
        assert len(server.exchange.withdrawals()) == 1
        requests = (await client.admin("GET", "/sandbox/requests"))["requests"]
        assert (requests[-1]["status"], requests[-1]["fault"]) == ("dropped", "drop")

    async def test_hang_after_creating(self, client: Client, server: SandboxServer) -> None:
        """hang: the POST is processed, then the answer waits past the client's timeout."""
        await add_fault(client, endpoint=POST, kind="hang", params={"seconds": 5})
        with pytest.raises(TimeoutError):
            await client.withdraw(timeout=aiohttp.ClientTimeout(total=0.3))
        assert len(server.exchange.withdrawals()) == 1

    async def test_malformed_after_creating(self, client: Client, server: SandboxServer) -> None:
        """malformed: the right status (201) with a body that is not JSON."""
        await add_fault(client, endpoint=POST, kind="malformed")
        reply = await client.withdraw()
        assert reply.status == 201
        with pytest.raises(ValueError):
            _ = reply.json
        assert len(server.exchange.withdrawals()) == 1

    async def test_burst_429(self, client: Client, server: SandboxServer) -> None:
        """burst_429: the next ``count`` matching calls get 429 and are not processed."""
        await add_fault(client, endpoint=POST, kind="burst_429", params={"count": 2}, times=1)
        first, second = await client.withdraw(), await client.withdraw()
        assert [first.status, second.status] == [429, 429] and first.text == "Too many API requests."
        assert first.headers["Remaining-Req"].endswith("sec=0")
        assert server.exchange.withdrawals() == []
        assert (await client.withdraw()).status == 201

    async def test_latency(self, client: Client) -> None:
        """latency: the answer is delayed by ``ms``."""
        await add_fault(client, endpoint="GET /v1/accounts", kind="latency", ms=200)
        started = time.perf_counter()
        assert (await client.get("/v1/accounts")).status == 200
        assert time.perf_counter() - started >= 0.19

    async def test_times_and_endpoint_matching(self, client: Client) -> None:
        """times bounds the firings; a rule for one endpoint leaves the others alone."""
        await add_fault(client, endpoint=POST, kind="error", times=1)
        assert (await client.get("/v1/accounts")).status == 200
        assert (await client.withdraw()).status == 500
        assert (await client.withdraw()).status == 201

    async def test_wildcard_and_probability_zero(self, client: Client) -> None:
        """ "*" matches every /v1 call; probability 0 never fires."""
        await add_fault(client, endpoint="*", kind="error", probability=0.0)
        assert (await client.get("/v1/accounts")).status == 200
        await client.admin("DELETE", "/sandbox/faults")
        await add_fault(client, endpoint="*", kind="error")
        assert (await client.get("/v1/status/wallet")).status == 500


class TestRules:
    def test_same_seed_same_dice(self) -> None:
        """Fault firings replay from the seed."""

        def run(seed: int) -> list[bool]:
            injector = FaultInjector([FaultRule(kind=FaultKind.ERROR, probability=0.5)], seed=seed)
            return [injector.plan("GET /v1/accounts").action is not None for _ in range(64)]

        assert run(3) == run(3) and run(3) != run(4) and any(run(3)) and not all(run(3))

    def test_latencies_add_up_and_first_spoiler_wins(self) -> None:
        """Latency rules add; of the other kinds the first one that fires is used."""
        injector = FaultInjector([
            FaultRule(kind=FaultKind.LATENCY, params={"ms": 10}),
            FaultRule(kind=FaultKind.DROP),
            FaultRule(kind=FaultKind.LATENCY, params={"ms": 5}),
            FaultRule(kind=FaultKind.ERROR),
        ])  # fmt: skip
        plan = injector.plan(POST)
        assert plan.latency_ms == 15 and plan.after is not None and plan.after.kind is FaultKind.DROP
        assert plan.before is None

    @pytest.mark.parametrize(
        "data",
        [
            {"kind": "explode"},
            {"kind": "error", "endpoint": "GET /v2/x"},
            {"kind": "error", "probability": 2},
            {"kind": "error", "status": 404},
            {"kind": "hang", "seconds": -1},
            {"kind": "burst_429", "count": 0},
            {"kind": "latency", "ms": "fast"},
            {"kind": "drop", "times": 0},
            {"kind": "drop", "colour": "red"},
        ],
    )
    def test_invalid_rules(self, data: dict[str, Any]) -> None:
        """Bad rules are refused with a message."""
        with pytest.raises(ValueError, match=r".+"):
            parse_fault_rule(data)

    async def test_admin_list_add_clear(self, client: Client) -> None:
        """GET lists with ids and firing counts; POST takes one rule or a list; DELETE clears (one or all)."""
        added = await client.admin("POST", "/sandbox/faults", [{"kind": "drop"}, {"kind": "latency", "ms": 1}])
        assert len(added["added"]) == 2
        listed = (await client.admin("GET", "/sandbox/faults"))["faults"]
        assert [f["kind"] for f in listed] == ["drop", "latency"] and listed[1]["params"] == {"ms": 1}
        assert (await client.admin("DELETE", f"/sandbox/faults?id={added['added'][0]}"))["removed"] == 1
        assert (await client.admin("DELETE", "/sandbox/faults"))["removed"] == 1
        async with client.session.post(client.base + "/sandbox/faults", json={"kind": "nope"}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["name"] == "sandbox_invalid_admin_request"
