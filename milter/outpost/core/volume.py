"""Volume anomalies per identity: a hijacked mailbox that usually sends a
few messages a day and suddenly sends dozens in minutes to as many domains
shows itself by *how* it sends, before any rate limit is reached.

Each message counts once in its identity's volume record in the store
(:meth:`~outpost.store.base.Store.volume_add`: the current window's
messages, recipients, distinct recipient domains and domains new to the
identity, and an exponentially weighted baseline per window).  Each count
is compared with what is expected of the identity: its baseline, but never
less than ``volume.baseline`` (the cautious baseline of a new identity).
Over ``spike`` times the expected, the message carries the evidence
``volume_spike`` (``points``, plus ``points`` per doubling, at most
``max_points``), added to the content verdict's score; over ``extreme``
times, ``volume.action`` applies (``hold``, ``tempfail``, ``lock``; ``none``:
evidence only) and an abuse report names the baseline and the burst.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

from ..config.model import User, VolumeSettings
from ..store.base import Store, VolumeCounts, VolumeSpec
from .enforce import Enforcer, StoreUnavailable, store_down
from .types import Decision, Message, reject

if TYPE_CHECKING:
    from .abuse import AbuseReports
    from .limits import Limits

log = logging.getLogger("outpost.policy")

#: The evidence's name (its weight can be changed under ``spam.weights``).
EVIDENCE = "volume_spike"
#: The measures, in the order of :attr:`VolumeCounts.baseline`.
MEASURES = ("messages", "recipients", "domains", "new domains")
#: Hex digits of a recipient domain's hash kept in the store (32 bits: two
#: of 200 domains collide about once in 200 000 identities).
HASH_DIGITS = 8
#: The reason of a decision or log line of this check.
REASON = "volume_spike"


def spec(settings: VolumeSettings) -> VolumeSpec:
    """How the store keeps the records under these settings."""
    return VolumeSpec(window=settings.window, decay=settings.decay, ttl=settings.ttl)


def domain_hashes(recipients: Sequence[str], limit: int) -> list[str]:
    """Short hashes of the distinct recipient domains (lower-cased, trailing
    dot dropped), in order of first appearance, at most ``limit``."""
    seen: dict[str, None] = {}
    for rcpt in recipients:
        domain = rcpt.rpartition("@")[2].strip().rstrip(".").lower()
        if not domain:
            continue
        digest = hashlib.blake2b(domain.encode("utf-8", "surrogateescape"), digest_size=HASH_DIGITS // 2)
        seen[digest.hexdigest()] = None
        if len(seen) >= limit:
            break
    return list(seen)


def duration(seconds: float) -> str:
    """``10m``, ``1h``, ``90s``: a window as the configuration writes it."""
    s = int(round(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


@dataclass(frozen=True)
class Assessment:
    """An identity's current window against what is expected of it."""

    counts: VolumeCounts
    expected: tuple[float, float, float, float]   # max(baseline, volume.baseline), per measure
    ratio: float          # the largest count / expected
    measure: int          # the index (in MEASURES) of that largest ratio
    points: float         # the evidence's points (0.0: no spike)
    extreme: bool         # over ``extreme`` times the expected: the action applies

    def summary(self, window: float) -> str:
        """What the baseline was and what the window holds now (for the
        evidence, the log and the abuse report)."""
        c, b, w = self.counts, self.counts.baseline, duration(window)
        return (f"baseline {b[0]:.1f} msgs, {b[1]:.1f} rcpts, {b[2]:.1f} domains/{w}; now {c.messages} "
                f"msgs to {c.recipients} rcpts in {c.domains} domains ({c.new_domains} new) in {w}, "
                f"{self.ratio:.1f}x the expected {self.expected[self.measure]:.1f} {MEASURES[self.measure]}")


def assess(counts: VolumeCounts, settings: VolumeSettings) -> Assessment:
    """The pure scoring rule (see the module docstring)."""
    now = (counts.messages, counts.recipients, counts.domains, counts.new_domains)
    expected = tuple(max(b, least) for b, least in zip(counts.baseline, settings.baseline.values()))
    ratios = [c / e for c, e in zip(now, expected)]
    measure = max(range(len(ratios)), key=ratios.__getitem__)
    ratio = ratios[measure]
    points = 0.0
    if ratio > settings.spike:
        points = min(settings.max_points,
                     round(settings.points * (1.0 + math.log2(ratio / settings.spike)), 1))
    return Assessment(counts=counts, expected=(expected[0], expected[1], expected[2], expected[3]),
                      ratio=ratio, measure=measure, points=points, extreme=ratio > settings.extreme)


class VolumeCheck:
    """Counts each message in its identity's record and acts on a spike."""

    def __init__(self, settings: VolumeSettings, store: Store, enforce: Enforcer,
                 reports: "AbuseReports", limits: "Limits") -> None:
        self.settings = settings
        self.store = store
        self.enforce = enforce
        self.reports = reports
        self.limits = limits             # the lock (action ``lock``) and its reply
        self.spec = spec(settings)

    def check(self, msg: Message, user: User) -> Optional[Decision]:
        """Count ``msg``; on a spike keep its evidence in ``msg.volume_evidence``
        (the content verdict adds it) and, when extreme, apply the action:
        ``tempfail`` and ``lock`` answer 451 here, ``hold`` is noted in
        ``msg.volume_hold`` for :meth:`hold`."""
        if self.reports.own_report(msg):
            return None
        hashes = domain_hashes(msg.recipients, self.spec.max_domains)
        try:
            counts = self.enforce.store_call(self.store.volume_add, msg.identity_key, hashes,
                                             len(msg.recipients), self.spec)
        except StoreUnavailable:
            return store_down()
        if counts is None:                   # store down, policy accept
            return None
        got = assess(counts, self.settings)
        if not got.points:
            return None
        from ..spam.base import Evidence
        summary = got.summary(self.settings.window)
        msg.volume_evidence = (Evidence(EVIDENCE, got.points, summary),)
        action = self.settings.action if got.extreme else "none"
        log.info("volume spike from %s (+%.1f%s): %s", msg.identity_key, got.points,
                 f", {action}" if action != "none" else "", summary)
        if action == "none":
            return None
        if action == "hold":
            msg.volume_hold = summary         # after the content verdict: :meth:`hold`
            return None
        if action == "lock":
            if self.enforce.monitoring(user):
                msg.would.append(f"lock ({REASON}: {summary})")
                return None
            if self.limits.lock(msg, user, f"volume spike: {summary}", "volume") is not None:
                msg.lock_decision = None                # look again: the locked reply, as at RCPT
                return self.limits.lock_decision(msg, user)
            # the store could not lock it: defer this message at least
        w = duration(self.settings.window)
        d = self.enforce.block(msg, user, reject(
            "451", "4.7.1", f"Unusual volume from {msg.identity}: {counts.messages} messages to "
                            f"{counts.domains} domains in {w}; deferred, please try again later",
            REASON))
        if d.blocks:
            self.reports.report("volume", "tempfail", msg, user, reason=summary,
                                remedy=f"outpost lock {msg.identity_key}   (to suspend this sender)")
        return d

    def hold(self, msg: Message, user: User) -> None:
        """Hold a message whose volume is extreme (``action: hold``), once
        its content verdict is made and did not refuse it; a message the
        verdict holds already keeps its reason."""
        if not msg.volume_hold or msg.quarantine is not None:
            return
        if self.enforce.monitoring(user):
            msg.would.append(f"quarantine ({REASON}: {msg.volume_hold})")
            return
        msg.quarantine = f"Outpost: volume spike from {msg.identity_key} ({msg.volume_hold})"
        self.reports.report("volume", "quarantine", msg, user, reason=msg.volume_hold,
                            remedy=f"outpost quarantine release {msg.queue_id or 'QUEUE-ID'}   "
                                   f"(or: outpost lock {msg.identity_key})")
