"""The README is executable documentation: its commands, its diagram and its examples are checked here.

- the two commands at the top are the demo command and exactly the test command .ci/run executes;
- the mermaid block is the current rendering of the transition table;
- the Python, CLI and HTTP examples run against the sandbox (ports swapped for free ones).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import EXIT
from tests.acceptance.conftest import clean_env, free_port, http_json
from workflows.withdrawal import MACHINE

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DEMO_COMMAND = 'python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev]" && .venv/bin/upbit-withdraw demo'
TEST_COMMAND = 'python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev]" && .venv/bin/python -m pytest -q -n 2'
SANDBOX_PORT, API_PORT = "8765", "8080"


def block_after(marker: str, text: str = README) -> str:
    """The body of the first fenced code block after ``marker``."""
    start = text.index(marker)
    match = re.compile(r"```[\w-]*\n(.*?)```", re.S).search(text, start)
    assert match is not None, marker
    return match.group(1)


def example(name: str) -> str:
    """The code block tagged ``<!-- readme-test: name -->``."""
    return block_after(f"<!-- readme-test: {name} -->")


class TestTop:
    def test_title_description_then_the_two_commands(self) -> None:
        """Title, one-line description, then 'Run the demo' and 'Run the tests', a code block each."""
        lines = README.splitlines()
        assert lines[0].startswith("# ") and lines[1] == "" and lines[2].strip()
        assert lines[3] == "" and lines[4] == "Run the demo:"
        assert block_after("Run the demo:").strip() == DEMO_COMMAND
        assert block_after("Run the tests:").strip() == TEST_COMMAND
        assert README.index("Run the demo:") < README.index("Run the tests:") < README.index("\n## ")

    def test_test_command_is_what_ci_runs(self) -> None:
        """.ci/run ends with exactly the README's test command."""
        ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
        commands = [line for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert commands[-1].strip() == block_after("Run the tests:").strip()

    def test_mermaid_block_is_current(self) -> None:
        """The state diagram equals MACHINE.mermaid() as the code renders it now."""
        assert block_after("```mermaid").strip() == MACHINE.mermaid().strip()

    def test_performance_and_scale_out_sections_are_present(self) -> None:
        """The performance section names its benchmark and command; the scale-out section exists."""
        assert "## Performance\n" in README and "benchmarks/withdrawals.py" in README
        assert "## Scale-out with PostgreSQL\n" in README

    def test_exit_codes_match_the_cli(self) -> None:
        """Every exit code of engine.cli.EXIT is documented in the README's table."""
        for code in EXIT.values():
            assert re.search(rf"^\| {code} \|", README, re.M), code


def _env(directory: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return clean_env(PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}", HOME=str(directory))


def _ports(text: str, sandbox: int, api: int) -> str:
    return text.replace(SANDBOX_PORT, str(sandbox)).replace(API_PORT, str(api))


def test_python_example_runs(tmp_path: Path) -> None:
    """The Python API example runs to DONE against the sandbox it starts."""
    script = tmp_path / "example.py"
    script.write_text(example("python"))
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_env(tmp_path),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("DONE ")
    assert "mark_done" in proc.stdout


class _Background:
    """A README shell block run in the background, in its own process group (stopped by that id)."""

    def __init__(self, script: str, directory: Path, env: dict[str, str], name: str) -> None:
        self.log = (directory / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {script.strip()}" if "\n" not in script.strip() else script],
            cwd=directory, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
        return int(self.proc.returncode)


def _wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            http_json("GET", url)
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer")


def _run_block(script: str, directory: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script], cwd=directory, env=env, capture_output=True, text=True,
        timeout=180, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_cli_and_http_examples_run(tmp_path: Path) -> None:
    """The sandbox/service/CLI/HTTP session of the README runs as written (free ports swapped in)."""
    if shutil.which("curl") is None:
        pytest.skip("the HTTP example uses curl, which is not installed")
    sandbox_port, api_port = free_port(), free_port()
    (tmp_path / "sandbox.toml").write_text(_ports(example("config"), sandbox_port, api_port))
    env = _env(tmp_path)
    token = _run_block(example("token") + 'printf %s "$UPBIT_WITHDRAW_API_TOKEN"', tmp_path, env)
    assert token.returncode == 0 and len(token.stdout) >= 32, token.stderr
    env["UPBIT_WITHDRAW_API_TOKEN"] = token.stdout
    sandbox = _Background(_ports(example("sandbox"), sandbox_port, api_port), tmp_path, env, "sandbox")
    service = None
    try:
        _wait_http(f"http://127.0.0.1:{sandbox_port}/sandbox/stats")
        service = _Background(_ports(example("service"), sandbox_port, api_port), tmp_path, env, "service")
        _wait_http(f"http://127.0.0.1:{api_port}/healthz")
        cli = _run_block(_ports(example("cli"), sandbox_port, api_port), tmp_path, env)
        assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-2000:]
        assert "DONE" in cli.stdout and "mark_done" in cli.stdout and "Open API withdrawal allowlist" in cli.stdout
        assert "Traceback" not in cli.stderr
        http = _run_block(_ports(example("http"), sandbox_port, api_port), tmp_path, env)
        assert http.returncode == 0, http.stdout[-2000:] + http.stderr[-2000:]
        assert '"request":{"currency":"XRP"' in http.stdout and '{"status":"ok"}' in http.stdout
        assert 'upbit_withdraw_workflows{state="pending"}' in http.stdout
    finally:
        if service is not None:
            assert service.stop() == 0, (tmp_path / "service.log").read_text()
        sandbox.stop()


def test_license_is_the_one_pyproject_declares() -> None:
    """LICENSE holds the Apache License 2.0 text, as pyproject.toml's license says."""
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["license"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert declared == {"text": "Apache-2.0"}
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_operations_section_uses_the_deploy_units() -> None:
    """The README installs the units that deploy/ ships, and documents shell completion and verify-audit."""
    operations = README[README.index("## Operations") : README.index("## The sandbox")]
    for unit in ("deploy/upbit-withdraw.service", "deploy/upbit-withdraw-audit-heads.timer"):
        assert unit in operations and (ROOT / unit).exists(), unit
    assert "_UPBIT_WITHDRAW_COMPLETE=bash_source upbit-withdraw" in README
    assert re.search(r"^\| `verify-audit", README, re.M)
