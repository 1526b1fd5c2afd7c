"""Rate limits (upbit-api.md §3): Remaining-Req, 429 not processed, 418 blocks, per-account buckets."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import pytest

from engine.clock import FakeClock
from engine.sandbox import SandboxServer, default_seed
from engine.sandbox.model import AccountSeed, RateLimitSettings, SandboxSeed
from engine.sandbox.ratelimit import RateLimiter, VerdictKind
from engine.upbit.auth import Credentials
from tests.sandbox.conftest import LONG_SECRET_A, LONG_SECRET_B, Client

LIMITS = RateLimitSettings(per_second=5, block_after_429s=3, block_window_seconds=10.0, block_seconds=2.0)


def _sec(reply_headers: object) -> int:
    match = re.fullmatch(r"group=default; min=1800; sec=(\d+)", reply_headers["Remaining-Req"])  # type: ignore[index]
    assert match, reply_headers
    return int(match.group(1))


@pytest.fixture(name="clock")
def _clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(name="seed")
def _limited_seed() -> SandboxSeed:
    base = default_seed()
    team = AccountSeed(
        name="team",
        keys=(Credentials("team-key-1", LONG_SECRET_A), Credentials("team-key-2", LONG_SECRET_B)),
        balances={"BTC": Decimal(1)},
    )
    return dataclasses.replace(base, accounts=(*base.accounts, team), rate_limit=LIMITS)


@pytest.fixture(name="server")
async def _clocked_server(seed: SandboxSeed, clock: FakeClock) -> AsyncIterator[SandboxServer]:
    async with SandboxServer(seed, clock=clock) as server:
        yield server


class TestOverHttp:
    async def test_remaining_req_counts_down_and_refills(self, client: Client, clock: FakeClock) -> None:
        """sec= counts the calls left in this second; the next second starts full."""
        seen = [_sec((await client.get("/v1/accounts")).headers) for _ in range(5)]
        assert seen == [4, 3, 2, 1, 0]
        clock.advance(1.0)
        assert _sec((await client.get("/v1/accounts")).headers) == 4

    async def test_429_is_not_processed(self, client: Client, server: SandboxServer) -> None:
        """Over the limit: 429, plain text, sec=0, and a POST creates nothing."""
        for _ in range(5):
            assert (await client.get("/v1/accounts")).status == 200
        reply = await client.withdraw()
        assert (reply.status, reply.text, _sec(reply.headers)) == (429, "Too many API requests.", 0)
        assert reply.headers["Content-Type"].startswith("text/plain")
        assert server.exchange.withdrawals() == []

    async def test_repeated_429s_block_with_418(self, client: Client, clock: FakeClock) -> None:
        """block_after_429s 429s: every call then gets 418 naming the seconds, with Retry-After."""
        statuses = [(await client.get("/v1/accounts")).status for _ in range(8)]
        assert statuses == [200] * 5 + [429] * 3
        blocked = await client.get("/v1/accounts")
        assert (blocked.status, blocked.error) == (418, "too_many_requests_blocked")
        assert "2 seconds" in blocked.json["error"]["message"]
        assert blocked.headers["Retry-After"] == "2"
        clock.advance(1.0)
        assert (await client.get("/v1/withdraws/coin_addresses")).status == 418
        clock.advance(1.0)
        assert (await client.get("/v1/accounts")).status == 200
        stats = await client.admin("GET", "/sandbox/stats")
        assert (stats["status_429"], stats["status_418"]) == (3, 2)

    async def test_keys_of_one_account_share_a_bucket(self, client: Client) -> None:
        """All keys of an account draw on one budget; another account is untouched."""
        first, second = client.as_key("team-key-1", LONG_SECRET_A), client.as_key("team-key-2", LONG_SECRET_B)
        statuses = [(await key.get("/v1/accounts")).status for key in (first, second) * 3]
        assert statuses == [200] * 5 + [429]
        assert (await client.get("/v1/accounts")).status == 200

    async def test_admin_routes_do_not_count(self, client: Client) -> None:
        """Admin calls are free."""
        for _ in range(20):
            await client.admin("GET", "/sandbox/stats")
        assert _sec((await client.get("/v1/accounts")).headers) == 4

    async def test_limits_change_at_run_time(self, client: Client) -> None:
        """POST /sandbox/config rate_limit applies at once; disabled means never throttled."""
        await client.admin("POST", "/sandbox/config", {"rate_limit": {"enabled": False}})
        statuses = {(await client.get("/v1/accounts")).status for _ in range(40)}
        assert statuses == {200}


class TestPure:
    def test_windows_strikes_and_blocks(self) -> None:
        """Fixed one-second windows; strikes expire after the block window; the block ends on time."""
        now = [0.0]
        limiter = RateLimiter(RateLimitSettings(per_second=2, block_after_429s=2, block_window_seconds=1.0,
                                                block_seconds=5.0), lambda: now[0])  # fmt: skip
        kinds = [limiter.check("a").kind for _ in range(3)]
        assert kinds == [VerdictKind.ALLOWED, VerdictKind.ALLOWED, VerdictKind.THROTTLED]
        now[0] = 1.5
        kinds = [limiter.check("a").kind for _ in range(3)]
        assert kinds[-1] is VerdictKind.THROTTLED
        assert limiter.check("a").kind is VerdictKind.THROTTLED
        verdict = limiter.check("a")
        assert verdict.kind is VerdictKind.BLOCKED and verdict.retry_after == pytest.approx(5.0)
        assert limiter.check("b").allowed
        now[0] = 6.6
        assert limiter.check("a").allowed

    def test_injected_429s_count_as_strikes(self) -> None:
        """A burst_429 answered by the fault layer still counts toward the 418 block."""
        limiter = RateLimiter(RateLimitSettings(block_after_429s=2), lambda: 0.0)
        limiter.strike("a")
        limiter.strike("a")
        assert limiter.check("a").kind is VerdictKind.BLOCKED


async def test_thousand_requests_per_second_is_not_the_bottleneck() -> None:
    """With limits off, the sandbox answers well over a thousand signed calls per second here."""
    seed = dataclasses.replace(default_seed(), rate_limit=RateLimitSettings(enabled=False))
    async with SandboxServer(seed) as server, aiohttp.ClientSession() as session:
        key = seed.accounts[0].keys[0]
        client = Client(session, server.url, key.access_key, key.secret_key)
        started = time.perf_counter()

        async def worker() -> None:
            for _ in range(50):
                assert (await client.get("/v1/withdraws", [("currency", "BTC")])).status == 200

        await asyncio.gather(*(worker() for _ in range(20)))
        rate = 1000 / (time.perf_counter() - started)
    print(f"{rate:.0f} req/s")
    assert rate > 300, rate  # lenient for slow CI; typically several times more
