"""Nothing leaks: keys, secrets and JWTs never reach logs, events, errors, reprs or the store."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog

from engine import Engine, State, WithdrawalRequest
from engine.logging import configure_logging, redact_secrets
from engine.sandbox import SandboxServer
from engine.store.sqlite import SQLiteStore
from engine.upbit.auth import Credentials, make_token
from engine.upbit.client import UpbitClient
from engine.upbit.gateway import Gateway
from tests.conftest import FAST, FAST_EXCHANGE, SandboxAdmin

ACCESS = "live-like-access-key-0123456789abcdefABCDEF"
SECRET = "live-like-secret-key-" + "s3cr3t" * 10


@pytest.fixture
async def private_sandbox(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A sandbox whose account uses non-demo keys from the environment (as a real deployment would)."""
    monkeypatch.setenv("UPBIT_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("UPBIT_SECRET_KEY", SECRET)
    async with SandboxServer() as server:
        admin = SandboxAdmin(server.url)
        await admin.configure(**FAST_EXCHANGE)
        server.admin = admin
        yield server


def _haystacks(db_path: Path) -> bytes:
    blobs = b""
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(db_path) + suffix)
        if path.exists():
            blobs += path.read_bytes()
    return blobs


class TestNoSecretsWritten:
    async def test_logs_events_errors_and_store_hold_no_key_secret_or_jwt(
        self, private_sandbox: Any, db_path: Path
    ) -> None:
        """A run with successes, a refusal and a lost answer writes no key, secret or token anywhere."""
        out = io.StringIO()
        configure_logging(json=True, stream=out, level="DEBUG")
        admin: SandboxAdmin = private_sandbox.admin
        await admin.fault(endpoint="POST /v1/withdraws/coin", kind="drop", probability=1.0, times=1)
        creds = Credentials(ACCESS, SECRET)
        client = UpbitClient(creds, base_url=private_sandbox.url, timeout=2.0)
        engine = Engine(
            store=SQLiteStore(db_path), gateways={"default": Gateway(client, poll_window=0.01)}, settings=FAST
        )
        addr = await allowed_with(private_sandbox.url, creds)
        async with engine:
            ok = await engine.submit(
                WithdrawalRequest(currency="BTC", net_type="BTC", amount=Decimal("0.01"), address=addr)
            )
            bad = await engine.submit(
                WithdrawalRequest(currency="BTC", net_type="BTC", amount=Decimal("0.02"), address="nope-not-registered")
            )
            finals = [await engine.wait(ok.id, timeout=15), await engine.wait(bad.id, timeout=15)]
            events = [e.to_dict() async for e in engine.events(ok.id, follow=False)]
            events += [e.to_dict() async for e in engine.events(bad.id, follow=False)]
            text = out.getvalue() + json.dumps(events) + repr(engine) + repr(client) + repr(finals)
        assert finals[0].state is State.DONE and finals[1].state is State.ABORTED
        structlog.reset_defaults()
        for needle in (ACCESS, SECRET, "eyJ"):
            assert needle not in text, needle
            assert needle.encode() not in _haystacks(db_path), needle

    def test_redaction_processor_masks_tokens_and_secret_named_keys(self) -> None:
        """A JWT or bearer header inside any value, or a value under a secret-named key, is masked."""
        token = make_token(Credentials(ACCESS, SECRET), "a=b")
        event = redact_secrets(None, "info", {
            "event": "x",
            "note": f"sent Authorization: Bearer {token}",
            "nested": {"secret_key": SECRET, "list": [token]},
            "api_token": "abc",
        })  # fmt: skip
        flat = json.dumps(event)
        assert token not in flat and SECRET not in flat and "abc" not in flat

    def test_credentials_and_client_reprs_hide_secrets(self) -> None:
        """The reprs of credentials and clients show at most a key prefix."""
        creds = Credentials(ACCESS, SECRET)
        client = UpbitClient(creds, base_url="http://127.0.0.1:1")
        for text in (repr(creds), repr(client), str(creds)):
            assert SECRET not in text and ACCESS not in text


async def allowed_with(url: str, creds: Credentials) -> str:
    """The BTC address registered on the account of ``creds``."""
    async with UpbitClient(creds, base_url=url) as client:
        rows = await client.coin_addresses()
    return next(a.withdraw_address for a in rows if a.currency == "BTC")
