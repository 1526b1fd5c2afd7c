"""One running sandbox: the seed, the clock, and the parts built from them (rebuilt on reset)."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from engine.clock import Clock, SystemClock
from engine.sandbox.auth import JwtVerifier
from engine.sandbox.exchange import Exchange
from engine.sandbox.faults import FaultInjector
from engine.sandbox.model import SandboxSeed
from engine.sandbox.ratelimit import RateLimiter
from engine.sandbox.recorder import Recorder

__all__ = ["SANDBOX_KEY", "Sandbox"]

#: Salt that keeps the fault dice independent of the exchange's (same seed, different streams).
_FAULT_SEED_SALT = 0x5EED_FA17


class Sandbox:
    """The exchange, the verifier, the rate limiter, the faults and the recorder of one server."""

    def __init__(self, seed: SandboxSeed, clock: Clock | None = None) -> None:
        self.seed = seed
        self.clock: Clock = clock or SystemClock()
        self.exchange: Exchange
        self.verifier: JwtVerifier
        self.limiter: RateLimiter
        self.faults: FaultInjector
        self.recorder: Recorder
        self.reset()

    def __repr__(self) -> str:
        return f"Sandbox({self.exchange!r}, {self.recorder!r})"

    def reset(self) -> None:
        """Back to the seed: balances, withdrawals, wallets, settings, faults, nonces and logs."""
        self.exchange = Exchange(self.seed, monotonic=self.clock.monotonic, now=self.clock.now)
        self.verifier = JwtVerifier(self.exchange.secret_for)
        self.limiter = RateLimiter(self.seed.rate_limit, self.clock.monotonic)
        self.faults = FaultInjector(self.seed.faults, seed=self.seed.random_seed ^ _FAULT_SEED_SALT)
        self.recorder = Recorder()

    def now(self) -> datetime:
        """The clock's aware UTC time."""
        return self.clock.now()


SANDBOX_KEY = web.AppKey("sandbox", Sandbox)
