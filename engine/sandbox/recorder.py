"""What the sandbox received: a bounded request log, and counters that only a reset clears.

Tests prove "exactly one POST per workflow" from here: ``creations_by_body`` counts, per canonical
request body (sorted-key JSON), how many withdrawals that body created. The log is a ring buffer (old
entries fall off) but the counters never lose anything. Only exchange API calls are recorded; admin
calls would pollute the evidence.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

__all__ = ["DEFAULT_CAPACITY", "Recorder", "RequestRecord", "canonical_body", "redact"]

DEFAULT_CAPACITY = 100_000


def canonical_body(body: Mapping[str, Any]) -> str:
    """Sorted-key compact JSON: two bodies with equal content get the same key."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def redact(access_key: str | None) -> str | None:
    """The first four characters, enough to tell accounts apart, never the whole key."""
    return None if access_key is None else access_key[:4] + "***"


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRecord:
    """One request as received, and how it was answered (a status, or ``"dropped"``)."""

    seq: int
    method: str
    path: str
    query: str
    body: Any
    status: int | str
    access_key: str | None
    received_at: str
    fault: str | None = None

    @property
    def endpoint(self) -> str:
        """``"METHOD /path"``, the key of the per-endpoint counters."""
        return f"{self.method} {self.path}"

    def to_json(self) -> dict[str, Any]:
        """The entry as ``GET /sandbox/requests`` returns it."""
        return {
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "body": self.body,
            "status": self.status,
            "access_key": self.access_key,
            "received_at": self.received_at,
            "fault": self.fault,
        }


class Recorder:
    """The request log and the counters behind ``/sandbox/requests`` and ``/sandbox/stats``."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._log: deque[RequestRecord] = deque(maxlen=capacity)
        self._seq = 0
        self.by_endpoint: dict[str, Counter[str]] = {}
        self.creations_by_body: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"Recorder(requests={self._seq}, kept={len(self._log)})"

    @property
    def total(self) -> int:
        """Requests recorded since the start (or the last reset)."""
        return self._seq

    def log(
        self,
        *,
        method: str,
        path: str,
        query: str,
        body: Any,
        status: int | str,
        access_key: str | None,
        received_at: str,
        fault: str | None = None,
    ) -> RequestRecord:
        """Record one answered (or dropped) request; ``access_key`` is redacted here."""
        self._seq += 1
        record = RequestRecord(
            seq=self._seq,
            method=method,
            path=path,
            query=query,
            body=body,
            status=status,
            access_key=redact(access_key),
            received_at=received_at,
            fault=fault,
        )
        self._log.append(record)
        self.by_endpoint.setdefault(record.endpoint, Counter())[str(status)] += 1
        return record

    def created(self, body: Mapping[str, Any]) -> None:
        """Count a withdrawal created by ``body``."""
        self.creations_by_body[canonical_body(body)] += 1

    def since(self, seq: int, limit: int | None = None) -> list[RequestRecord]:
        """Records with a sequence number above ``seq`` that are still in the ring buffer."""
        if not self._log:
            return []
        start = max(0, seq - self._log[0].seq + 1)
        stop = len(self._log) if limit is None else min(len(self._log), start + limit)
        return list(islice(self._log, start, stop))

    def count_status(self, status: str) -> int:
        """How many answers had ``status``, across endpoints."""
        return sum(counter[status] for counter in self.by_endpoint.values())

    def stats(self) -> dict[str, Any]:
        """Counts by endpoint, by endpoint and status, throttles, drops, and creations per body."""
        return {
            "requests_total": self._seq,
            "by_endpoint": {name: counter.total() for name, counter in sorted(self.by_endpoint.items())},
            "by_endpoint_status": {name: dict(counter) for name, counter in sorted(self.by_endpoint.items())},
            "status_429": self.count_status("429"),
            "status_418": self.count_status("418"),
            "dropped": self.count_status("dropped"),
            "creations_by_body": dict(self.creations_by_body),
        }
