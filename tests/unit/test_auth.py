"""engine.upbit.auth: the hashed string, the URL query, the JSON body and the signed JWT."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable

import jwt
import pytest

from engine.upbit.auth import (
    DEMO_ACCESS_KEY,
    DEMO_SECRET_KEY,
    Algorithm,
    Credentials,
    Params,
    encode_params,
    hash_string,
    make_token,
)

ACCESS = "AKtestAccessKey0123456789abcdefghijklmnop"
SECRET = "test-secret-key-that-is-long-enough-for-hs512-0123456789abcdef0123"


@pytest.fixture(name="credentials")
def _credentials() -> Credentials:
    """A non-demo key pair with a secret long enough for HS512."""
    return Credentials(ACCESS, SECRET)


@pytest.fixture(name="decode")
def _decode() -> Callable[..., dict[str, str]]:
    """Verify and decode a token signed with SECRET."""

    def decode(token: str, algorithm: str = "HS256") -> dict[str, str]:
        return dict(jwt.decode(token, SECRET, algorithms=[algorithm]))

    return decode


def sha512(text: str) -> str:
    """Hex SHA-512 of the UTF-8 text."""
    return hashlib.sha512(text.encode("utf-8")).hexdigest()


class TestHashString:
    """hash_string: the unencoded ``k=v&...`` string, in request order."""

    @pytest.mark.parametrize(
        ("params", "expected"),
        [
            ([("currency", "BTC")], "currency=BTC"),
            ([("currency", "BTC"), ("uuids[]", ["u1", "u2"])], "currency=BTC&uuids[]=u1&uuids[]=u2"),
            ([("uuids[]", ["u1", "u2"]), ("currency", "BTC")], "uuids[]=u1&uuids[]=u2&currency=BTC"),
            ([("txids[]", ["0xab", "0xcd", "0xef"])], "txids[]=0xab&txids[]=0xcd&txids[]=0xef"),
            ([("memo", "a b")], "memo=a+b"),
            ([("memo", "한글 메모")], "memo=한글+메모"),
            ([("memo", "100%")], "memo=100%"),
            ([("memo", "%41")], "memo=%41"),
            ([("address", "a/b:c")], "address=a/b:c"),
            ([("z", "1"), ("a", "2")], "z=1&a=2"),
            ([], ""),
        ],
        ids=[
            "scalar",
            "array-after-scalar",
            "array-first",
            "txids",
            "space-becomes-plus",
            "non-ascii-kept-raw",
            "percent-sign",
            "percent-escape-not-decoded-twice",
            "reserved-characters-unencoded",
            "order-kept-not-sorted",
            "empty",
        ],
    )
    def test_hashed_string(self, params: Params, expected: str) -> None:
        """The hashed string is the unencoded query in the given order, arrays as repeated ``k[]=v``."""
        assert hash_string(params) == expected

    def test_reference_post_example(self) -> None:
        """The reference's XRP body hashes as its documented ``k=v`` string."""
        params = [
            ("currency", "XRP"),
            ("net_type", "XRP"),
            ("amount", "25"),
            ("address", "rAddr"),
            ("secondary_address", "123"),
        ]
        assert hash_string(params) == "currency=XRP&net_type=XRP&amount=25&address=rAddr&secondary_address=123"


class TestEncodeParamsQuery:
    """encode_params for GET/DELETE: the URL query keeps ``[]`` literal but percent-encodes values."""

    def test_array_params_repeat_the_key(self) -> None:
        """``uuids[]`` is sent as repeated keys with literal brackets, and hashed the same way unencoded."""
        encoded = encode_params([("currency", "BTC"), ("uuids[]", ["a", "b"])], as_body=False)
        assert encoded.query == "currency=BTC&uuids[]=a&uuids[]=b"
        assert encoded.hashed == "currency=BTC&uuids[]=a&uuids[]=b"
        assert encoded.body == b""

    def test_array_values_are_percent_encoded(self) -> None:
        """Array values are encoded in the URL while the key's brackets stay literal."""
        encoded = encode_params([("uuids[]", ["a/b", "c d", "x&y"])], as_body=False)
        assert encoded.query == "uuids[]=a%2Fb&uuids[]=c+d&uuids[]=x%26y"
        assert encoded.hashed == "uuids[]=a/b&uuids[]=c+d&uuids[]=x&y"

    def test_space_is_plus_in_both(self) -> None:
        """A space is ``+`` in the URL and stays ``+`` in the hashed string."""
        encoded = encode_params([("memo", "hello world")], as_body=False)
        assert encoded.query == "memo=hello+world"
        assert encoded.hashed == "memo=hello+world"

    def test_non_ascii_is_raw_in_hash_and_encoded_in_url(self) -> None:
        """Non-ASCII values are UTF-8 percent-encoded in the URL and kept as raw characters in the hash."""
        encoded = encode_params([("memo", "한")], as_body=False)
        assert encoded.query == "memo=%ED%95%9C"
        assert encoded.hashed == "memo=한"

    def test_brackets_in_values_are_encoded(self) -> None:
        """Only a key's trailing ``[]`` stays literal; brackets inside values are encoded."""
        encoded = encode_params([("memo", "[]=x")], as_body=False)
        assert encoded.query == "memo=%5B%5D%3Dx"
        assert encoded.hashed == "memo=[]=x"

    def test_no_params(self) -> None:
        """No parameters: empty query, empty body and nothing to hash."""
        encoded = encode_params([], as_body=False)
        assert (encoded.query, encoded.body, encoded.hashed) == ("", b"", "")


class TestEncodeParamsBody:
    """encode_params for POST: a JSON body whose key order is the hash order."""

    PARAMS: Params = (
        ("currency", "XRP"),
        ("net_type", "XRP"),
        ("amount", "25.5"),
        ("address", "rAddr"),
        ("secondary_address", "123"),
        ("transaction_type", "default"),
    )

    def test_body_key_order_equals_hash_order(self) -> None:
        """The JSON keys come in the same order as the ``k=v`` pairs of the hashed string."""
        encoded = encode_params(self.PARAMS, as_body=True)
        pairs = json.loads(encoded.body, object_pairs_hook=list)
        assert "&".join(f"{k}={v}" for k, v in pairs) == encoded.hashed
        assert [k for k, _ in pairs] == [k for k, _ in self.PARAMS]
        assert encoded.query == ""

    def test_body_values_are_strings(self) -> None:
        """Every body value is a JSON string (amounts never become numbers)."""
        body = json.loads(encode_params(self.PARAMS, as_body=True).body)
        assert all(isinstance(v, str) for v in body.values())
        assert body["amount"] == "25.5"

    def test_non_ascii_body_is_utf8(self) -> None:
        """A non-ASCII value travels as UTF-8 in the body and raw in the hash."""
        encoded = encode_params([("memo", "메모 1")], as_body=True)
        assert encoded.body == '{"memo":"메모 1"}'.encode()
        assert encoded.hashed == "memo=메모+1"

    def test_repeated_keys_refused(self) -> None:
        """A JSON body cannot carry an array parameter's repeated keys."""
        with pytest.raises(ValueError, match="repeated keys"):
            encode_params([("uuids[]", ["a", "b"])], as_body=True)


class TestMakeToken:
    """make_token: claims, query hash and signing algorithm."""

    def test_claims_with_params(self, credentials: Credentials, decode: Callable[..., dict[str, str]]) -> None:
        """A request with parameters carries access_key, a nonce, the SHA-512 query hash and its algorithm."""
        hashed = "currency=BTC&uuids[]=a&uuids[]=b"
        claims = decode(make_token(credentials, hashed))
        assert set(claims) == {"access_key", "nonce", "query_hash", "query_hash_alg"}
        assert claims["access_key"] == ACCESS
        assert claims["query_hash"] == sha512(hashed)
        assert claims["query_hash_alg"] == "SHA512"

    def test_query_hash_of_non_ascii(self, credentials: Credentials, decode: Callable[..., dict[str, str]]) -> None:
        """The query hash is computed over the UTF-8 bytes of the raw characters."""
        claims = decode(make_token(credentials, "memo=한"))
        assert claims["query_hash"] == hashlib.sha512("memo=한".encode()).hexdigest()

    @pytest.mark.parametrize("hashed", [None, ""], ids=["none", "empty"])
    def test_no_params_no_hash(
        self, credentials: Credentials, decode: Callable[..., dict[str, str]], hashed: str | None
    ) -> None:
        """A request without parameters has neither query_hash nor query_hash_alg."""
        claims = decode(make_token(credentials, hashed))
        assert set(claims) == {"access_key", "nonce"}

    def test_nonce_is_uuid4_and_unique(self, credentials: Credentials, decode: Callable[..., dict[str, str]]) -> None:
        """Each token has a fresh version-4 UUID nonce."""
        nonces = [decode(make_token(credentials, "a=1"))["nonce"] for _ in range(50)]
        assert all(uuid.UUID(n).version == 4 for n in nonces)
        assert len(set(nonces)) == len(nonces)

    def test_explicit_nonce_used(self, credentials: Credentials, decode: Callable[..., dict[str, str]]) -> None:
        """A nonce given by the caller is the one signed."""
        assert decode(make_token(credentials, None, nonce="fixed-nonce"))["nonce"] == "fixed-nonce"

    @pytest.mark.parametrize(
        ("kwargs", "alg"),
        [({}, "HS256"), ({"algorithm": Algorithm.HS512}, "HS512"), ({"algorithm": Algorithm.HS256}, "HS256")],
        ids=["default", "hs512", "hs256"],
    )
    def test_header_algorithm(
        self,
        credentials: Credentials,
        decode: Callable[..., dict[str, str]],
        kwargs: dict[str, Algorithm],
        alg: str,
    ) -> None:
        """The header names the algorithm actually used (HS256 unless told otherwise, as Upbit's official SDK
        signs) and the signature verifies."""
        token = make_token(credentials, "a=1", **kwargs)
        assert jwt.get_unverified_header(token) == {"alg": alg, "typ": "JWT"}
        assert decode(token, alg)["access_key"] == ACCESS

    def test_wrong_secret_does_not_verify(self, credentials: Credentials) -> None:
        """The token is signed with the secret's raw bytes: another secret fails verification."""
        token = make_token(credentials, "a=1")
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(token, SECRET[::-1], algorithms=["HS256"])

    def test_real_length_secret_hs256_no_warning(self) -> None:
        """A real Upbit secret is 40 characters: HS256 (the default) signs it without any warning (pytest
        turns a warning into an error here) and the token verifies with that secret."""
        secret = "R" * 20 + "s" * 20
        assert len(secret) == 40
        token = make_token(Credentials(ACCESS, secret), "currency=BTC")
        assert jwt.get_unverified_header(token)["alg"] == "HS256"
        claims = jwt.decode(token, secret, algorithms=["HS256"])
        assert claims["query_hash"] == sha512("currency=BTC")

    def test_real_length_secret_hs512_warns(self) -> None:
        """HS512 with a 40-character secret makes PyJWT warn (key shorter than 64 bytes): why HS256 is the
        default; the warning is routed to the log by engine.pywarnings (tests/spec/test_real_secrets.py)."""
        secret = "R" * 40
        with pytest.warns(jwt.InsecureKeyLengthWarning):
            token = make_token(Credentials(ACCESS, secret), "currency=BTC", algorithm=Algorithm.HS512)
        assert jwt.get_unverified_header(token)["alg"] == "HS512"


class TestCredentials:
    """Credentials: never shows the secret or the whole access key."""

    @pytest.mark.parametrize("render", [repr, str, "{}".format], ids=["repr", "str", "format"])
    def test_repr_hides_secrets(self, credentials: Credentials, render: Callable[[object], str]) -> None:
        """Any rendering shows neither the secret nor the full access key."""
        text = render(credentials)
        assert SECRET not in text
        assert ACCESS not in text
        assert ACCESS[:4] in text

    @pytest.mark.parametrize("access_key", ["Q", "QZ9W"])
    def test_short_access_key_not_fully_shown(self, access_key: str) -> None:
        """Even a very short access key is not shown in full by the repr."""
        assert access_key not in repr(Credentials(access_key, SECRET))

    @pytest.mark.parametrize(("access", "secret"), [("", SECRET), (ACCESS, "")], ids=["no-access", "no-secret"])
    def test_empty_parts_refused(self, access: str, secret: str) -> None:
        """Both the access key and the secret must be non-empty."""
        with pytest.raises(ValueError, match="non-empty"):
            Credentials(access, secret)

    @pytest.mark.parametrize(
        ("access", "secret", "demo"),
        [
            (DEMO_ACCESS_KEY, DEMO_SECRET_KEY, True),
            (DEMO_ACCESS_KEY, SECRET, True),
            (ACCESS, DEMO_SECRET_KEY, True),
            (ACCESS, SECRET, False),
        ],
        ids=["demo-pair", "demo-access", "demo-secret", "real"],
    )
    def test_is_demo(self, access: str, secret: str, demo: bool) -> None:
        """Either half of the published sandbox pair marks credentials as demo."""
        assert Credentials(access, secret).is_demo is demo

    def test_demo_factory(self) -> None:
        """Credentials.demo() is the sandbox pair, with a secret long enough for HS512."""
        demo = Credentials.demo()
        assert demo.is_demo
        assert len(demo.secret_key.encode()) >= 64
