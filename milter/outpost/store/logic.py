"""Pure logic shared by the Python backends (memory, sqlite).

The Redis backend runs the same rules inside Lua scripts
(:mod:`outpost.store.redis`); keep both in step.

Rate limits use a slot-based sliding window.  A bucket of ``limit`` units per
``window`` seconds keeps its counts in sub-slots of width
``w = window / SLOTS``: slot ``k`` holds what was admitted during
``[k*w, (k+1)*w)``.  At time ``now`` (current slot ``cur = floor(now/w)``)
the bucket's count is the sum of slots ``cur-SLOTS .. cur``: the slot the
window's start ``now-window`` falls into still counts whole.  So every unit
admitted within the last ``window`` seconds is counted (never more than
``limit`` in any span of ``window`` seconds), and a unit admitted at ``t``
stops counting at the end of its slot plus one window, at most ``w`` later
than an exact log would let it go.  At most ``SLOTS + 1`` slots per bucket
are kept.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Mapping, Optional, Sequence

from .base import Bucket, BucketState, HitResult, Lock

#: Sub-slots per window (a slot is 1 s of a minute, 1 min of an hour).
SLOTS = 60

#: Waits (``retry_after``) are rounded up by this many seconds so that
#: waiting exactly that long is enough despite float rounding of slot edges.
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


# -- rate limits: sliding window of slots ----------------------------------------

def slot_index(now: float, window: float) -> int:
    """Index of the slot of a ``window``-second bucket that ``now`` is in."""
    return math.floor(now / (window / SLOTS))


def slot_expiry(index: int, window: float) -> float:
    """Epoch time at which slot ``index`` stops counting (its end plus one
    window)."""
    return (index + SLOTS + 1) * (window / SLOTS)


def live_slots(slots: Mapping[int, int], cur: int) -> dict[int, int]:
    """The slots that count at slot ``cur``; slots ahead of ``cur`` (the
    clock went back) are folded into ``cur`` so that nothing is forgotten
    early and at most ``SLOTS + 1`` slots remain."""
    live: dict[int, int] = {}
    for index, n in slots.items():
        if index >= cur - SLOTS and n:
            index = min(index, cur)
            live[index] = live.get(index, 0) + n
    return live


def wait_until_fits(live: Mapping[int, int], excess: int, now: float,
                    window: float) -> float:
    """Seconds until ``excess`` units have left the count of ``live`` slots
    (oldest slots expire first)."""
    for index in sorted(live):
        excess -= live[index]
        if excess <= 0:
            return max(0.0, slot_expiry(index, window) - now) + EPSILON
    return window  # excess above everything counted: only cost > limit gets here


@dataclass
class SlotUpdate:
    """What an admitted hit writes to one bucket id: the live slots after
    the hit (``slots[cur]`` includes the new cost) and whether stored slots
    were dropped or folded (then the backend rewrites more than ``cur``)."""

    window: float
    cur: int
    slots: dict[int, int]
    pruned: bool


def window_decide(buckets: Sequence[Bucket], stored: Mapping[str, Mapping[int, int]],
                  now: float) -> tuple[HitResult, dict[str, SlotUpdate]]:
    """Decide a hit over all ``buckets`` given their stored slots
    (``{bucket id: {slot index: count}}``).

    A hit passes when every bucket has ``count + cost <= limit``.  Returns
    the result and, when allowed, the update of every touched bucket id
    (empty when refused: nothing is counted).  When several refuse, the one
    with the longest wait is reported.  A cost above the limit can never
    pass: it is refused with ``retry_after = window``.
    """
    updates: dict[str, SlotUpdate] = {}
    worst: Optional[int] = None
    worst_wait = -1.0
    for i, b in enumerate(buckets):
        bid = bucket_id(b)
        upd = updates.get(bid)
        if upd is None:
            cur = slot_index(now, b.window)
            raw = stored.get(bid, {})
            live = live_slots(raw, cur)
            upd = SlotUpdate(b.window, cur, live, pruned=live != dict(raw))
        if b.cost > b.limit:
            wait = b.window
        else:
            excess = sum(upd.slots.values()) + b.cost - b.limit
            if excess <= 0:
                if b.cost:
                    upd.slots[upd.cur] = upd.slots.get(upd.cur, 0) + b.cost
                updates[bid] = upd
                continue
            wait = wait_until_fits(upd.slots, excess, now, b.window)
        if wait > worst_wait:
            worst, worst_wait = i, wait
    if worst is not None:
        return HitResult(False, worst, worst_wait), {}
    return HitResult(True), updates


def bucket_state(bucket: Bucket, slots: Mapping[int, int], now: float) -> BucketState:
    """Usage of a bucket: ``used`` = the units counted now, ``resets_in`` =
    seconds until its newest slot stops counting (0 when empty; rounded up
    like waits)."""
    live = live_slots(slots, slot_index(now, bucket.window))
    resets_in = (max(0.0, slot_expiry(max(live), bucket.window) - now) + EPSILON
                 if live else 0.0)
    return BucketState(key=bucket.key, limit=bucket.limit, window=bucket.window,
                       used=sum(live.values()), resets_in=resets_in, label=bucket.label)


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
