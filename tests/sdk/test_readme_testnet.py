"""The README's "The sandbox as your testnet" snippets run, as written, against a sandbox on 127.0.0.1.

Each tagged block is executed in-process with the sandbox's port swapped in for 8765; what it prints
is checked, and the sandbox's admin routes confirm the withdrawals it made really exist there.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from engine.sandbox.thread import SandboxThread
from tests.sdk.conftest import admin

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
SECTION = README[README.index("## The sandbox as your testnet") : README.index("## Why not just the official SDK?")]
TAGS = ("testnet-sdk", "testnet-sdk-async", "testnet-ccxt")


def snippet(tag: str) -> str:
    """The fenced Python block right after ``<!-- readme-test: tag -->``."""
    start = SECTION.index(f"<!-- readme-test: {tag} -->\n")
    match = re.compile(r"```python\n(.*?)```", re.S).search(SECTION, start)
    assert match is not None, tag
    return match.group(1)


def run(tag: str, sandbox: SandboxThread) -> str:
    """Execute the snippet against ``sandbox``; returns what it printed."""
    code = snippet(tag).replace("127.0.0.1:8765", sandbox.url.removeprefix("http://"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, f"README.md[{tag}]", "exec"), {"__name__": "__readme__"})
    return printed.getvalue()


def test_every_python_block_of_the_section_is_tested() -> None:
    """No untested snippet: every python block in the section carries one of our tags."""
    assert SECTION.count("```python") == len(TAGS)
    for tag in TAGS:
        assert snippet(tag).strip()


def test_official_sdk_snippet(sandbox: SandboxThread) -> None:
    out = run("testnet-sdk", sandbox).splitlines()
    assert out[0] == "left today: 5000000000 KRW"
    uuid, state = out[1].split()
    assert state == "WAITING"
    assert [w["uuid"] for w in admin(sandbox, "GET", "/sandbox/withdrawals")] == [uuid]


def test_official_async_sdk_snippet(sandbox: SandboxThread) -> None:
    out = run("testnet-sdk-async", sandbox)
    assert "BTC BTC working" in out and "DOGE DOGE paused" in out


@pytest.mark.filterwarnings("error")
def test_ccxt_snippet(sandbox: SandboxThread) -> None:
    uuid, amount = run("testnet-ccxt", sandbox).split()
    assert float(amount) == 20
    (stored,) = admin(sandbox, "GET", "/sandbox/withdrawals")
    assert (stored["uuid"], stored["currency"], stored["secondary_address"]) == (uuid, "XRP", "1234567")
