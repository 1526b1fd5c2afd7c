"""How far the exchange's clock is from ours, measured from its answers' ``Date`` header.

Why: reconciliation adopts an exchange withdrawal only if it was created after our intent, and the
exchange stamps ``created_at`` with *its* clock. A fixed allowance (``clock_skew``, 120 s by default)
lets a reconciliation adopt any same-lane withdrawal of the two minutes before its intent: someone
else's (another workflow's late POST, a person's manual withdrawal). Measured, the window shrinks to
about one second plus the round trip.

What one answer proves: the exchange wrote ``Date: D`` (whole seconds, truncated) at some exchange time
``T`` in ``[D, D + 1)``, and at that moment our clock read somewhere in ``[sent, received]``. So the
offset ``exchange - local`` lies in ``(D - received, D + 1 - sent)``. Each sample's lower end
``D - received`` is a proof that the offset is at least that much (while neither clock is stepped);
the estimator keeps the recent ones and answers their largest (the tightest proven lower bound).

The ``created_at`` of a withdrawal the POST answered with is a second source, and the better one: it is
stamped by the clock reconciliation compares against (``Date`` may come from an edge server whose clock
differs). Its sample is taken between our intent and the answer, the same way. When recent
``created_at`` samples exist, only they count; otherwise the ``Date`` ones do.

How it is used (see ``workflows.withdrawal.adoption_since``): our withdrawal is created at exchange time
``> submitted_at + offset``, and ``created_at`` truncates to the second, so ``created_at >=
submitted_at + lower_bound - 1 s`` always holds for our own withdrawal. A clock stepped since the
samples can only make that bound too late (the reconciliation then misses its own withdrawal and
escalates to ``needs_review``) or too early (a wider window, as before): never a wrong adoption that a
fixed allowance would not also make.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["SkewEstimator", "SkewSample", "parse_http_date"]


def parse_http_date(value: str | None) -> datetime | None:
    """An RFC 9110 ``Date`` header as an aware UTC datetime; None when absent or unreadable."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # "-0000": UTC by RFC 5322
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class SkewSample:
    """One answer's proof: ``low < exchange - local < high`` (seconds), observed at ``at`` (local);
    ``source``: ``"date"`` (a ``Date`` header) or ``"created_at"`` (a withdrawal's stamp)."""

    at: datetime
    low: float
    high: float
    source: str = "date"


class SkewEstimator:
    """Recent :class:`SkewSample` s of one exchange; answers a proven lower bound of its clock offset.

    ``keep``: how many samples to keep; ``max_age``: seconds after which a sample no longer counts
    (a clock may have been stepped since)."""

    def __init__(self, *, keep: int = 64, max_age: float = 600.0) -> None:
        self._samples: deque[SkewSample] = deque(maxlen=keep)
        self._max_age = max_age

    def __repr__(self) -> str:
        return f"<SkewEstimator samples={len(self._samples)}>"

    def observe(self, sent: datetime, received: datetime, date_header: str | None) -> SkewSample | None:
        """Record what one answer proves; nothing for a missing or unreadable header."""
        stamped = parse_http_date(date_header)
        return None if stamped is None else self._add(sent, received, stamped, "date")

    def observe_created(self, sent: datetime, received: datetime, created_at: datetime) -> SkewSample | None:
        """Record what a withdrawal's ``created_at`` (whole seconds) proves, created between ``sent`` and
        ``received`` on our clock."""
        return self._add(sent, received, created_at.replace(microsecond=0), "created_at")

    def _add(self, sent: datetime, received: datetime, stamped: datetime, source: str) -> SkewSample | None:
        if received < sent:
            return None
        sample = SkewSample(
            at=received,
            low=(stamped - received).total_seconds(),
            high=(stamped - sent).total_seconds() + 1.0,
            source=source,
        )
        self._samples.append(sample)
        return sample

    def recent(self, now: datetime) -> list[SkewSample]:
        """The samples that count at ``now``: those within ``max_age``, ``created_at`` ones if any."""
        fresh = [s for s in self._samples if 0.0 <= (now - s.at).total_seconds() <= self._max_age]
        stamped = [s for s in fresh if s.source == "created_at"]
        return stamped or fresh

    def lower_bound(self, now: datetime) -> float | None:
        """The largest proven lower bound of ``exchange - local`` (seconds), or None without samples."""
        recent = self.recent(now)
        return max(s.low for s in recent) if recent else None

    def describe(self, now: datetime) -> dict[str, float | int | str | None]:
        """JSON-ready: how many samples count now, of which source, and what they bound (for evidence)."""
        recent = self.recent(now)
        if not recent:
            return {"samples": 0, "low": None, "high": None, "source": None}
        return {
            "samples": len(recent), "low": max(s.low for s in recent), "high": min(s.high for s in recent),
            "source": recent[0].source,
        }  # fmt: skip
