"""The webhook storage rules (engine/store/webhooks.py) on both stores: fan-out is a compare-and-set on
the cursor, claims respect order per workflow and leases, finishing is fenced by the lease, redelivery
and the log; plus the CLI's ``webhooks`` commands over a store file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from engine.cli import run_cli
from engine.errors import WebhookNotFound
from engine.store.base import Store
from engine.store.sqlite import SQLiteStore
from engine.store.webhooks import NewDelivery, Subscription, webhook_store
from engine.webhooks import TRANSITION

SECRET = "store-secret-0123456789"


def sub(sub_id: str = "wh_a", **kw: object) -> Subscription:
    fields: dict[str, object] = {"id": sub_id, "url": "https://hooks.example.com/x", "events": (TRANSITION,),
                                 "secrets": (SECRET,), "source": "api", "created_at": 1.0, **kw}  # fmt: skip
    return Subscription(**fields)  # type: ignore[arg-type]


def row(workflow: str, seq: int) -> NewDelivery:
    return NewDelivery(f"{workflow}:{seq}", workflow, seq, TRANSITION, json.dumps({"id": f"{workflow}:{seq}"}), 10.0)


class TestWebhookStore:
    async def test_subscriptions_round_trip_without_showing_secrets(self, store: Store) -> None:
        """Create, get, list, rotate, delete; the secret never appears in a repr."""
        hooks = webhook_store(store)
        created = await hooks.create_subscription(sub())
        assert (await hooks.get_subscription("wh_a")).secrets == (SECRET,)
        assert SECRET not in repr(created) and [s.id for s in await hooks.list_subscriptions()] == ["wh_a"]
        await hooks.set_secrets("wh_a", ["new-secret-0123456789", SECRET])
        assert (await hooks.get_subscription("wh_a")).secrets == ("new-secret-0123456789", SECRET)
        await hooks.delete_subscription("wh_a", at=2.0)
        with pytest.raises(WebhookNotFound):
            await hooks.get_subscription("wh_a")
        with pytest.raises(WebhookNotFound):
            await hooks.delete_subscription("wh_a", at=3.0)
        assert await hooks.list_subscriptions() == []

    async def test_fan_out_is_a_compare_and_set_on_the_cursor(self, store: Store) -> None:
        """The first fan-out from a cursor wins; one that read the same cursor writes nothing."""
        hooks = webhook_store(store)
        await hooks.create_subscription(sub())
        assert await hooks.fan_out("wh_a", read=None, to="5", deliveries=[row("wd_1", 1)], at=1.0)
        assert not await hooks.fan_out("wh_a", read=None, to="6", deliveries=[row("wd_1", 2)], at=1.0)
        assert (await hooks.get_subscription("wh_a")).feed_cursor == "5"
        assert [d.event_id for d in await hooks.deliveries("wh_a")] == ["wd_1:1"]

    async def test_concurrent_fan_outs_of_one_range_write_once(self, store: Store) -> None:
        """Many workers fanning out the same range at once: exactly one succeeds."""
        hooks = webhook_store(store)
        await hooks.create_subscription(sub())
        results = await asyncio.gather(
            *(hooks.fan_out("wh_a", read=None, to="9", deliveries=[row("wd_1", 1)], at=1.0) for _ in range(6))
        )
        assert sorted(results) == [False] * 5 + [True]
        assert len(await hooks.deliveries("wh_a")) == 1

    async def test_claims_keep_order_per_workflow_and_leases(self, store: Store) -> None:
        """Only the earliest pending event of each workflow is claimable; a leased one is not claimed
        again until its lease lapses; finishing needs the lease."""
        hooks = webhook_store(store)
        await hooks.create_subscription(sub())
        rows = [row("wd_1", 1), row("wd_1", 2), row("wd_2", 1)]
        await hooks.fan_out("wh_a", read=None, to="3", deliveries=rows, at=1.0)
        first = await hooks.claim_deliveries(now=2.0, limit=10, owner="w1", lease_seconds=5.0)
        assert sorted(d.event_id for d in first) == ["wd_1:1", "wd_2:1"]
        assert await hooks.claim_deliveries(now=3.0, limit=10, owner="w2", lease_seconds=5.0) == []
        one = next(d for d in first if d.event_id == "wd_1:1")
        assert not await hooks.finish_attempt(
            one.id, owner="w2", at=3.0, status="delivered", http_status=200, error=None, next_attempt_at=None
        )
        assert await hooks.finish_attempt(
            one.id, owner="w1", at=3.0, status="delivered", http_status=200, error=None, next_attempt_at=None
        )
        after = await hooks.claim_deliveries(now=4.0, limit=10, owner="w2", lease_seconds=5.0)
        assert [d.event_id for d in after] == ["wd_1:2"]
        lapsed = await hooks.claim_deliveries(now=8.0, limit=10, owner="w3", lease_seconds=5.0)
        assert [d.event_id for d in lapsed] == ["wd_2:1"]  # w1's lease on it lapsed at 7.0

    async def test_retry_schedule_failed_and_redelivery(self, store: Store) -> None:
        """A retry waits for its time; failed ones stay visible; redelivery makes them pending again."""
        hooks = webhook_store(store)
        await hooks.create_subscription(sub())
        await hooks.fan_out("wh_a", read=None, to="2", deliveries=[row("wd_1", 1), row("wd_2", 1)], at=1.0)
        claimed = await hooks.claim_deliveries(now=1.0, limit=10, owner="w", lease_seconds=5.0)
        retry, fail = sorted(claimed, key=lambda d: d.event_id)
        await hooks.finish_attempt(retry.id, owner="w", at=1.5, status="pending", http_status=503,
                                   error="HTTP 503", next_attempt_at=20.0)  # fmt: skip
        await hooks.finish_attempt(fail.id, owner="w", at=1.5, status="failed", http_status=None,
                                   error="timeout", next_attempt_at=None)  # fmt: skip
        assert await hooks.claim_deliveries(now=19.0, limit=10, owner="w", lease_seconds=5.0) == []
        assert [d.event_id for d in await hooks.claim_deliveries(now=20.0, limit=10, owner="w", lease_seconds=5.0)] == [
            "wd_1:1"
        ]
        (failed,) = await hooks.deliveries("wh_a", status="failed")
        assert failed.event_id == "wd_2:1" and failed.attempts == 1 and failed.last_error == "timeout"
        assert await hooks.pending_count() == 1
        assert await hooks.redeliver("wh_a", at=30.0, event_ids=["wd_2:1"]) == 1
        assert await hooks.redeliver("wh_a", at=30.0, since=0.0, until=15.0) == 2
        assert await hooks.redeliver("wh_a", at=30.0, since=11.0) == 0
        with pytest.raises(WebhookNotFound):
            await hooks.redeliver("wh_missing", at=30.0, since=0.0)
        assert await hooks.pending_count() == 2

    async def test_config_subscriptions_are_synced(self, store: Store) -> None:
        """The file's subscriptions are upserted; one removed from the file is deleted; API ones stay."""
        hooks = webhook_store(store)
        await hooks.create_subscription(sub("wh_api"))
        await hooks.sync_config_subscriptions([sub("cfg_a", source="config"), sub("cfg_b", source="config")], at=1.0)
        await hooks.sync_config_subscriptions([sub("cfg_a", source="config", url="https://new.example.com/")], at=2.0)
        live = {s.id: s for s in await hooks.list_subscriptions()}
        assert set(live) == {"wh_api", "cfg_a"} and live["cfg_a"].url == "https://new.example.com/"


def test_cli_lists_logs_and_redelivers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``upbit-withdraw webhooks list|deliveries|redeliver`` on a store file (JSON output)."""
    path = tmp_path / "w.sqlite3"

    async def seed() -> None:
        async with SQLiteStore(path) as store:
            hooks = webhook_store(store)
            await hooks.create_subscription(sub())
            await hooks.fan_out("wh_a", read=None, to="1", deliveries=[row("wd_1", 1)], at=1.0)

    asyncio.run(seed())
    database = f"sqlite:///{path}"

    def cli(*argv: str) -> dict[str, object]:
        capsys.readouterr()
        assert run_cli(["webhooks", *argv, "--database", database, "--json"]) == 0
        parsed: dict[str, object] = json.loads(capsys.readouterr().out)
        return parsed

    listed = cli("list")
    assert [item["id"] for item in listed["items"]] == ["wh_a"]  # type: ignore[index]
    assert SECRET not in json.dumps(listed)
    log = cli("deliveries", "wh_a")
    assert [item["event_id"] for item in log["items"]] == ["wd_1:1"]  # type: ignore[index]
    assert (cli("redeliver", "wh_a", "--event-id", "wd_1:1")) == {"redelivered": 1}
    assert run_cli(["webhooks", "deliveries", "wh_nope", "--database", database]) == 3
    assert run_cli(["webhooks", "redeliver", "wh_a", "--database", database]) == 2
