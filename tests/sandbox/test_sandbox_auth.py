"""JWT verification (upbit-api.md §2): every 401 name, algorithms, nonces, and the query_hash rules."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from yarl import URL

from engine.sandbox.auth import NonceRegistry
from tests.sandbox.conftest import BTC_BODY, Client, sign


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def _get_with(client: Client, token: str | None, query: str = "") -> Any:
    headers = {} if token is None else {"Authorization": token}
    url = URL(client.base + "/v1/withdraws" + (f"?{query}" if query else ""), encoded=True)
    return await client.send("GET", url, headers=headers)


class TestToken:
    @pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer "])
    async def test_no_token(self, client: Client, header: str | None) -> None:
        """No Bearer token: 401 no_authorization_token, with Remaining-Req."""
        reply = await _get_with(client, header)
        assert (reply.status, reply.error) == (401, "no_authorization_token")
        assert reply.headers["Remaining-Req"].startswith("group=default; min=1800; sec=")

    @pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
    async def test_hmac_algorithms_accepted(self, client: Client, alg: str) -> None:
        """HS256, HS384 and HS512 all verify."""
        token = sign(client.access_key, client.secret, None, alg=alg)
        assert (await _get_with(client, f"Bearer {token}")).status == 200

    async def test_unsigned_and_foreign_algorithms_refused(self, client: Client) -> None:
        """alg none, or an algorithm that is not HMAC: 401 jwt_verification."""
        claims = {"access_key": client.access_key, "nonce": str(uuid.uuid4())}
        unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
        assert (await _get_with(client, f"Bearer {unsigned}")).error == "jwt_verification"
        rs = f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64(claims)}.c2ln"
        assert (await _get_with(client, f"Bearer {rs}")).error == "jwt_verification"

    @pytest.mark.parametrize("token", ["garbage", "a.b", "a.b.c", "e30.e30.e30"])
    async def test_undecodable(self, client: Client, token: str) -> None:
        """A token that cannot be decoded: 401 jwt_verification."""
        reply = await _get_with(client, f"Bearer {token}")
        assert (reply.status, reply.error) == (401, "jwt_verification")

    async def test_unknown_access_key(self, client: Client) -> None:
        """An access key the sandbox does not know: 401 invalid_access_key."""
        token = sign("no-such-key", client.secret, None)
        reply = await _get_with(client, f"Bearer {token}")
        assert (reply.status, reply.error) == (401, "invalid_access_key")

    async def test_wrong_secret(self, client: Client) -> None:
        """Signed with another secret: 401 jwt_verification."""
        token = sign(client.access_key, "x" * 64, None)
        reply = await _get_with(client, f"Bearer {token}")
        assert (reply.status, reply.error) == (401, "jwt_verification")

    async def test_missing_nonce(self, client: Client) -> None:
        """A token without nonce: 401 jwt_verification."""
        token = jwt.encode({"access_key": client.access_key}, client.secret, algorithm="HS512")
        assert (await _get_with(client, f"Bearer {token}")).error == "jwt_verification"

    async def test_nonce_reuse(self, client: Client) -> None:
        """The same nonce twice for a key: the second is 401 nonce_used."""
        nonce = str(uuid.uuid4())
        first = await _get_with(client, f"Bearer {sign(client.access_key, client.secret, None, nonce=nonce)}")
        second = await _get_with(client, f"Bearer {sign(client.access_key, client.secret, None, nonce=nonce)}")
        assert first.status == 200
        assert (second.status, second.error) == (401, "nonce_used")

    def test_nonce_memory_is_bounded(self) -> None:
        """Only the newest ``capacity`` nonces of each key are remembered."""
        nonces = NonceRegistry(capacity=3)
        for n in "abcd":
            nonces.add("k", n)
        assert ("k", "a") not in nonces and ("k", "b") in nonces and ("k", "d") in nonces
        assert ("other", "d") not in nonces


class TestQueryHash:
    async def test_hash_of_the_unencoded_query_in_order(self, client: Client) -> None:
        """GET: the hash covers unquote(raw query) exactly as sent, brackets encoded or not."""
        pairs = [("currency", "BTC"), ("uuids[]", "u1"), ("uuids[]", "u2")]
        hashed = "currency=BTC&uuids[]=u1&uuids[]=u2"
        for query in (urlencode(pairs), urlencode(pairs).replace("%5B%5D", "[]")):
            token = sign(client.access_key, client.secret, hashed)
            assert (await _get_with(client, f"Bearer {token}", query)).status == 200

    @pytest.mark.parametrize(
        ("hashed", "query"),
        [
            ("uuids[]=u1&currency=BTC", "currency=BTC&uuids[]=u1"),
            ("currency=BTC&uuids%5B%5D=u1", "currency=BTC&uuids%5B%5D=u1"),
            ("currency=ETH", "currency=BTC"),
            (None, "currency=BTC"),
            ("currency=BTC", ""),
        ],
    )
    async def test_mismatch(self, client: Client, hashed: str | None, query: str) -> None:
        """Reordered, percent-encoded, different, missing, or hash without params: invalid_query_payload."""
        token = sign(client.access_key, client.secret, hashed)
        reply = await _get_with(client, f"Bearer {token}", query)
        assert (reply.status, reply.error) == (401, "invalid_query_payload")

    async def test_hash_algorithm_must_be_sha512(self, client: Client) -> None:
        """query_hash_alg other than SHA512: invalid_query_payload."""
        digest = hashlib.sha256(b"currency=BTC").hexdigest()
        token = sign(client.access_key, client.secret, None, query_hash=digest, query_hash_alg="SHA256")
        reply = await _get_with(client, f"Bearer {token}", "currency=BTC")
        assert reply.error == "invalid_query_payload"

    async def test_delete_is_hashed_like_get(self, client: Client) -> None:
        """DELETE hashes its query string too."""
        created = (await client.withdraw()).json
        token = sign(client.access_key, client.secret, None)
        reply = await client.delete("/v1/withdraws/coin", [("uuid", created["uuid"])], token=token)
        assert reply.error == "invalid_query_payload"
        assert (await client.delete("/v1/withdraws/coin", [("uuid", created["uuid"])])).status == 200

    async def test_post_body_order_matters(self, client: Client, server: Any) -> None:
        """POST: the hash covers the body's pairs in body order; another order is refused."""
        reordered = "net_type=BTC&currency=BTC&amount=0.01&address=" + BTC_BODY["address"]
        token = sign(client.access_key, client.secret, reordered)
        reply = await client.post("/v1/withdraws/coin", BTC_BODY, token=token)
        assert (reply.status, reply.error) == (401, "invalid_query_payload")
        assert server.exchange.withdrawals() == []

    async def test_form_body_is_not_read(self, client: Client, server: Any) -> None:
        """A form-encoded POST carries no parameters for Upbit: its hash cannot match."""
        form = urlencode(BTC_BODY)
        token = sign(client.access_key, client.secret, form)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-www-form-urlencoded"}
        reply = await client.send("POST", URL(client.base + "/v1/withdraws/coin"), headers=headers, data=form)
        assert (reply.status, reply.error) == (401, "invalid_query_payload")
        assert server.exchange.withdrawals() == []
