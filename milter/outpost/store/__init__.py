"""Stores for cross-message state; see :mod:`outpost.store.base`.

:func:`open_store` turns a store URL into a store:

* ``memory:`` — this process only (:class:`~outpost.store.memory.MemoryStore`);
* ``sqlite:///abs/path/outpost.db`` — one host, many processes
  (:class:`~outpost.store.sqlite.SqliteStore`; the parent folder is created);
* ``redis://[:password@]host:port/db`` or ``rediss://…`` (TLS) — a cluster
  (:class:`~outpost.store.redis.RedisStore`);
* ``redis+sentinel://[:password@]host1:26379,host2:26379/mymaster/0`` (or
  ``rediss+sentinel://…``) — the same, on the master that Redis Sentinels
  name (:func:`~outpost.store.redis.parse_sentinel_url`).

A sqlite or Redis store comes wrapped in a
:class:`~outpost.store.resilient.ResilientStore`: with
``settings.on_store_error == "local"`` it serves from process memory while
the store fails; in every mode it frees each connection slot in the store
that holds it, retrying a release that failed.
"""

from __future__ import annotations

from typing import Optional

from .base import (Bucket, BucketState, FingerprintStats, HitResult, Lock, Store,
                   StoreError)
from .settings import ON_STORE_ERROR_MODES, StoreSettings

__all__ = ["Bucket", "BucketState", "FingerprintStats", "HitResult", "Lock", "Store",
           "StoreError", "StoreSettings", "ON_STORE_ERROR_MODES", "open_store"]


def open_store(url: str, settings: Optional[StoreSettings] = None) -> Store:
    """Open the store named by ``url`` (see the module docstring).

    Raises ValueError for an unknown scheme or a malformed URL, and
    :class:`StoreError` when a sqlite database cannot be created.  A Redis
    store connects lazily: an unreachable server shows up as StoreError on
    the first operation.
    """
    settings = settings or StoreSettings()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    store: Store
    if scheme == "memory":
        if url.rstrip("/") != "memory:":
            raise ValueError(f"store URL {url!r}: use exactly 'memory:'")
        from .memory import MemoryStore
        return MemoryStore(settings)
    if scheme == "sqlite":
        if not url.startswith("sqlite:///"):
            raise ValueError(f"store URL {url!r}: use sqlite:///absolute/path/file.db")
        from .sqlite import SqliteStore
        store = SqliteStore(url[len("sqlite://"):], settings)
    elif scheme in ("redis", "rediss"):
        from .redis import RedisStore
        store = RedisStore(url, settings)
    elif scheme in ("redis+sentinel", "rediss+sentinel"):
        from .redis import RedisStore
        store = RedisStore(url, settings)
    else:
        raise ValueError(f"store URL {url!r}: unknown scheme {scheme!r}; expected "
                         "memory:, sqlite:///abs/path, redis://host:port/db (rediss:// for TLS) "
                         "or redis+sentinel://host:port,host:port/service/db")
    from .resilient import ResilientStore
    return ResilientStore(store, settings)
