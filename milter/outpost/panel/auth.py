"""Panel passwords (stdlib ``hashlib.scrypt``, no extra dependency) and the
login rate limit.

A hash reads ``scrypt$N$r$p$SALT$KEY`` (SALT and KEY base64): the cost is
stored with it, so raising :data:`SCRYPT_N` later leaves old hashes valid."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import urllib.parse
from typing import Optional

from ..store.base import Bucket, Store

#: scrypt cost: 2**14 with r=8 takes 16 MB and about 0.1 s a check on one
#: core (the cost of one login; logins are rate-limited).
SCRYPT_N = 2 ** 14
SCRYPT_R = 8
SCRYPT_P = 1
_KEY_LEN = 32
_MAXMEM = 128 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, n: int = SCRYPT_N) -> str:
    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P,
                         maxmem=_MAXMEM, dklen=_KEY_LEN)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes]:
    kind, n, r, p, salt, key = stored.split("$")
    if kind != "scrypt":
        raise ValueError("not an scrypt hash")
    n_, r_, p_ = int(n), int(r), int(p)
    if not (2 <= n_ <= 2 ** 20 and n_ & (n_ - 1) == 0 and 1 <= r_ <= 32 and 1 <= p_ <= 16):
        raise ValueError("scrypt parameters out of range")
    return n_, r_, p_, base64.b64decode(salt, validate=True), base64.b64decode(key, validate=True)


def check_hash_format(stored: object) -> Optional[str]:
    """None when ``stored`` is a hash :func:`verify_password` can check, else why not."""
    if not isinstance(stored, str):
        return "must be a string"
    try:
        _n, _r, _p, salt, key = _parse(stored)
    except ValueError as exc:
        return f"is not scrypt$N$r$p$SALT$KEY ({exc})"
    if len(salt) < 8 or len(key) < 16:
        return "has a too short salt or key"
    return None


def verify_password(password: str, stored: str) -> bool:
    try:
        n, r, p, salt, key = _parse(stored)
    except ValueError:
        return False
    got = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                         maxmem=_MAXMEM, dklen=len(key))
    return hmac.compare_digest(got, key)


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hash_password(_b64(os.urandom(18)))


def verify_login(password: str, stored: Optional[str]) -> bool:
    """Check a login; for an unknown account (``stored`` None) a hash of a
    random password is checked all the same, so that a login takes as long
    whether the name exists or not."""
    if stored is None:
        verify_password(password, _dummy_hash())
        return False
    return verify_password(password, stored)


class LoginLimiter:
    """Login attempts per key (client address, account name), counted in the
    shared store with its atomic check-and-count (:meth:`Store.hit
    <outpost.store.base.Store.hit>`, the rate limits' GCRA buckets).

    An attempt is counted *before* its password is checked, in one step with
    the check, so concurrent attempts (threads of one panel, or several
    panels on one store) can never all pass a check that none has counted
    yet; a successful login forgets the counts of its keys.  ``attempts``
    may be tried at once, then one more every ``window / attempts``
    seconds."""

    #: Prefix of the store keys (the rest is quoted: no ``:`` or ``/`` in it,
    #: so resetting one key never takes another, see ``Store.reset``).
    PREFIX = "panel-login:"

    def __init__(self, store: Store, attempts: int, window: float) -> None:
        self.store = store
        self.attempts = attempts
        self.window = window

    def _key(self, key: str) -> str:
        return self.PREFIX + urllib.parse.quote(key, safe="")

    def attempt(self, *keys: str) -> float:
        """Count one attempt for every key and return 0, or count nothing
        and return the seconds until one may be tried (StoreError when the
        store cannot answer: no login then)."""
        result = self.store.hit([Bucket(self._key(k), self.attempts, self.window) for k in keys])
        return 0.0 if result.allowed else max(result.retry_after, 0.001)

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self.store.reset(self._key(key))
