"""Pure logic shared by the Python backends (memory, sqlite).

The Redis backend runs the same rules inside Lua scripts
(:mod:`outpost.store.redis`); keep both in step.

Rate limits use GCRA (generic cell rate algorithm).  A bucket of ``limit``
units per ``window`` seconds has an emission interval ``T = window / limit``
and a burst tolerance of ``window``; its whole state is one number, the
theoretical arrival time (TAT).  A request of ``cost`` units at ``now``
passes when ``max(TAT, now) + cost*T - window <= now``; it then moves TAT to
``max(TAT, now) + cost*T``.  The bucket is empty again once ``TAT <= now``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Mapping, Optional, Sequence

from .base import Bucket, BucketState, HitResult, Lock

#: Float tolerance (seconds) of the GCRA comparison: absorbs rounding of
#: repeated ``tat + cost*T`` additions at epoch magnitudes (ulp ~ 2.4e-7 s).
EPSILON = 1e-4


def bucket_id(bucket: Bucket) -> str:
    """Storage id of a bucket: its key and window (``"<key>@<window>"``), so
    that a per-minute and a per-hour bucket on one key never share state."""
    return f"{bucket.key}@{bucket.window:g}"


def validate_buckets(buckets: Sequence[Bucket]) -> None:
    """Raise ValueError for a bucket that cannot be evaluated."""
    for b in buckets:
        if b.limit < 1:
            raise ValueError(f"bucket {b.key!r}: limit must be >= 1, got {b.limit}")
        if not b.window > 0:
            raise ValueError(f"bucket {b.key!r}: window must be > 0, got {b.window}")
        if b.cost < 0:
            raise ValueError(f"bucket {b.key!r}: cost must be >= 0, got {b.cost}")


def check_window(window: float) -> None:
    """Raise ValueError unless ``window`` (seconds) is > 0."""
    if not window > 0:
        raise ValueError(f"window must be > 0 seconds, got {window}")


def check_recipients(recipients: int) -> None:
    """Raise ValueError for a negative recipient count."""
    if recipients < 0:
        raise ValueError(f"recipients must be >= 0, got {recipients}")


def gcra_decide(buckets: Sequence[Bucket], tats: Mapping[str, float],
                now: float) -> tuple[HitResult, dict[str, float]]:
    """Decide a hit over all ``buckets`` given their stored TATs.

    Returns the result and, when allowed, the new TAT of every touched
    bucket id (empty when refused: nothing is counted).  When several refuse,
    the one with the longest wait is reported.  A cost above the limit can
    never pass: it is refused with ``retry_after = window``.
    """
    new: dict[str, float] = {}
    worst: Optional[int] = None
    worst_wait = -1.0
    for i, b in enumerate(buckets):
        bid = bucket_id(b)
        tat = max(new.get(bid, tats.get(bid, now)), now)
        if b.cost > b.limit:
            wait = b.window
        else:
            new_tat = tat + b.cost * (b.window / b.limit)
            wait = new_tat - b.window - now
            if wait <= EPSILON:
                new[bid] = new_tat
                continue
        if wait > worst_wait:
            worst, worst_wait = i, wait
    if worst is not None:
        return HitResult(False, worst, worst_wait), {}
    return HitResult(True), new


def bucket_state(bucket: Bucket, tat: Optional[float], now: float) -> BucketState:
    """Usage of a bucket: ``used = ceil((TAT-now)/T)`` clamped to
    ``[0, limit]``, ``resets_in = max(0, TAT-now)``."""
    rest = max(0.0, (tat or now) - now)
    period = bucket.window / bucket.limit
    used = min(bucket.limit, max(0, math.ceil((rest - EPSILON) / period)))
    return BucketState(key=bucket.key, limit=bucket.limit, window=bucket.window,
                       used=used, resets_in=rest, label=bucket.label)


# -- locks ---------------------------------------------------------------------

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


# -- connection slots ------------------------------------------------------------

def slot_owner(slot: str) -> tuple[str, int]:
    """``(host, pid)`` of a slot id ``"<host>:<pid>:<n>"``."""
    try:
        host, pid, _n = slot.rsplit(":", 2)
        return host, int(pid)
    except ValueError:
        raise ValueError(f"slot id {slot!r} is not '<host>:<pid>:<n>'") from None


def pid_exists(pid: int) -> bool:
    """Whether a process with that pid exists on this host (a zombie counts
    as existing until its parent reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
