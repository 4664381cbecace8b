"""The store URL: parsed and validated here only.

:func:`parse_store_url` is the one parser of the ``store:`` setting.  The
configuration loader calls it (so ``outpost check-config`` refuses exactly
the URLs ``outpost run`` refuses) and :func:`outpost.store.open_store` opens
what it returns.  One branch per scheme:

* ``memory:`` — this process only;
* ``sqlite:///abs/path/outpost.db`` — one host, many processes;
* ``redis://[:password@]host[:port][/db]`` or ``rediss://…`` (TLS);
* ``redis+sentinel://[:password@]host:port,host:port/SERVICE[/db]`` or
  ``rediss+sentinel://…``: the master Redis Sentinel names
  (:func:`outpost.store.redis.parse_sentinel_url`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional
from urllib.parse import urlsplit

StoreScheme = Literal["memory", "sqlite", "redis", "rediss", "redis+sentinel", "rediss+sentinel"]

#: What a store URL may look like (the tail of every error message).
EXPECTED = ("memory:, sqlite:///abs/path, redis://host:port/db (rediss:// for TLS) "
            "or redis+sentinel://host:port,host:port/service/db")


class StoreURLError(ValueError):
    """A store URL that cannot be opened; ``shown`` is the URL as it may be
    shown (password redacted), ``reason`` what is wrong with it."""

    def __init__(self, shown: str, reason: str) -> None:
        super().__init__(f"store URL {shown}: {reason}")
        self.shown = shown
        self.reason = reason


@dataclass(frozen=True)
class StoreURL:
    """A valid store URL.  ``text`` is the URL as given (with any password:
    :func:`~outpost.store.redis.redact_url` it before logging)."""

    scheme: StoreScheme
    text: str
    #: sqlite: the database file (absolute).
    path: Optional[str] = None

    def __str__(self) -> str:
        return self.text


def parse_store_url(url: str) -> StoreURL:
    """The :class:`StoreURL` of ``url``; :class:`StoreURLError` (a ValueError
    naming the URL and what was expected) for anything :func:`~outpost.store.open_store` cannot open."""
    if not isinstance(url, str):
        raise StoreURLError(repr(url), f"expected a string ({EXPECTED})")
    _check_userinfo(url)
    if url == "memory":                  # `store: memory:` is not valid YAML unquoted
        url = "memory:"
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "memory":
        if url.rstrip("/") != "memory:":
            raise StoreURLError(repr(url), "use exactly 'memory:'")
        return StoreURL("memory", "memory:")
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise StoreURLError(repr(url), "use sqlite:///absolute/path/file.db")
        return StoreURL("sqlite", url, path=url[len("sqlite://"):])
    if scheme in ("redis", "rediss"):
        _check_redis(url)
        return StoreURL("redis" if scheme == "redis" else "rediss", url)
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        from .redis import parse_sentinel_url
        try:
            parse_sentinel_url(url)
        except ValueError as exc:       # "store URL <redacted>: reason", never the password
            raise StoreURLError(_redacted(url), str(exc).partition(": ")[2] or str(exc)) from None
        return StoreURL("redis+sentinel" if scheme == "redis+sentinel" else "rediss+sentinel", url)
    raise StoreURLError(_redacted(url), f"unknown scheme {scheme!r}; expected {EXPECTED}")


def _check_userinfo(url: str) -> None:
    """A user name or password holding an unescaped ``/``, ``?`` or ``#``
    would be read by the store (which splits at the last ``@``) but not
    seen by :func:`~outpost.store.redis.redact_url` (which follows RFC
    3986), so it could be shown in errors and logs: refuse such a URL, and
    show none of it."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() in ("sqlite", "memory") or "@" not in rest:
        return
    if any(c in rest.rsplit("@", 1)[0] for c in "/?#"):
        raise StoreURLError(f"{scheme}://… (not shown: it may hold a password)",
                            "percent-encode '/', '?', '#' and '@' in a user name, a password "
                            "or a query value (e.g. %2F, %3F, %23, %40)")


def _check_redis(url: str) -> None:
    """``redis://[[user]:password@]host[:port][/db]``: a host, a port in
    range, a numeric database."""
    try:
        parts = urlsplit(url)
        port = parts.port                # ValueError when not a number in range
    except ValueError as exc:
        raise StoreURLError(_redacted(url), str(exc)) from None
    if not parts.hostname:
        raise StoreURLError(_redacted(url), "no host (redis://host:port/db)")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise StoreURLError(_redacted(url), f"the database '{db}' is not a number "
                                            f"(redis://host:port/0)")
    del port


def _redacted(url: str) -> str:
    from .redis import redact_url
    try:
        return repr(redact_url(url))
    except ValueError:
        return "(unparsable redis URL)"
