"""Webhooks' pure parts: the signature scheme and its verifier, event types, targets, the retry schedule,
and the [[webhooks]] configuration."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.config import load_config
from engine.errors import ConfigError
from engine.webhook_delivery import DeliverySettings, WebhookDispatcher
from engine.webhooks import (
    ALL_EVENTS,
    BATCH_SETTLED,
    NEEDS_REVIEW,
    TERMINAL,
    TRANSITION,
    event_types,
    payload,
    primary_type,
    sign,
    target_problem,
    verify_signature,
)

BODY = b'{"id":"wd_1:2","type":"workflow.transition"}'
NOW = 1_767_225_600
OLD, NEW = "old-secret-0123456789", "new-secret-0123456789"


class TestSignature:
    def test_signature_is_hmac_sha256_of_timestamp_dot_body(self) -> None:
        """The documented scheme, computed independently."""
        header = sign(BODY, [NEW], timestamp=NOW)
        expected = hmac.new(NEW.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
        assert header == f"t={NOW},v1={expected}"

    def test_verifies_with_the_right_secret_only(self) -> None:
        """The receiver's check passes with the secret, fails with another."""
        header = sign(BODY, [NEW], timestamp=NOW)
        assert verify_signature(BODY, header, [NEW], now=NOW)
        assert verify_signature(BODY.decode(), header, [NEW], now=NOW + 299)
        assert not verify_signature(BODY, header, ["another-secret-0123"], now=NOW)

    def test_rotation_signs_with_both_and_either_verifies(self) -> None:
        """During a rotation two v1 values go out; a receiver knowing only one of the secrets accepts."""
        header = sign(BODY, [NEW, OLD], timestamp=NOW)
        assert header.count("v1=") == 2
        assert verify_signature(BODY, header, [OLD], now=NOW)
        assert verify_signature(BODY, header, [NEW], now=NOW)
        assert verify_signature(BODY, header, [OLD, NEW], now=NOW)

    def test_tampered_body_or_timestamp_fails(self) -> None:
        """The MAC covers the timestamp and every byte of the body."""
        header = sign(BODY, [NEW], timestamp=NOW)
        assert not verify_signature(BODY + b" ", header, [NEW], now=NOW)
        assert not verify_signature(BODY, header.replace(f"t={NOW}", f"t={NOW + 1}"), [NEW], now=NOW)

    def test_stale_or_future_timestamps_fail(self) -> None:
        """Outside the tolerance (either way) a correct MAC is refused: replays are bounded."""
        header = sign(BODY, [NEW], timestamp=NOW)
        assert not verify_signature(BODY, header, [NEW], now=NOW + 301)
        assert not verify_signature(BODY, header, [NEW], now=NOW - 301)
        assert verify_signature(BODY, header, [NEW], tolerance=1000, now=NOW + 900)

    @pytest.mark.parametrize(
        "header", ["", "garbage", f"t={NOW}", "v1=abc", f"t={NOW},t={NOW},v1=00", "t=-1,v1=00", "t=,v1=", "t=1e9,v1=0"]
    )
    def test_malformed_headers_are_false_not_errors(self, header: str) -> None:
        """A receiver gets False for any header it cannot read, never an exception."""
        assert verify_signature(BODY, header, [NEW], now=NOW) is False

    def test_no_secrets_never_verifies(self) -> None:
        """An empty secret list cannot accept anything."""
        assert not verify_signature(BODY, sign(BODY, [NEW], timestamp=NOW), [], now=NOW)
        with pytest.raises(ValueError, match="secret"):
            sign(BODY, [], timestamp=NOW)


class TestEventTypes:
    def test_transition_terminal_review_and_batch(self) -> None:
        """Each subscribable type from the event's states and its workflow's kind."""
        assert event_types(kind="withdrawal", from_state="pending", to_state="verifying_address") == {
            ALL_EVENTS, TRANSITION,
        }  # fmt: skip
        assert TERMINAL in event_types(kind="withdrawal", from_state="PROCESSING", to_state="DONE")
        assert TERMINAL in event_types(kind="withdrawal", from_state="pending", to_state="aborted")
        assert NEEDS_REVIEW in event_types(kind="withdrawal", from_state="reconciling", to_state="needs_review")
        assert BATCH_SETTLED in event_types(kind="batch", from_state="running", to_state="settled")
        assert event_types(kind="withdrawal", from_state="WAITING", to_state="WAITING") == {ALL_EVENTS}
        assert TRANSITION in event_types(kind="withdrawal", from_state=None, to_state="pending")

    def test_primary_type_is_the_most_specific_wanted(self) -> None:
        """A DONE event goes to a terminal-only subscriber as terminal, to a transitions one as transition."""
        types = event_types(kind="withdrawal", from_state="PROCESSING", to_state="DONE")
        assert primary_type(types, [TERMINAL]) == TERMINAL
        assert primary_type(types, [TRANSITION]) == TRANSITION
        assert primary_type(types, [ALL_EVENTS]) == TERMINAL
        assert primary_type(types, [NEEDS_REVIEW]) is None
        note = event_types(kind="withdrawal", from_state="WAITING", to_state="WAITING")
        assert primary_type(note, [TRANSITION]) is None
        assert primary_type(note, [ALL_EVENTS]) == "workflow.event"

    def test_payload_is_stable_json_with_the_event_id(self) -> None:
        """The body names the event by workflow_id:seq and carries the event whole."""
        body = payload(
            type_=TERMINAL, types={ALL_EVENTS, TRANSITION, TERMINAL}, workflow_id="wd_1", seq=7, kind="withdrawal",
            account="desk", at=datetime(2026, 1, 1, tzinfo=UTC), trigger="poll", from_state="PROCESSING",
            to_state="DONE", data={"txid": "ab"}, hash_="h",
        )  # fmt: skip
        parsed = json.loads(body)
        assert parsed["id"] == "wd_1:7" and parsed["type"] == TERMINAL
        assert parsed["types"] == [TERMINAL, TRANSITION]
        assert parsed["data"]["event_data"] == {"txid": "ab"} and parsed["data"]["account"] == "desk"
        assert body == json.dumps(parsed, sort_keys=True, separators=(",", ":"))


class TestTargets:
    @pytest.mark.parametrize(
        "url",
        ["http://127.0.0.1:8080/x", "http://localhost/x", "http://10.1.2.3/", "http://192.168.0.1/",
         "http://[::1]/", "http://169.254.169.254/latest", "http://0.0.0.0/", "http://[::ffff:127.0.0.1]/"],
    )  # fmt: skip
    def test_private_targets_refused_unless_allowed(self, url: str) -> None:
        """Loopback, private, link-local (cloud metadata) and unspecified hosts need allow_private."""
        assert target_problem(url, allow_private=False) is not None
        assert target_problem(url, allow_private=True) is None

    @pytest.mark.parametrize(
        "url", ["ftp://example.com/", "file:///etc/passwd", "http:///x", "https://user:pw@example.com/", "x" * 3000,
                "http://example.com:99999/"],
    )  # fmt: skip
    def test_bad_urls_refused_always(self, url: str) -> None:
        """Only http(s) with a host, without credentials."""
        assert target_problem(url, allow_private=True) is not None

    def test_public_targets_pass(self) -> None:
        """A public name or address is fine (names are checked again when connecting)."""
        assert target_problem("https://hooks.example.com/upbit", allow_private=False) is None
        assert target_problem("http://8.8.8.8/x", allow_private=False) is None


class TestRetrySchedule:
    def test_backoff_grows_exponentially_with_bounded_jitter(self, tmp_path: Path) -> None:
        """tenacity's wait_exponential_jitter: initial * 2^(n-1) plus up to `initial` of jitter, capped."""
        from engine.store.sqlite import SQLiteStore

        settings = DeliverySettings(retry_initial=1.0, retry_max_interval=60.0)
        dispatcher = WebhookDispatcher(SQLiteStore(tmp_path / "s.sqlite3"), settings=settings)
        for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0)]:
            wait = dispatcher._backoff(attempt)
            assert base <= wait <= base + 1.0
        assert dispatcher._backoff(30) == 60.0


class TestConfig:
    def _write(self, tmp_path: Path, text: str) -> Path:
        path = tmp_path / "config.toml"
        path.write_text(text)
        return path

    def test_webhooks_and_delivery_settings_load(self, tmp_path: Path) -> None:
        """[[webhooks]] entries and [webhook_delivery] reach the Config; secrets come from the environment."""
        path = self._write(
            tmp_path,
            """
[webhook_delivery]
allow_private_targets = true
retry_period = 3600.0
[[webhooks]]
name = "ops"
url = "http://127.0.0.1:9999/hook"
events = ["workflow.terminal", "workflow.needs_review"]
secret_env = "HOOK_SECRET"
previous_secret_env = "HOOK_SECRET_OLD"
""",
        )
        config = load_config(path, environ={})
        assert config.webhook_delivery.retry_period == 3600.0
        (hook,) = config.webhooks
        assert hook.events == [TERMINAL, NEEDS_REVIEW]
        env = {"HOOK_SECRET": NEW, "HOOK_SECRET_OLD": OLD}
        assert hook.secrets(env) == (NEW, OLD)
        assert NEW not in repr(config)
        with pytest.raises(ConfigError, match="at least 16"):
            hook.secrets({"HOOK_SECRET": "short"})

    def test_secret_file_relative_to_the_config(self, tmp_path: Path) -> None:
        """secret_file is read like the accounts' (chmod 600, relative to the config file)."""
        secret = tmp_path / "hook.secret"
        secret.write_text(f"secret={NEW}\n")
        secret.chmod(0o600)
        path = self._write(
            tmp_path,
            """
[webhook_delivery]
allow_private_targets = true
[[webhooks]]
name = "ops"
url = "http://127.0.0.1:9999/hook"
secret_file = "hook.secret"
""",
        )
        (hook,) = load_config(path, environ={}).webhooks
        assert hook.secrets({}) == (NEW,)

    @pytest.mark.parametrize(
        ("body", "key"),
        [
            ('name = "a"\nurl = "http://127.0.0.1/x"\nsecret_env = "S"', "webhooks.0.url"),
            ('name = "a"\nurl = "https://example.com/x"\nevents = ["nope"]\nsecret_env = "S"', "webhooks.0.events"),
            ('name = "a"\nurl = "https://example.com/x"', "webhooks.0.secret_env"),
            ('name = "A B"\nurl = "https://example.com/x"\nsecret_env = "S"', "webhooks.0.name"),
        ],
    )
    def test_invalid_webhooks_name_their_key(self, tmp_path: Path, body: str, key: str) -> None:
        """A private target without allow_private_targets, an unknown event type, no secret, a bad name."""
        path = self._write(tmp_path, f"[[webhooks]]\n{body}\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path, environ={})
        assert caught.value.message.startswith(key), caught.value.message


def test_payload_names_the_reference_and_the_batch() -> None:
    """A receiver can match every delivery to its own payout id, and a batch child to its batch."""
    raw = payload(
        type_="workflow.transition", types=["workflow.transition"], workflow_id="wd_01", seq=3, kind="withdrawal",
        account="default", at=datetime(2026, 1, 1, tzinfo=UTC), trigger="mark_done", from_state="PROCESSING",
        to_state="DONE", data={}, hash_="ab", reference="payout-7", batch_id="bt_02",
    )  # fmt: skip
    body = json.loads(raw)
    assert (body["data"]["reference"], body["data"]["batch_id"]) == ("payout-7", "bt_02")
