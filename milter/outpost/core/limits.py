"""Rate limits, locks and the automatic lock: the rate-limit windows of an
identity and of its user as a whole, the lock checks, and the counting of
abuse events (rate-limit hits, spam verdicts) per identity and per user that
locks one or the other past its threshold.

The windows are plain data of the configuration (:func:`windows`,
:func:`buckets`): the CLI's ``usage`` and ``top`` read them without a
:class:`~outpost.core.policy.Policy`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from ..config.model import Config, RateLimit, User
from ..store.base import Bucket, Lock, Store, StoreError
from .abuse import AbuseReports
from .autolock import lock_past_threshold
from .enforce import Enforcer, StoreUnavailable, store_down
from .keys import Counted, EventKind, Target, WindowKey
from .types import CONTINUE, Decision, Message, Reply, reject

log = logging.getLogger("outpost.policy")


@dataclass(frozen=True)
class LimitWindow:
    """One configured rate limit of a target, as the store counts it."""

    key: WindowKey
    rate: RateLimit

    @property
    def counts(self) -> str:
        """What it counts, in words: ``messages`` or ``recipients``."""
        return "recipients" if self.key.counted == "rcpt" else "messages"

    def bucket(self, cost: int = 1) -> Bucket:
        return Bucket(key=str(self.key), limit=self.rate.limit, window=self.rate.window,
                      cost=cost, label=self.rate.label)


def windows(user: User, target: Target) -> list[LimitWindow]:
    """The rate-limit windows of ``target``: an identity's (the user's
    ``limits``) or, for the user as a whole, the user's ``user_limits``."""
    lim = user.policy.user_limits if target.whole_user else user.policy.limits
    rates: tuple[tuple[Counted, tuple[RateLimit, ...]], ...] = (
        ("msg", lim.messages), ("rcpt", lim.recipients))
    return [LimitWindow(WindowKey(target, counted, int(r.window)), r)
            for counted, rs in rates for r in rs]


def message_windows(user: User, identity: str) -> list[LimitWindow]:
    """The windows a message from ``identity`` fills: the identity's, then
    the user's as a whole."""
    return windows(user, Target(user.name, identity)) + windows(user, Target(user.name))


def buckets(user: User, identity: str, cost_rcpts: int) -> list[Bucket]:
    """Rate-limit buckets a message from ``identity`` with ``cost_rcpts``
    recipients fills (as :func:`message_windows`)."""
    return [w.bucket(cost_rcpts if w.key.counted == "rcpt" else 1)
            for w in message_windows(user, identity)]


#: Rate-limit windows, and their buckets at cost 1 (a message; one recipient).
WindowsAtOne = tuple[list[LimitWindow], list[Bucket]]


def _at_one(filled: list[LimitWindow]) -> WindowsAtOne:
    return filled, [w.bucket() for w in filled]


class Limits:
    """Lock checks, rate-limit checks and the automatic lock of one
    configuration, against its store."""

    def __init__(self, config: Config, store: Store, enforce: Enforcer, reports: AbuseReports) -> None:
        self.config = config
        self.store = store
        self.enforce = enforce
        self.reports = reports
        #: each user's windows as a whole, and their buckets at cost 1: the
        #: same for every message of the user
        self._user_windows = {u.name: (u, _at_one(windows(u, Target(u.name)))) for u in config.users}

    def lock_decision(self, msg: Message, user: User) -> Optional[Decision]:
        """The refusal for a locked user (as a whole) or a locked identity
        (once the identity is known), each checked once per message; or None."""
        contact = user.policy.abuse_contact or self.config.report_abuse_to
        if msg.user_lock_decision is None:
            try:
                lock = self.enforce.store_call(self.store.get_lock, Target(user.name).lock_key)
            except StoreUnavailable:
                return store_down()
            msg.user_lock_decision = CONTINUE if lock is None else self.enforce.block(msg, user, reject(
                "451", "4.7.1", f"Sending from {user.name} is suspended because of suspected "
                                f"abuse; contact {contact}", "user_locked"))
        if msg.user_lock_decision.blocks:
            return msg.user_lock_decision
        if msg.lock_decision is None and msg.identity:
            try:
                lock = self.enforce.store_call(self.store.get_lock, msg.identity_key)
            except StoreUnavailable:
                return store_down()
            msg.lock_decision = CONTINUE if lock is None else self.enforce.block(msg, user, reject(
                "451", "4.7.1", f"Sending from {msg.identity} is suspended because of suspected "
                                f"abuse; contact {contact}", "locked"))
        return msg.lock_decision if msg.lock_decision is not None and msg.lock_decision.blocks else None

    def check(self, msg: Message, user: User, dry_run: bool) -> Decision:
        """Count the message in its windows (``dry_run``: only look), and
        refuse it when one is full."""
        lim, ulim = user.policy.limits, user.policy.user_limits
        if not (lim.messages or lim.recipients or ulim.messages or ulim.recipients):
            return CONTINUE
        filled, at_one = self._message_windows(msg, user)
        cost = max(1, len(msg.recipients)) if not dry_run else 1
        wanted = at_one if cost == 1 else [w.bucket(cost if w.key.counted == "rcpt" else 1) for w in filled]
        if not wanted:
            return CONTINUE
        try:
            result = self.enforce.store_call(self.store.hit, wanted, dry_run=dry_run)
        except StoreUnavailable:
            return store_down()
        if result is None or result.allowed:
            return CONTINUE
        full = filled[result.blocked if result.blocked is not None else 0]
        whom = user.name if full.key.target.whole_user else msg.identity
        d = reject("451", "4.7.1",
                   f"Too many {full.counts} from {whom} ({full.rate.label}); please wait and try again",
                   "rate_limit")
        self._limit_hit(msg, user, d.reply)
        return self.enforce.block(msg, user, d)

    def _message_windows(self, msg: Message, user: User) -> WindowsAtOne:
        """:func:`message_windows` of the message and their buckets at cost
        1, built once per message (again only if the identity changed): the
        read-only check at RCPT and the count at the end of the message
        share them.  The user's windows as a whole come from the
        configuration, built once."""
        known = msg.limit_windows
        if known is None or known[0] != msg.identity:
            configured, whole = self._user_windows.get(user.name, (None, None))
            if configured is not user or whole is None:
                whole = _at_one(windows(user, Target(user.name)))
            mine = _at_one(windows(user, Target(user.name, msg.identity)))
            known = msg.limit_windows = (msg.identity, (mine[0] + whole[0], mine[1] + whole[1]))
        return known[1]

    def _limit_hit(self, msg: Message, user: User, reply: Optional[Reply] = None) -> None:
        if not self.enforce.monitoring(user):
            self.reports.report("limit", "tempfail", msg, user, reason=str(reply) if reply else "rate limit",
                                remedy=f"outpost usage {msg.identity_key}   (outpost reset "
                                       f"{msg.identity_key} to clear the counters)")
        self.record_event("limit", msg, user)

    def record_event(self, kind: EventKind, msg: Message, user: User) -> None:
        """Count a rate-limit hit or a spam verdict, for the identity and for
        the user as a whole (all its identities together: changing identity
        does not evade the user's count).  Lock the identity, or the whole
        user, when its threshold of them fall within the lock window."""
        if self.reports.own_report(msg):
            return
        lock = user.policy.lock
        limit = kind == "limit"
        label = "rate-limit hits" if limit else "spam verdicts"
        counts = (
            (lock.after_limit_hits if limit else lock.after_spam, Target(user.name, msg.identity)),
            (lock.user_after_limit_hits if limit else lock.user_after_spam, Target(user.name)),
        )
        for threshold, target in counts:
            if not threshold:
                continue
            try:
                count = self.store.record_event(target.event_key(kind), lock.window)
                got = lock_past_threshold(self.store, target, count, threshold, label, lock.window,
                                          lock, monitoring=self.enforce.monitoring(user))
            except StoreError as exc:
                log.error("could not record the %s event of %s: %s", kind, target.lock_key, exc)
                continue
            if got is None:
                continue
            self.reports.report("lock", "lock", msg, user, reason=got.reason, lock_until=got.until,
                                remedy=f"outpost unlock {msg.identity_key if target.identity else user.name}",
                                identity=target.identity)

    def lock(self, msg: Message, user: User, reason: str, kind: str = "lock") -> Optional[Lock]:
        """Lock the message's identity now (``volume.action: lock``) (the user's lock ``duration`` and
        ``max_auto_unlocks``) unless it is locked already, and report it as
        ``kind``; the lock, or None when the store failed (logged)."""
        lock = user.policy.lock
        target = Target(user.name, msg.identity)
        try:
            held = self.store.get_lock(target.lock_key)
            if held is not None:
                return held
            got = self.store.set_lock(target.lock_key, reason, lock.duration,
                                      max_auto_unlocks=lock.max_auto_unlocks)
        except StoreError as exc:
            log.error("could not lock %s: %s", target.lock_key, exc)
            return None
        log.warning("locked %s: %s (until %s)", target.lock_key, got.reason, got.until or "operator unlock")
        self.reports.report(kind, "lock", msg, user, reason=got.reason, lock_until=got.until,
                            remedy=f"outpost unlock {msg.identity_key}", identity=target.identity)
        return got
