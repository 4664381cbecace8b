"""The read-only store ``outpost scan`` decides against (the decision itself:
:mod:`outpost.offline`).  This module is left for the move of
:class:`ReadOnlyStore` into ``store/`` (issue #16, another branch)."""

from __future__ import annotations

from typing import Optional, Sequence

from .store.base import Bucket, HitResult, Lock, Store
from .store.memory import MemoryStore


class ReadOnlyStore(Store):
    """Reads the real store but writes nothing: limits are checked with
    ``dry_run``, events and locks are not recorded, connection slots are not
    taken, and bulk fingerprints are counted in a private memory store (so
    ``bulk_*`` evidence reflects this message alone)."""

    def __init__(self, real: Store) -> None:
        self.real = real
        self.scratch = MemoryStore()

    def now(self) -> float:
        return self.real.now()

    def conn_acquire(self, ip: str, limit: int, slot: str) -> tuple[bool, int]:
        return True, self.real.conn_count(ip)

    def conn_release(self, ip: str, slot: str) -> None:
        pass

    def conn_count(self, ip: str) -> int:
        return self.real.conn_count(ip)

    def process_alive(self, host: str, pid: int) -> None:
        pass

    def process_gone(self, host: str, pid: int) -> None:
        pass

    def hit(self, buckets: Sequence[Bucket], dry_run: bool = False) -> HitResult:
        return self.real.hit(buckets, dry_run=True)

    def peek(self, buckets):
        return self.real.peek(buckets)

    def reset(self, key_prefix: str) -> int:
        return 0

    def record_event(self, key: str, window: float) -> int:
        return 0

    def get_lock(self, key: str) -> Optional[Lock]:
        return self.real.get_lock(key)

    def set_lock(self, key, reason, duration, by="auto", max_auto_unlocks=None) -> Lock:
        return Lock(key=key, reason=reason, since=self.now(), until=None, by=by)

    def remove_lock(self, key: str) -> bool:
        return False

    def list_locks(self):
        return self.real.list_locks()

    def fingerprint_add(self, fp, member, recipients, window):
        return self.scratch.fingerprint_add(fp, member, recipients, window)

    def fingerprint_add_many(self, items, window):
        return self.scratch.fingerprint_add_many(items, window)

    def stat_add(self, counts, recent=()) -> None:
        pass

    def stat_read(self, period: str, count: int) -> dict[str, int]:
        return self.real.stat_read(period, count)

    def put_blob(self, name: str, data: bytes) -> None:
        pass

    def get_blob(self, name: str) -> Optional[bytes]:
        return self.real.get_blob(name)

    def close(self) -> None:
        self.scratch.close()
