"""The automatic lock: a target (an identity, or a user as a whole) is
locked once its count of abuse events within a window reaches a threshold.
One rule for every kind of event: rate-limit hits and spam verdicts
(:meth:`outpost.core.limits.Limits.record_event`) and receivers' complaints
(:func:`outpost.core.feedback.count_complaint`)."""

from __future__ import annotations

import logging
from typing import Optional

from ..config.model import LockPolicy
from ..store.base import Lock, Store
from .keys import Target

log = logging.getLogger("outpost.policy")


def lock_past_threshold(store: Store, target: Target, count: int, threshold: Optional[int],
                        what: str, window: float, lock: LockPolicy, *, monitoring: bool,
                        by: str = "auto") -> Optional[Lock]:
    """Lock ``target`` when ``count`` (events of the kind ``what`` names,
    e.g. ``spam verdicts``, within ``window`` seconds) reached ``threshold``
    (None or 0: off), for ``lock.duration`` and with ``lock.max_auto_unlocks``;
    not in monitor mode, and not when the target is locked already (an
    operator's lock is kept).  The new lock, or None.  A
    :class:`~outpost.store.base.StoreError` propagates."""
    if not threshold or count < threshold or monitoring:
        return None
    if store.get_lock(target.lock_key) is not None:
        return None                          # already locked (e.g. by an operator): keep that lock
    whose = " of all its identities" if target.whole_user else ""
    got = store.set_lock(target.lock_key, f"{count} {what}{whose} in {int(window)}s",
                         lock.duration, by=by, max_auto_unlocks=lock.max_auto_unlocks)
    log.warning("locked %s: %s (until %s)", got.key, got.reason, got.until or "operator unlock")
    return got
