"""Webhooks, the parts a receiver and the API share: the signature scheme, event types, payloads, targets.

A receiver can import :func:`verify_signature` without running (or configuring) the engine: it uses the
standard library only (the event-type rules ask the workflow kinds, loaded on first use). The delivery
worker is :mod:`engine.webhook_delivery`.

Signature scheme (header ``Upbit-Withdraw-Signature``)::

    Upbit-Withdraw-Signature: t=1767225600,v1=5f0c...e9,v1=9a1b...07

``t`` is the Unix time of the attempt; each ``v1`` is ``hex(HMAC-SHA256(secret, f"{t}.{body}"))`` for one
of the subscription's secrets (two while a secret is being rotated: the new one first). A receiver
accepts the request when any ``v1`` matches any secret it knows and ``t`` is within its tolerance of its
own clock (stale or replayed requests fail). Every delivery also carries ``Upbit-Withdraw-Event-Id``
(``<workflow_id>:<seq>``, the same on every retry and redelivery): de-duplicate on it, deliveries are
at least once.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from engine.kinds import KindRegistry, default_kinds

__all__ = [
    "ALL_EVENTS",
    "AWAITING_APPROVAL",
    "BATCH_SETTLED",
    "EVENT_ID_HEADER",
    "EVENT_TYPES",
    "NEEDS_REVIEW",
    "SIGNATURE_HEADER",
    "TERMINAL",
    "TRANSITION",
    "event_id",
    "event_types",
    "is_public_address",
    "payload",
    "primary_type",
    "sign",
    "target_problem",
    "verify_signature",
]

SIGNATURE_HEADER = "Upbit-Withdraw-Signature"
EVENT_ID_HEADER = "Upbit-Withdraw-Event-Id"

#: Every state change of a workflow (its creation included; notes that keep the state are not).
TRANSITION = "workflow.transition"
#: A workflow reached a terminal state (by its kind: for a withdrawal DONE, FAILED, CANCELLED, REJECTED, aborted).
TERMINAL = "workflow.terminal"
#: A workflow entered a state that waits for an operator's review (by its kind: a withdrawal's needs_review,
#: a batch's needs_attention); not an approval (that one is :data:`AWAITING_APPROVAL`).
NEEDS_REVIEW = "workflow.needs_review"
#: A workflow (a withdrawal or a batch) waits for a four-eyes approval: an approver who is not its
#: submitter must approve or reject it before its expiry (by its kind: a state taking four-eyes actions).
AWAITING_APPROVAL = "workflow.awaiting_approval"
#: A batch settled: an event of a workflow of kind ``batch`` entering the state ``settled``.
BATCH_SETTLED = "batch.settled"
#: Every event, notes included.
ALL_EVENTS = "*"
EVENT_TYPES = (TRANSITION, TERMINAL, NEEDS_REVIEW, AWAITING_APPROVAL, BATCH_SETTLED, ALL_EVENTS)
#: The ``type`` a payload carries: the most specific one the subscription asked for.
_SPECIFICITY = (BATCH_SETTLED, AWAITING_APPROVAL, NEEDS_REVIEW, TERMINAL, TRANSITION)
_NOTE = "workflow.event"


def event_id(workflow_id: str, seq: int) -> str:
    """The delivery's unique, stable id: ``<workflow_id>:<seq>``."""
    return f"{workflow_id}:{seq}"


def event_types(
    *, kind: str, from_state: str | None, to_state: str, kinds: KindRegistry | None = None
) -> frozenset[str]:
    """The subscribable types an event has (``*`` always). Which states are terminal or wait for an
    operator is the workflow's kind's answer (``kinds``: the registered ones by default)."""
    types = {ALL_EVENTS}
    if from_state != to_state:
        types.add(TRANSITION)
        found = (kinds if kinds is not None else default_kinds()).get(kind)
        if found is not None and found.is_terminal(to_state):
            types.add(TERMINAL)
        if found is not None and found.awaits_approval(to_state):
            types.add(AWAITING_APPROVAL)
        elif found is not None and found.awaits_operator(to_state):
            types.add(NEEDS_REVIEW)
        if kind == "batch" and to_state == "settled":
            types.add(BATCH_SETTLED)
    return frozenset(types)


def primary_type(types: Iterable[str], wanted: Iterable[str]) -> str | None:
    """The type to deliver an event as, for a subscription that wants ``wanted`` (None: not wanted)."""
    have, want = set(types), set(wanted)
    if not have & want:
        return None
    for name in _SPECIFICITY:
        if name in have and (name in want or ALL_EVENTS in want):
            return name
    return _NOTE


def payload(
    *, type_: str, types: Iterable[str], workflow_id: str, seq: int, kind: str, account: str, at: datetime,
    trigger: str, from_state: str | None, to_state: str, data: dict[str, Any], hash_: str,
    reference: str | None = None, batch_id: str | None = None,
) -> str:  # fmt: skip
    """The JSON body of a delivery (compact, keys sorted): what is signed and sent, byte for byte."""
    body = {
        "id": event_id(workflow_id, seq),
        "type": type_,
        "types": sorted(t for t in types if t != ALL_EVENTS),
        "created_at": at.astimezone(UTC).isoformat(),
        "data": {
            "workflow_id": workflow_id, "kind": kind, "account": account, "seq": seq, "trigger": trigger,
            "from_state": from_state, "to_state": to_state, "event_data": data, "event_hash": hash_,
            "reference": reference, "batch_id": batch_id,
        },
    }  # fmt: skip
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(body: bytes | str, secrets: Sequence[str], *, timestamp: int | None = None) -> str:
    """The ``Upbit-Withdraw-Signature`` value for ``body``: one ``v1`` per secret, in order."""
    raw = body.encode() if isinstance(body, str) else body
    t = int(time.time()) if timestamp is None else timestamp
    if not secrets:
        raise ValueError("at least one secret is needed to sign")
    return ",".join([f"t={t}", *(f"v1={_mac(secret, t, raw)}" for secret in secrets)])


def verify_signature(
    body: bytes | str, header: str, secrets: Sequence[str], tolerance: float = 300, *, now: float | None = None
) -> bool:
    """True when ``header`` (the ``Upbit-Withdraw-Signature`` value) signs ``body`` (the raw request
    body, exactly as received) with one of ``secrets`` and its timestamp is within ``tolerance`` seconds
    of ``now`` (default: this machine's clock). Pass both secrets while rotating. Comparisons take
    constant time; a malformed header is simply False."""
    raw = body.encode() if isinstance(body, str) else body
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if name == "t":
            if timestamp is not None or not (value.isascii() and value.isdigit()) or len(value) > 12:
                return False
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or not secrets:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = [_mac(secret, timestamp, raw) for secret in secrets]
    matched = False
    for candidate in candidates:
        for mac in expected:
            matched |= hmac.compare_digest(candidate.encode(), mac.encode())
    return matched


def is_public_address(address: str) -> bool:
    """False for loopback, private, link-local, multicast, reserved and unspecified addresses."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
        or ip.is_unspecified
    )  # fmt: skip


def target_problem(url: str, *, allow_private: bool) -> str | None:
    """Why ``url`` cannot be a webhook target (None: it can). Only http(s), with a host, without user
    info (credentials belong in the signing secret, not in a URL shown in logs and listings); loopback
    and private hosts only when ``allow_private`` (a name is checked again at each connection, so it
    cannot be pointed at a private address later)."""
    problem, host = _url_problem(url)
    if problem is not None or allow_private:
        return problem
    private = "(set webhook_delivery.allow_private_targets to allow it)"
    if host == "localhost" or host.endswith(".localhost"):
        return f"targets a loopback host {private}"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: resolved and checked when connecting
    return None if is_public_address(host) else f"targets a loopback or private address {private}"


def _url_problem(url: str) -> tuple[str | None, str]:
    """(what is wrong with the URL's shape or None, its host)."""
    if len(url) > 2048:
        return "must be at most 2048 characters", ""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises for a port that is not a number in range
    except ValueError:
        return "is not a valid URL", ""
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL", host
    if not host:
        return "must name a host", host
    if parts.username is not None or parts.password is not None:
        return "must not carry user info (credentials)", host
    return None, host
