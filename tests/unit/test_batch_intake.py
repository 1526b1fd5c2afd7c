"""workflows.batch.intake: reading CSV/JSON payout files, validating every item first, per-currency caps."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from engine.errors import InvalidBatch, InvalidRequest
from workflows.batch.intake import (
    CSV_COLUMNS,
    MAX_ITEMS,
    BatchRequest,
    build_batch,
    check_limits,
    effective_limits,
    items_from_text,
    limit_breaches,
    parse_csv,
    parse_json,
    parse_limits,
)


def item(ref: str = "r1", **over: Any) -> dict[str, Any]:
    base = {"reference": ref, "currency": "BTC", "net_type": "BTC", "amount": "0.01", "address": "bc1qaddr"}
    return {**base, **over}


class TestCsv:
    """The CSV file: a header naming the required columns, one item per row, empty cells left out."""

    def test_rows_become_items(self) -> None:
        """Each row is one object keyed by the header; empty cells are not given."""
        text = (
            "reference,currency,net_type,amount,address,secondary_address\n"
            "p-1,BTC,BTC,0.5,bc1q,\np-2,XRP,XRP,10,r9,memo\n"
        )
        rows = parse_csv(text)
        assert rows == [
            {"reference": "p-1", "currency": "BTC", "net_type": "BTC", "amount": "0.5", "address": "bc1q"},
            {"reference": "p-2", "currency": "XRP", "net_type": "XRP", "amount": "10", "address": "r9",
             "secondary_address": "memo"},
        ]  # fmt: skip

    def test_bom_and_any_column_order(self) -> None:
        """A UTF-8 byte-order mark (Excel) is ignored, and columns may come in any order."""
        rows = parse_csv("\ufeffamount,address,net_type,currency,reference\n1,a,BTC,BTC,x\n")
        assert rows[0]["reference"] == "x" and rows[0]["amount"] == "1"

    @pytest.mark.parametrize(
        ("text", "needle"),
        [
            ("", "header row is required"),
            ("reference,currency,net_type,amount\n", "missing column 'address'"),
            ("reference,currency,net_type,amount,address,colour\n", "unknown column 'colour'"),
        ],
    )
    def test_bad_header_refused(self, text: str, needle: str) -> None:
        """A file without the required columns, or with an unknown one, is refused as a whole."""
        with pytest.raises(InvalidRequest) as err:
            parse_csv(text)
        assert err.value.field == "csv" and needle in err.value.message

    def test_extra_cells_named(self) -> None:
        """A row with more cells than the header is an invalid item, not silently cut."""
        rows = parse_csv("reference,currency,net_type,amount,address\nx,BTC,BTC,1,a,surplus\n")
        with pytest.raises(InvalidBatch) as err:
            build_batch(rows)
        assert {(e["index"], e["field"]) for e in err.value.errors} == {(0, "row")}

    def test_documented_columns(self) -> None:
        """The columns are exactly the withdrawal request's fields plus the reference."""
        assert set(CSV_COLUMNS) == {"reference", "currency", "net_type", "amount", "address", "secondary_address",
                                    "transaction_type", "account", "exchange_name"}  # fmt: skip


class TestJson:
    """JSON: a list of items, or an object with ``items`` and an optional ``max_total``."""

    def test_list_and_object(self) -> None:
        """Both shapes give the same items; only the object carries caps."""
        assert parse_json([item()]) == ([item()], None)
        assert parse_json({"items": [item()], "max_total": {"BTC": "1"}}) == ([item()], {"BTC": "1"})

    @pytest.mark.parametrize(
        ("data", "field"),
        [("x", "body"), ({"items": "x"}, "items"), ({"items": [], "colour": 1}, "colour"),
         ({"items": [], "max_total": [1]}, "max_total")],
    )  # fmt: skip
    def test_bad_shapes(self, data: object, field: str) -> None:
        """Anything else is refused, naming the field."""
        with pytest.raises(InvalidRequest) as err:
            parse_json(data)
        assert err.value.field == field

    def test_items_from_text(self) -> None:
        """Text of either format; JSON caps are parsed as exact decimals."""
        items, caps = items_from_text('{"items": [], "max_total": {"BTC": "1.50"}}', "json")
        assert items == [] and caps == {"BTC": Decimal("1.50")}
        with pytest.raises(InvalidRequest):
            items_from_text("{", "json")


class TestValidation:
    """Every item is validated before anything is decided; a bad batch is refused whole."""

    def test_valid_batch(self) -> None:
        """Items keep their position (the child key derives from it) and their reference."""
        batch = build_batch([item("a"), item("b", amount="0.02", account="ops")])
        assert [(i.index, i.reference) for i in batch.items] == [(0, "a"), (1, "b")]
        assert batch.items[1].request.account == "ops"
        assert batch.totals() == {"BTC": Decimal("0.03")}
        assert batch.skipped == ()

    def test_every_bad_item_and_field_named(self) -> None:
        """The refusal lists every bad item (index, reference) with every bad field of it."""
        items = [
            item("ok"),
            item("bad-1", amount="-1", currency="btc"),
            {"currency": "BTC", "net_type": "BTC", "amount": "1", "address": "a"},
            item("ok"),
            item("bad-4", amount=1.5, colour="red"),
            "not an object",
        ]
        with pytest.raises(InvalidBatch) as err:
            build_batch(items)
        found = {(e["index"], e["reference"], e["field"]) for e in err.value.errors}
        assert found == {
            (1, "bad-1", "amount"), (1, "bad-1", "currency"),
            (2, None, "reference"),
            (3, "ok", "reference"),
            (4, "bad-4", "amount"), (4, "bad-4", "colour"),
            (5, None, "item"),
        }  # fmt: skip
        assert isinstance(err.value, InvalidRequest) and err.value.field == "items"
        assert "duplicates the reference of item 0" in next(e["message"] for e in err.value.errors if e["index"] == 3)

    def test_missing_required_fields(self) -> None:
        """Missing fields are all named, not only the first."""
        with pytest.raises(InvalidBatch) as err:
            build_batch([{"reference": "x"}])
        assert {e["field"] for e in err.value.errors} == {"currency", "net_type", "amount", "address"}

    def test_unknown_account(self) -> None:
        """With the configured accounts given, an item paying from another one is invalid."""
        with pytest.raises(InvalidBatch) as err:
            build_batch([item("a", account="nope")], accounts={"default"})
        assert err.value.errors[0]["field"] == "account"

    def test_skip_invalid(self) -> None:
        """With the explicit flag the valid items are accepted and the bad ones listed."""
        batch = build_batch([item("a"), item("b", amount="x"), item("c")], skip_invalid=True)
        assert [i.reference for i in batch.items] == ["a", "c"]
        assert [(e.index, e.reference, e.field) for e in batch.skipped] == [(1, "b", "amount")]

    def test_skip_invalid_needs_one_valid(self) -> None:
        """A batch with no valid item is refused even with the flag."""
        with pytest.raises(InvalidBatch, match="no valid item"):
            build_batch([item("b", amount="x")], skip_invalid=True)

    def test_size_limits(self) -> None:
        """At least one item, at most 10,000."""
        with pytest.raises(InvalidRequest):
            build_batch([])
        with pytest.raises(InvalidRequest, match="at most"):
            build_batch([item(str(i)) for i in range(MAX_ITEMS + 1)])
        assert len(build_batch([item(str(i)) for i in range(MAX_ITEMS)]).items) == MAX_ITEMS

    def test_round_trip(self) -> None:
        """A stored batch reads back equal (amounts by value)."""
        batch = build_batch([item("a"), item("b", amount="x")], skip_invalid=True, max_total={"BTC": Decimal("2")})
        again = BatchRequest.from_dict(batch.to_dict())
        assert again.same_as(batch) and again.skipped == batch.skipped
        other = build_batch([item("a", amount="0.02")])
        assert not other.same_as(batch)


class TestLimits:
    """A maximum total per currency per batch; the batch's own cap can only lower the configured one."""

    def test_override_lowers(self) -> None:
        """The lower of the two applies; a cap for another currency adds one."""
        caps = effective_limits({"BTC": Decimal("1.5")}, {"BTC": Decimal("1"), "ETH": Decimal("3")})
        assert caps == {"BTC": Decimal("1"), "ETH": Decimal("3")}

    def test_override_cannot_raise(self) -> None:
        """A batch asking for more than configured is refused."""
        with pytest.raises(InvalidRequest) as err:
            effective_limits({"BTC": Decimal("1.5")}, {"BTC": Decimal("2")})
        assert err.value.field == "max_total"

    def test_breaches(self) -> None:
        """Exact decimal comparison: equal is within, a satoshi over is not."""
        caps = {"BTC": Decimal("1")}
        assert limit_breaches({"BTC": Decimal("1.00000000")}, caps) == []
        assert limit_breaches({"BTC": Decimal("1.00000001"), "ETH": Decimal(9)}, caps) == [
            {"currency": "BTC", "total": "1.00000001", "max_total": "1"}
        ]

    def test_check_limits(self) -> None:
        """A batch over its cap is refused with the currency and totals named."""
        batch = build_batch([item("a", amount="0.8"), item("b", amount="0.8")], max_total={"BTC": Decimal("1.5")})
        with pytest.raises(InvalidRequest, match=r"BTC total 1.6 > 1.5"):
            check_limits(batch, {})
        check_limits(build_batch([item("a", amount="0.8")]), {"BTC": Decimal("1.5")})

    @pytest.mark.parametrize("caps", [{"btc": "1"}, {"BTC": "0"}, {"BTC": 1.5}, {"BTC": "-1"}])
    def test_bad_caps(self, caps: dict[str, Any]) -> None:
        """Caps are currency codes with positive decimal strings."""
        with pytest.raises(InvalidRequest):
            parse_limits(caps)


class TestStoredForm:
    """A batch read back from the store validates an item's request only when it is used."""

    def test_lazy_items(self) -> None:
        """Reading a stored batch costs no validation; totals come from the stored amounts; a request
        validates on first use (a tampered one is refused then, with its field)."""
        stored = build_batch([item("a", amount="0.5"), item("b", amount="0.25")]).to_dict()
        stored["items"][1]["request"]["currency"] = "b t c"
        batch = BatchRequest.from_dict(stored)
        assert batch.totals() == {"BTC": Decimal("0.5"), "b t c": Decimal("0.25")}
        assert batch.items[0].request.amount == Decimal("0.5")
        with pytest.raises(InvalidRequest) as err:
            _ = batch.items[1].request
        assert err.value.field == "currency"
        assert BatchRequest.from_dict(stored).to_dict() == stored
