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

from typing import TYPE_CHECKING, Any, Literal, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:                        # the redis module imports the redis library
    from .redis import SentinelTarget

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


class StoreURL(str):
    """A valid store URL, parsed once: the configuration's ``store`` holds
    one and :func:`~outpost.store.open_store` opens it without parsing it
    again.  It is the URL text itself (a ``str``, with any password:
    :meth:`redacted` before logging), with what parsing found: ``scheme``,
    ``path`` (sqlite: the database file, absolute) and ``sentinel``
    (``redis+sentinel``: the :class:`~outpost.store.redis.SentinelTarget`).
    Immutable like the string."""

    scheme: StoreScheme
    path: Optional[str]
    sentinel: Optional["SentinelTarget"]

    def __new__(cls, scheme: StoreScheme, text: str, path: Optional[str] = None,
                sentinel: Optional["SentinelTarget"] = None) -> "StoreURL":
        self = super().__new__(cls, text)
        for name, value in (("scheme", scheme), ("path", path), ("sentinel", sentinel)):
            object.__setattr__(self, name, value)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"StoreURL is immutable (cannot set {name})")

    def __reduce__(self) -> Any:
        return (StoreURL, (self.scheme, str(self), self.path, self.sentinel))

    @property
    def text(self) -> str:
        """The URL as given (a plain ``str``)."""
        return str.__str__(self)

    def redacted(self) -> str:
        """The URL as it may be shown (:func:`redact_url`)."""
        try:
            return redact_url(self.text)
        except ValueError:
            return "(unparsable store URL)"


def redact_url(url: str) -> str:
    """The URL with any password (also a ``sentinel_password`` in the
    query) replaced by ``***`` (for logs and errors)."""
    parts = original = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "sentinel_password" for k, _ in query):
        parts = parts._replace(query=urlencode(
            [(k, "***" if k == "sentinel_password" else v) for k, v in query], safe="*/"))
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        parts = parts._replace(netloc=f"{user}:***@{netloc}")
    return url if parts == original else urlunsplit(parts)


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
            target = parse_sentinel_url(url)
        except ValueError as exc:       # "store URL <redacted>: reason", never the password
            raise StoreURLError(_redacted(url), str(exc).partition(": ")[2] or str(exc)) from None
        return StoreURL("redis+sentinel" if scheme == "redis+sentinel" else "rediss+sentinel", url,
                        sentinel=target)
    raise StoreURLError(_redacted(url), f"unknown scheme {scheme!r}; expected {EXPECTED}")


def _check_userinfo(url: str) -> None:
    """A user name or password holding an unescaped ``/``, ``?`` or ``#``
    would be read by the store (which splits at the last ``@``) but not
    seen by :func:`redact_url` (which follows RFC
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
    try:
        return repr(redact_url(url))
    except ValueError:
        return "(unparsable redis URL)"
