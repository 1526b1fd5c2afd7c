"""The clock-offset estimator and the adoption window it gives (pure; no clock is read)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.upbit.skew import SkewEstimator, parse_http_date
from workflows.withdrawal import absence_proven, adoption_since

T0 = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def http_date(moment: datetime) -> str:
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")


class TestParseHttpDate:
    @pytest.mark.parametrize("value", [None, "", "yesterday", "Fri, 99 Foo 2026 25:61:61 GMT"])
    def test_unreadable_is_none(self, value: str | None) -> None:
        assert parse_http_date(value) is None

    def test_rfc_date_is_aware_utc(self) -> None:
        assert parse_http_date("Fri, 01 May 2026 03:00:07 GMT") == at(7)


class TestSkewEstimator:
    def test_no_sample_no_bound(self) -> None:
        assert SkewEstimator().lower_bound(T0) is None

    def test_one_answer_bounds_the_offset(self) -> None:
        """Date 03:00:10 on an answer sent at 03:00:09.8 and received at 03:00:10.3 (local): the offset
        exchange - local lies between 10 - 10.3 = -0.3 and 11 - 9.8 = 1.2 seconds."""
        estimator = SkewEstimator()
        sample = estimator.observe(at(9.8), at(10.3), http_date(at(10)))
        assert sample is not None and sample.low == pytest.approx(-0.3) and sample.high == pytest.approx(1.2)
        assert estimator.lower_bound(at(11)) == pytest.approx(-0.3)

    def test_the_tightest_recent_lower_bound_wins(self) -> None:
        """Exchange 5 s ahead; a slow answer proves less than a fast one; the fast one counts."""
        estimator = SkewEstimator()
        estimator.observe(at(0), at(3), http_date(at(5)))  # slow: low = 5 - 3 = 2
        estimator.observe(at(10), at(10.05), http_date(at(15)))  # fast: low = 15 - 10.05 = 4.95
        assert estimator.lower_bound(at(20)) == pytest.approx(4.95)
        assert estimator.describe(at(20))["samples"] == 2

    def test_created_at_samples_win_over_date_ones(self) -> None:
        """A withdrawal's created_at is the clock reconciliation compares with: when there is one, the
        Date samples (perhaps from an edge server's clock) no longer count."""
        estimator = SkewEstimator()
        estimator.observe(at(0), at(0.1), http_date(at(10)))  # Date says +9.9 at least
        assert estimator.lower_bound(at(1)) == pytest.approx(9.9)
        estimator.observe_created(at(1), at(1.5), at(3.7))  # created_at 03:00:03 (whole seconds): >= 1.5
        assert estimator.lower_bound(at(2)) == pytest.approx(1.5)
        assert estimator.describe(at(2))["source"] == "created_at"

    def test_old_samples_stop_counting(self) -> None:
        estimator = SkewEstimator(max_age=60)
        estimator.observe(at(0), at(0.1), http_date(at(0)))
        assert estimator.lower_bound(at(61)) is None
        assert estimator.describe(at(61)) == {"samples": 0, "low": None, "high": None, "source": None}

    @pytest.mark.parametrize("header", [None, "garbage"])
    def test_an_answer_without_a_date_is_ignored(self, header: str | None) -> None:
        estimator = SkewEstimator()
        assert estimator.observe(at(0), at(0.1), header) is None
        assert estimator.lower_bound(at(1)) is None

    def test_true_offsets_are_always_within_the_bounds(self) -> None:
        """For any true offset and send/receive times, the sample's (low, high) contains it."""
        for offset in (-130.4, -2.5, -0.01, 0.0, 0.7, 61.999):
            for sent, rtt, server_at in ((0.0, 0.2, 0.1), (5.5, 1.0, 0.9), (9.99, 0.02, 0.0)):
                exchange_time = at(sent + server_at + offset)
                stamped = exchange_time.replace(microsecond=0)
                sample = SkewEstimator().observe(at(sent), at(sent + rtt), http_date(stamped))
                assert sample is not None and sample.low <= offset < sample.high


class TestAdoptionSince:
    def test_unmeasured_uses_the_configured_allowance(self) -> None:
        assert adoption_since(at(100), None, fallback_skew=120, margin=1) == at(-20)

    def test_measured_is_the_intent_plus_offset_minus_a_second_and_the_margin(self) -> None:
        assert adoption_since(at(100), -0.3, fallback_skew=120, margin=1) == at(97.7)
        assert adoption_since(at(100), 42.0, fallback_skew=120, margin=1) == at(140)

    def test_our_own_withdrawal_is_never_before_it(self) -> None:
        """Created at exchange time > intent + offset, stamped in whole seconds: still >= since."""
        for offset in (-7.25, -0.5, 0.0, 0.999, 3.5):
            low = offset - 0.4  # any proven lower bound
            intent = at(100.37)
            created = (intent + timedelta(seconds=offset + 0.001)).replace(microsecond=0)
            assert created >= adoption_since(intent, low, fallback_skew=120, margin=0.0)


def listing(seconds: float, *, candidates: list[str] | None = None, complete: bool = True) -> dict[str, object]:
    return {"at": at(seconds).isoformat(), "complete": complete, "candidates": candidates or []}


class TestAbsenceProven:
    @pytest.mark.parametrize(
        ("listings", "proven"),
        [
            ([listing(0), listing(300), listing(600)], True),
            ([listing(0), listing(300), listing(599)], False),  # too soon
            ([listing(0), listing(600)], False),  # too few
            ([listing(0), listing(300, candidates=["u"]), listing(600)], False),  # a candidate
            ([listing(0), listing(300, complete=False), listing(600)], False),  # incomplete or failed
            ([{"at": at(0).isoformat(), "complete": False, "error": {}}, listing(300), listing(600)], False),
            ([], False),
        ],
    )
    def test_table(self, listings: list[dict[str, object]], proven: bool) -> None:
        assert absence_proven(listings, 3, 10.0) is proven

    def test_zero_listings_required_never_proves(self) -> None:
        assert absence_proven([listing(0)], 0, 0.0) is False
