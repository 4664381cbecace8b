"""The one store interface behind every piece of cross-message state.

Connection slots, rate-limit buckets, abuse events, locks and bulk
fingerprints all live here, so that several Outpost processes (one host:
sqlite) or several relays (a cluster: Redis) share them.  Every method is a
single atomic step in the backend.  Implementations: ``memory`` (one process,
tests), ``sqlite`` (one host, many processes), ``redis`` (a cluster; time is
taken from the Redis server).

Any backend failure raises :class:`StoreError`; callers apply the configured
``on_store_error`` policy.
"""

from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence


class StoreError(Exception):
    """The store could not answer (down, timeout, read-only, corrupt)."""


@dataclass(frozen=True)
class Bucket:
    """One rate-limit window applied to one key.

    ``limit`` units per ``window`` seconds; ``cost`` is what this request adds
    (1 for a message, the number of recipients for a recipient limit).
    ``label`` is what a user may see in a reply, e.g. ``"1000/1h"``.
    """

    key: str
    limit: int
    window: float
    cost: int = 1
    label: str = ""


@dataclass(frozen=True)
class HitResult:
    allowed: bool
    #: index into the buckets passed in of the bucket that refused (the one
    #: with the longest wait when several refuse); None when allowed.
    blocked: Optional[int] = None
    #: seconds until the refused request would fit; 0 when allowed.
    retry_after: float = 0.0


@dataclass(frozen=True)
class BucketState:
    key: str
    limit: int
    window: float
    used: int            # units currently counted against the limit
    resets_in: float     # seconds until the bucket is empty again
    label: str = ""


@dataclass(frozen=True)
class Lock:
    key: str                  # identity key, e.g. "webfarm/alice"
    reason: str
    since: float              # epoch seconds
    until: Optional[float]    # None: permanent until an operator unlocks
    auto_unlocks: int = 0     # how many locks of this key already expired by time
    by: str = "auto"          # "auto" or "operator"

    @property
    def permanent(self) -> bool:
        return self.until is None


@dataclass(frozen=True)
class FingerprintStats:
    messages: int     # messages seen with this fingerprint in the window (incl. this one)
    recipients: int   # recipients summed over those messages
    members: int      # distinct identities that sent it


@dataclass(frozen=True)
class VolumeSpec:
    """How :meth:`Store.volume_add` keeps an identity's volume record:
    counts of the current ``window`` (seconds; windows are aligned on
    multiples of it), a baseline per window that is an exponentially
    weighted average of closed windows (``decay`` is what a window's weight
    is multiplied by per window that follows: ``0.5 ** (window /
    half_life)``), at most ``max_domains`` distinct recipient domains
    counted per window and ``max_recent`` domains remembered (one not among
    them is *new*).  A record idle for ``ttl`` seconds is forgotten."""

    window: float
    decay: float
    ttl: float
    max_domains: int = 100
    max_recent: int = 100

    def __post_init__(self) -> None:
        if not self.window > 0 or not self.ttl > 0:
            raise ValueError(f"volume window and ttl must be > 0, got {self.window}, {self.ttl}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"volume decay must be in [0, 1), got {self.decay}")
        if not (1 <= self.max_domains <= 10000 and 1 <= self.max_recent <= 10000):
            raise ValueError("volume max_domains and max_recent must be 1..10000")


#: Longest domain hash :meth:`Store.volume_add` takes (characters).
VOLUME_HASH_MAX = 16


@dataclass(frozen=True)
class VolumeCounts:
    """An identity's volume (:meth:`Store.volume_add`): the current
    window's counts, this message included, and the baseline per window
    (0.0 for an identity seen for the first time)."""

    messages: int
    recipients: int
    domains: int            # distinct recipient domains (at most ``max_domains``)
    new_domains: int        # domains not among the identity's recent ones
    baseline: tuple[float, float, float, float]   # per window: messages, recipients, domains, new domains
    since: float            # store time the record began, whole seconds (now for a new identity)
def member_fingerprint(fp: str, member: str) -> str:
    """The key under which :meth:`Store.fingerprint_add_message` counts
    ``member``'s own messages of fingerprint ``fp`` (by default): ``fp``,
    ``:`` and a 24-digit hash of the member."""
    tag = hashlib.blake2b(member.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
    return f"{fp}:{tag}"


#: Periods of the message statistics (``stat_add`` / ``stat_read``): name ->
#: (bucket width in seconds, buckets kept).  ``m``: per minute for an hour,
#: ``h``: per hour for a day.
STAT_PERIODS: dict[str, tuple[float, int]] = {"m": (60.0, 60), "h": (3600.0, 24)}


def stat_buckets(period: str, now: float, count: int) -> list[int]:
    """Indexes of the ``count`` newest buckets of ``period`` at ``now``
    (the current one first)."""
    width, kept = STAT_PERIODS[period]
    if not 1 <= count <= kept:
        raise ValueError(f"stat_read: count must be 1..{kept} for period {period!r}")
    cur = int(now // width)
    return [cur - i for i in range(count)]


#: Longest text kept in one field of a :class:`DecisionEntry`.
DECISION_FIELD_MAX = 320


@dataclass(frozen=True)
class DecisionEntry:
    """One message's final answer in the decision log (``outpost panel``).

    Only what Outpost decided and the headers it stamped: never a body, never
    a header the client wrote.  Texts are cleaned and bounded when stored.
    """

    time: float                 # epoch seconds (the worker's clock when it was answered)
    action: str                 # accept | reject | tempfail | discard
    reason: str = ""            # rate_limit, spam, locked, ... ('' when accepted)
    queue_id: str = ""
    user: str = ""
    identity: str = ""
    login: str = ""
    client_ip: str = ""
    sender: str = ""
    recipients: int = 0
    score: Optional[float] = None
    spam_class: str = ""
    evidence: tuple[str, ...] = ()   # the strongest checks, ``name(points)``
    token: str = ""                  # its X-Outpost-ID
    reply: str = ""                  # the SMTP reply given ('' when accepted)
    quarantine: str = ""             # held with this reason

    @property
    def blocked(self) -> bool:
        return self.action in ("reject", "tempfail", "discard") or bool(self.quarantine)

    def to_json(self) -> str:
        # The fields as they are, in order (a frozen dataclass: its
        # ``__dict__`` holds them and nothing else; the evidence tuple is
        # written as a list): the same JSON as ``json.dumps(asdict(self))``,
        # whose deep copy cost more than the encoding (54 µs an entry
        # against 7 µs; tests/store/test_decisions.py compares them).
        return _compact_json(vars(self))

    @classmethod
    def from_json(cls, text: "str | bytes") -> "DecisionEntry":
        """The entry stored as ``text`` (unknown fields are ignored, so an
        older panel reads a newer relay's entries)."""
        data: dict[str, Any] = json.loads(text)
        names = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        data["evidence"] = tuple(str(e) for e in data.get("evidence") or ())
        return cls(**data)

#: ``json.dumps(..., separators=(",", ":"))`` without building an encoder per call.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode


class Store(abc.ABC):
    """Abstract store; see module docstring."""

    url: str = ""
    #: An outage of this store can end by a failover it follows by itself
    #: (Redis behind Sentinel): while serving locally, a
    #: :class:`~outpost.store.resilient.ResilientStore` then asks it in the
    #: background, every :data:`~outpost.store.resilient.WATCH_INTERVAL`,
    #: whether it answers again, instead of waiting for ``retry_interval``.
    follows_failover: bool = False

    # -- clock ---------------------------------------------------------
    @abc.abstractmethod
    def now(self) -> float:
        """Store time in epoch seconds (Redis: the server's TIME)."""

    # -- connection slots ------------------------------------------------
    @abc.abstractmethod
    def conn_acquire(self, ip: str, limit: int, slot: str) -> tuple[bool, int]:
        """Take a slot for ``ip`` unless ``limit`` are held.

        ``slot`` is unique per connection and starts with the owning
        process' ``"<host>:<pid>:"`` so that slots of dead processes can be
        reclaimed.  Returns (acquired, slots held now incl. this one if taken).
        """

    @abc.abstractmethod
    def conn_release(self, ip: str, slot: str) -> None:
        """Free a slot (idempotent)."""

    @abc.abstractmethod
    def conn_count(self, ip: str) -> int:
        ...

    @abc.abstractmethod
    def process_alive(self, host: str, pid: int) -> None:
        """Heartbeat of a serving process (slots of processes that stop
        beating, or whose pid is gone on this host, are reclaimed)."""

    @abc.abstractmethod
    def process_gone(self, host: str, pid: int) -> None:
        """Drop every slot held by that process (clean shutdown, or start-up
        of a new process that reuses the pid)."""

    # -- rate limits -----------------------------------------------------
    @abc.abstractmethod
    def hit(self, buckets: Sequence[Bucket], dry_run: bool = False) -> HitResult:
        """Atomically check all buckets and, if every one admits its cost,
        count it in all of them (nothing is counted when one refuses, nor
        when ``dry_run``)."""

    @abc.abstractmethod
    def peek(self, buckets: Sequence[Bucket]) -> list[BucketState]:
        ...

    @abc.abstractmethod
    def reset(self, key_prefix: str) -> int:
        """Forget the buckets, events and volume records (named
        ``vol:<key>`` here) under ``key_prefix``: a key equal
        to it or continuing it after ``:``; a prefix ending in ``:`` or ``/``
        takes every key that starts with it (``hits:webfarm/a`` never takes
        ``hits:webfarm/alice``; see :func:`~outpost.store.windows.key_in_prefix`).
        Returns how many were dropped."""

    # -- events (limit hits, spam verdicts) -------------------------------
    @abc.abstractmethod
    def record_event(self, key: str, window: float) -> int:
        """Record one event; return the number recorded within ``window``
        seconds, this one included."""

    # -- locks -------------------------------------------------------------
    @abc.abstractmethod
    def get_lock(self, key: str) -> Optional[Lock]:
        """The lock in force for ``key``, or None (an expired lock is not in
        force; its expiry increments ``auto_unlocks`` kept for the key)."""

    @abc.abstractmethod
    def set_lock(self, key: str, reason: str, duration: Optional[float],
                 by: str = "auto", max_auto_unlocks: Optional[int] = None) -> Lock:
        """Lock ``key`` for ``duration`` seconds (None: permanent).  When
        ``max_auto_unlocks`` is given and the key already expired that many
        locks, the new lock is permanent."""

    @abc.abstractmethod
    def remove_lock(self, key: str) -> bool:
        """Operator unlock: drops the lock and the auto-unlock history."""

    @abc.abstractmethod
    def list_locks(self) -> list[Lock]:
        ...

    # -- bulk fingerprints ---------------------------------------------------
    @abc.abstractmethod
    def fingerprint_add(self, fp: str, member: str, recipients: int,
                        window: float) -> FingerprintStats:
        """Count one message with content fingerprint ``fp`` from identity
        ``member`` to ``recipients`` recipients; return totals in the window."""

    def fingerprint_add_many(self, items: Sequence[tuple[str, str, int]],
                             window: float) -> list[FingerprintStats]:
        """:meth:`fingerprint_add` for several ``(fp, member, recipients)`` at
        once (a backend may do them in one transaction)."""
        return [self.fingerprint_add(fp, member, recipients, window) for fp, member, recipients in items]

    # -- volume per identity (core/volume.py) ----------------------------------
    @abc.abstractmethod
    def volume_add(self, key: str, domains: Sequence[str], recipients: int, spec: VolumeSpec,
                   dry_run: bool = False) -> VolumeCounts:
        """Count one message of identity ``key`` to ``recipients``
        recipients in ``domains`` (short hashes of its distinct recipient
        domains, at most ``spec.max_domains`` are used) in the identity's
        volume record (see :class:`VolumeSpec`), in one atomic step; return
        the counts with this message (``dry_run``: as if counted, nothing
        is written).  The record has a fixed upper size: two lists of at
        most ``max_domains`` and ``max_recent`` hashes and eight numbers."""
    def fingerprint_add_message(self, fps: Sequence[str], member: str, recipients: int,
                                window: float) -> list[tuple[FingerprintStats, FingerprintStats]]:
        """Count one message from identity ``member`` to ``recipients``
        recipients under each of its content fingerprints ``fps``; return,
        for each, (everybody's totals, ``member``'s own totals) in the
        window, this message included.

        By default each fingerprint is counted twice with
        :meth:`fingerprint_add_many`: as ``fp`` and as ``fp`` followed by a
        hash of the member (:func:`member_fingerprint`).  A backend may
        instead count each message once and derive the member's totals from
        everybody's entries (sqlite); past ``max_fingerprint_entries``
        messages of a fingerprint in the window, the member's totals then
        count only the entries kept."""
        items: list[tuple[str, str, int]] = []
        for fp in fps:
            items += [(fp, member, recipients), (member_fingerprint(fp, member), member, recipients)]
        stats = self.fingerprint_add_many(items, window)
        return [(stats[2 * i], stats[2 * i + 1]) for i in range(len(fps))]

    # -- message statistics (outpost stats / top) ------------------------------
    @abc.abstractmethod
    def stat_add(self, counts: Sequence[tuple[str, int]],
                 recent: Sequence[tuple[str, int]] = ()) -> None:
        """Add each ``(name, n)`` of ``counts`` to the counters of the
        current minute and hour bucket (see :data:`STAT_PERIODS`; buckets
        expire when they leave their period), and each of ``recent`` to the
        current minute's only, where at most ``settings.max_stat_names``
        names are kept per bucket (more new names are dropped): one call
        per flush of a process' counts."""

    @abc.abstractmethod
    def stat_read(self, period: str, count: int) -> dict[str, int]:
        """The counters summed over the ``count`` newest buckets of
        ``period`` (``m`` or ``h``), the current one included."""

    @abc.abstractmethod
    def stat_series(self, period: str, count: int,
                    names: Sequence[str]) -> list[dict[str, int]]:
        """The counters ``names`` of each of the ``count`` newest buckets of
        ``period``, the current one first (a name missing from a bucket is
        absent from its dict); ``m`` includes the recent identity names."""

    # -- decision log (outpost panel) -----------------------------------------
    @abc.abstractmethod
    def decision_add(self, entries: Sequence[DecisionEntry]) -> None:
        """Append to the decision log, which keeps the newest
        ``settings.max_decisions`` entries of at most
        ``settings.decision_ttl`` seconds (one call per flush of a process'
        answered messages)."""

    @abc.abstractmethod
    def decision_read(self, limit: int, offset: int = 0) -> list[DecisionEntry]:
        """Up to ``limit`` newest entries of the decision log, newest first,
        after skipping the ``offset`` newest (a page of the log)."""

    # -- small named blobs (operator-trained spam model, …) ------------------
    @abc.abstractmethod
    def put_blob(self, name: str, data: bytes) -> None:
        ...

    @abc.abstractmethod
    def get_blob(self, name: str) -> Optional[bytes]:
        ...

    @abc.abstractmethod
    def swap_blob(self, name: str, expected: Optional[bytes], data: bytes) -> bool:
        """Write ``data`` as blob ``name`` only if it still holds
        ``expected`` (None: there is none), atomically against every other
        writer of the store (other processes and relays too); whether it was
        written.  A read-modify-write reads with :meth:`get_blob`, computes,
        then swaps, and starts again when another writer came in between."""

    def close(self) -> None:  # noqa: B027 - an optional hook: stores without resources keep it  # pragma: no cover
        pass
