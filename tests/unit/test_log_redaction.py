"""The redaction processor's fast paths (cached key verdicts, the cheap pre-check) mask what the regexes
masked before: tokens in any case, registered secrets anywhere, values under secret-named keys."""

from __future__ import annotations

import json

from engine.logging import redact_secrets, register_secret

JWT = "eyJhbGciOiJIUzUxMiJ9.eyJhY2Nlc3Nfa2V5IjoiayJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def test_tokens_are_masked_whatever_their_case_or_place() -> None:
    register_secret("registered-secret-value-1234")
    for _ in range(2):  # the second pass goes through the cached key verdicts
        event = redact_secrets(None, "info", {
            "event": "x", "a": f"BEARER {JWT[:20]}abc", "b": f"token={JWT}", "c": "had registered-secret-value-1234",
            "Access_Key": "plain", "nested": {"PassWord": "p", "list": ("bearer xyz", 7)}, "n": 3, "none": None,
        })  # fmt: skip
        flat = json.dumps(event)
        assert JWT not in flat and "registered-secret-value-1234" not in flat and "xyz" not in flat
        assert event["Access_Key"] == "***" and event["nested"]["PassWord"] == "***"
        assert event["a"] == "Bearer ***" and event["nested"]["list"] == ("Bearer ***", 7)
        assert (event["n"], event["none"], event["event"]) == (3, None, "x")
