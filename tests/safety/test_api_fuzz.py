"""API fuzzing from the OpenAPI document (``engine/openapi.json``) with schemathesis.

Every operation gets schema-driven examples, valid and invalid (positive and negative generation),
against the real HTTP API (aiohttp, 127.0.0.1, the bearer token) over an engine whose runner works
against the sandbox. The answer must never be a 5xx, the service must never crash, and every answer must
match the document (status codes, content types, response schemas and headers, rejection of invalid
data, authentication honoured).

Some of schemathesis' checks are excluded from the sweep because they fail today; each has a focused
test below, marked ``xfail(strict=True)`` with the bug it documents:

- ``unsupported_method``: a 405 answer lacks the ``Allow`` header (RFC 9110 requires it);
- ``negative_data_rejection`` on ``GET /v1/withdrawals`` only: an empty ``state=`` or ``limit=`` is
  answered 200, though the document makes it invalid;
- ``positive_data_acceptance``: the document's ``WithdrawalRequest`` is looser than the validation, so
  schema-valid bodies are refused with 422 (and an unconfigured ``account`` can never be in a static
  document, so this check cannot pass for that field whatever the document says).

Needs schemathesis (``pip install schemathesis``; the module skips without it). Examples are bounded and
deterministic (``derandomize=True``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.safety.chaos_harness import BTC_ADDRESS, TOKEN, LiveStack

schemathesis = pytest.importorskip("schemathesis")
jsonschema_rs = pytest.importorskip("jsonschema_rs")
from schemathesis.checks import (  # noqa: E402
    negative_data_rejection,
    positive_data_acceptance,
    unsupported_method,
)

OPENAPI = Path(__file__).resolve().parents[2] / "engine" / "openapi.json"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
schema = schemathesis.openapi.from_path(OPENAPI)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """The sandbox, an engine with its runner and the HTTP API, on loopback, for this module."""
    with LiveStack(tmp_path_factory.mktemp("fuzz")) as stack:
        yield stack


@schema.parametrize()
@settings(
    max_examples=40, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)  # fmt: skip
def test_no_server_error_and_answers_match_the_document(case: Any, live: LiveStack) -> None:
    """Schema-driven requests (valid and invalid): never a 5xx; every answer conforms to the document."""
    excluded = [unsupported_method, positive_data_acceptance]
    if (case.operation.method.upper(), case.operation.path) == ("GET", "/v1/withdrawals"):
        excluded.append(negative_data_rejection)  # empty state=/limit= accepted: see the xfail below
    response = case.call_and_validate(base_url=live.api_url, headers=AUTH, excluded_checks=excluded)
    assert response.status_code < 500, response.text


def test_service_still_healthy_after_the_sweep(live: LiveStack) -> None:
    """The service is still up and its store answers after everything the fuzzer sent."""
    assert live.call("GET", "/healthz") == (200, {"status": "ok"})
    status, page = live.call("GET", "/v1/withdrawals?limit=5")
    assert status == 200 and isinstance(page["withdrawals"], list)


@pytest.mark.parametrize(
    ("method", "path"), [("TRACE", "/healthz"), ("PUT", "/v1/withdrawals"), ("DELETE", "/metrics")]
)
def test_405_names_the_allowed_methods(live: LiveStack, method: str, path: str) -> None:
    """A method a route does not serve gets 405 with ``Allow`` listing those it does."""
    request = urllib.request.Request(f"{live.api_url}{path}", method=method, headers=AUTH)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    caught.value.close()  # the error holds the response open
    assert caught.value.code == 405
    assert caught.value.headers.get("Allow"), dict(caught.value.headers)


#: Bodies that the document's WithdrawalRequest schema accepts but the API refuses with 422.
SCHEMA_TOO_LOOSE = [
    {"secondary_address": ""},
    {"exchange_name": ""},
    {"address": "bc1q sandbox"},
    {"address": "bc1q\u0430sandbox"},
    {"secondary_address": "12\n34"},
    {"amount": "0"},
    {"amount": "0.0000000000000000001"},
    {"amount": "1000000000000000000"},
]


def test_document_refuses_what_the_api_refuses(live: LiveStack) -> None:
    """Every body the API refuses with 422 is also invalid under the published schema."""
    document = json.loads(OPENAPI.read_text())
    body_schema = document["components"]["schemas"]["WithdrawalRequest"]
    validator = jsonschema_rs.validator_for(body_schema)
    base = {"currency": "BTC", "net_type": "BTC", "amount": "0.01", "address": BTC_ADDRESS}
    loose = []
    for change in SCHEMA_TOO_LOOSE:
        body = {**base, **change}
        status, _ = live.call("POST", "/v1/withdrawals", body)
        assert status == 422, (body, status)
        if validator.is_valid(body):
            loose.append(change)
    assert loose == [], f"schema-valid but refused: {loose}"


@pytest.mark.parametrize("query", ["state=", "limit=", "state=&limit="])
def test_empty_query_parameters_refused(live: LiveStack, query: str) -> None:
    """A parameter given empty is invalid under the document: 422, like any other invalid value."""
    status, answer = live.call("GET", f"/v1/withdrawals?{query}")
    assert status == 422, (status, answer)
