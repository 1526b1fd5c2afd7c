"""The ``default`` group limit as Upbit enforces it: per account, one-second windows, 429 then 418.

Pure and clock-injected. A bucket is one account (all its keys share it); callers that know no
account use a bucket of their own (e.g. per remote address). Windows are fixed: the integer part of
the monotonic clock, so ``sec=`` in ``Remaining-Req`` counts down within a second and refills at the
next. A call over the limit is refused with 429 and *not* processed; ``block_after_429s`` 429s
within ``block_window_seconds`` block the bucket for ``block_seconds``, during which every call gets
418 (and, being refused too, does not count toward the window). A 429 injected by a ``burst_429``
fault counts as a strike too, so a client that ignores 429 storms gets blocked as on Upbit. Blocks
grow on repeat, as Upbit says its do: the n-th block of a bucket lasts
``block_seconds * block_growth ** (n - 1)``, at most ``block_max_seconds``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from engine.sandbox.model import RateLimitSettings

__all__ = ["RateLimiter", "Verdict", "VerdictKind"]


class VerdictKind(IntEnum):
    """The HTTP status a verdict implies (``ALLOWED`` means "go on")."""

    ALLOWED = 0
    THROTTLED = 429
    BLOCKED = 418


@dataclass(frozen=True, slots=True)
class Verdict:
    """The limiter's answer for one call: what to do, calls left this second, seconds of block left."""

    kind: VerdictKind
    remaining: int
    retry_after: float = 0.0

    @property
    def allowed(self) -> bool:
        """True when the call may be processed."""
        return self.kind is VerdictKind.ALLOWED

    @property
    def header(self) -> str:
        """The ``Remaining-Req`` header value (``min`` is Upbit's fixed, deprecated figure)."""
        return f"group=default; min=1800; sec={self.remaining}"


@dataclass(slots=True)
class _Bucket:
    window: int = -1
    count: int = 0
    strikes: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0
    blocks: int = 0


class RateLimiter:
    """Per-bucket fixed windows plus the 429-strikes-to-418 escalation."""

    def __init__(self, settings: RateLimitSettings, monotonic: Callable[[], float]) -> None:
        self.settings = settings
        self._monotonic = monotonic
        self._buckets: dict[str, _Bucket] = {}

    def __repr__(self) -> str:
        return f"RateLimiter(per_second={self.settings.per_second}, buckets={len(self._buckets)})"

    def reset(self) -> None:
        """Forget every window, strike and block."""
        self._buckets.clear()

    def check(self, bucket_id: str) -> Verdict:
        """Count one call against ``bucket_id`` and say whether it may proceed."""
        limit = self.settings.per_second
        if not self.settings.enabled:
            return Verdict(VerdictKind.ALLOWED, limit)
        now = self._monotonic()
        bucket = self._buckets.setdefault(bucket_id, _Bucket())
        if now < bucket.blocked_until:
            return Verdict(VerdictKind.BLOCKED, 0, bucket.blocked_until - now)
        self._roll(bucket, now)
        bucket.count += 1
        if bucket.count <= limit:
            return Verdict(VerdictKind.ALLOWED, limit - bucket.count)
        return self._strike(bucket, now)

    def peek(self, bucket_id: str) -> int:
        """Calls left in the current second, without counting one (for answers refused earlier)."""
        bucket = self._buckets.get(bucket_id)
        limit = self.settings.per_second
        if bucket is None or not self.settings.enabled or bucket.window != math.floor(self._monotonic()):
            return limit
        return max(0, limit - bucket.count)

    @staticmethod
    def _roll(bucket: _Bucket, now: float) -> None:
        window = math.floor(now)
        if window != bucket.window:
            bucket.window, bucket.count = window, 0

    def strike(self, bucket_id: str) -> None:
        """Count a 429 answered by someone else (an injected ``burst_429``) toward the 418 block."""
        if self.settings.enabled:
            self._strike(self._buckets.setdefault(bucket_id, _Bucket()), self._monotonic())

    def _strike(self, bucket: _Bucket, now: float) -> Verdict:
        """A 429; enough of them within the block window start a block."""
        settings = self.settings
        bucket.strikes.append(now)
        while bucket.strikes and bucket.strikes[0] <= now - settings.block_window_seconds:
            bucket.strikes.popleft()
        if len(bucket.strikes) >= settings.block_after_429s:
            bucket.strikes.clear()
            bucket.blocked_until = now + self.block_length(bucket.blocks)
            bucket.blocks += 1
        return Verdict(VerdictKind.THROTTLED, 0, math.ceil(now) - now or 1.0)

    def block_length(self, earlier_blocks: int) -> float:
        """Seconds of the next block of a bucket that was blocked ``earlier_blocks`` times already."""
        settings = self.settings
        return float(min(settings.block_seconds * settings.block_growth**earlier_blocks, settings.block_max_seconds))

    def block_message(self, seconds: float) -> str:
        """The 418 message: the block in whole seconds (rounded up), or no figure when blocks are not announced."""
        if not self.settings.announce_block:
            return "Too many requests: this account is temporarily blocked."
        return f"Too many requests: this account is blocked for {math.ceil(seconds)} seconds."
