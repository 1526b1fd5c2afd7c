"""The pure rules of references, metadata and list queries (engine/references.py, engine/query.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from engine.errors import InvalidRequest
from engine.models import State
from engine.query import DEFAULT_PAGE, ListFilter, parse_list_query
from engine.references import MAX_METADATA_BYTES, check_metadata, check_reference

KST = timezone(timedelta(hours=9))

STATE_NAMES = [str(s) for s in State]


class TestReference:
    @pytest.mark.parametrize("value", ["a", "payout-2026-01-01/42", "x" * 128, "!~"])
    def test_accepted(self, value: str) -> None:
        assert check_reference(value) == value

    def test_none_is_no_reference(self) -> None:
        assert check_reference(None) is None

    @pytest.mark.parametrize("value", ["", "x" * 129, "with space", "tab\there", "출금", "\u202e", 7, b"bytes"])
    def test_refused_naming_the_field(self, value: Any) -> None:
        with pytest.raises(InvalidRequest) as caught:
            check_reference(value)
        assert caught.value.field == "reference"


class TestMetadata:
    def test_json_values_are_kept_as_given(self) -> None:
        value = {"s": "x", "i": 1, "f": 1.5, "b": True, "n": None, "l": [1, "a"], "d": {"k": {"k": [None]}}}
        assert check_metadata(value) == value

    def test_the_result_is_a_copy(self) -> None:
        given: dict[str, Any] = {"tags": ["a"]}
        kept = check_metadata(given)
        given["tags"].append("b")
        assert kept == {"tags": ["a"]}

    def test_empty_or_none_is_no_metadata(self) -> None:
        assert check_metadata(None) is None
        assert check_metadata({}) is None

    @pytest.mark.parametrize(
        ("value", "rule"),
        [
            ("text", "JSON object"),
            ([1], "JSON object"),
            ({str(i): i for i in range(33)}, "more than 32 keys"),
            ({"": 1}, "keys must be strings of 1-64"),
            ({"k" * 65: 1}, "keys must be strings of 1-64"),
            ({1: "int key"}, "keys must be strings"),
            ({"a": {2: "nested int key"}}, "keys must be strings"),
            ({"a": Decimal("1.5")}, "not Decimal"),
            ({"a": datetime(2026, 1, 1, tzinfo=UTC)}, "not datetime"),
            ({"a": float("nan")}, "finite"),
            ({"a": [float("inf")]}, "finite"),
            ({"a": [[[[1]]]]}, "nested more than 4"),
            ({"a": "x" * MAX_METADATA_BYTES}, f"{MAX_METADATA_BYTES} bytes"),
            ({"a": "출" * 1400}, f"{MAX_METADATA_BYTES} bytes"),  # 3 bytes each in UTF-8: counted as bytes
        ],
    )  # fmt: skip
    def test_refused_naming_the_rule(self, value: Any, rule: str) -> None:
        with pytest.raises(InvalidRequest) as caught:
            check_metadata(value)
        assert caught.value.field == "metadata" and rule in caught.value.message

    def test_a_deep_object_is_refused_without_recursing_through_it(self) -> None:
        deep: Any = 1
        for _ in range(100_000):
            deep = [deep]
        with pytest.raises(InvalidRequest, match="nested"):
            check_metadata({"a": deep})


class TestListQuery:
    def test_defaults(self) -> None:
        parsed = parse_list_query([], kind="withdrawal", states=STATE_NAMES)
        assert parsed == (ListFilter(kind="withdrawal"), DEFAULT_PAGE, None)

    def test_every_parameter(self) -> None:
        where, limit, cursor = parse_list_query([
            ("state", "DONE"), ("state", "FAILED,aborted"), ("currency", "BTC"), ("net_type", "TRX"),
            ("account", "desk-2"), ("reason", "dry_run"), ("reference", "p-1"), ("idempotency_key", "k 1"),
            ("created_after", "2026-01-01T09:00:00+09:00"), ("created_before", "2026-01-02T00:00:00Z"),
            ("updated_after", "2026-01-01T00:00:00.5+00:00"), ("updated_before", "2026-02-01T00:00:00-05:00"),
            ("limit", "7"), ("cursor", "wd_00ff"),
        ], kind="withdrawal", states=STATE_NAMES)  # fmt: skip
        assert where == ListFilter(
            kind="withdrawal", states={State.DONE, State.FAILED, State.ABORTED}, currency="BTC", net_type="TRX",
            account="desk-2",
            reason="dry_run", reference="p-1", idempotency_key="k 1",
            created_after=datetime(2026, 1, 1, tzinfo=UTC), created_before=datetime(2026, 1, 2, tzinfo=UTC),
            updated_after=datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=UTC),
            updated_before=datetime(2026, 2, 1, 5, tzinfo=UTC),
        )  # fmt: skip
        assert (limit, cursor) == (7, "wd_00ff")
        assert where.created_after is not None and where.created_after.tzinfo is UTC

    def test_every_bad_parameter_is_named_at_once(self) -> None:
        with pytest.raises(InvalidRequest) as caught:
            parse_list_query([
                ("state", "done"), ("limit", "0"), ("cursor", "x"), ("created_after", "2026-01-01T00:00:00"),
                ("colour", "red"), ("account", "a"), ("account", "b"), ("currency", "btc"),
            ], kind="withdrawal", states=STATE_NAMES)  # fmt: skip
        assert set(caught.value.fields) == {
            "state",
            "limit",
            "cursor",
            "created_after",
            "colour",
            "account",
            "currency",
        }
        assert "offset" in caught.value.fields["created_after"]
        assert caught.value.fields["account"] == "given more than once"

    def test_a_naive_filter_time_is_refused_in_python_too(self) -> None:
        with pytest.raises(InvalidRequest) as caught:
            ListFilter(updated_before=datetime(2026, 1, 1))  # naive: the point of the test
        assert caught.value.field == "updated_before"

    def test_bounds_in_any_zone_mean_the_same_instant(self) -> None:
        assert ListFilter(created_after=datetime(2026, 1, 1, 9, tzinfo=KST)) == ListFilter(
            created_after=datetime(2026, 1, 1, tzinfo=UTC)
        )
