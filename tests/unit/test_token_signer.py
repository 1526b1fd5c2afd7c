"""engine.upbit.auth.TokenSigner: make_token's tokens, byte for byte, without PyJWT's per-call key checks."""

from __future__ import annotations

import warnings

import jwt
import pytest

from engine.upbit.auth import Algorithm, Credentials, TokenSigner, make_token

ACCESS = "AKtestAccessKey0123456789abcdefghijklmnop"
SECRET = "R" * 40  # a real Upbit secret's length


@pytest.mark.parametrize("hashed", [None, "", "currency=BTC", "uuids[]=a&uuids[]=b&limit=100"])
def test_every_token_is_make_tokens_byte_for_byte(hashed: str | None) -> None:
    """The first token is PyJWT's own; the ones after it are signed by the signer: all identical."""
    credentials = Credentials(ACCESS, SECRET)
    signer = TokenSigner(credentials)
    tokens = [signer.sign(hashed, nonce=f"nonce-{i}") for i in range(3)]
    assert tokens == [make_token(credentials, hashed, nonce=f"nonce-{i}") for i in range(3)]
    claims = jwt.decode(tokens[-1], SECRET, algorithms=["HS256"])
    assert claims["access_key"] == ACCESS and claims["nonce"] == "nonce-2"
    assert ("query_hash" in claims) is bool(hashed)


def test_fresh_nonces_without_one_given() -> None:
    signer = TokenSigner(Credentials(ACCESS, SECRET))
    nonces = {jwt.decode(signer.sign("a=1"), SECRET, algorithms=["HS256"])["nonce"] for _ in range(5)}
    assert len(nonces) == 5


def test_hs512_stays_with_pyjwt_and_its_warning() -> None:
    """A 40-character secret is short for HS512: PyJWT warns on every signature, and still does."""
    signer = TokenSigner(Credentials(ACCESS, SECRET), Algorithm.HS512)
    for _ in range(2):
        with pytest.warns(jwt.InsecureKeyLengthWarning):
            token = signer.sign("currency=BTC", nonce="n")
        with pytest.warns(jwt.InsecureKeyLengthWarning):
            same = make_token(Credentials(ACCESS, SECRET), "currency=BTC", algorithm=Algorithm.HS512, nonce="n")
        assert token == same


def test_a_short_hs256_key_stays_with_pyjwt() -> None:
    """Under 32 bytes PyJWT warns for HS256 too: the signer leaves every such token to it."""
    short = Credentials(ACCESS, "s" * 20)
    signer = TokenSigner(short)
    for i in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            token = signer.sign(None, nonce=str(i))
            same = make_token(short, None, nonce=str(i))
        assert token == same
        assert any(issubclass(w.category, jwt.InsecureKeyLengthWarning) for w in caught)


def test_a_key_pyjwt_refuses_fails_on_the_first_token_as_before() -> None:
    pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE" + "A" * 40 + "\n-----END PUBLIC KEY-----"
    signer = TokenSigner(Credentials(ACCESS, pem))
    for _ in range(2):
        with pytest.raises(jwt.InvalidKeyError):
            signer.sign("a=1")


def test_repr_shows_no_secret() -> None:
    text = repr(TokenSigner(Credentials(ACCESS, SECRET)))
    assert SECRET not in text and ACCESS not in text and "HS256" in text
