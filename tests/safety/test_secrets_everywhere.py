"""Nothing leaks, anywhere anything is written: after a full demo and a chaos run with non-demo keys.

The demo (``upbit-withdraw demo --db FILE``) runs as a subprocess; its stdout, stderr and SQLite files are
searched for the demo key pair and for JWTs. The chaos run (the harness of ``test_chaos.py``: the service
SIGKILLed twice against a faulty sandbox) uses keys of this test's own, given to the sandbox's account and
to the service through UPBIT_ACCESS_KEY/UPBIT_SECRET_KEY only. Searched: the stdout/stderr of every
process (every service incarnation and the sandbox), the SQLite files with their -wal and -shm both as
each SIGKILL left them and at the end, everything else in the run's directory, and every answer the API
gave. Needles: the access key, the secret key, the API token, and ``eyJ`` (the start of every JWT).
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest

from engine.upbit.auth import DEMO_ACCESS_KEY, DEMO_SECRET_KEY
from workflows.testing.chaos import CLI, TOKEN, ChaosSettings, clean_env, run_chaos

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name != "posix", reason="SIGKILL")]

JWT_PREFIX = "eyJ"


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def _leaks(haystacks: dict[str, bytes], needles: dict[str, str]) -> list[str]:
    return [
        f"{name} found in {where}"
        for where, blob in haystacks.items()
        for name, needle in needles.items()
        if needle.encode() in blob
    ]


def test_demo_writes_no_key_secret_or_jwt(tmp_path: Path) -> None:
    """The demo's output and its database hold neither demo key nor any JWT."""
    db = tmp_path / "demo.sqlite3"
    proc = subprocess.run(
        [*CLI, "demo", "--db", str(db)], capture_output=True, timeout=120, env=clean_env(), cwd=tmp_path, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    haystacks = {"demo stdout": proc.stdout, "demo stderr": proc.stderr}
    haystacks |= {str(path.relative_to(tmp_path)): path.read_bytes() for path in _files(tmp_path)}
    assert any(name.startswith("demo.sqlite3") for name in haystacks), "the demo wrote no database"
    needles = {"access key": DEMO_ACCESS_KEY, "secret key": DEMO_SECRET_KEY, "JWT": JWT_PREFIX}
    assert _leaks(haystacks, needles) == []


async def test_chaos_with_private_keys_writes_no_key_secret_or_jwt(tmp_path: Path) -> None:
    """Logs of every process, the SQLite files (-wal too, as each kill left them) and API answers: clean."""
    access = "chaos-access-" + secrets.token_hex(16)
    secret = "chaos-secret-" + secrets.token_hex(40)
    settings = ChaosSettings(
        withdrawals=20, kills=2, access_key=access, secret_key=secret, snapshot_on_kill=True, max_seconds=90.0,
        log_level="DEBUG",
    )  # fmt: skip
    summary = await run_chaos(settings, tmp_path, keep_answers=True)
    assert summary["violations"] == [], summary["violations"]
    assert summary["posts_sent"] > 0, "the run must have talked to the exchange with these keys"
    sandbox_line = (tmp_path / "sandbox.log").read_text()
    assert f"access key {access[:4]}***" in sandbox_line, "the sandbox's account must use this test's keys"
    assert summary["post_statuses"].get("201"), "the service must have signed with them successfully"  # type: ignore[attr-defined]
    files = _files(tmp_path)
    assert any(p.name.endswith("-wal") for p in files), "no -wal snapshot was taken"
    assert sum(p.name.startswith("service-") for p in files) == 3, "one log per service incarnation"
    haystacks = {str(path.relative_to(tmp_path)): path.read_bytes() for path in files}
    haystacks["API answers"] = b"\n".join(answer for answer in summary_answers(summary, tmp_path))
    needles = {"access key": access, "secret key": secret, "API token": TOKEN, "JWT": JWT_PREFIX}
    assert _leaks(haystacks, needles) == []


def summary_answers(summary: dict[str, object], workdir: Path) -> list[bytes]:
    """The API answers the run collected (written next to the summary by the harness)."""
    path = workdir / "api-answers.jsonl"
    assert path.exists(), "the harness keeps the API's answers with keep_answers=True"
    answers = path.read_bytes().splitlines()
    assert len(answers) >= int(summary["withdrawals"]), "every submit's answer was kept"  # type: ignore[call-overload]
    return answers
