"""A store for ``outpost scan``: reads the real store, writes nothing."""

from __future__ import annotations

from typing import Optional, Sequence

from .base import Bucket, DecisionEntry, FingerprintStats, HitResult, Lock, Store, VolumeCounts, VolumeSpec
from .memory import MemoryStore
from .wrapper import StoreWrapper


class ReadOnlyStore(StoreWrapper):
    """Reads the real store but writes nothing: limits are checked with
    ``dry_run``, events and locks are not recorded, connection slots are not
    taken, volume records are read, not written (``dry_run``), and bulk
    fingerprints are counted in a private memory store (so ``bulk_*``
    evidence reflects this message alone).  Closing it leaves the
    real store open."""

    def __init__(self, real: Store) -> None:
        super().__init__(real)
        self.scratch = MemoryStore()

    def close(self) -> None:
        self.scratch.close()

    def conn_acquire(self, ip: str, limit: int, slot: str) -> tuple[bool, int]:
        return True, self.inner.conn_count(ip)

    def conn_release(self, ip: str, slot: str) -> None:
        pass

    def process_alive(self, host: str, pid: int) -> None:
        pass

    def process_gone(self, host: str, pid: int) -> None:
        pass

    def hit(self, buckets: Sequence[Bucket], dry_run: bool = False) -> HitResult:
        return self.inner.hit(buckets, dry_run=True)

    def reset(self, key_prefix: str) -> int:
        return 0

    def record_event(self, key: str, window: float) -> int:
        return 0

    def set_lock(self, key: str, reason: str, duration: Optional[float],
                 by: str = "auto", max_auto_unlocks: Optional[int] = None) -> Lock:
        return Lock(key=key, reason=reason, since=self.now(), until=None, by=by)

    def remove_lock(self, key: str) -> bool:
        return False

    def fingerprint_add(self, fp: str, member: str, recipients: int,
                        window: float) -> FingerprintStats:
        return self.scratch.fingerprint_add(fp, member, recipients, window)

    def fingerprint_add_many(self, items: Sequence[tuple[str, str, int]],
                             window: float) -> list[FingerprintStats]:
        return self.scratch.fingerprint_add_many(items, window)

    def volume_add(self, key: str, domains: Sequence[str], recipients: int, spec: VolumeSpec,
                   dry_run: bool = False) -> VolumeCounts:
        return self.inner.volume_add(key, domains, recipients, spec, dry_run=True)
    def fingerprint_add_message(self, fps: Sequence[str], member: str, recipients: int,
                                window: float) -> list[tuple[FingerprintStats, FingerprintStats]]:
        return self.scratch.fingerprint_add_message(fps, member, recipients, window)

    def stat_add(self, counts: Sequence[tuple[str, int]],
                 recent: Sequence[tuple[str, int]] = ()) -> None:
        pass

    def decision_add(self, entries: Sequence[DecisionEntry]) -> None:
        pass

    def put_blob(self, name: str, data: bytes) -> None:
        pass

    def swap_blob(self, name: str, expected: Optional[bytes], data: bytes) -> bool:
        return True                             # as if written: nothing is
