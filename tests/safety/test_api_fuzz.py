"""API fuzzing from the OpenAPI document (``engine/openapi.json``) with schemathesis.

Every operation gets schema-driven examples, valid and invalid (positive and negative generation),
against the real HTTP API (aiohttp, 127.0.0.1, the bearer token) over an engine whose runner works
against the sandbox. The answer must never be a 5xx, the service must never crash, and every answer must
match the document (status codes, content types, response schemas and headers, rejection of invalid
data, authentication honoured).

One of schemathesis' checks is excluded from the sweep: ``positive_data_acceptance`` (a schema-valid
request must be accepted), because an unconfigured ``account`` is schema-valid in any static document yet
refused by the running service. What that check would catch otherwise, the document being looser than
the validation, is tested below case by case.
The 405 ``Allow`` header, empty list parameters and the earlier document gaps, found by this module, are
fixed (69ea5a8); their tests stay as regression tests.

Needs schemathesis (``pip install schemathesis``; the module skips without it). Examples are bounded and
deterministic (``derandomize=True``).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workflows.testing.chaos import BTC_ADDRESS, TOKEN
from workflows.testing.live import LiveStack

schemathesis = pytest.importorskip("schemathesis")
jsonschema_rs = pytest.importorskip("jsonschema_rs")
from schemathesis.checks import positive_data_acceptance  # noqa: E402

OPENAPI = Path(__file__).resolve().parents[2] / "engine" / "openapi.json"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: GET /v1/events is an endless Server-Sent Events stream: schemathesis reads a whole body, so it would hang
#: there. Its 422s, 401 and stream format are tested in tests/api/test_events_stream.py instead.
schema = schemathesis.openapi.from_path(OPENAPI).exclude(path="/v1/events")


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
    response = case.call_and_validate(base_url=live.api_url, headers=AUTH, excluded_checks=[positive_data_acceptance])
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


@pytest.mark.parametrize(
    "change",
    [
        {"secondary_address": ""},
        {"exchange_name": ""},
        {"address": "bc1q sandbox"},
        {"address": "bc1q\u0430sandbox"},
        {"secondary_address": "12\n34"},
        {"amount": "0"},
        {"amount": "0.0000000000000000001"},
        {"amount": "1000000000000000000"},
        {"exchange_name": "Bin\u202eance"},
        pytest.param({"exchange_name": "\U000f1a94"}, id="private-use"),
        pytest.param({"exchange_name": "\U000d69aa"}, id="unassigned"),
    ],
)
def test_document_refuses_what_the_api_refuses(live: LiveStack, change: dict[str, str]) -> None:
    """A body the API refuses with 422 is also invalid under the published WithdrawalRequest schema."""
    document = json.loads(OPENAPI.read_text())
    validator = jsonschema_rs.validator_for(document["components"]["schemas"]["WithdrawalRequest"])
    body = {"currency": "BTC", "net_type": "BTC", "amount": "0.01", "address": BTC_ADDRESS, **change}
    status, _ = live.call("POST", "/v1/withdrawals", body)
    assert status == 422, (body, status)
    assert not validator.is_valid(body), f"schema-valid but refused: {change}"


@pytest.mark.parametrize("cursor", ["x", "%F0%B1%AA%94", "wd_XYZ"])
def test_document_describes_the_list_cursor(live: LiveStack, cursor: str) -> None:
    """A cursor the API refuses is also invalid under the document's parameter schema."""
    status, _ = live.call("GET", f"/v1/withdrawals?cursor={cursor}")
    assert status == 422
    document = json.loads(OPENAPI.read_text())
    parameter = next(p for p in document["paths"]["/v1/withdrawals"]["get"]["parameters"] if p["name"] == "cursor")
    value = urllib.parse.unquote(cursor)
    assert not jsonschema_rs.validator_for(parameter["schema"]).is_valid(value), parameter


@pytest.mark.parametrize("query", ["state=", "limit=", "state=&limit="])
def test_empty_query_parameters_refused(live: LiveStack, query: str) -> None:
    """A parameter given empty is invalid under the document: 422, like any other invalid value."""
    status, answer = live.call("GET", f"/v1/withdrawals?{query}")
    assert status == 422, (status, answer)


def _raw_status(live: LiveStack, head: bytes, body: bytes = b"") -> int:
    """Send a request byte for byte (aiohttp's client refuses non-text header values); its status code."""
    host, _, port = urllib.parse.urlsplit(live.api_url).netloc.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


#: Header value bytes: anything but the line breaks and NUL that end or break the head itself.
HEADER_BYTES = st.binary(min_size=0, max_size=64).filter(lambda v: not set(v) & {0, 10, 13})
RAW = settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))


@given(value=HEADER_BYTES)
@RAW
def test_any_authorization_bytes_are_401_never_500(live: LiveStack, value: bytes) -> None:
    """Whatever bytes an unauthenticated client puts in Authorization: 401 (400 when the head itself is
    refused), never a 5xx."""
    head = b"GET /v1/withdrawals HTTP/1.1\r\nHost: t\r\nAuthorization: " + value + b"\r\n"
    assert _raw_status(live, head) in (400, 401)


@given(value=HEADER_BYTES)
@RAW
def test_any_idempotency_key_bytes_never_500(live: LiveStack, value: bytes) -> None:
    """Any Idempotency-Key bytes: created, replayed or refused (422 for empty or non-UTF-8), never a 5xx."""
    body = json.dumps({"currency": "BTC", "net_type": "BTC", "amount": "0.0001", "address": "bc1qnot0registered"})
    head = (
        b"POST /v1/withdrawals HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nAuthorization: Bearer "
        + TOKEN.encode() + b"\r\nIdempotency-Key: " + value + b"\r\n"
    )  # fmt: skip
    status = _raw_status(live, head, body.encode())
    assert status in (200, 201, 400, 409, 422), status
    stripped = value.strip(b" \t")
    valid = len(stripped) > 0 and len(stripped.decode("utf-8", "replace")) <= 200
    try:
        stripped.decode("utf-8")
    except UnicodeDecodeError:
        valid = False
    if not valid:
        assert status in (400, 422), (value, status)
