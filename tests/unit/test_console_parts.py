"""The console's pure parts: login rules, the state diagram, which actions an operator is offered, and the
429/418 window of the overview."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from engine.console import actions as acts
from engine.console.auth import cookie_options, csrf_matches, is_loopback, login_allowed, safe_next
from engine.console.diagram import layout, render_svg, taken_path
from engine.console.overview import HOUR, ThrottleHistory
from engine.kinds import default_kinds
from engine.models import State, WithdrawalRequest, Workflow
from engine.operators import Operator, Role

WITHDRAWAL = default_kinds()["withdrawal"]
BATCH = default_kinds()["batch"]


class TestLoginRules:
    @pytest.mark.parametrize("remote", ["127.0.0.1", "127.8.9.10", "::1"])
    def test_loopback_addresses(self, remote: str) -> None:
        assert is_loopback(remote)

    @pytest.mark.parametrize("remote", ["10.0.0.1", "203.0.113.9", "::ffff:8.8.8.8", "", None, "not-an-ip"])
    def test_other_addresses(self, remote: str | None) -> None:
        assert not is_loopback(remote)

    def test_plain_http_only_from_loopback_unless_a_tls_proxy_is_declared(self) -> None:
        assert login_allowed(secure=False, remote="127.0.0.1", behind_tls_proxy=False)
        assert not login_allowed(secure=False, remote="10.0.0.7", behind_tls_proxy=False)
        assert login_allowed(secure=True, remote="10.0.0.7", behind_tls_proxy=False)
        assert login_allowed(secure=False, remote="10.0.0.7", behind_tls_proxy=True)

    def test_csrf_tokens_must_match_exactly(self) -> None:
        assert csrf_matches("abc", "abc")
        for presented in ("abd", "", None, 1, "abc "):
            assert not csrf_matches("abc", presented)
        assert not csrf_matches(None, "abc") and not csrf_matches("", "")

    @pytest.mark.parametrize(
        ("target", "expected"),
        [("/console/withdrawals?state=DONE", "/console/withdrawals?state=DONE"), (None, "/console/"),
         ("https://evil.example/", "/console/"), ("//evil.example/console/", "/console/"),
         ("/console//evil.example", "/console/"), ("/console/\\evil", "/console/"), ("/v1/withdrawals", "/console/")],
    )  # fmt: skip
    def test_after_login_only_console_paths(self, target: str | None, expected: str) -> None:
        assert safe_next(target) == expected

    def test_cookies_are_http_only_strict_and_console_only(self) -> None:
        assert cookie_options(secure=False) == {
            "path": "/console",
            "httponly": True,
            "samesite": "Strict",
            "secure": False,
        }
        assert cookie_options(secure=True, max_age=60)["secure"] is True


class TestDiagram:
    def test_every_state_once_terminal_states_in_the_last_row(self) -> None:
        placed = layout(WITHDRAWAL)
        flat = [s for row in placed.rows for s in row]
        assert sorted(flat) == sorted(str(s) for s in WITHDRAWAL.states)
        assert set(placed.rows[-1]) == {str(s) for s in WITHDRAWAL.terminal}
        assert placed.rows[0] == [str(WITHDRAWAL.initial)]

    def test_boxes_do_not_overlap_and_fit(self) -> None:
        placed = layout(WITHDRAWAL)
        spots = list(placed.at.values())
        assert len(set(spots)) == len(spots)
        assert all(0 <= x < placed.width and 0 <= y < placed.height for x, y in spots)

    def test_the_path_taken_is_drawn_thick_and_the_current_state_outlined(self) -> None:
        path = taken_path([
            (None, "pending"), ("pending", "verifying_address"), ("verifying_address", "checking_wallet"),
            ("checking_wallet", "submitting"), ("submitting", "submitting"), ("submitting", "WAITING"),
        ])  # fmt: skip
        assert ("submitting", "submitting") not in path and len(path) == 4
        svg = str(render_svg(WITHDRAWAL, current="WAITING", path=path))
        taken = re.findall(r'class="edge taken"[^>]*data-from="([^"]+)" data-to="([^"]+)"', svg)
        assert sorted(taken) == sorted(path)
        assert re.search(r'class="state[^"]*current[^"]*" data-state="WAITING"', svg)
        assert not re.search(r'class="state[^"]*visited[^"]*" data-state="DONE"', svg)
        assert svg.startswith("<svg") and svg.endswith("</svg>")

    def test_any_kind_is_drawn_from_its_table(self) -> None:
        svg = str(render_svg(BATCH, current=str(BATCH.initial), path=[]))
        for state in BATCH.states:
            assert f'data-state="{state}"' in svg


def _withdrawal(state: State, **changes: object) -> Workflow:
    request = WithdrawalRequest(currency="BTC", net_type="BTC", amount=Decimal("0.5"), address="addr-1")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return replace(Workflow(id="wd_01", state=state, request=request, created_at=now, updated_at=now), **changes)


class TestActions:
    def names(self, wf: Workflow, role: Role, created_by: str | None = None) -> dict[str, bool]:
        offered = acts.available(WITHDRAWAL, wf, Operator("op", role), created_by=created_by)
        return {a.name: a.allowed for a in offered}

    def test_needs_review_offers_cancel_and_the_resolutions_by_role(self) -> None:
        wf = _withdrawal(State.NEEDS_REVIEW)
        assert self.names(wf, Role.APPROVER) == {"cancel": True, "resubmit": True, "abandon": True}
        assert self.names(wf, Role.ADMIN) == {"cancel": True, "resubmit": True, "abandon": True}
        assert self.names(wf, Role.SUBMITTER) == {"cancel": True, "resubmit": False, "abandon": False}
        assert self.names(wf, Role.VIEWER) == {"cancel": False, "resubmit": False, "abandon": False}

    def test_a_refusal_says_why(self) -> None:
        offered = acts.available(
            WITHDRAWAL, _withdrawal(State.NEEDS_REVIEW), Operator("v", Role.VIEWER), created_by=None
        )
        assert all(a.refusal and "viewer" in a.refusal for a in offered)
        assert all(a.note_required for a in offered if a.name != acts.CANCEL)

    def test_terminal_and_decided_workflows_offer_less(self) -> None:
        assert self.names(_withdrawal(State.DONE), Role.ADMIN) == {}
        assert self.names(_withdrawal(State.WAITING), Role.ADMIN) == {"cancel": True}
        decided = _withdrawal(State.NEEDS_REVIEW, resolution="resubmit")
        assert self.names(decided, Role.ADMIN) == {"cancel": True}
        asked = _withdrawal(State.PENDING, cancel_requested_at=datetime(2026, 1, 1, tzinfo=UTC))
        assert self.names(asked, Role.ADMIN) == {}

    def test_permissions_of_the_actions(self) -> None:
        assert acts.permission_for(WITHDRAWAL, "cancel").value == "cancel"
        assert acts.permission_for(WITHDRAWAL, "resubmit").value == "resolve"


class TestThrottleWindow:
    def test_counts_grow_from_the_oldest_sample_within_the_hour(self) -> None:
        history = ThrottleHistory()
        assert history.sample("a", 0, 0, now=0.0) == (0, 0, 0.0)
        assert history.sample("a", 3, 1, now=600.0) == (3, 1, 600.0)
        assert history.sample("a", 5, 1, now=HOUR + 300.0)[:2] == (5, 1)  # the base at 0 is the last before an hour ago
        throttles, blocks, window = history.sample("a", 9, 2, now=2 * HOUR)  # base: 600 s, the last before 3600
        assert (throttles, blocks) == (6, 1) and window == pytest.approx(2 * HOUR - 600.0)
        assert [s.at for s in history.samples["a"]] == [600.0, HOUR + 300.0, 2 * HOUR]

    def test_accounts_are_apart(self) -> None:
        history = ThrottleHistory()
        history.sample("a", 10, 0, now=0.0)
        assert history.sample("b", 1, 0, now=1.0) == (0, 0, 0.0)


class TestConfig:
    def test_console_keys_from_the_environment_and_their_bounds(self) -> None:
        from engine.config import load_config
        from engine.errors import ConfigError

        config = load_config(
            environ={"UPBIT_WITHDRAW_CONSOLE_BEHIND_TLS_PROXY": "true", "UPBIT_WITHDRAW_CONSOLE_IDLE_MINUTES": "5"}
        )
        assert (config.console.enabled, config.console.idle_minutes, config.console.behind_tls_proxy) == (True, 5, True)
        assert load_config(environ={}).console.behind_tls_proxy is False
        with pytest.raises(ConfigError) as error:
            load_config(environ={"UPBIT_WITHDRAW_CONSOLE_IDLE_MINUTES": "0"})
        assert error.value.key == "console.idle_minutes"


async def test_a_live_stream_reader_that_swallows_a_cancellation_is_still_stopped() -> None:
    """The live stream's reader is stopped even if one cancellation is lost (Python 3.11's wait_for can
    swallow one): cancelled again until it ends, so a stream never holds up the server's shutdown."""
    import asyncio

    from engine.console.live import _stop

    swallowed = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(True)  # as a cancelled wait_for that had just finished would

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(_stop(task), 10)
    assert task.cancelled() and swallowed == [True]
