"""Tamper evidence: every event stores the hash of its workflow's previous event, so an edited,
removed or reordered line breaks the chain. :func:`verify_chain` is pure; :func:`verify_store` walks
every workflow of a store and reports the first broken link of each broken chain.

A full rewrite (every hash recomputed) passes that check; exported chain heads catch it: ``audit-heads``
(or :class:`HeadsExporter` in the service) appends each chain's head to a file outside the database,
optionally signed with HMAC-SHA256 under a key that never enters it, and :func:`verify_store` with
``heads`` fails any chain that no longer holds an exported head.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import os
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from engine.clock import Clock, SystemClock
from engine.errors import ConfigError, EngineError
from engine.logging import register_secret
from engine.models import Event, Workflow
from engine.store.base import Store

__all__ = [
    "AUDIT_HEADS_ENV",
    "AUDIT_HEADS_INTERVAL_ENV",
    "AUDIT_KEY_ENV",
    "AUDIT_KEY_FILE_ENV",
    "AuditKey",
    "BrokenLink",
    "ChainHead",
    "HeadsExporter",
    "append_heads",
    "check_heads",
    "head_line",
    "latest_exported",
    "read_heads",
    "store_heads",
    "verify_chain",
    "verify_store",
]

log = structlog.get_logger("engine.audit")


@dataclass(frozen=True, slots=True)
class BrokenLink:
    """The first place a workflow's event chain does not hold, and why."""

    workflow_id: str
    seq: int
    problem: str


def verify_chain(workflow: Workflow | None, events: Sequence[Event]) -> BrokenLink | None:
    """None when ``events`` are 1..n, each linked to the previous hash and hashing to its own hash, and
    the workflow row points at the last one; else the first broken link."""
    prev = ""
    wf_id = workflow.id if workflow is not None else (events[0].workflow_id if events else "?")
    for expected_seq, event in enumerate(events, start=1):
        if event.seq != expected_seq:
            return BrokenLink(wf_id, expected_seq, f"event {expected_seq} is missing (found {event.seq})")
        if event.prev_hash != prev:
            return BrokenLink(wf_id, event.seq, "prev_hash does not match the previous event's hash")
        if event.sealed(prev).hash != event.hash:
            return BrokenLink(wf_id, event.seq, "content does not match its hash (edited)")
        prev = event.hash
    if workflow is not None and (workflow.event_seq != len(events) or workflow.last_hash != prev):
        return BrokenLink(wf_id, len(events) + 1, "the workflow row does not point at its last event (truncated)")
    return None


async def _all_workflows(store: Store, page: int = 500) -> AsyncIterator[Workflow]:
    before: str | None = None
    while True:
        batch = await store.list(limit=page, before_id=before)
        for wf in batch:
            yield wf
        if len(batch) < page:
            return
        before = batch[-1].id


async def verify_store(store: Store, heads: Iterable[ChainHead] = ()) -> tuple[int, list[BrokenLink]]:
    """(workflows checked, broken links) over the whole store; with ``heads`` (read from an exported heads
    file), also every chain that no longer holds one of its exported heads, and every exported workflow
    that is gone."""
    expected: dict[str, list[ChainHead]] = defaultdict(list)
    for head in heads:
        expected[head.workflow_id].append(head)
    checked, broken = 0, []
    async for workflow in _all_workflows(store):
        checked += 1
        events = await store.events(workflow.id)
        link = verify_chain(workflow, events) or check_heads(workflow.id, events, expected.pop(workflow.id, ()))
        if link is not None:
            broken.append(link)
    for workflow_id, gone in sorted(expected.items()):
        broken.append(BrokenLink(workflow_id, min(h.seq for h in gone), "exported head, but the workflow is gone"))
    return checked, broken


# -- exported heads: detecting a wholesale rewrite ------------------------------------------------------
#
# The chain above is unkeyed: someone who can write the database can rewrite a workflow's whole history
# and recompute every hash, and verify_chain() still passes. What they cannot rewrite is a copy of the
# chain heads kept elsewhere (a log shipper, another host, a WORM bucket), and, when the lines carry an
# HMAC under a key that never enters the database, they cannot forge new lines either. Events are
# append-only, so an exported head (workflow, seq, hash) must hold forever: event ``seq`` of that
# workflow keeps that hash, whatever came after it.

#: Where the CLI and the exporter read the HMAC key (the value itself, or a file holding it).
AUDIT_KEY_ENV = "UPBIT_WITHDRAW_AUDIT_KEY"
AUDIT_KEY_FILE_ENV = "UPBIT_WITHDRAW_AUDIT_KEY_FILE"
#: The service's periodic exporter: the heads file to append to, and how often (seconds).
AUDIT_HEADS_ENV = "UPBIT_WITHDRAW_AUDIT_HEADS"
AUDIT_HEADS_INTERVAL_ENV = "UPBIT_WITHDRAW_AUDIT_HEADS_INTERVAL"
_MAC_DOMAIN = b"upbit-withdraw audit head v1\n"
_MIN_KEY_BYTES = 16


class AuditKey:
    """An HMAC-SHA256 key for exported heads. Kept outside the database; never printed, logged or stored."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < _MIN_KEY_BYTES:
            raise ConfigError(f"the audit key must hold at least {_MIN_KEY_BYTES} bytes", key=AUDIT_KEY_ENV)
        self._key = key
        register_secret(key.decode("utf-8", "replace"))

    def __repr__(self) -> str:
        return "<AuditKey ***>"

    @classmethod
    def from_file(cls, path: str | Path) -> AuditKey:
        """The file's content, without its trailing newline (as ``openssl rand -hex 32 > FILE`` writes it)."""
        try:
            return cls(Path(path).read_bytes().rstrip(b"\r\n"))
        except OSError as exc:
            raise ConfigError(f"cannot read the audit key file {path}: {exc.strerror}", key="--key-file") from None

    @classmethod
    def resolve(cls, key_file: str | None = None, env: Mapping[str, str] | None = None) -> AuditKey | None:
        """From ``key_file``, else ``$UPBIT_WITHDRAW_AUDIT_KEY_FILE``, else ``$UPBIT_WITHDRAW_AUDIT_KEY``; None
        when none is set (heads are then exported unsigned)."""
        env = os.environ if env is None else env
        if key_file:
            return cls.from_file(key_file)
        if env.get(AUDIT_KEY_FILE_ENV):
            return cls.from_file(env[AUDIT_KEY_FILE_ENV])
        if env.get(AUDIT_KEY_ENV):
            return cls(env[AUDIT_KEY_ENV].encode())
        return None

    def sign(self, payload: bytes) -> str:
        """Hex HMAC-SHA256 of ``payload``."""
        return hmac.new(self._key, _MAC_DOMAIN + payload, hashlib.sha256).hexdigest()

    def matches(self, payload: bytes, mac: str) -> bool:
        """Constant-time check of a line's MAC."""
        return hmac.compare_digest(self.sign(payload), mac)


@dataclass(frozen=True, slots=True)
class ChainHead:
    """A workflow's chain at one moment: its last event's number and hash."""

    workflow_id: str
    seq: int
    hash: str


def _payload(head: ChainHead, at: str) -> bytes:
    body = {"at": at, "hash": head.hash, "seq": head.seq, "workflow_id": head.workflow_id}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def head_line(head: ChainHead, at: datetime, key: AuditKey | None) -> str:
    """One line of a heads file (JSON, no newline); with ``mac`` when a key is given."""
    stamp = at.isoformat()
    body: dict[str, Any] = {"at": stamp, "workflow_id": head.workflow_id, "seq": head.seq, "hash": head.hash}
    if key is not None:
        body["mac"] = key.sign(_payload(head, stamp))
    return json.dumps(body, separators=(",", ":"))


def _read_line(number: int, line: str, key: AuditKey | None) -> ChainHead | BrokenLink:
    """A head from one line, or what is wrong with the line (a heads-file problem is a broken link too).

    With a key, every line must carry its MAC; without one, a signed line is refused (checking a signed
    file without its key would be a weaker check than the operator asked for)."""
    try:
        body = json.loads(line)
        head = ChainHead(str(body["workflow_id"]), int(body["seq"]), str(body["hash"]))
        stamp, mac = str(body["at"]), body.get("mac")
    except (ValueError, KeyError, TypeError):
        return BrokenLink("?", 0, f"heads file line {number}: unreadable")
    if key is None and mac is not None:
        raise ConfigError(
            f"the heads file is signed: give its key (--key-file, {AUDIT_KEY_FILE_ENV} or {AUDIT_KEY_ENV})",
            key="--heads",
        )
    if key is not None and not (isinstance(mac, str) and key.matches(_payload(head, stamp), mac)):
        problem = f"heads file line {number}: signature does not match (the line was edited, or another key)"
        return BrokenLink(head.workflow_id, head.seq, problem)
    return head


def read_heads(lines: Iterable[str], key: AuditKey | None) -> tuple[list[ChainHead], list[BrokenLink]]:
    """Every head of a heads file, and every line that cannot be trusted."""
    heads: list[ChainHead] = []
    problems: list[BrokenLink] = []
    for number, raw in enumerate(lines, start=1):
        if raw.strip():
            item = _read_line(number, raw, key)
            if isinstance(item, ChainHead):
                heads.append(item)
            else:
                problems.append(item)
    return heads, problems


def check_heads(workflow_id: str, events: Sequence[Event], heads: Iterable[ChainHead]) -> BrokenLink | None:
    """None when every exported head of this workflow still holds: event ``seq`` exists with that hash."""
    for head in sorted(heads, key=lambda h: h.seq):
        if head.seq > len(events):
            return BrokenLink(workflow_id, head.seq, f"the chain is shorter than its exported head (seq {head.seq})")
        if events[head.seq - 1].hash != head.hash:
            return BrokenLink(
                workflow_id, head.seq, "does not match the exported head: the chain was rewritten since the export"
            )
    return None


async def store_heads(store: Store) -> list[ChainHead]:
    """The current head of every workflow's chain (from the workflow rows: no event is read)."""
    return [ChainHead(wf.id, wf.event_seq, wf.last_hash) async for wf in _all_workflows(store)]


def latest_exported(path: Path) -> dict[str, tuple[int, str]]:
    """The last (seq, hash) exported per workflow in a heads file (empty when the file does not exist), so
    an export appends only heads that moved."""
    latest: dict[str, tuple[int, str]] = {}
    if not path.exists():
        return latest
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                body = json.loads(line)
                latest[str(body["workflow_id"])] = (int(body["seq"]), str(body["hash"]))
            except (ValueError, KeyError, TypeError):
                continue
    return latest


def append_heads(
    path: Path, heads: Iterable[ChainHead], *, at: datetime, key: AuditKey | None,
    exported: dict[str, tuple[int, str]],
) -> int:  # fmt: skip
    """Append one line per head not already exported as is (``exported`` is updated); fsync; the count.

    Opened in append mode for each export, so a rotated or shipped-away file simply starts again."""
    lines = []
    for head in heads:
        if head.seq and exported.get(head.workflow_id) != (head.seq, head.hash):
            lines.append(head_line(head, at, key) + "\n")
            exported[head.workflow_id] = (head.seq, head.hash)
    if lines:
        with path.open("a", encoding="utf-8") as out:
            out.writelines(lines)
            out.flush()
            os.fsync(out.fileno())
    return len(lines)


class HeadsExporter:
    """Appends the chain heads that moved to a file, every ``interval`` seconds, until stopped.

    Self-contained so the service starts it with two lines::

        if (exporter := HeadsExporter.from_env(store)) is not None:
            tasks.append(asyncio.create_task(exporter.run(stop)))
    """

    def __init__(
        self, store: Store, path: str | Path, *, key: AuditKey | None, interval: float = 300.0,
        clock: Clock | None = None,
    ) -> None:  # fmt: skip
        if not interval > 0 or math.isinf(interval):
            raise ConfigError("must be a positive number of seconds", key=AUDIT_HEADS_INTERVAL_ENV)
        self.store = store
        self.path = Path(path)
        self.key = key
        self.interval = interval
        self.clock = clock or SystemClock()
        self._exported: dict[str, tuple[int, str]] | None = None

    def __repr__(self) -> str:
        return f"<HeadsExporter {self.path} every {self.interval:g}s signed={self.key is not None}>"

    @classmethod
    def from_env(cls, store: Store, env: Mapping[str, str] | None = None) -> HeadsExporter | None:
        """Configured by ``$UPBIT_WITHDRAW_AUDIT_HEADS`` (the file), ``..._INTERVAL`` (default 300 s) and the
        key variables; None when no heads file is set."""
        env = os.environ if env is None else env
        target = env.get(AUDIT_HEADS_ENV)
        if not target:
            return None
        try:
            interval = float(env.get(AUDIT_HEADS_INTERVAL_ENV) or 300.0)
        except ValueError:
            raise ConfigError("must be a number of seconds", key=AUDIT_HEADS_INTERVAL_ENV) from None
        return cls(store, target, key=AuditKey.resolve(env=env), interval=interval)

    async def export_once(self) -> int:
        """Append the heads that moved since the last export; how many lines were written."""
        if self._exported is None:
            self._exported = await asyncio.to_thread(latest_exported, self.path)
        heads = await store_heads(self.store)
        exported = self._exported
        written = await asyncio.to_thread(
            append_heads, self.path, heads, at=self.clock.now(), key=self.key, exported=exported
        )
        log.info("audit.heads_exported", path=str(self.path), written=written, chains=len(heads))
        return written

    async def run(self, stop: asyncio.Event) -> None:
        """Export now, then every ``interval`` seconds, and once more when ``stop`` is set. An export that
        fails (disk full, store unreachable) is logged and tried again at the next tick."""
        while True:
            try:
                await self.export_once()
            except (OSError, EngineError) as exc:
                log.warning("audit.heads_export_failed", path=str(self.path), error=type(exc).__name__)
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
