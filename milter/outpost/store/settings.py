"""Settings of the store (filled by the configuration loader)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

#: What a store failure means (``on_store_error``; docs/configuration.rst, "State store").
OnStoreError = Literal["tempfail", "accept", "local"]
#: Accepted values of :attr:`StoreSettings.on_store_error`.
ON_STORE_ERROR_MODES: tuple[str, ...] = get_args(OnStoreError)


@dataclass(frozen=True)
class StoreSettings:
    """Tuning of every store backend; defaults suit production.

    ``on_store_error`` is applied by the caller for ``tempfail`` / ``accept``
    (a :class:`~outpost.store.base.StoreError` reaches it); ``local`` makes
    :func:`~outpost.store.open_store` wrap the store in a
    :class:`~outpost.store.resilient.ResilientStore`.
    """

    #: Redis: TCP connect timeout, seconds.
    connect_timeout: float = 0.5
    #: Redis: timeout of one command (socket read/write), seconds.
    op_timeout: float = 0.5
    #: Redis: immediate retries of a command after a connection error (one
    #: retry re-opens a pooled connection that a Redis restart broke).  Time-outs
    #: are never retried (the script may have run).  Worst case per call:
    #: ``(1 + retries) * (connect_timeout + op_timeout)``.
    retries: int = 1
    #: Redis: prefix of every key.
    key_prefix: str = "outpost:"
    #: Redis: lifetime of a process heartbeat; slots of a process that has not
    #: beaten for this long are reclaimed.  Call ``process_alive`` at least
    #: every third of it.
    heartbeat_ttl: float = 30.0
    #: sqlite: how long to wait for another process' write lock, seconds.
    busy_timeout: float = 2.0
    #: memory/sqlite: run the cleanup of expired state at most this often, seconds.
    sweep_interval: float = 60.0
    #: Most timestamps kept per event key (older ones are dropped).
    max_events: int = 10000
    #: Most messages kept per fingerprint within its window.
    max_fingerprint_entries: int = 10000
    #: Most per-identity names a minute bucket of the message statistics
    #: keeps (``outpost top``'s list of recently active identities).
    max_stat_names: int = 5000
    #: Most entries the decision log keeps (``outpost panel``: recent
    #: decisions and the blocked-message log, all relays).
    max_decisions: int = 20000
    #: Oldest entry the decision log keeps, seconds.
    decision_ttl: float = 7 * 86400.0
    #: How long the auto-unlock count of a key without a lock is kept, seconds.
    lock_history_ttl: float = 30 * 86400.0
    #: ``tempfail``, ``accept`` or ``local`` (see docs/configuration.rst, "State store").
    on_store_error: OnStoreError = "local"
    #: ``local`` mode: try the primary store again at most this often, seconds.
    retry_interval: float = 5.0

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "op_timeout", "heartbeat_ttl", "busy_timeout",
                     "sweep_interval", "lock_history_ttl", "retry_interval", "decision_ttl"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"store setting {name} must be a number > 0, got {value!r}")
        for name in ("max_events", "max_fingerprint_entries", "max_stat_names", "max_decisions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"store setting {name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise ValueError(f"store setting retries must be an integer >= 0, got {self.retries!r}")
        if not isinstance(self.key_prefix, str) or not self.key_prefix:
            raise ValueError(f"store setting key_prefix must be a non-empty string, "
                             f"got {self.key_prefix!r}")
        if self.on_store_error not in ON_STORE_ERROR_MODES:
            raise ValueError(f"store setting on_store_error must be one of "
                             f"{', '.join(ON_STORE_ERROR_MODES)}, got {self.on_store_error!r}")
