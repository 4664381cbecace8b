"""``on_store_error: local`` — keep serving from process memory while the
shared store is down, and go back to it by itself.

What is lost or approximate while serving locally (each process on its own):

* rate limits count only this process' traffic since the outage began, so
  a cluster of N processes may admit up to N times a limit, and what was
  counted before the outage is not seen (the local buckets start empty);
* connection slots taken while serving locally are per process (the per-IP
  limit applies per process); a slot taken in the shared store is always
  freed there: its release goes to the shared store even while serving
  locally, and a release that fails is kept and retried before the next
  call that reaches the shared store (and at recovery), so the shared count
  comes back down (without this, a client IP whose connections closed
  during a short outage would stay counted, and refused, until restart);
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

from .base import (Bucket, BucketState, DecisionEntry, FingerprintStats, HitResult, Lock, Store,
                   StoreError)
from .memory import MemoryStore
from .settings import StoreSettings

log = logging.getLogger("outpost.store")

#: Most slot releases kept for the shared store while it fails (the oldest
#: go first; after ``heartbeat_ttl`` without heartbeats the shared store
#: reclaims every slot of the process anyway).
MAX_PENDING_RELEASES = 10000


class ResilientStore(Store):
    """Wraps a shared store; on :class:`StoreError` serves from a
    per-process :class:`MemoryStore`, trying the shared store again at most
    every ``settings.retry_interval`` seconds.

    With ``on_store_error`` ``tempfail`` or ``accept`` nothing is served
    locally (every StoreError reaches the caller); only the releases of
    connection slots that failed are kept and retried, as in ``local`` mode.

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
        #: serve from process memory while the primary fails (``local``)
        self.fallback = self.settings.on_store_error == "local"
        self.fallbacks = 0
        self.outages = 0
        self._clock = clock
        self._mutex = threading.Lock()
        self._retry_at: Optional[float] = None   # None: the primary is healthy
        #: slot -> ip of the slots held now that were taken in the primary
        self._shared_slots: dict[str, str] = {}
        #: slot -> ip of primary slots whose release failed (retried)
        self._pending_releases: dict[str, str] = {}

    @property
    def degraded(self) -> bool:
        with self._mutex:
            return self._retry_at is not None

    @property
    def pending_releases(self) -> int:
        """Slots taken in the shared store whose release is still owed to it."""
        with self._mutex:
            return len(self._pending_releases)

    def _call(self, name: str, *args: Any) -> Any:
        return self._served(name, *args)[0]

    def _served(self, name: str, *args: Any) -> tuple[Any, str]:
        """(result, who served it): ``"primary"``; ``"failed"``: the primary
        was asked and failed (it may still have done it: a timed-out script
        can run), memory answered; ``"local"``: memory answered without
        asking the primary (waiting for the next probe)."""
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
                if self._pending_releases:     # owed to the shared store: pay first
                    self._release_pending()
                result = getattr(self.primary, name)(*args)
            except StoreError as exc:
                if not self.fallback:
                    raise
                self._failed(exc)
            else:
                self._recovered()
                return result, "primary"
        with self._mutex:
            self.fallbacks += 1
        return getattr(self.local, name)(*args), "local" if skip else "failed"

    def _release_pending(self) -> None:
        """Free in the primary the slots whose release failed before
        (raises StoreError at the first that fails again; it stays owed)."""
        with self._mutex:
            owed = list(self._pending_releases.items())
        for slot, ip in owed:
            self.primary.conn_release(ip, slot)
            with self._mutex:
                self._pending_releases.pop(slot, None)
        if owed:
            log.warning("store %s: freed %d connection slot(s) whose release had failed",
                        self.url, len(owed))

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
        try:
            (acquired, count), who = self._served("conn_acquire", ip, limit, slot)
        except StoreError:
            self._owe(ip, slot)                # a timed-out acquire may have taken it
            raise
        if who == "failed":
            self._owe(ip, slot)
        elif acquired and who == "primary":
            with self._mutex:
                self._shared_slots[slot] = ip
        return acquired, count

    def _owe(self, ip: str, slot: str) -> None:
        """Free ``slot`` in the shared store when it answers (SREM of a slot
        it never took is harmless; one it took late must not stay)."""
        with self._mutex:
            self._pending_releases[slot] = ip
            if len(self._pending_releases) > MAX_PENDING_RELEASES:
                del self._pending_releases[next(iter(self._pending_releases))]

    def conn_release(self, ip: str, slot: str) -> None:
        """Free the slot where it was taken: a slot of the shared store in
        the shared store, even while serving locally; if that fails, the
        release is kept and retried (see the module docstring)."""
        with self._mutex:
            shared_ip = self._shared_slots.pop(slot, None)
        if shared_ip is None:
            self.local.conn_release(ip, slot)
            return
        if not self.degraded:
            try:
                if self._pending_releases:
                    self._release_pending()
                self.primary.conn_release(shared_ip, slot)
                return
            except StoreError as exc:
                if self.fallback:
                    self._failed(exc)
        self._owe(shared_ip, slot)
        log.debug("store %s: connection slot %s of %s is freed in the shared store when it "
                  "answers again", self.url, slot, shared_ip)

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

    def stat_add(self, counts: Sequence[tuple[str, int]],
                 recent: Sequence[tuple[str, int]] = ()) -> None:
        self._call("stat_add", counts, recent)

    def stat_read(self, period: str, count: int) -> dict[str, int]:
        return self._call("stat_read", period, count)

    def stat_series(self, period: str, count: int,
                    names: Sequence[str]) -> list[dict[str, int]]:
        return self._call("stat_series", period, count, names)

    def decision_add(self, entries: Sequence[DecisionEntry]) -> None:
        self._call("decision_add", entries)

    def decision_read(self, limit: int) -> list[DecisionEntry]:
        return self._call("decision_read", limit)

    def put_blob(self, name: str, data: bytes) -> None:
        self._call("put_blob", name, data)

    def get_blob(self, name: str) -> Optional[bytes]:
        return self._call("get_blob", name)
