"""The stored state of one identity lock, shared by the Python backends
(memory, sqlite); the Redis backend does the same in Lua."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from .base import Lock


@dataclass(frozen=True)
class LockRecord:
    """Stored lock state of one key: the lock in force (if any) and how many
    timed locks of the key expired so far."""

    lock: Optional[Lock]
    auto_unlocks: int = 0

    def settle(self, now: float) -> tuple["LockRecord", bool]:
        """Expire a timed lock whose time is up (counting one auto-unlock).
        Returns the new record and whether it changed."""
        lk = self.lock
        if lk is not None and lk.until is not None and lk.until <= now:
            return LockRecord(None, self.auto_unlocks + 1), True
        return self, False

    def locked(self, key: str, reason: str, duration: Optional[float], by: str,
               max_auto_unlocks: Optional[int], now: float) -> "LockRecord":
        """A new lock on a settled record (see :meth:`Store.set_lock`)."""
        if duration is not None and not duration > 0:
            raise ValueError(f"lock duration must be > 0 or None, got {duration}")
        if max_auto_unlocks is not None and self.auto_unlocks >= max_auto_unlocks:
            duration = None
        until = None if duration is None else now + duration
        return LockRecord(Lock(key=key, reason=reason, since=now, until=until,
                               auto_unlocks=self.auto_unlocks, by=by),
                          self.auto_unlocks)

    def in_force(self) -> Optional[Lock]:
        """The lock with the current auto-unlock count filled in."""
        if self.lock is None:
            return None
        return replace(self.lock, auto_unlocks=self.auto_unlocks)
