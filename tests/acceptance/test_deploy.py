"""deploy/: the systemd units the README's operations section installs. They must parse (``systemd-analyze
verify`` where available, a structural check of their keys everywhere), be hardened as documented, and
start valid CLI invocations."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import click
import pytest

from engine.cli import cli
from engine.runner import Runner

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = ["upbit-withdraw.service", "upbit-withdraw-audit-heads.service", "upbit-withdraw-audit-heads.timer"]
INSTALLED = "/opt/upbit-withdraw/bin/upbit-withdraw"
_SECTION = re.compile(r"^\[(\w+)\]$")
_ASSIGNMENT = re.compile(r"^([A-Za-z][A-Za-z0-9]*)=(.*)$")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as systemd reads it: sections of keys, a key may repeat (each value kept, in order).
    Any line that is neither a comment, a section header nor ``Key=value`` fails the test."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if header := _SECTION.match(stripped):
            current = sections.setdefault(header.group(1), {})
            continue
        assignment = _ASSIGNMENT.match(stripped)
        assert assignment and current is not None, f"line {number} is not Key=value in a section: {line!r}"
        current.setdefault(assignment.group(1), []).append(assignment.group(2).strip())
    return sections


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    return parse_unit((DEPLOY / name).read_text(encoding="utf-8"))


def one(section: dict[str, list[str]], key: str) -> str:
    assert len(section.get(key, [])) == 1, f"{key} must be set exactly once"
    return section[key][0]


def check_invocation(command_line: str, expected_command: str) -> None:
    """The command line parses as ``upbit-withdraw [global options] COMMAND [options]`` (click checks every
    option and value, without running anything)."""
    argv = shlex.split(command_line)
    assert argv[0] == INSTALLED
    with cli.make_context("upbit-withdraw", argv[1:]) as ctx:
        with warnings.catch_warnings():  # click 8.2+ deprecates protected_args (the command name and after)
            warnings.simplefilter("ignore", DeprecationWarning)
            remaining = [*ctx.protected_args, *ctx.args]
        name, command, rest = cli.resolve_command(ctx, remaining)
        assert name == expected_command and command is not None
        command.make_context(name, rest, parent=ctx)


class TestServiceUnit:
    def test_hardened_as_documented(self) -> None:
        """A dedicated user, no new privileges, a read-only system, secrets from an EnvironmentFile."""
        service = unit("upbit-withdraw.service")["Service"]
        assert one(service, "User") == "upbit-withdraw" and one(service, "NoNewPrivileges") == "yes"
        assert one(service, "ProtectSystem") == "strict" and one(service, "ProtectHome") == "yes"
        assert one(service, "EnvironmentFile").startswith("/etc/upbit-withdraw/")
        assert one(service, "CapabilityBoundingSet") == ""

    def test_stops_with_sigterm_and_waits_for_the_drain(self) -> None:
        """SIGTERM drains; systemd waits longer than the runner's drain before it would SIGKILL."""
        service = unit("upbit-withdraw.service")["Service"]
        assert one(service, "KillSignal") == "SIGTERM" and one(service, "Restart") == "on-failure"
        drain = Runner.__init__.__kwdefaults__["drain_timeout"]  # type: ignore[index]
        assert int(one(service, "TimeoutStopSec")) >= drain + 15

    def test_exec_lines_are_valid_cli_invocations(self) -> None:
        """ExecStartPre migrates, ExecStart runs; both parse with the CLI's own options."""
        service = unit("upbit-withdraw.service")["Service"]
        check_invocation(one(service, "ExecStartPre"), "migrate")
        check_invocation(one(service, "ExecStart"), "run")
        heads = unit("upbit-withdraw-audit-heads.service")["Service"]
        check_invocation(one(heads, "ExecStart"), "audit-heads")

    def test_a_wrong_invocation_would_be_caught(self) -> None:
        """The check above is a real parse: an unknown option or command fails it."""
        with pytest.raises(click.UsageError):
            check_invocation(f"{INSTALLED} --config /etc/x.toml run --no-such-option", "run")
        with pytest.raises(click.UsageError, match="No such command"):
            check_invocation(f"{INSTALLED} --config /etc/x.toml serve", "run")
        with pytest.raises(click.BadParameter):
            check_invocation(f"{INSTALLED} --config /etc/x.toml run --port 0", "run")

    def test_timer_triggers_the_heads_export(self) -> None:
        """The timer has a schedule and installs under timers.target."""
        timer = unit("upbit-withdraw-audit-heads.timer")
        assert one(timer["Timer"], "OnUnitActiveSec") and one(timer["Install"], "WantedBy") == "timers.target"

    def test_every_line_is_structurally_valid(self) -> None:
        """Each unit is sections of Key=value lines, with the sections systemd expects."""
        for name in UNITS:
            sections = unit(name)
            kind = name.rsplit(".", 1)[1].capitalize()
            assert {"Unit", kind} <= set(sections), (name, sorted(sections))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd itself parses the units without a warning (ExecStart pointed at this venv's console script,
    since verify insists that the binary exists)."""
    here = str(Path(sys.executable).with_name("upbit-withdraw"))
    if not Path(here).exists():
        pytest.skip("the console script is not installed in this environment")
    for name in UNITS:
        (tmp_path / name).write_text((DEPLOY / name).read_text(encoding="utf-8").replace(INSTALLED, here))
    proc = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in UNITS)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr.strip() == "" and proc.stdout.strip() == "", proc.stderr
