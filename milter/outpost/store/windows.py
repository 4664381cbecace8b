"""Rate-limit windows and store keys, shared by the Python backends
(memory, sqlite).

The Redis backend runs the same rules inside Lua scripts
(:mod:`outpost.store.redis`); keep both in step.

Rate limits use a sliding window of subwindows.  A bucket of ``limit`` units per
``window`` seconds keeps its counts in subwindows of width
``w = window / SUBWINDOWS``: subwindow ``k`` holds what was admitted during
``[k*w, (k+1)*w)``.  At time ``now`` (current subwindow ``cur = floor(now/w)``)
the bucket's count is the sum of subwindows ``cur-SUBWINDOWS .. cur``: the subwindow the
window's start ``now-window`` falls into still counts whole.  So every unit
admitted within the last ``window`` seconds is counted (never more than
``limit`` in any span of ``window`` seconds), and a unit admitted at ``t``
stops counting at the end of its subwindow plus one window, at most ``w`` later
than an exact log would let it go.  At most ``SUBWINDOWS + 1`` subwindows per bucket
are kept.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence

from .base import Bucket, BucketState, HitResult

#: Subwindows per window (a subwindow is 1 s of a minute, 1 min of an hour).
SUBWINDOWS = 60

#: Waits (``retry_after``) are rounded up by this many seconds so that
#: waiting exactly that long is enough despite float rounding of subwindow edges.
EPSILON = 1e-4


#: Characters that end one part of a key (``rl:id:USER/IDENTITY:msg:60``):
#: a reset prefix that ends in one of them takes everything below it.
KEY_TERMINATORS = (":", "/")


def key_in_prefix(key: str, prefix: str) -> bool:
    """Whether :meth:`Store.reset` with ``prefix`` takes ``key``: the key is
    the prefix, or continues it after a terminator.  A prefix that ends in
    ``:`` or ``/`` takes every key below it; any other prefix is a whole
    part, so ``hits:webfarm/a`` takes ``hits:webfarm/a`` (and
    ``hits:webfarm/a:…``) but never ``hits:webfarm/alice``."""
    if not key.startswith(prefix):
        return False
    if len(key) == len(prefix) or prefix.endswith(KEY_TERMINATORS):
        return True
    return key[len(prefix)] == ":"


def bucket_key_of(bid: str) -> str:
    """The bucket key of a storage id made by :func:`bucket_id`."""
    return bid.rpartition("@")[0] or bid


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


# -- rate limits: sliding window of subwindows ----------------------------------------

def subwindow_index(now: float, window: float) -> int:
    """Index of the subwindow of a ``window``-second bucket that ``now`` is in."""
    return math.floor(now / (window / SUBWINDOWS))


def subwindow_expiry(index: int, window: float) -> float:
    """Epoch time at which subwindow ``index`` stops counting (its end plus one
    window)."""
    return (index + SUBWINDOWS + 1) * (window / SUBWINDOWS)


class WindowCounts:
    """The non-empty subwindows of one bucket, oldest first, and their sum.

    :meth:`settle` drops subwindows that no longer count and folds subwindows ahead of
    the current one (the clock went back) into it, so that nothing is
    forgotten early and at most ``SUBWINDOWS + 1`` subwindows remain.  Keys stay in
    ascending order, so settling and counting are O(1) for a busy bucket.
    """

    __slots__ = ("window", "subwindows", "total", "pruned")

    def __init__(self, window: float, subwindows: Optional[Mapping[int, int]] = None) -> None:
        self.window = window
        self.subwindows: dict[int, int] = dict(sorted((i, n) for i, n in (subwindows or {}).items() if n))
        self.total = sum(self.subwindows.values())
        #: whether settle() dropped or folded stored subwindows
        self.pruned = False

    def settle(self, cur: int) -> None:
        """Bring the subwindows to current subwindow ``cur``."""
        subwindows = self.subwindows
        oldest = cur - SUBWINDOWS
        while subwindows:
            first = next(iter(subwindows))
            if first >= oldest:
                break
            self.total -= subwindows.pop(first)
            self.pruned = True
        if subwindows and next(reversed(subwindows)) > cur:
            ahead = sum(subwindows.pop(i) for i in [i for i in subwindows if i >= cur])
            subwindows[cur] = ahead
            self.pruned = True

    def add(self, cur: int, n: int) -> None:
        """Count ``n`` units in subwindow ``cur`` (settled: no subwindow is newer)."""
        if n:
            self.subwindows[cur] = self.subwindows.get(cur, 0) + n
            self.total += n

    def newest(self) -> Optional[int]:
        """Index of the newest non-empty subwindow, or None."""
        return next(reversed(self.subwindows)) if self.subwindows else None

    def wait_until_fits(self, excess: int, now: float) -> float:
        """Seconds until ``excess`` units have left the count (oldest subwindows
        expire first); rounded up by :data:`EPSILON`."""
        for index, n in self.subwindows.items():
            excess -= n
            if excess <= 0:
                return max(0.0, subwindow_expiry(index, self.window) - now) + EPSILON
        return self.window   # more than everything counted: only cost > limit


def window_decide(buckets: Sequence[Bucket], stored: Callable[[str, float], WindowCounts],
                  now: float, dry_run: bool = False
                  ) -> tuple[HitResult, dict[str, tuple[WindowCounts, int]]]:
    """Decide a hit over all ``buckets``; ``stored(bucket id, window)`` gives
    the bucket's :class:`WindowCounts` (settled here, in place).

    A hit passes when every bucket has ``count + cost <= limit`` (a bucket
    named twice counts both costs).  Returns the result and, when allowed,
    ``{bucket id: (settled counts, current subwindow)}`` of every touched bucket
    with the cost already added (empty when refused or ``dry_run``: nothing
    is counted).
    When several refuse, the one with the longest wait is reported.  A cost
    above the limit can never pass: it is refused with
    ``retry_after = window``.
    """
    touched: dict[str, tuple[WindowCounts, int]] = {}
    pending: dict[str, int] = {}
    worst: Optional[int] = None
    worst_wait = -1.0
    for i, b in enumerate(buckets):
        bid = bucket_id(b)
        entry = touched.get(bid)
        if entry is None:
            cur = subwindow_index(now, b.window)
            counts = stored(bid, b.window)
            counts.settle(cur)
            entry = touched[bid] = (counts, cur)
        counts, cur = entry
        if b.cost > b.limit:
            wait = b.window
        else:
            excess = counts.total + pending.get(bid, 0) + b.cost - b.limit
            if excess <= 0:
                pending[bid] = pending.get(bid, 0) + b.cost
                continue
            if pending.get(bid):     # the earlier cost of this bucket sits in subwindow cur
                counts = WindowCounts(b.window, counts.subwindows)
                counts.add(cur, pending[bid])
            wait = counts.wait_until_fits(excess, now)
        if wait > worst_wait:
            worst, worst_wait = i, wait
    if worst is not None:
        return HitResult(False, worst, worst_wait), {}
    if dry_run:
        return HitResult(True), {}
    for bid, (counts, cur) in touched.items():
        counts.add(cur, pending.get(bid, 0))
    return HitResult(True), touched


def bucket_state(bucket: Bucket, counts: WindowCounts, now: float) -> BucketState:
    """Usage of a bucket (settles ``counts``): ``used`` = the units counted
    now, ``resets_in`` = seconds until its newest subwindow stops counting (0 when
    empty; rounded up like waits)."""
    counts.settle(subwindow_index(now, bucket.window))
    newest = counts.newest()
    resets_in = (0.0 if newest is None
                 else max(0.0, subwindow_expiry(newest, bucket.window) - now) + EPSILON)
    return BucketState(key=bucket.key, limit=bucket.limit, window=bucket.window,
                       used=counts.total, resets_in=resets_in, label=bucket.label)
