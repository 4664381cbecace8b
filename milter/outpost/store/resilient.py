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

How soon that is: a call tries the shared store again at most every
``retry_interval``; for a store that follows a failover by itself (Redis
behind Sentinel, ``Store.follows_failover``) a background thread also asks
it every :data:`WATCH_INTERVAL` (``Store.now``, off the message path) and,
as soon as it answers, lets the next call try it: the fallback ends within
about ``WATCH_INTERVAL`` of the Sentinels naming the new master, and no
message waits for these checks.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, cast

from .base import Store, StoreError
from .memory import MemoryStore
from .settings import StoreSettings
from .wrapper import R, StoreWrapper

if TYPE_CHECKING:
    from typing import Concatenate

    from .wrapper import P

log = logging.getLogger("outpost.store")

#: Most slot releases kept for the shared store while it fails (the oldest
#: go first; after ``heartbeat_ttl`` without heartbeats the shared store
#: reclaims every slot of the process anyway).
MAX_PENDING_RELEASES = 10000

#: Seconds between the background checks of a store that follows a failover
#: (at most ``retry_interval``): one Sentinel query and one connection
#: attempt each, per process, only while the shared store is down.
WATCH_INTERVAL = 0.2


class ResilientStore(StoreWrapper):
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
        super().__init__(primary)
        self.settings = settings or StoreSettings()
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
        #: background check of a primary that follows a failover (see :meth:`_watch`)
        self._watcher: Optional[threading.Thread] = None
        self._closing = threading.Event()

    @property
    def primary(self) -> Store:
        """The shared store."""
        return self.inner

    @property
    def degraded(self) -> bool:
        with self._mutex:
            return self._retry_at is not None

    @property
    def pending_releases(self) -> int:
        """Slots taken in the shared store whose release is still owed to it."""
        with self._mutex:
            return len(self._pending_releases)

    def _forward(self, method: Callable[Concatenate[Store, P], R],
                 *args: P.args, **kwargs: P.kwargs) -> R:
        """Every method but the connection slots' and ``close``: the shared
        store's answer, or process memory's (see :meth:`_served`)."""
        return cast(R, self._served(method.__name__, *args, **kwargs)[0])

    def _served(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, str]:
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
                result = getattr(self.inner, name)(*args, **kwargs)
            except StoreError as exc:
                if not self.fallback:
                    raise
                self._failed(exc)
            else:
                self._recovered()
                return result, "primary"
        with self._mutex:
            self.fallbacks += 1
        return getattr(self.local, name)(*args, **kwargs), "local" if skip else "failed"

    def _release_pending(self) -> None:
        """Free in the primary the slots whose release failed before
        (raises StoreError at the first that fails again; it stays owed)."""
        with self._mutex:
            owed = list(self._pending_releases.items())
        for slot, ip in owed:
            self.inner.conn_release(ip, slot)
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
            if self.inner.follows_failover and not self._closing.is_set() and (
                    self._watcher is None or not self._watcher.is_alive()):
                self._watcher = threading.Thread(target=self._watch, daemon=True,
                                                 name="outpost-store-watch")
                self._watcher.start()
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

    def _watch(self) -> None:
        """While degraded: ask the primary every :data:`WATCH_INTERVAL`
        whether it answers; once it does, make the next call's probe due
        now (that call, not this thread, ends the outage, so a primary that
        fails it again stays one outage)."""
        interval = min(WATCH_INTERVAL, self.settings.retry_interval)
        while not self._closing.wait(interval):
            with self._mutex:
                if self._retry_at is None:      # a call found it back already
                    self._watcher = None
                    return
            try:
                self.inner.now()
            except StoreError:
                continue
            with self._mutex:
                if self._retry_at is not None:
                    self._retry_at = min(self._retry_at, self._clock())
                self._watcher = None
            return

    def close(self) -> None:
        self._closing.set()
        with self._mutex:
            watcher = self._watcher
        if watcher is not None:
            watcher.join()
        self.inner.close()

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
                self.inner.conn_release(shared_ip, slot)
                return
            except StoreError as exc:
                if self.fallback:
                    self._failed(exc)
        self._owe(shared_ip, slot)
        log.debug("store %s: connection slot %s of %s is freed in the shared store when it "
                  "answers again", self.url, slot, shared_ip)
