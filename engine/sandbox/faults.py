"""Fault injection: make the sandbox misbehave the ways a real exchange and network do.

A :class:`FaultRule` names an endpoint (``"POST /v1/withdraws/coin"``, ``"GET /v1/withdraws"``, ...
or ``"*"`` for every ``/v1`` call), a kind, a probability and optional ``times`` (maximum firings).
Kinds, and *when* they act, which is the whole point (does the withdrawal exist afterwards?):

==============  ======================================================================  ==========
kind            effect                                                                  processed?
==============  ======================================================================  ==========
``latency``     wait ``params.ms`` milliseconds before handling                          yes
``error``       answer ``params.status`` (500/502/503/504) with an HTML (``params.body``   no
                = ``"html"``, default) or JSON (``"json"``) body
``burst_429``   this and the next ``params.count - 1`` matching calls get 429                no
                ``Too many API requests.`` (one firing = one burst)
``hang``        handle normally, then sleep ``params.seconds`` before answering           yes
``drop``        handle normally, then close the connection without any HTTP response       yes
``malformed``   handle normally, answer the right status with a body that is not JSON      yes
==============  ======================================================================  ==========

Several latency rules add up; among the other kinds the first rule (in insertion order) that fires
wins and later ones are not rolled. The injector has its own seeded ``random.Random``, separate from
the exchange's, so adding faults never changes which outcomes withdrawals draw.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["FaultInjector", "FaultKind", "FaultPlan", "FaultRule", "parse_fault_rule"]

_METHODS = ("GET", "POST", "DELETE")


class FaultKind(StrEnum):
    """What a fault does; see the module docstring for when it acts."""

    LATENCY = "latency"
    ERROR = "error"
    HANG = "hang"
    DROP = "drop"
    MALFORMED = "malformed"
    BURST_429 = "burst_429"


#: Kinds that answer without handling the request: nothing is created.
BEFORE_KINDS = frozenset({FaultKind.ERROR, FaultKind.BURST_429})
#: Kinds that handle the request first and then spoil the answer: the effect has happened.
AFTER_KINDS = frozenset({FaultKind.HANG, FaultKind.DROP, FaultKind.MALFORMED})

_DEFAULT_PARAMS: dict[FaultKind, dict[str, Any]] = {
    FaultKind.LATENCY: {"ms": 200},
    FaultKind.ERROR: {"status": 500, "body": "html"},
    FaultKind.HANG: {"seconds": 30.0},
    FaultKind.DROP: {},
    FaultKind.MALFORMED: {},
    FaultKind.BURST_429: {"count": 5},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultRule:
    """One injected fault. ``params`` is completed with the kind's defaults and validated on creation."""

    kind: FaultKind
    endpoint: str = "*"
    probability: float = 1.0
    params: Mapping[str, Any] = field(default_factory=dict)
    times: int | None = None

    def __post_init__(self) -> None:
        _check_endpoint(self.endpoint)
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within 0..1, got {self.probability!r}")
        if self.times is not None and self.times < 1:
            raise ValueError(f"times must be at least 1, got {self.times!r}")
        merged = {**_DEFAULT_PARAMS[self.kind], **self.params}
        _check_params(self.kind, merged)
        object.__setattr__(self, "params", merged)

    def matches(self, endpoint: str) -> bool:
        """True when this rule applies to ``endpoint`` (``"METHOD /path"``)."""
        return self.endpoint in ("*", endpoint)

    def to_json(self) -> dict[str, Any]:
        """The rule in the shape :func:`parse_fault_rule` reads."""
        return {
            "endpoint": self.endpoint,
            "kind": self.kind.value,
            "probability": self.probability,
            "params": dict(self.params),
            "times": self.times,
        }


def _check_endpoint(endpoint: str) -> None:
    if endpoint == "*":
        return
    method, _, path = endpoint.partition(" ")
    if method not in _METHODS or not path.startswith("/v1/"):
        raise ValueError(f'endpoint must be "*" or like "POST /v1/withdraws/coin", got {endpoint!r}')


def _check_params(kind: FaultKind, params: Mapping[str, Any]) -> None:
    """Reject parameter values that would make the fault do something other than documented."""
    if kind is FaultKind.LATENCY:
        _require_number(params, "ms", minimum=0.0)
    elif kind is FaultKind.HANG:
        _require_number(params, "seconds", minimum=0.0)
    elif kind is FaultKind.BURST_429:
        count = params["count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"burst_429 count must be a positive integer, got {count!r}")
    elif kind is FaultKind.ERROR:
        if params["status"] not in (500, 502, 503, 504):
            raise ValueError(f"error status must be 500, 502, 503 or 504, got {params['status']!r}")
        if params["body"] not in ("html", "json"):
            raise ValueError(f'error body must be "html" or "json", got {params["body"]!r}')


def _require_number(params: Mapping[str, Any], key: str, *, minimum: float) -> None:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ValueError(f"{key} must be a number >= {minimum:g}, got {value!r}")


def parse_fault_rule(data: Mapping[str, Any]) -> FaultRule:
    """Build a rule from JSON/TOML data. Raises ``ValueError`` naming the offending key.

    Parameters go under ``params``, or, as a shorthand, at the top level
    (``{"kind": "hang", "seconds": 1.5}`` equals ``{"kind": "hang", "params": {"seconds": 1.5}}``).
    """
    try:
        kind = FaultKind(data["kind"])
    except (KeyError, ValueError) as exc:
        kinds = ", ".join(k.value for k in FaultKind)
        raise ValueError(f"fault kind must be one of {kinds}, got {data.get('kind')!r}") from exc
    flat = {key: data[key] for key in _DEFAULT_PARAMS[kind] if key in data}
    unknown = set(data) - {"endpoint", "kind", "probability", "params", "times"} - set(flat)
    if unknown:
        raise ValueError(f"unknown fault keys for {kind.value}: {sorted(unknown)}")
    probability = data.get("probability", 1.0)
    params = data.get("params", {})
    times = data.get("times")
    if isinstance(probability, bool) or not isinstance(probability, int | float):
        raise ValueError(f"probability must be a number, got {probability!r}")
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a table/object, got {params!r}")
    params = {**params, **flat}
    if times is not None and (isinstance(times, bool) or not isinstance(times, int)):
        raise ValueError(f"times must be an integer, got {times!r}")
    endpoint = str(data.get("endpoint", "*"))
    return FaultRule(kind=kind, endpoint=endpoint, probability=float(probability), params=params, times=times)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What to do to one request: extra latency, and at most one spoiling fault."""

    latency_ms: float = 0.0
    action: FaultRule | None = None

    @property
    def before(self) -> FaultRule | None:
        """A fault that answers instead of handling the request (error, burst_429)."""
        return self.action if self.action is not None and self.action.kind in BEFORE_KINDS else None

    @property
    def after(self) -> FaultRule | None:
        """A fault that spoils the answer after the request was handled (hang, drop, malformed)."""
        return self.action if self.action is not None and self.action.kind in AFTER_KINDS else None


NO_FAULT = FaultPlan()


@dataclass(slots=True)
class _Active:
    """A rule and its mutable bookkeeping: how often it fired, and what is left of a 429 burst."""

    rule_id: int
    rule: FaultRule
    fired: int = 0
    burst_left: int = 0

    def exhausted(self) -> bool:
        return self.rule.times is not None and self.fired >= self.rule.times and self.burst_left == 0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.rule_id, **self.rule.to_json(), "fired": self.fired, "burst_left": self.burst_left}


class FaultInjector:
    """The live fault rules and the seeded dice that decide when they fire."""

    def __init__(self, rules: Iterable[FaultRule] = (), *, seed: int = 0) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - replayable dice, not security
        self._active: list[_Active] = []
        self._next_id = 1
        self.add(rules)

    def __repr__(self) -> str:
        return f"FaultInjector(rules={len(self._active)})"

    def add(self, rules: Iterable[FaultRule]) -> list[int]:
        """Append rules; returns their ids."""
        ids = []
        for rule in rules:
            self._active.append(_Active(self._next_id, rule))
            ids.append(self._next_id)
            self._next_id += 1
        return ids

    def clear(self, rule_id: int | None = None) -> int:
        """Remove one rule by id, or all of them; returns how many were removed."""
        before = len(self._active)
        self._active = [a for a in self._active if rule_id is not None and a.rule_id != rule_id]
        return before - len(self._active)

    def to_json(self) -> list[dict[str, Any]]:
        """Every live rule with its firing count."""
        return [active.to_json() for active in self._active]

    def plan(self, endpoint: str) -> FaultPlan:
        """Roll the dice for one request to ``endpoint``."""
        if not self._active:
            return NO_FAULT
        latency = 0.0
        action: FaultRule | None = None
        for active in self._active:
            if not active.rule.matches(endpoint) or active.exhausted():
                continue
            if active.rule.kind is FaultKind.LATENCY:
                latency += float(active.rule.params["ms"]) if self._fires(active) else 0.0
            elif action is None and self._fires(active):
                action = active.rule
        return FaultPlan(latency, action) if latency or action else NO_FAULT

    def _fires(self, active: _Active) -> bool:
        """Whether a rule acts on this request; a running 429 burst acts without a new roll."""
        if active.burst_left > 0:
            active.burst_left -= 1
            return True
        if active.rule.times is not None and active.fired >= active.rule.times:
            return False
        if self._rng.random() >= active.rule.probability:
            return False
        active.fired += 1
        if active.rule.kind is FaultKind.BURST_429:
            active.burst_left = int(active.rule.params["count"]) - 1
        return True
