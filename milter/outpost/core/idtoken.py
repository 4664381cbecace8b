"""The opaque ``X-Outpost-ID`` token.

It carries who sent a message (user, identity, client IP, queue id, time),
encrypted and authenticated with AES-GCM (``cryptography``) under a key
derived by HKDF-SHA256 from the operator's secret.  Without the secret the
token can be neither read nor forged; ``outpost whois`` reverses it.
Format: ``base64url( version(1) | nonce(12) | AESGCM(payload) )``.
"""

from __future__ import annotations

import base64
import os
import stat
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1
_FIELD_MAX = 128          # bytes kept of each text field (keeps tokens short)
MIN_SECRET = 16
_HEAD = bytes([VERSION])  # the token's first byte, also its associated data
_TIME = struct.Struct("!I")


class TokenError(ValueError):
    """Not a token made with this secret (forged, damaged or other key)."""


@dataclass(frozen=True)
class Origin:
    user: str
    identity: str
    client_ip: str
    queue_id: str
    time: int                   # epoch seconds


def _key(secret: bytes) -> bytes:
    if len(secret) < MIN_SECRET:
        raise ValueError(f"the secret must be at least {MIN_SECRET} bytes")
    return HKDF(algorithm=hashes.SHA256(), length=16, salt=None,
                info=b"outpost X-Outpost-ID v1").derive(secret)


class TokenCodec:
    """Seal and open tokens with one secret (build once per configuration)."""

    def __init__(self, secret: bytes) -> None:
        self._aead = AESGCM(_key(secret))

    def seal(self, origin: Origin) -> str:
        payload = _TIME.pack(origin.time & 0xFFFFFFFF) + b"\0".join([
            f.encode("utf-8", "surrogateescape")[:_FIELD_MAX].replace(b"\0", b"")
            for f in (origin.user, origin.identity, origin.client_ip, origin.queue_id)])
        nonce = os.urandom(12)
        sealed = _HEAD + nonce + self._aead.encrypt(nonce, payload, _HEAD)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, token: str) -> Origin:
        token = token.strip()
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            raise TokenError("not an Outpost token (bad encoding)") from None
        if len(raw) < 1 + 12 + 16 + 4 or raw[0] != VERSION:
            raise TokenError("not an Outpost token (bad length or version)")
        try:
            payload = self._aead.decrypt(raw[1:13], raw[13:], raw[:1])
        except InvalidTag:
            raise TokenError("token was not made with this secret, or was altered") from None
        (when,) = _TIME.unpack(payload[:4])
        parts = payload[4:].split(b"\0")
        if len(parts) != 4:
            raise TokenError("malformed token payload")
        user, identity, ip, qid = (p.decode("utf-8", "surrogateescape") for p in parts)
        return Origin(user=user, identity=identity, client_ip=ip, queue_id=qid, time=when)


def read_secret(path: str) -> bytes:
    """The secret file's bytes (surrounding whitespace stripped).

    Raises OSError when it cannot be read, ValueError when it is not a
    regular file, gives access to group or others (as DKIM keys are
    refused: ``chmod 600``), or is too short."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"secret_file {path}: not a regular file")
        if st.st_mode & 0o077:
            raise ValueError(f"secret_file {path}: mode {stat.S_IMODE(st.st_mode):04o} gives "
                             f"access to group/others; chmod 600 {path}")
        secret = fh.read(64 * 1024).strip()
    if len(secret) < MIN_SECRET:
        raise ValueError(f"{path}: the secret must hold at least {MIN_SECRET} bytes "
                         f"(create one with: outpost secret {path})")
    return secret


def new_secret() -> bytes:
    """A fresh random secret, as text for the secret file."""
    return base64.b64encode(os.urandom(32)) + b"\n"
