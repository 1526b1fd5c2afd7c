"""``upbit-withdraw watch`` as a subprocess, on the store and over ``--api`` (SSE through the typed client):
``--json`` lines, filters, resume with ``--after``, the live table, and Ctrl-C ending it with exit 0."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.acceptance.conftest import BTC_ADDRESS, CLI, Stack

MODES = ["store", "api"]
BTC = ["--currency", "BTC", "--net-type", "BTC", "--address", BTC_ADDRESS]
PATIENCE = 60.0


class Watch:
    """A running ``watch``: read its stdout line by line with a deadline, stop it with SIGINT."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._selector = selectors.DefaultSelector()
        assert proc.stdout is not None
        self._selector.register(proc.stdout, selectors.EVENT_READ)
        self._pending = b""

    def line(self, timeout: float = PATIENCE) -> str:
        """The next line of stdout (read from the pipe's descriptor: a buffered reader would hold lines
        the selector no longer reports)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            if time.monotonic() > deadline:
                raise AssertionError("no line from watch in time")
            if self._selector.select(timeout=0.2):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"watch ended: {self.proc.wait(5)} {self.stderr()}")
                self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode() + "\n"

    def events_until(self, done: Any) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        while not done(got):
            got.append(json.loads(self.line()))
        return got

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(30)

    def close(self) -> None:
        self._selector.close()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read() if self.proc.poll() is not None else ""


@contextmanager
def watching(stack: Stack, mode: str, *args: str) -> Iterator[Watch]:
    proc = subprocess.Popen(
        [*CLI, *stack.args(mode), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=stack.env()
    )
    watch = Watch(proc)
    try:
        yield watch
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        watch.close()


def settled(workflow_id: str) -> Any:
    return lambda got: any(e["workflow_id"] == workflow_id and e["to"] == "DONE" for e in got)


@pytest.mark.parametrize("mode", MODES)
def test_watch_json_follows_resumes_and_ends_on_ctrl_c(stack: Stack, mode: str) -> None:
    """One JSON line per event with its id; --workflow filters; --after resumes behind an id without a
    repeat; Ctrl-C exits 0 with nothing on stderr."""
    first = stack.cli(mode, "--json", "submit", *BTC, "--amount", "0.031", "--wait").json()
    with watching(stack, mode, "--json", "watch", "--after", "start", "--workflow", first["id"]) as watch:
        lines = watch.events_until(settled(first["id"]))
        code = watch.interrupt()
        assert code == 0 and "Traceback" not in watch.stderr()
    assert {e["workflow_id"] for e in lines} == {first["id"]}
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
    assert lines[0]["trigger"] == "create" and lines[0]["account"] == "default" and lines[-1]["to"] == "DONE"

    with watching(stack, mode, "--json", "watch", "--after", lines[-1]["id"], "--type", "create") as watch:
        second = stack.cli(mode, "--json", "submit", *BTC, "--amount", "0.032").json()
        more = watch.events_until(lambda got: any(e["workflow_id"] == second["id"] for e in got))
        assert watch.interrupt() == 0
    assert {e["trigger"] for e in more} == {"create"}
    assert first["id"] not in {e["workflow_id"] for e in more}


def test_watch_without_json_prints_a_line_per_event_when_piped(stack: Stack) -> None:
    """Without --json and without a terminal (the live table needs one), one readable line per event."""
    view = stack.cli("api", "--json", "submit", *BTC, "--amount", "0.033", "--wait").json()
    with watching(stack, "api", "watch", "--after", "start", "--workflow", view["id"]) as watch:
        seen = ""
        deadline = time.monotonic() + PATIENCE
        while "DONE" not in seen and time.monotonic() < deadline:
            seen += watch.line()
        assert watch.interrupt() == 0
    assert view["id"] in seen and "DONE" in seen and "mark_done" in seen


def test_watch_unknown_cursor_is_a_usage_error(stack: Stack) -> None:
    for mode in MODES:
        result = stack.cli(mode, "watch", "--after", "987654321")
        assert result.code == 2, (mode, result.err)
        assert "after" in result.err or "cursor" in result.err


def test_live_table_rows() -> None:
    """The live table (drawn on a terminal): one row per withdrawal with its latest event, newest first."""
    from datetime import UTC, datetime, timedelta

    from rich.console import Console

    from engine.cli_watch import watch_rows
    from engine.models import Event
    from engine.store.base import FeedItem

    at = datetime(2026, 1, 1, tzinfo=UTC)
    older = Event(workflow_id="wd_01", seq=7, at=at, trigger="mark_done", from_state="PROCESSING", to_state="DONE")
    newer = Event(workflow_id="wd_02", seq=1, at=at + timedelta(seconds=1), trigger="create", from_state=None,
                  to_state="pending")  # fmt: skip
    console = Console(record=True, width=160)
    console.print(watch_rows({"wd_01": FeedItem("5", older, "withdrawal", "default"),
                              "wd_02": FeedItem("6", newer, "withdrawal", "ops")}))  # fmt: skip
    text = console.export_text()
    assert text.index("wd_02") < text.index("wd_01")
    assert "DONE" in text and "mark_done" in text and "ops" in text and "pending" in text
