"""Stores for cross-message state; see :mod:`outpost.store.base`.

:func:`open_store` turns a store URL (parsed by
:func:`~outpost.store.url.parse_store_url`, the configuration's parser too)
into a store:

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

from typing import Optional, Union

from .base import Bucket, BucketState, FingerprintStats, HitResult, Lock, Store, StoreError
from .settings import ON_STORE_ERROR_MODES, StoreSettings
from .url import StoreURL, parse_store_url, redact_url

__all__ = ["Bucket", "BucketState", "FingerprintStats", "HitResult", "Lock", "Store",
           "StoreError", "StoreSettings", "ON_STORE_ERROR_MODES", "StoreURL", "open_store", "parse_store_url",
           "redact_url"]


def open_store(url: Union[str, StoreURL], settings: Optional[StoreSettings] = None) -> Store:
    """Open the store named by ``url`` (see the module docstring).

    ``url`` is best the :class:`~outpost.store.url.StoreURL` the
    configuration holds (``config.store``): it is opened as parsed; a plain
    string is parsed here.  Raises ValueError for a URL
    :func:`~outpost.store.url.parse_store_url` refuses, and :class:`StoreError` when a sqlite database cannot be
    created.  A Redis store connects lazily: an unreachable server shows up
    as StoreError on the first operation.
    """
    settings = settings or StoreSettings()
    parsed = url if isinstance(url, StoreURL) else parse_store_url(url)
    store: Store
    if parsed.scheme == "memory":
        from .memory import MemoryStore
        return MemoryStore(settings)
    if parsed.scheme == "sqlite":
        from .sqlite import SqliteStore
        assert parsed.path is not None
        store = SqliteStore(parsed.path, settings)
    else:                                       # redis, rediss, redis+sentinel, rediss+sentinel
        from .redis import RedisStore
        store = RedisStore(parsed, settings)
    from .resilient import ResilientStore
    return ResilientStore(store, settings)
