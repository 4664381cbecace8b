"""``on_store_error: local`` — keep serving from process memory while the
shared store is down, and go back to it by itself.

What is lost or approximate while serving locally (each process on its own):

* rate limits count only this process' traffic since the outage began, so
  a cluster of N processes may admit up to N times a limit, and what was
  counted before the outage is not seen (the local buckets start empty);
* connection slots are per process (the per-IP limit applies per process);
* events (spam/limit hits), fingerprints and auto-unlock counts start from
  zero, so auto-locks and bulk detection react later;
* locks set by operators or other relays are not seen; locks set locally
  live only in this process and are not copied to the shared store;
* blobs written locally are not copied back; reads of a blob that is not
  in local memory return None.

After the shared store answers again, every call goes to it and the local
state is ignored (it is cleared at the next outage so it does not carry
stale counts into it).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional, Sequence

from .base import (Bucket, BucketState, FingerprintStats, HitResult, Lock, Store,
                   StoreError)
from .memory import MemoryStore
from .settings import StoreSettings

log = logging.getLogger("outpost.store")



class ResilientStore(Store):
    """Wraps a shared store; on :class:`StoreError` serves from a
    per-process :class:`MemoryStore`, trying the shared store again at most
    every ``settings.retry_interval`` seconds.

    ``fallbacks`` counts operations served locally and ``outages`` the
    outages seen (export them as metrics); ``degraded`` tells whether the
    shared store is currently bypassed.
    """

    def __init__(self, primary: Store, settings: Optional[StoreSettings] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.primary = primary
        self.settings = settings or StoreSettings()
        self.url = primary.url
        self.local = MemoryStore(self.settings)
        self.fallbacks = 0
        self.outages = 0
        self._clock = clock
        self._mutex = threading.Lock()
        self._retry_at: Optional[float] = None   # None: the primary is healthy

    @property
    def degraded(self) -> bool:
        with self._mutex:
            return self._retry_at is not None

    def _call(self, name: str, *args: Any) -> Any:
        skip = False
        if self._retry_at is not None:          # degraded (a healthy store takes no lock)
            with self._mutex:
                if self._retry_at is not None:
                    now = self._clock()
                    skip = now < self._retry_at
                    if not skip:   # this call probes the primary; others keep going local
                        self._retry_at = now + self.settings.retry_interval
        if not skip:
            try:
                result = getattr(self.primary, name)(*args)
            except StoreError as exc:
                self._failed(exc)
            else:
                self._recovered()
                return result
        with self._mutex:
            self.fallbacks += 1
        return getattr(self.local, name)(*args)

    def _failed(self, exc: StoreError) -> None:
        with self._mutex:
            first = self._retry_at is None
            self._retry_at = self._clock() + self.settings.retry_interval
            if first:
                self.outages += 1
                self.local = MemoryStore(self.settings)
        if first:
            log.error("store %s unavailable, serving from process memory "
                      "(limits are per process until it is back): %s", self.url, exc)

    def _recovered(self) -> None:
        if self._retry_at is None:
            return
        with self._mutex:
            if self._retry_at is None:
                return
            self._retry_at = None
        log.warning("store %s is back; %d operations were served locally so far",
                    self.url, self.fallbacks)

    def close(self) -> None:
        self.primary.close()

    def now(self) -> float:
        return self._call("now")

    def conn_acquire(self, ip: str, limit: int, slot: str) -> tuple[bool, int]:
        return self._call("conn_acquire", ip, limit, slot)

    def conn_release(self, ip: str, slot: str) -> None:
        self._call("conn_release", ip, slot)

    def conn_count(self, ip: str) -> int:
        return self._call("conn_count", ip)

    def process_alive(self, host: str, pid: int) -> None:
        self._call("process_alive", host, pid)

    def process_gone(self, host: str, pid: int) -> None:
        self._call("process_gone", host, pid)

    def hit(self, buckets: Sequence[Bucket], dry_run: bool = False) -> HitResult:
        return self._call("hit", buckets, dry_run)

    def peek(self, buckets: Sequence[Bucket]) -> list[BucketState]:
        return self._call("peek", buckets)

    def reset(self, key_prefix: str) -> int:
        return self._call("reset", key_prefix)

    def record_event(self, key: str, window: float) -> int:
        return self._call("record_event", key, window)

    def get_lock(self, key: str) -> Optional[Lock]:
        return self._call("get_lock", key)

    def set_lock(self, key: str, reason: str, duration: Optional[float],
                 by: str = "auto", max_auto_unlocks: Optional[int] = None) -> Lock:
        return self._call("set_lock", key, reason, duration, by, max_auto_unlocks)

    def remove_lock(self, key: str) -> bool:
        return self._call("remove_lock", key)

    def list_locks(self) -> list[Lock]:
        return self._call("list_locks")

    def fingerprint_add(self, fp: str, member: str, recipients: int,
                        window: float) -> FingerprintStats:
        return self._call("fingerprint_add", fp, member, recipients, window)

    def fingerprint_add_many(self, items: Sequence[tuple[str, str, int]],
                             window: float) -> list[FingerprintStats]:
        return self._call("fingerprint_add_many", items, window)

    def put_blob(self, name: str, data: bytes) -> None:
        self._call("put_blob", name, data)

    def get_blob(self, name: str) -> Optional[bytes]:
        return self._call("get_blob", name)
