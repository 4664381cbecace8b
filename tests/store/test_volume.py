"""The volume record of an identity (``Store.volume_add``) on every backend
(memory, sqlite, Redis, Redis behind Sentinel), and its update rule with an
exact clock."""

from __future__ import annotations

import json
import math
import time

import pytest

from outpost.store import Store
from outpost.store.base import VolumeSpec
from outpost.store.memory import MemoryStore
from outpost.store.redis import RedisStore
from outpost.store.sqlite import SqliteStore

HOUR = VolumeSpec(window=3600.0, decay=0.5, ttl=7200.0)


def raw_record(store: Store, key: str) -> bytes:
    """The record as the backend keeps it (what its size bound is about)."""
    store = getattr(store, "inner", store)             # the backend inside its ResilientStore
    if isinstance(store, MemoryStore):
        return json.dumps(store._volume[key][0], separators=(",", ":")).encode()
    if isinstance(store, SqliteStore):
        with store._conn() as db:
            return db.execute("SELECT data FROM volume WHERE key = ?", (key,)).fetchone()[0].encode()
    assert isinstance(store, RedisStore)
    return bytes(store._r.get(f"{store._p}vol:{key}"))


def test_a_window_counts_messages_recipients_and_domains(store: Store) -> None:
    first = store.volume_add("farm/amy", ["d1", "d2"], 3, HOUR)
    assert (first.messages, first.recipients, first.domains, first.new_domains) == (1, 3, 2, 2)
    assert first.baseline == (0.0, 0.0, 0.0, 0.0)          # a new identity has none
    assert abs(first.since - store.now()) < 5
    again = store.volume_add("farm/amy", ["d2", "d3"], 2, HOUR)
    assert (again.messages, again.recipients, again.domains, again.new_domains) == (2, 5, 3, 3)
    same = store.volume_add("farm/amy", ["d1"], 1, HOUR)   # a known domain is not new
    assert (same.messages, same.domains, same.new_domains) == (3, 3, 3)
    assert same.since == first.since


def test_identities_are_counted_apart(store: Store) -> None:
    for _ in range(3):
        store.volume_add("farm/amy", ["d1"], 1, HOUR)
    other = store.volume_add("farm/bob", ["d1"], 1, HOUR)
    assert (other.messages, other.domains, other.new_domains) == (1, 1, 1)


def test_dry_run_counts_but_writes_nothing(store: Store) -> None:
    store.volume_add("farm/amy", ["d1"], 1, HOUR)
    looked = store.volume_add("farm/amy", ["d2"], 4, HOUR, dry_run=True)
    assert (looked.messages, looked.recipients, looked.new_domains) == (2, 5, 2)
    assert store.volume_add("farm/amy", ["d1"], 1, HOUR).messages == 2
    assert store.volume_add("farm/new", [], 0, HOUR, dry_run=True).messages == 1
    assert store.volume_add("farm/new", [], 0, HOUR).messages == 1     # the dry run stored nothing


def test_the_record_has_a_fixed_upper_size(store: Store) -> None:
    spec = VolumeSpec(window=3600.0, decay=0.5, ttl=7200.0, max_domains=5, max_recent=8)
    for i in range(20):
        got = store.volume_add("farm/amy", [f"{i:08x}", f"{i + 100:08x}"], 2, spec)
    assert got.domains == 5                       # counted up to max_domains
    assert got.new_domains == 40                  # every one was new
    # d00 fell out of the 8 recent ones: new again; the newest is not
    assert store.volume_add("farm/amy", [f"{0:08x}"], 1, spec).new_domains == 41
    assert store.volume_add("farm/amy", [f"{119:08x}"], 1, spec).new_domains == 41
    size = len(raw_record(store, "farm/amy"))
    # 5 + 8 hashes of 8 characters, their quotes and sequences, eight numbers
    assert size < 5 * 11 + 8 * 22 + 220, size
    many = store.volume_add("farm/amy", [f"{i:08x}" for i in range(1000)], 1000, spec)
    # at most max_domains of one message; d00 is among the recent ones
    assert many.domains == 5 and many.new_domains == 41 + 4
    assert len(raw_record(store, "farm/amy")) <= size + 20


def test_bad_arguments_are_refused(store: Store) -> None:
    with pytest.raises(ValueError):
        store.volume_add("farm/amy", ["d1"], -1, HOUR)
    with pytest.raises(ValueError):
        store.volume_add("farm/amy", ["x" * 17], 1, HOUR)
    with pytest.raises(ValueError):
        VolumeSpec(window=60.0, decay=1.0, ttl=60.0)


def test_a_closed_window_feeds_the_baseline(store: Store) -> None:
    """Real time (Redis: the server's): three messages in one window, the
    next message in a later one.  The baseline is the closed window's counts
    times (1 - decay), decayed once more per empty window between (a stall
    of the machine may add some)."""
    spec = VolumeSpec(window=1.0, decay=0.5, ttl=60.0)
    start = store.now()
    for _ in range(3):
        store.volume_add("farm/amy", ["d1", "d2"], 2, spec)
    window = int(start // 1.0)
    time.sleep(max(0.0, (window + 1) * 1.0 - store.now()) + 0.1)   # into a later window
    got = store.volume_add("farm/amy", ["d3"], 1, spec)
    assert (got.messages, got.recipients, got.domains, got.new_domains) == (1, 1, 1, 1)
    closed_msgs = got.baseline[0] / 0.5           # 3 * 0.5**k for the k empty windows
    k = round(-math.log2(closed_msgs / 3)) if closed_msgs > 0 else -1
    assert k >= 0 and got.baseline == pytest.approx(
        (1.5 * 0.5 ** k, 3.0 * 0.5 ** k, 1.0 * 0.5 ** k, 1.0 * 0.5 ** k))


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_the_baseline_with_an_exact_clock() -> None:
    clock = FakeClock(6000.0)
    store = MemoryStore(clock=clock)
    spec = VolumeSpec(window=600.0, decay=0.75, ttl=86400.0)
    for _ in range(4):
        store.volume_add("farm/amy", ["d1", "d2"], 3, spec)
    clock.t += 600.0                                   # the next window
    got = store.volume_add("farm/amy", ["d3"], 1, spec)
    assert got.baseline == pytest.approx((1.0, 3.0, 0.5, 0.5))    # (4, 12, 2, 2) * 0.25
    clock.t += 3 * 600.0                               # two empty windows between
    got = store.volume_add("farm/amy", [], 1, spec)
    b = (1.0 * 0.75 + 0.25, 3.0 * 0.75 + 0.25, 0.5 * 0.75 + 0.25, 0.5 * 0.75 + 0.25)
    assert got.baseline == pytest.approx(tuple(x * 0.75 ** 2 for x in b))
    clock.t -= 1200.0                                  # the clock goes back: same window
    assert store.volume_add("farm/amy", [], 1, spec).messages == 2
    clock.t += 1200.0 + 86400.0 + 600.0                # idle past the ttl: forgotten
    fresh = store.volume_add("farm/amy", [], 1, spec)
    assert fresh.baseline == (0.0, 0.0, 0.0, 0.0) and fresh.since == math.floor(clock.t)


def test_reset_forgets_the_record_of_that_identity_only(store: Store) -> None:
    for key in ("farm/amy", "farm/amyx", "farm/bob"):
        store.volume_add(key, ["d1"], 1, HOUR)
    assert store.reset("vol:farm/amy") == 1                 # not farm/amyx
    assert store.volume_add("farm/amy", ["d1"], 1, HOUR).messages == 1
    assert store.volume_add("farm/amyx", ["d1"], 1, HOUR).messages == 2
    assert store.reset("hits:farm/bob") == 0 and store.reset("rl:id:farm/bob:") == 0
    assert store.volume_add("farm/bob", ["d1"], 1, HOUR).messages == 2


def test_the_read_only_store_of_outpost_scan_reads_but_never_writes() -> None:
    from outpost.store.readonly import ReadOnlyStore
    real = MemoryStore()
    real.volume_add("farm/amy", ["d1"], 1, HOUR)
    ro = ReadOnlyStore(real)
    assert ro.volume_add("farm/amy", ["d2"], 1, HOUR).messages == 2
    assert ro.volume_add("farm/amy", ["d2"], 1, HOUR).messages == 2
    assert real.volume_add("farm/amy", [], 0, HOUR, dry_run=True).messages == 2
