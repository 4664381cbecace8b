"""In-process store: one process, thread-safe (one lock).

State is lost when the process ends and is not shared with other
processes; use it for tests, a single-process deployment, or as the
fallback of :class:`~outpost.store.resilient.ResilientStore`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from typing import Callable, Optional, Sequence

from . import volume as vol
from .base import (
    STAT_PERIODS,
    Bucket,
    BucketState,
    DecisionEntry,
    FingerprintStats,
    HitResult,
    Lock,
    Store,
    VolumeCounts,
    VolumeSpec,
    stat_buckets,
)
from .locks import LockRecord
from .owners import slot_owner
from .settings import StoreSettings
from .volume import VOLUME_PREFIX
from .windows import (
    WindowCounts,
    bucket_id,
    bucket_key_of,
    bucket_state,
    check_recipients,
    check_window,
    key_in_prefix,
    subwindow_expiry,
    validate_buckets,
    window_decide,
)


class _FingerprintLog:
    """Messages of one fingerprint in time order, with running totals."""

    __slots__ = ("entries", "recipients", "members")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, str, int]] = deque()
        self.recipients = 0
        self.members: Counter[str] = Counter()

    def add(self, now: float, member: str, recipients: int) -> None:
        self.entries.append((now, member, recipients))
        self.recipients += recipients
        self.members[member] += 1

    def trim(self, cutoff: float, keep: int) -> None:
        """Drop entries at or before ``cutoff`` and all but the ``keep`` newest."""
        entries = self.entries
        while entries and (entries[0][0] <= cutoff or len(entries) > keep):
            _t, member, recipients = entries.popleft()
            self.recipients -= recipients
            self.members[member] -= 1
            if self.members[member] <= 0:
                del self.members[member]


class MemoryStore(Store):
    """Store kept in this process' memory."""

    def __init__(self, settings: Optional[StoreSettings] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.url = "memory:"
        self.settings = settings or StoreSettings()
        self._clock = clock
        self._mutex = threading.Lock()
        self._buckets: dict[str, WindowCounts] = {}
        self._events: dict[str, tuple[deque[float], float]] = {}
        self._locks: dict[str, LockRecord] = {}
        self._lock_touched: dict[str, float] = {}
        self._fingerprints: dict[str, tuple[_FingerprintLog, float]] = {}
        # (when it may have expired, fp), one per fingerprint: the sweep
        # looks at the fingerprints due, not at every one (a pass over all
        # of them held the mutex 0.55 s at 30 000 messages in the window,
        # 1.9 s at 100 000; a minute of 100 msgs/s due now takes 60-66 ms,
        # whatever the window holds: bench.fingerprint_store --sweep).  One
        # counted again since is queued again for its new end; one queued
        # behind a later end waits for it (gone at most a window late; the
        # counts trim by time, so they never see it).
        self._fingerprint_due: deque[tuple[float, str]] = deque()
        self._blobs: dict[str, bytes] = {}
        self._volume: dict[str, tuple[vol.Record, float]] = {}     # key -> (record, expires)
        self._stats: dict[tuple[str, int], Counter[str]] = {}
        self._conns: dict[str, set[str]] = {}
        self._decisions: deque[tuple[float, DecisionEntry]] = deque(
            maxlen=self.settings.max_decisions)
        self._next_sweep = 0.0

    def now(self) -> float:
        return self._clock()

    # -- housekeeping ------------------------------------------------------
    def _sweep(self, now: float) -> None:
        """Drop expired state (caller holds the mutex); cheap when not due."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.settings.sweep_interval
        self._buckets = {bid: c for bid, c in self._buckets.items()
                         if (newest := c.newest()) is not None
                         and subwindow_expiry(newest, c.window) > now}
        for key, (log, window) in list(self._events.items()):
            if not log or log[-1] <= now - window:
                del self._events[key]
        due = self._fingerprint_due
        while due and due[0][0] <= now:
            fp = due.popleft()[1]
            entry = self._fingerprints.get(fp)
            if entry is None:
                continue
            fplog, window = entry
            if not fplog.entries or fplog.entries[-1][0] <= now - window:
                del self._fingerprints[fp]
            else:                   # counted since: due at its new end, after now (stops the loop)
                due.append((fplog.entries[-1][0] + window, fp))
        self._volume = {k: v for k, v in self._volume.items() if v[1] > now}
        for key, rec in list(self._locks.items()):
            rec, _changed = rec.settle(now)
            self._locks[key] = rec
            if rec.lock is None and (
                    rec.auto_unlocks == 0
                    or self._lock_touched.get(key, 0.0) < now - self.settings.lock_history_ttl):
                del self._locks[key]
                self._lock_touched.pop(key, None)

    # -- connection slots ----------------------------------------------------
    def conn_acquire(self, ip: str, limit: int, slot: str) -> tuple[bool, int]:
        slot_owner(slot)
        with self._mutex:
            slots = self._conns.setdefault(ip, set())
            if slot in slots:
                return True, len(slots)
            if len(slots) >= limit:
                if not slots:
                    del self._conns[ip]
                return False, len(slots)
            slots.add(slot)
            return True, len(slots)

    def conn_release(self, ip: str, slot: str) -> None:
        with self._mutex:
            slots = self._conns.get(ip)
            if slots is not None:
                slots.discard(slot)
                if not slots:
                    del self._conns[ip]

    def conn_count(self, ip: str) -> int:
        with self._mutex:
            return len(self._conns.get(ip, ()))

    def process_alive(self, host: str, pid: int) -> None:
        """Nothing to do: slots never outlive this process."""

    def process_gone(self, host: str, pid: int) -> None:
        owner = f"{host}:{pid}:"
        with self._mutex:
            for ip, slots in list(self._conns.items()):
                slots.difference_update([s for s in slots if s.startswith(owner)])
                if not slots:
                    del self._conns[ip]

    # -- rate limits -----------------------------------------------------------
    def _counts(self, bid: str, window: float) -> WindowCounts:
        """The stored subwindows of a bucket (a fresh, unstored object when none)."""
        counts = self._buckets.get(bid)
        return WindowCounts(window) if counts is None else counts

    def hit(self, buckets: Sequence[Bucket], dry_run: bool = False) -> HitResult:
        validate_buckets(buckets)
        with self._mutex:
            now = self._clock()
            self._sweep(now)
            result, touched = window_decide(buckets, self._counts, now, dry_run)
            for bid, (counts, _cur) in touched.items():
                self._buckets[bid] = counts
            return result

    def peek(self, buckets: Sequence[Bucket]) -> list[BucketState]:
        validate_buckets(buckets)
        with self._mutex:
            now = self._clock()
            return [bucket_state(b, self._counts(bucket_id(b), b.window), now)
                    for b in buckets]

    def reset(self, key_prefix: str) -> int:
        with self._mutex:
            dropped = 0
            tables: tuple[tuple[dict, Callable[[str], str]], ...] = (
                (self._buckets, bucket_key_of), (self._events, str),
                (self._volume, lambda k: VOLUME_PREFIX + k))
            for table, key_of in tables:
                for key in [k for k in table if key_in_prefix(key_of(k), key_prefix)]:
                    del table[key]
                    dropped += 1
            return dropped

    # -- events ------------------------------------------------------------------
    def record_event(self, key: str, window: float) -> int:
        check_window(window)
        with self._mutex:
            now = self._clock()
            self._sweep(now)
            entry = self._events.get(key)
            log = entry[0] if entry else deque(maxlen=self.settings.max_events)
            cutoff = now - window
            while log and log[0] <= cutoff:
                log.popleft()
            log.append(now)
            self._events[key] = (log, window)
            return len(log)

    # -- locks ---------------------------------------------------------------------
    def _settled(self, key: str, now: float) -> LockRecord:
        rec, changed = self._locks.get(key, LockRecord(None)).settle(now)
        if changed:
            self._locks[key] = rec
            self._lock_touched[key] = now
        return rec

    def get_lock(self, key: str) -> Optional[Lock]:
        with self._mutex:
            return self._settled(key, self._clock()).in_force()

    def set_lock(self, key: str, reason: str, duration: Optional[float],
                 by: str = "auto", max_auto_unlocks: Optional[int] = None) -> Lock:
        with self._mutex:
            now = self._clock()
            rec = self._settled(key, now).locked(key, reason, duration, by,
                                                 max_auto_unlocks, now)
            self._locks[key] = rec
            self._lock_touched[key] = now
            lock = rec.in_force()
            assert lock is not None
            return lock

    def remove_lock(self, key: str) -> bool:
        with self._mutex:
            rec = self._settled(key, self._clock())
            self._locks.pop(key, None)
            self._lock_touched.pop(key, None)
            return rec.lock is not None

    def list_locks(self) -> list[Lock]:
        with self._mutex:
            now = self._clock()
            locks = [self._settled(key, now).in_force() for key in list(self._locks)]
            return sorted((lk for lk in locks if lk is not None), key=lambda lk: lk.key)

    # -- fingerprints ----------------------------------------------------------------
    def fingerprint_add(self, fp: str, member: str, recipients: int,
                        window: float) -> FingerprintStats:
        check_window(window)
        check_recipients(recipients)
        with self._mutex:
            now = self._clock()
            self._sweep(now)
            entry = self._fingerprints.get(fp)
            log = entry[0] if entry else _FingerprintLog()
            log.add(now, member, recipients)
            log.trim(now - window, self.settings.max_fingerprint_entries)
            self._fingerprints[fp] = (log, window)
            if entry is None:
                self._fingerprint_due.append((now + window, fp))
            return FingerprintStats(messages=len(log.entries), recipients=log.recipients,
                                    members=len(log.members))

    # -- volume per identity -----------------------------------------------------------
    def volume_add(self, key: str, domains: Sequence[str], recipients: int, spec: VolumeSpec,
                   dry_run: bool = False) -> VolumeCounts:
        check_recipients(recipients)
        hashes = vol.check_domains(domains, spec)
        with self._mutex:
            now = self._clock()
            self._sweep(now)
            stored = self._volume.get(key)
            rec, counts = vol.apply(stored[0] if stored and stored[1] > now else None, now,
                                    hashes, recipients, spec)
            if not dry_run:
                self._volume[key] = (rec, now + spec.ttl)
            return counts

    # -- message statistics --------------------------------------------------------------
    def stat_add(self, counts: Sequence[tuple[str, int]],
                 recent: Sequence[tuple[str, int]] = ()) -> None:
        with self._mutex:
            now = self._clock()
            for period, (width, kept) in STAT_PERIODS.items():
                cur = int(now // width)
                for old in [k for k in self._stats if k[0] == period and k[1] <= cur - kept]:
                    del self._stats[old]
                    if period == "m":
                        self._stats.pop(("r", old[1]), None)
                bucket = self._stats.setdefault((period, cur), Counter())
                for name, n in counts:
                    bucket[name] += n
                if period == "m" and recent:
                    names = self._stats.setdefault(("r", cur), Counter())
                    for name, n in recent:
                        if name in names or len(names) < self.settings.max_stat_names:
                            names[name] += n

    def stat_read(self, period: str, count: int) -> dict[str, int]:
        with self._mutex:
            total: Counter[str] = Counter()
            for index in stat_buckets(period, self._clock(), count):
                total.update(self._stats.get((period, index), {}))
                if period == "m":
                    total.update(self._stats.get(("r", index), {}))
            return dict(total)

    def stat_series(self, period: str, count: int,
                    names: Sequence[str]) -> list[dict[str, int]]:
        wanted = set(names)
        with self._mutex:
            out = []
            for index in stat_buckets(period, self._clock(), count):
                row: dict[str, int] = {}
                kinds = (period, "r") if period == "m" else (period,)
                for kind in kinds:
                    for name, n in self._stats.get((kind, index), {}).items():
                        if name in wanted:
                            row[name] = row.get(name, 0) + n
                out.append(row)
            return out

    # -- decision log ------------------------------------------------------------------
    def decision_add(self, entries: Sequence[DecisionEntry]) -> None:
        with self._mutex:
            now = self._clock()
            self._decisions.extend((now, e) for e in entries)
            self._trim_decisions(now)

    def _trim_decisions(self, now: float) -> None:
        cutoff = now - self.settings.decision_ttl
        log = self._decisions
        while log and log[0][0] <= cutoff:
            log.popleft()

    def decision_read(self, limit: int, offset: int = 0) -> list[DecisionEntry]:
        with self._mutex:
            self._trim_decisions(self._clock())
            newest = reversed(self._decisions)
            return [entry for _t, entry in itertools.islice(newest, max(0, offset),
                                                            max(0, offset) + max(0, limit))]

    # -- blobs -------------------------------------------------------------------------
    def put_blob(self, name: str, data: bytes) -> None:
        with self._mutex:
            self._blobs[name] = bytes(data)

    def get_blob(self, name: str) -> Optional[bytes]:
        with self._mutex:
            return self._blobs.get(name)

    def swap_blob(self, name: str, expected: Optional[bytes], data: bytes) -> bool:
        with self._mutex:
            if self._blobs.get(name) != expected:
                return False
            self._blobs[name] = bytes(data)
            return True
