"""The client against Upbit's own spec: answers generated from the official SDK's response models go through
our parsers and the pre-flight decisions, and nothing but our typed error comes out.

The oracle is ``upbit-sdk`` 1.1.0 (``upbit/types/*.py``, generated from Upbit's OpenAPI spec). For every
endpoint the engine uses, hypothesis generates answers its model allows (optional fields absent, ``null`` or
present, unknown extra keys), each first checked against the model itself, then parsed the way the client
parses a 2xx body (:func:`engine.upbit.client.parse_one` / ``parse_list``) and fed to the decisions that
consume it. Well-formed answers (money as decimal strings, times as ISO-8601, as Upbit sends them) must
parse cleanly and keep "unknown" as ``None``; with arbitrary text in string fields, the only error allowed
is :class:`~engine.errors.ExchangeBadResponse`. No network: pure functions only.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter
from upbit.types.account_list_response import AccountListResponse
from upbit.types.wallet_status_list_response import WalletStatusListResponse
from upbit.types.withdraw import Withdraw
from upbit.types.withdraw_list_coin_addresses_response import WithdrawListCoinAddressesResponse
from upbit.types.withdraw_retrieve_chance_response import WithdrawRetrieveChanceResponse

from engine.errors import ExchangeBadResponse, ExchangeRefused, InvalidRequest
from engine.models import AbortReason, State, WithdrawalRequest, Workflow
from engine.upbit.client import expect_list, parse_list, parse_one
from engine.upbit.errors import refusal
from engine.upbit.types import AccountBalance, AllowedAddress, Chance, ExchangeState, WalletStatus, Withdrawal
from tests.spec.answers import answers, optional_fields
from workflows.withdrawal import (
    Verdict,
    chance_verdict,
    choose_candidate,
    match_address,
    trigger_for,
    wallet_verdict,
)

SPEC = settings(max_examples=150, derandomize=True, deadline=None)
T0 = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)


def conforms(model: Any, answer: Any) -> None:
    """The generated answer is one the official model accepts (the generator's own check)."""
    TypeAdapter(model).validate_python(answer)


def parsed_or_typed_error(parse: Any, well_formed: bool) -> Any:
    """Run a parse; a well-formed answer must parse, any other may only raise ExchangeBadResponse."""
    if well_formed:
        return parse()
    try:
        return parse()
    except ExchangeBadResponse:
        return None


requests = st.builds(
    WithdrawalRequest,
    currency=st.sampled_from(["BTC", "XRP", "ETH"]),
    net_type=st.sampled_from(["BTC", "XRP", "ETH"]),
    amount=st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(10) ** 9, places=8),
    address=st.just("rDestination1"),
    transaction_type=st.sampled_from(["default", "internal"]),
)


class TestChance:
    """GET /v1/withdraws/chance -> Chance -> chance_verdict."""

    @SPEC
    @given(answer=answers(WithdrawRetrieveChanceResponse, well_formed=True), request=requests)
    def test_well_formed(self, answer: dict[str, Any], request: WithdrawalRequest) -> None:
        """Every answer the model allows parses; an optional limit null or absent is None (unknown), and the
        verdict is always one of send / wait / abort."""
        conforms(WithdrawRetrieveChanceResponse, answer)
        chance = parse_one(answer, Chance.from_json, "/v1/withdraws/chance")
        limit = answer["withdraw_limit"]
        for field in ("minimum", "fixed", "can_withdraw", "withdraw_delayed_fiat", "remaining_daily_fiat"):
            assert (getattr(chance, field) is None) is (limit.get(field) is None)
        assert chance.wallet_support == tuple(answer["currency"]["wallet_support"])
        check = chance_verdict(request, chance)
        assert check.verdict in set(Verdict)
        if chance.can_withdraw is None and not (chance.member_locked or chance.wallet_locked):
            assert check.reason is not AbortReason.CHANCE_DENIED  # unknown is not "no"

    @SPEC
    @given(answer=answers(WithdrawRetrieveChanceResponse, well_formed=False), request=requests)
    def test_any_text(self, answer: dict[str, Any], request: WithdrawalRequest) -> None:
        """With arbitrary text in string fields, parsing either works or raises our typed error."""
        conforms(WithdrawRetrieveChanceResponse, answer)
        chance = parsed_or_typed_error(lambda: parse_one(answer, Chance.from_json, "/v1/withdraws/chance"), False)
        if chance is not None:
            assert chance_verdict(request, chance).verdict in set(Verdict)

    def test_all_optional_fields_exercised(self) -> None:
        """The model's optional fields are the ones the issue names (so the strategies above cover them)."""
        assert optional_fields(WithdrawRetrieveChanceResponse) == {
            "withdraw_limit.can_withdraw", "withdraw_limit.fixed", "withdraw_limit.minimum",
            "withdraw_limit.withdraw_delayed_fiat",
        }  # fmt: skip


class TestCoinAddresses:
    """GET /v1/withdraws/coin_addresses -> AllowedAddress -> match_address."""

    @pytest.mark.parametrize("well_formed", [True, False], ids=["well-formed", "any-text"])
    def test_rows(self, well_formed: bool) -> None:
        @SPEC
        @given(answer=answers(WithdrawListCoinAddressesResponse, well_formed=well_formed), amount=requests)
        def check(answer: list[dict[str, Any]], amount: WithdrawalRequest) -> None:
            conforms(WithdrawListCoinAddressesResponse, answer)
            endpoint = "GET /v1/withdraws/coin_addresses"
            rows = parsed_or_typed_error(lambda: parse_list(expect_list(answer, endpoint), AllowedAddress.from_json,
                                                            endpoint), well_formed)  # fmt: skip
            if rows is None:
                return
            for row, raw in zip(rows, answer, strict=True):
                assert row.secondary_address == (raw.get("secondary_address") or None)
                assert row.exchange_name == raw.get("exchange_name")
            for request in [amount, *(_request_for(row, amount.amount) for row in rows)]:
                if request is None:
                    continue
                match = match_address(request, rows)
                assert match.ok is (match.registered is not None)

        check()


def _request_for(row: AllowedAddress, amount: Decimal) -> WithdrawalRequest | None:
    """A request aimed at an allowlist row, when its fields make a valid request (else None)."""
    try:
        return WithdrawalRequest(
            currency=row.currency, net_type=row.net_type, amount=amount, address=row.withdraw_address,
            secondary_address=row.secondary_address, exchange_name=row.exchange_name,
        )  # fmt: skip
    except InvalidRequest:
        return None


class TestWalletStatus:
    """GET /v1/status/wallet -> WalletStatus -> wallet_verdict."""

    @pytest.mark.parametrize("well_formed", [True, False], ids=["well-formed", "any-text"])
    def test_rows(self, well_formed: bool) -> None:
        @SPEC
        @given(answer=answers(WalletStatusListResponse, well_formed=well_formed), hold=st.booleans())
        def check(answer: list[dict[str, Any]], hold: bool) -> None:
            conforms(WalletStatusListResponse, answer)
            endpoint = "GET /v1/status/wallet"
            rows = parsed_or_typed_error(
                lambda: parse_list(expect_list(answer, endpoint), WalletStatus.from_json, endpoint), well_formed
            )
            for row in rows or ():
                verdict = wallet_verdict(row, hold_on_delayed=hold).verdict
                assert verdict in set(Verdict)
                if row.wallet_state in ("working", "withdraw_only") and row.block_state in (None, "normal"):
                    assert verdict is Verdict.SEND

        check()


class TestAccounts:
    """GET /v1/accounts -> AccountBalance."""

    @pytest.mark.parametrize("well_formed", [True, False], ids=["well-formed", "any-text"])
    def test_rows(self, well_formed: bool) -> None:
        @SPEC
        @given(answer=answers(AccountListResponse, well_formed=well_formed))
        def check(answer: list[dict[str, Any]]) -> None:
            conforms(AccountListResponse, answer)
            endpoint = "GET /v1/accounts"
            rows = parsed_or_typed_error(
                lambda: parse_list(expect_list(answer, endpoint), AccountBalance.from_json, endpoint), well_formed
            )
            for row in rows or ():
                assert isinstance(row.balance, Decimal) and isinstance(row.locked, Decimal)

        check()


def _workflow(request: WithdrawalRequest) -> Workflow:
    return Workflow(
        id="wd_spec", state=State.RECONCILING, request=request, created_at=T0, updated_at=T0, submitted_at=T0
    )


class TestWithdrawals:
    """The withdrawal object of POST/DELETE /v1/withdraws/coin and GET /v1/withdraw, and the list of
    GET /v1/withdraws -> Withdrawal -> trigger_for, is_terminal, choose_candidate."""

    @pytest.mark.parametrize("endpoint", ["POST /v1/withdraws/coin", "GET /v1/withdraw", "DELETE /v1/withdraws/coin"])
    @pytest.mark.parametrize("well_formed", [True, False], ids=["well-formed", "any-text"])
    def test_one(self, endpoint: str, well_formed: bool) -> None:
        @SPEC
        @given(answer=answers(Withdraw, well_formed=well_formed), request=requests)
        def check(answer: dict[str, Any], request: WithdrawalRequest) -> None:
            conforms(Withdraw, answer)
            withdrawal = parsed_or_typed_error(lambda: parse_one(answer, Withdrawal.from_json, endpoint), well_formed)
            if withdrawal is None:
                return
            assert withdrawal.state is ExchangeState(answer["state"])
            assert trigger_for(withdrawal.state) is not None
            for field in ("net_type", "txid", "is_cancelable", "done_at"):
                assert (getattr(withdrawal, field) is None) is (answer.get(field) is None)
            choose_candidate(_workflow(request), [withdrawal], {}, T0 - timedelta(days=3650))

        check()

    @pytest.mark.parametrize("well_formed", [True, False], ids=["well-formed", "any-text"])
    def test_list(self, well_formed: bool) -> None:
        @SPEC
        @given(answer=answers(list[Withdraw], well_formed=well_formed), request=requests)
        def check(answer: list[dict[str, Any]], request: WithdrawalRequest) -> None:
            conforms(list[Withdraw], answer)
            endpoint = "GET /v1/withdraws"
            rows = parsed_or_typed_error(
                lambda: parse_list(expect_list(answer, endpoint), Withdrawal.from_json, endpoint), well_formed
            )
            if rows is None:
                return
            owners = {w.uuid: "wd_other" for w in rows[:1]}
            found = choose_candidate(_workflow(request), rows, owners, T0 - timedelta(days=3650))
            assert found.adopt is None or found.adopt.uuid not in owners

        check()


class TestErrorShapes:
    """Error bodies in both shapes the official SDK reads."""

    names = st.text(min_size=1, max_size=30) | st.integers(min_value=100, max_value=599)
    messages = st.none() | st.text(max_size=60)

    @SPEC
    @given(
        status=st.sampled_from([400, 401, 403, 404, 409, 422]),
        name=names,
        message=messages,
        nested=st.booleans(),
    )
    def test_refusal_in_either_shape(self, status: int, name: Any, message: str | None, nested: bool) -> None:
        """A 4xx carrying a name, nested under "error" or at the top level, is a refusal with that name."""
        error = {"name": name, "message": message}
        body = {"error": error} if nested else error
        exc = refusal(status, TypeAdapter(dict[str, Any]).dump_json(body), "POST /v1/withdraws/coin")
        assert isinstance(exc, ExchangeRefused)
        assert exc.name == str(name)
