"""The X-Outpost-ID token: what opens and what must not.

A token is ``base64url(version(1) | nonce(12) | ciphertext | tag(16))``.  A
single flipped bit anywhere -- in the version, the nonce, the ciphertext or
the AES-GCM tag -- must make ``open`` raise :class:`TokenError`.  The
ciphertext and tag cases are the ones that catch an ``open`` that decrypts
without checking the tag: such an ``open`` still fails on another key or
nonce (the plaintext is garbage), but returns a changed or unchanged origin
for a changed ciphertext or tag."""

from __future__ import annotations

import base64
import struct
from unittest import mock

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from outpost.core.idtoken import Origin, TokenCodec, TokenError, _key

SECRET = b"0123456789abcdef0123456789abcdef"
ORIGIN = Origin(user="webfarm", identity="alice@example.com", client_ip="192.0.2.5",
                queue_id="4XyZ1", time=1_700_000_000)
NONCE, TAG = 12, 16


def raw_of(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def token_of(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def flipped(token: str, index: int, bit: int = 0x01) -> str:
    raw = bytearray(raw_of(token))
    raw[index] ^= bit
    return token_of(bytes(raw))


@pytest.fixture(scope="module")
def codec() -> TokenCodec:
    return TokenCodec(SECRET)


@pytest.fixture(scope="module")
def token(codec) -> str:
    return codec.seal(ORIGIN)


def regions(token: str) -> dict[str, range]:
    n = len(raw_of(token))
    return {"version": range(0, 1), "nonce": range(1, 1 + NONCE),
            "ciphertext": range(1 + NONCE, n - TAG), "tag": range(n - TAG, n)}


def test_round_trip(codec, token):
    assert codec.open(token) == ORIGIN
    assert codec.open(f"  {token}\n") == ORIGIN          # as pasted from a header


@pytest.mark.parametrize("region", ["version", "nonce", "ciphertext", "tag"])
def test_every_flipped_byte_is_refused(codec, token, region):
    positions = regions(token)[region]
    assert len(positions) > 0
    for i in positions:
        for bit in (0x01, 0x80):
            with pytest.raises(TokenError):
                codec.open(flipped(token, i, bit))


def test_altered_token_says_so(codec, token):
    last = len(raw_of(token)) - 1
    with pytest.raises(TokenError, match="not made with this secret, or was altered"):
        codec.open(flipped(token, last))                   # in the tag
    with pytest.raises(TokenError, match="bad length or version"):
        codec.open(flipped(token, 0))


def test_truncated_and_extended_tokens_are_refused(codec, token):
    raw = raw_of(token)
    for cut in (raw[:-1], raw[:1 + NONCE + TAG], raw + b"\0"):
        with pytest.raises(TokenError):
            codec.open(token_of(cut))
    with pytest.raises(TokenError, match="bad encoding"):
        codec.open(token[:-1] + "!")


def test_other_secret_is_refused(token):
    with pytest.raises(TokenError, match="not made with this secret"):
        TokenCodec(SECRET[::-1]).open(token)


_field_text = st.text(st.sampled_from("ab\x00é\udcff@."), max_size=140)


@settings(max_examples=200, deadline=None)
@given(user=_field_text, identity=_field_text, ip=_field_text, qid=_field_text,
       when=st.integers(0, 2**40), nonce=st.binary(min_size=12, max_size=12))
def test_seal_is_the_documented_layout(codec, user, identity, ip, qid, when, nonce):
    """``seal`` makes, byte for byte, ``base64url(version | nonce |
    AESGCM(time(4, big endian) | fields cut to 128 bytes, NULs dropped,
    joined by NUL))`` (as it did before its constants were built once)."""
    fields = [f.encode("utf-8", "surrogateescape")[:128].replace(b"\0", b"")
              for f in (user, identity, ip, qid)]
    payload = struct.pack("!I", when & 0xFFFFFFFF) + b"\0".join(fields)
    head = bytes([1])
    expected = token_of(head + nonce + AESGCM(_key(SECRET)).encrypt(nonce, payload, head))
    with mock.patch("outpost.core.idtoken.os.urandom", return_value=nonce):
        token = codec.seal(Origin(user=user, identity=identity, client_ip=ip, queue_id=qid, time=when))
    assert token == expected
