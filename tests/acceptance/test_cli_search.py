"""The CLI's references and search on the store path (issue #13): ``submit --reference --metadata``,
``status --reference/--idempotency-key``, ``list`` filters, the exact paging and the exit codes. In process
(``engine.cli.run_cli``) on a real SQLite file; the store path must never build an exchange client, so
these tests make building one fail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.cli import run_cli
from engine.upbit import client as client_module
from engine.upbit import gateway as gateway_module

CONFIG = """\
[engine]
database = "sqlite:///{db}"

[accounts.default]
base_url = "http://127.0.0.1:9"
demo = true

[accounts.desk-2]
base_url = "http://127.0.0.1:9"
demo = true
"""


class Cli:
    """Runs the CLI in process against one config and store; answers (exit code, stdout, stderr)."""

    def __init__(self, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.config = config
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = run_cli(["--config", str(self.config), *args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str) -> Any:
        code, out, err = self("--json", *args)
        assert code == 0, err
        return json.loads(out)

    def submit(self, amount: str, *extra: str) -> dict[str, Any]:
        args = ["submit", "--currency", "BTC", "--net-type", "BTC", "--amount", amount, "--address", "bc1qdest0"]
        return dict(self.json(*args, *extra))


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """A migrated store with two accounts configured; building an exchange client or gateway fails."""
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(db=tmp_path / "w.sqlite3"))
    runner = Cli(config, capsys)
    assert runner("migrate")[0] == 0

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("the store path built an exchange client")

    monkeypatch.setattr(client_module.UpbitClient, "__init__", refuse)
    monkeypatch.setattr(gateway_module.Gateway, "__init__", refuse)
    return runner


def test_submit_with_reference_and_metadata_then_status_by_each_handle(cli: Cli) -> None:
    """The reference and metadata are stored and shown; status finds the workflow by id, by reference
    (with or without its account) and by idempotency key, in --json and in the table."""
    view = cli.submit(
        "0.01", "--reference", "payout-1", "--metadata", '{"user": "42", "n": 1}', "--idempotency-key", "k1"
    )
    assert (view["reference"], view["metadata"]) == ("payout-1", {"user": "42", "n": 1})
    for lookup in (
        [view["id"]], ["--reference", "payout-1"], ["--reference", "payout-1", "--account", "default"],
        ["--idempotency-key", "k1"],
    ):  # fmt: skip
        found = cli.json("status", *lookup)
        assert (found["id"], found["reference"], found["metadata"]) == (view["id"], "payout-1", {"user": "42", "n": 1})
    code, out, _ = cli("status", "--reference", "payout-1")
    assert code == 0 and "payout-1" in out and '"user": "42"' in out
    history = cli.json("history", view["id"])
    assert (history[0]["data"]["reference"], history[0]["data"]["metadata"]) == ("payout-1", {"user": "42", "n": 1})


def test_tables_show_the_callers_text_as_text(cli: Cli) -> None:
    """A reference or metadata that looks like rich markup is printed as written, in every table."""
    view = cli.submit("0.01", "--reference", "[red]payout[/red]", "--metadata", '{"note": "[bold]x"}')
    for args in (["status", view["id"]], ["list"]):
        code, out, _ = cli(*args)
        assert code == 0 and "[red]payout[/red]" in out, out
    assert "[bold]x" in cli("status", view["id"])[1]


def test_lookups_that_find_nothing_or_too_much(cli: Cli) -> None:
    """Unknown reference: exit 3. One reference on two accounts without --account: exit 2 naming both."""
    cli.submit("0.01", "--reference", "shared")
    cli.submit("0.02", "--reference", "shared", "--account", "desk-2")
    code, _, err = cli("status", "--reference", "nobody")
    assert code == 3 and "nobody" in err
    code, _, err = cli("status", "--reference", "shared")
    assert code == 2 and "default, desk-2" in err
    assert cli.json("status", "--reference", "shared", "--account", "desk-2")["request"]["account"] == "desk-2"
    code, _, err = cli("status")
    assert code == 2 and "exactly one" in err


def test_duplicate_reference_is_a_conflict_and_bad_metadata_a_usage_error(cli: Cli) -> None:
    """Exit 4 for a reference taken on the account; exit 2 naming the rule for bad metadata or JSON."""
    first = cli.submit("0.01", "--reference", "dup")
    code, _, err = cli("submit", "--currency", "BTC", "--net-type", "BTC", "--amount", "0.02", "--address", "bc1qdest0",
                       "--reference", "dup")  # fmt: skip
    assert code == 4 and first["id"] in err
    for metadata, rule in (("[1, 2]", "JSON object"), ("{not json", "not valid JSON"), ('{"a": NaN}', "finite")):
        code, _, err = cli("submit", "--currency", "BTC", "--net-type", "BTC", "--amount", "0.03", "--address",
                           "bc1qdest0", "--metadata", metadata)  # fmt: skip
        assert code == 2 and "metadata" in err and rule in err, err
    assert cli.json("list")["total"] == 1


def test_list_filters_combine_and_page_exactly(cli: Cli) -> None:
    """Filters combine, total counts all matches, the last page has no cursor, an unknown cursor exits 2."""
    ids = [cli.submit(f"0.0{n + 1}", "--account", ("default", "desk-2")[n % 2])["id"] for n in range(5)]
    everything = cli.json("list")
    assert [v["id"] for v in everything["withdrawals"]] == list(reversed(ids)) and everything["total"] == 5
    desk = cli.json("list", "--account", "desk-2", "--state", "pending,DONE", "--currency", "BTC", "--net-type", "BTC")
    assert [v["id"] for v in desk["withdrawals"]] == [ids[3], ids[1]] and desk["total"] == 2
    since = cli.json("status", ids[2])["created_at"]
    assert cli.json("list", "--created-after", since)["total"] == 3
    assert cli.json("list", "--created-before", since, "--state", "pending")["total"] == 2
    assert cli.json("list", "--state", "DONE")["total"] == 0
    first = cli.json("list", "--limit", "3")
    rest = cli.json("list", "--limit", "3", "--cursor", first["next_cursor"])
    assert rest["next_cursor"] is None and len(rest["withdrawals"]) == 2
    assert cli.json("list", "--limit", "5")["next_cursor"] is None
    code, out, _ = cli("list", "--limit", "2")
    assert code == 0 and "2 shown of 5 matching" in out and "more: --cursor" in out
    code, _, err = cli("list", "--cursor", "wd_0000000000")
    assert code == 2 and "cursor" in err
    code, _, err = cli("list", "--created-after", "2026-01-01T00:00:00")
    assert code == 2 and "created_after" in err and "offset" in err
