"""One suite for every store backend (memory, sqlite, real Redis)."""

from __future__ import annotations

import os
import random
import socket
import stat
import subprocess
import sys
import threading
import time
from collections import deque

import pytest

from outpost.store import Bucket, Store, StoreSettings, open_store
from outpost.store.memory import MemoryStore

WORKER = os.path.join(os.path.dirname(__file__), "worker.py")
HOST = socket.gethostname()


#: Lifetime (s) of a window or lock that must still run when the next few
#: statements check it: longer than a stalled, shared 2-core machine pauses.
ALIVE = 2.0
#: Waited past an expiry.  Sleeping there cannot undershoot: a stall only
#: makes the wait longer.
PAST = 0.1


def admitted(store: Store, buckets: list[Bucket], n: int) -> list[bool]:
    return [store.hit(buckets).allowed for _ in range(n)]


# -- rate limits: sliding window of 60 subwindows -------------------------------------

class FakeClock:
    """A settable clock for MemoryStore(clock=...)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_limit_at_once_then_refused(store: Store) -> None:
    b = [Bucket("u/alice", 5, 2.0, label="5/2s")]
    assert admitted(store, b, 7) == [True] * 5 + [False] * 2
    res = store.hit(b)
    assert not res.allowed and res.blocked == 0
    subwindow = 2.0 / 60
    # the oldest admitted unit leaves one window after the end of its subwindow
    assert 1.5 < res.retry_after <= 2.0 + subwindow + 0.001
    assert store.peek(b)[0].used == 5


def test_refused_until_oldest_subwindow_expires(store: Store) -> None:
    # Margins of 1 s each side of the moment the first unit comes back: the
    # check before it, and the second hit 1 s after the first.
    margin, window = 1.0, 2.5
    b = [Bucket("u/spread", 3, window)]
    start = time.time()
    for offset in (0.0, margin, margin + 0.1):   # the limit, spread over the window
        time.sleep(max(0.0, start + offset - time.time()))
        assert store.hit(b).allowed
    refused = store.hit(b)
    asked = time.time()
    assert not refused.allowed
    # the first hit (at ~start) is counted until ~start + window + one subwindow
    assert window - (asked - start) - 0.1 < refused.retry_after <= window + window / 60 + 0.001
    time.sleep(max(0.0, asked + refused.retry_after - margin - time.time()))
    assert not store.hit(b).allowed                # still inside the window
    time.sleep(max(0.0, asked + refused.retry_after - time.time()))
    assert admitted(store, b, 2) == [True, False]  # exactly the one unit came back
    assert store.peek(b)[0].used == 3


def test_window_edges_exact_clock() -> None:
    clock = FakeClock(1000.0)
    store = MemoryStore(clock=clock)
    b = [Bucket("u/edge", 3, 3.0)]                 # subwindows of 50 ms
    for t in (1000.0, 1001.0, 1002.0):
        clock.t = t
        assert store.hit(b).allowed
    clock.t = 1002.5
    res = store.hit(b)
    assert not res.allowed and 0.5 < res.retry_after <= 0.55 + 0.001
    clock.t = 1002.999                             # an exact log still counts 1000.0 here
    assert not store.hit(b).allowed
    clock.t = 1002.5 + res.retry_after - 0.002
    assert not store.hit(b).allowed
    clock.t = 1002.5 + res.retry_after
    assert store.hit(b).allowed
    state = store.peek(b)[0]
    assert state.used == 3 and 3.0 < state.resets_in <= 3.05 + 0.001
    clock.t += state.resets_in
    assert store.peek(b)[0].used == 0 and store.peek(b)[0].resets_in == 0.0


def test_clock_going_back_forgets_nothing() -> None:
    clock = FakeClock(2000.0)
    store = MemoryStore(clock=clock)
    b = [Bucket("u/back", 2, 60.0)]
    assert admitted(store, b, 2) == [True, True]
    clock.t = 1990.0                               # wall clock stepped back 10 s
    assert store.peek(b)[0].used == 2
    assert not store.hit(b).allowed


def _admitted_times(hit, now, sleep, rng: random.Random, bucket: Bucket,
                    span: float) -> list[tuple[float, float]]:
    """Hit at random times for ``span`` seconds; after some refusals wait
    exactly ``retry_after`` (then the hit must pass).  Returns (before, after)
    times of the admitted hits."""
    times: list[tuple[float, float]] = []
    end = now() + span
    mean_gap = bucket.window / bucket.limit / 3        # ~3x the allowed rate
    while now() < end:
        before = now()
        res = hit([bucket])
        after = now()
        if res.allowed:
            times.append((before, after))
            sleep(rng.expovariate(1 / mean_gap))
        elif rng.random() < 0.3:                     # probe the edge the store names
            sleep(res.retry_after)
            before = now()
            assert hit([bucket]).allowed, "refused after waiting retry_after"
            times.append((before, now()))
        else:
            sleep(rng.expovariate(1 / mean_gap))
    return times


def _assert_never_above_limit(times: list[tuple[float, float]], bucket: Bucket) -> None:
    """No ``limit + 1`` admitted hits fit into one span of ``window`` seconds
    (judged from call start/end times, so real clocks cannot fake a failure)."""
    k = bucket.limit
    assert len(times) > 2 * k                        # the property was exercised
    for first, last in zip(times, times[k:]):
        assert last[1] - first[0] > bucket.window, (first, last)


def test_never_more_than_limit_in_any_window(store: Store, backend: str) -> None:
    rng = random.Random(20261127)
    if backend == "memory":                          # exact clock: many windows, no sleeping
        clock = FakeClock(5000.0)
        exact = MemoryStore(clock=clock)
        bucket = Bucket("prop/mem", 7, 3.0)

        def advance(dt: float) -> None:
            clock.t += dt
        times = _admitted_times(exact.hit, clock, advance, rng, bucket, 60.0)
    else:                                            # real time: 2.5 windows
        bucket = Bucket("prop/real", 4, 1.2)
        times = _admitted_times(store.hit, time.time, time.sleep, rng, bucket, 3.0)
    _assert_never_above_limit(times, bucket)


def test_bucket_named_twice_counts_both_costs(store: Store) -> None:
    twice = [Bucket("u/dup", 3, 60.0), Bucket("u/dup", 3, 60.0)]
    assert store.hit(twice).allowed
    assert store.peek(twice[:1])[0].used == 2
    res = store.hit(twice)                         # 2 + 1 fits, 2 + 1 + 1 does not
    assert not res.allowed and res.blocked == 1 and 59.0 < res.retry_after <= 61.001
    assert store.peek(twice[:1])[0].used == 2 and store.hit(twice[:1]).allowed


def test_strictest_window_decides(store: Store) -> None:
    b = [Bucket("u/bob", 100, 3600.0, label="100/1h"), Bucket("u/bob", 3, 60.0, label="3/1m")]
    assert admitted(store, b, 4) == [True] * 3 + [False]
    res = store.hit(b)
    assert res.blocked == 1 and 59.0 < res.retry_after <= 61.001
    hourly, minute = store.peek(b)
    assert (hourly.used, minute.used) == (3, 3)
    assert hourly.label == "100/1h"


def test_longest_wait_is_reported(store: Store) -> None:
    short, long_ = Bucket("id/x", 2, 10.0), Bucket("user/x", 2, 100.0)
    assert admitted(store, [short, long_], 2) == [True, True]
    res = store.hit([short, long_])
    assert not res.allowed and res.blocked == 1 and 98.0 < res.retry_after <= 101.668


def test_refused_hits_count_nowhere(store: Store) -> None:
    wide, narrow = Bucket("user/c", 5, 60.0), Bucket("ident/c", 2, 60.0)
    assert admitted(store, [wide, narrow], 4) == [True, True, False, False]
    assert [s.used for s in store.peek([wide, narrow])] == [2, 2]
    assert admitted(store, [wide], 4) == [True, True, True, False]
    assert store.peek([wide])[0].used == 5


def test_cost_above_limit_never_passes(store: Store) -> None:
    res = store.hit([Bucket("rcpt/d", 5, 60.0, cost=6)])
    assert (res.allowed, res.blocked, res.retry_after) == (False, 0, 60.0)
    assert store.peek([Bucket("rcpt/d", 5, 60.0)])[0].used == 0
    assert store.hit([Bucket("rcpt/d", 5, 60.0, cost=5)]).allowed
    assert not store.hit([Bucket("rcpt/d", 5, 60.0, cost=1)]).allowed


def test_dry_run_counts_nothing(store: Store) -> None:
    b = [Bucket("u/dry", 2, 60.0)]
    assert store.hit(b, dry_run=True).allowed
    assert store.peek(b)[0].used == 0
    assert admitted(store, b, 2) == [True, True]
    res = store.hit(b, dry_run=True)
    assert not res.allowed and res.retry_after > 59.0
    assert store.peek(b)[0].used == 2


def test_peek(store: Store) -> None:
    b = Bucket("u/peek", 5, 60.0, label="5/1m")
    empty = store.peek([b])[0]
    assert (empty.used, empty.resets_in, empty.limit, empty.window) == (0, 0.0, 5, 60.0)
    admitted(store, [b], 3)
    state = store.peek([b])[0]
    assert state.used == 3 and 59.0 < state.resets_in <= 61.0
    assert state.key == "u/peek" and state.label == "5/1m"
    costly = Bucket("u/peek", 5, 60.0, cost=2)
    assert store.hit([costly]).allowed
    assert store.peek([b])[0].used == 5
    assert not store.hit([b]).allowed and store.peek([b])[0].used == 5


def test_reset_by_prefix(store: Store) -> None:
    a, b, c = Bucket("u/a", 3, 60.0), Bucket("u/b", 3, 60.0), Bucket("v/c", 3, 60.0)
    for bucket in (a, b, c):
        store.hit([bucket])
    store.record_event("u/events", 60.0)
    assert store.reset("u/") == 3
    assert [s.used for s in store.peek([a, b, c])] == [0, 0, 1]
    assert store.record_event("u/events", 60.0) == 1
    assert store.reset("nothing/") == 0


def test_bad_buckets_are_rejected(store: Store) -> None:
    with pytest.raises(ValueError):
        store.hit([Bucket("x", 0, 60.0)])
    with pytest.raises(ValueError):
        store.hit([Bucket("x", 5, 0.0)])


# -- events ---------------------------------------------------------------------------

def test_events_sliding_window(store: Store) -> None:
    assert [store.record_event("spam/e", ALIVE) for _ in range(3)] == [1, 2, 3]
    assert store.record_event("spam/other", ALIVE) == 1
    time.sleep(ALIVE + PAST)
    assert store.record_event("spam/e", ALIVE) == 1


def test_events_are_bounded(make_store) -> None:
    store = make_store(max_events=5)
    assert [store.record_event("spam/b", 60.0) for _ in range(8)] == [1, 2, 3, 4, 5, 5, 5, 5]


# -- locks ------------------------------------------------------------------------------

def test_lock_lifecycle_and_escalation(store: Store) -> None:
    key = "webfarm/alice"
    assert store.get_lock(key) is None and store.list_locks() == []
    lock = store.set_lock(key, "5 spam in 10m", ALIVE)
    assert (lock.key, lock.reason, lock.by, lock.auto_unlocks) == (key, "5 spam in 10m", "auto", 0)
    assert lock.until is not None and abs(lock.until - lock.since - ALIVE) < 1e-3
    assert abs(lock.since - store.now()) < 2.0
    assert store.get_lock(key) == lock
    assert store.list_locks() == [lock]
    time.sleep(ALIVE + PAST)
    assert store.get_lock(key) is None                    # expired: one auto-unlock
    assert store.list_locks() == []
    second = store.set_lock(key, "again", 0.3, max_auto_unlocks=2)
    assert not second.permanent and second.auto_unlocks == 1
    time.sleep(0.35)
    assert store.list_locks() == []                       # expiry seen by list_locks
    third = store.set_lock(key, "third time", 0.3, max_auto_unlocks=2)
    assert third.permanent and third.until is None and third.auto_unlocks == 2
    time.sleep(0.35)
    assert store.get_lock(key) == third                   # permanent: still in force
    assert store.remove_lock(key) is True
    assert store.get_lock(key) is None
    fresh = store.set_lock(key, "after operator unlock", 0.3, max_auto_unlocks=2)
    assert not fresh.permanent and fresh.auto_unlocks == 0  # history was cleared
    assert store.remove_lock("nobody") is False


def test_operator_lock_and_listing(store: Store) -> None:
    op = store.set_lock("farm/zed", "abuse desk", None, by="operator")
    timed = store.set_lock("farm/amy", "spam", 60.0)
    assert op.permanent and op.by == "operator"
    assert [lk.key for lk in store.list_locks()] == ["farm/amy", "farm/zed"]
    assert store.list_locks()[0] == timed
    assert store.remove_lock("farm/zed") and [lk.key for lk in store.list_locks()] == ["farm/amy"]


def test_sqlite_lock_set_elsewhere_is_seen_at_once(tmp_path, monkeypatch) -> None:
    """A worker answers "not locked" from the locked keys it has read, until
    the generation in ``<db>-conn`` moves: a lock or unlock by another
    process (here: another store on the same file, e.g. ``outpost lock``)
    is seen by the next message."""
    from outpost.store import sqlite as sq
    worker = sq.SqliteStore(str(tmp_path / "state.db"))
    operator = sq.SqliteStore(str(tmp_path / "state.db"))
    try:
        assert worker.get_lock("farm/amy") is None            # warms the worker's keys
        operator.set_lock("farm/amy", "abuse desk", None, by="operator")
        assert worker.get_lock("farm/amy").reason == "abuse desk"
        assert worker.get_lock("farm/bob") is None
        operator.remove_lock("farm/amy")
        assert worker.get_lock("farm/amy") is None
        short = operator.set_lock("farm/cy", "spam", ALIVE)
        assert worker.get_lock("farm/cy") == short
        time.sleep(ALIVE + PAST)
        assert worker.get_lock("farm/cy") is None              # expired (and settled)
        monkeypatch.setattr(sq, "_LOCKED_KEYS_MAX", 1)         # too many to keep: ask each time
        operator.set_lock("farm/a", "x", None)
        operator.set_lock("farm/b", "y", None)
        assert worker.get_lock("farm/b").reason == "y" and worker.get_lock("farm/c") is None
    finally:
        worker.close()
        operator.close()


# -- fingerprints, blobs ------------------------------------------------------------------

def test_fingerprints(store: Store) -> None:
    assert tuple(vars_of(store.fingerprint_add("fp1", "alice", 3, ALIVE))) == (1, 3, 1)
    assert tuple(vars_of(store.fingerprint_add("fp1", "bob", 2, ALIVE))) == (2, 5, 2)
    assert tuple(vars_of(store.fingerprint_add("fp1", "alice", 1, ALIVE))) == (3, 6, 2)
    assert tuple(vars_of(store.fingerprint_add("fp2", "carol", 7, ALIVE))) == (1, 7, 1)
    time.sleep(ALIVE + PAST)
    assert tuple(vars_of(store.fingerprint_add("fp1", "dave", 4, ALIVE))) == (1, 4, 1)


def test_fingerprints_are_bounded(make_store) -> None:
    store = make_store(max_fingerprint_entries=3)
    for member in ("a", "b", "c", "d"):
        stats = store.fingerprint_add("fpb", member, 2, 60.0)
    assert (stats.messages, stats.recipients, stats.members) == (3, 6, 3)


def test_fingerprint_add_message(store: Store) -> None:
    """One message counted under each of its fingerprints: everybody's
    totals and the sender's own, on every backend."""
    def add(member: str, rcpts: int, fps=("fpm1", "fpm2")) -> list[tuple[tuple, tuple]]:
        return [(vars_of(everybody), vars_of(mine))
                for everybody, mine in store.fingerprint_add_message(list(fps), member, rcpts, ALIVE)]
    assert add("alice", 3) == [((1, 3, 1), (1, 3, 1))] * 2
    assert add("bob", 2) == [((2, 5, 2), (1, 2, 1))] * 2
    assert add("alice", 4, ("fpm1",)) == [((3, 9, 2), (2, 7, 1))]
    assert add("carol", 1, ("fpm2", "fpm3")) == [((3, 6, 3), (1, 1, 1)), ((1, 1, 1), (1, 1, 1))]
    assert store.fingerprint_add_message([], "alice", 1, ALIVE) == []
    time.sleep(ALIVE + PAST)
    assert add("alice", 5, ("fpm1",)) == [((1, 5, 1), (1, 5, 1))]


def test_fingerprint_add_message_bounded(make_store) -> None:
    store = make_store(max_fingerprint_entries=3)
    for member in ("a", "b", "a", "c"):
        (everybody, mine), = store.fingerprint_add_message(["fpmb"], member, 2, 60.0)
    assert vars_of(everybody) == (3, 6, 3)
    assert vars_of(mine) == (1, 2, 1)


def test_fingerprint_add_many_is_add_one_by_one(make_store) -> None:
    """Items in one call (a fingerprint twice, past the bound) count as
    fingerprint_add of each in turn."""
    store = make_store(max_fingerprint_entries=3)
    items = [("m1", "a", 2), ("m2", "b", 1), ("m1", "b", 4), ("m1", "a", 1), ("m1", "c", 3),
             ("m3", "a", 0), ("m2", "b", 5)]
    got = [vars_of(s) for s in store.fingerprint_add_many(items, 60.0)]
    want = [vars_of(store.fingerprint_add(f"one-{fp}", member, rcpts, 60.0))
            for fp, member, rcpts in items]
    assert got == want
    assert store.fingerprint_add_many([], 60.0) == []


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_redis_fingerprints_of_a_message_in_one_round_trip(store: Store) -> None:
    import redis
    r = redis.Redis.from_url(store.url)

    def scripts_run() -> int:
        stats = r.info("commandstats")
        return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))

    try:
        store.fingerprint_add_message(["rt0"], "alice", 1, 60.0)       # loads the script
        before = scripts_run()
        got = store.fingerprint_add_message([f"rt{i}" for i in range(6)], "alice", 2, 60.0)
        assert scripts_run() - before == 1
        assert [(vars_of(a), vars_of(b)) for a, b in got] == \
            [((2, 3, 1), (2, 3, 1))] + [((1, 2, 1), (1, 2, 1))] * 5
    finally:
        r.close()


def test_fingerprint_add_message_checks_arguments(store: Store) -> None:
    with pytest.raises(ValueError):
        store.fingerprint_add_message(["fpx"], "a", -1, 60.0)
    with pytest.raises(ValueError):
        store.fingerprint_add_message(["fpx"], "a", 1, 0)


def vars_of(stats) -> tuple[int, int, int]:
    return stats.messages, stats.recipients, stats.members


def test_blobs(store: Store) -> None:
    assert store.get_blob("model") is None
    data = bytes(range(256)) * 10
    store.put_blob("model", data)
    assert store.get_blob("model") == data
    store.put_blob("model", b"v2\x00")
    assert store.get_blob("model") == b"v2\x00"


def test_swap_blob_writes_only_over_the_expected_value(store: Store) -> None:
    assert not store.swap_blob("m", b"", b"x")         # absent is not empty
    assert store.get_blob("m") is None
    assert store.swap_blob("m", None, b"")
    assert not store.swap_blob("m", None, b"x")        # empty is not absent
    assert store.swap_blob("m", b"", b"v1")
    big = bytes(range(256)) * 4000
    assert not store.swap_blob("m", b"v0", big)
    assert store.get_blob("m") == b"v1"
    assert store.swap_blob("m", b"v1", big)
    assert not store.swap_blob("m", big[:-1] + b"?", b"v3")
    assert store.swap_blob("m", big, b"v3\x00")
    assert store.get_blob("m") == b"v3\x00"


# -- connection slots -----------------------------------------------------------------------

def test_conn_slots(store: Store) -> None:
    pid = os.getpid()
    slot = [f"{HOST}:{pid}:{n}" for n in range(4)]
    store.process_alive(HOST, pid)
    assert store.conn_acquire("192.0.2.1", 2, slot[0]) == (True, 1)
    assert store.conn_acquire("192.0.2.1", 2, slot[1]) == (True, 2)
    assert store.conn_acquire("192.0.2.1", 2, slot[2]) == (False, 2)
    assert store.conn_acquire("192.0.2.1", 2, slot[0]) == (True, 2)   # already held
    assert store.conn_acquire("2001:db8::1", 2, slot[3]) == (True, 1)
    store.conn_release("192.0.2.1", slot[0])
    store.conn_release("192.0.2.1", slot[0])                           # idempotent
    assert store.conn_count("192.0.2.1") == 1
    store.process_gone(HOST, pid)
    assert store.conn_count("192.0.2.1") == 0 and store.conn_count("2001:db8::1") == 0


@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
def test_slots_of_killed_process_are_reclaimed(store: Store) -> None:
    ip = "198.51.100.9"
    heartbeat = 1.0
    child = subprocess.Popen(
        [sys.executable, WORKER, "slots", store.url, store.settings.key_prefix, ip, "3",
         str(heartbeat)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        mine = f"{HOST}:{os.getpid()}:1"
        assert store.conn_count(ip) == 3
        assert store.conn_acquire(ip, 3, mine) == (False, 3)
    finally:
        child.kill()                               # SIGKILL: no clean-up of its own
        child.wait(timeout=10)
        child.stdout.close()
    if store.url.startswith("redis"):
        time.sleep(heartbeat + 0.1)               # its heartbeat runs out
    assert store.conn_acquire(ip, 3, mine) == (True, 1)
    assert store.conn_count(ip) == 1


# -- atomicity under concurrency ---------------------------------------------------------------

def test_race_exactly_limit_admitted_threads(store: Store) -> None:
    bucket = [Bucket("race/threads", 100, 60.0)]
    counts = [0] * 20
    start = threading.Barrier(20)

    def run(i: int) -> None:
        start.wait()
        for _ in range(10):
            counts[i] += store.hit(bucket).allowed

    threads = [threading.Thread(target=run, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 100


@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
def test_race_exactly_limit_admitted_processes(store: Store) -> None:
    start = str(time.time() + 1.0)
    procs = [subprocess.Popen([sys.executable, WORKER, "hammer", store.url,
                               store.settings.key_prefix, "race/procs", "100", "20", "10",
                               start], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    per_process = [int(out) for out in outputs]
    assert sum(per_process) == 100
    assert store.peek([Bucket("race/procs", 100, 60.0)])[0].used == 100


@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
def test_race_connection_slots_exactly_limit_across_processes(store: Store) -> None:
    """Two processes x 10 threads race for slots of one IP: exactly the
    limit is taken (sqlite: the shared slot table, under its flock)."""
    ip = "198.51.100.77"
    start = str(time.time() + 1.0)
    procs = [subprocess.Popen([sys.executable, WORKER, "grab", store.url, store.settings.key_prefix,
                               ip, "30", "10", "5", start], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.stdout.readline() for p in procs]        # both alive, holding their slots
    for p in procs:
        p.stdin.close()
        p.wait(timeout=60)
        p.stdout.close()
    assert [p.returncode for p in procs] == [0, 0]
    assert sum(int(out) for out in outputs) == 30


def test_sqlite_dry_run_takes_no_write_lock(tmp_path) -> None:
    """The look at the limits at RCPT writes nothing: it answers while
    another process holds the write lock (it used to queue for it)."""
    import fcntl

    from outpost.store.sqlite import SqliteStore
    store = SqliteStore(str(tmp_path / "state.db"))
    b = [Bucket("dry/w", 1, 60.0)]
    assert store.hit(b).allowed
    answers: list[bool] = []
    fd = os.open(str(tmp_path / "state.db-writer"), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)                  # another writer's turn
        t = threading.Thread(target=lambda: answers.append(store.hit(b, dry_run=True).allowed))
        t.start()
        t.join(10)
        assert answers == [False]                       # answered, from the count made above
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        t.join(10)
        store.close()


def test_sqlite_counts_a_message_once_per_fingerprint(tmp_path) -> None:
    """fingerprint_add_message stores one entry per fingerprint: the
    sender's totals come from everybody's entries (half the writes)."""
    import sqlite3

    from outpost.store.sqlite import SqliteStore
    store = SqliteStore(str(tmp_path / "state.db"))
    try:
        store.fingerprint_add_message(["fa", "fb", "fc"], "alice", 2, 60.0)
        store.fingerprint_add_message(["fa"], "bob", 1, 60.0)
    finally:
        store.close()
    db = sqlite3.connect(str(tmp_path / "state.db"))
    try:
        rows = db.execute("SELECT fp, member FROM fingerprint ORDER BY fp, member").fetchall()
    finally:
        db.close()
    assert rows == [("fa", "alice"), ("fa", "bob"), ("fb", "alice"), ("fc", "alice")]


def test_sqlite_upgrade_keeps_the_rate_limit_counts(tmp_path) -> None:
    """A database of an earlier version keeps its subwindows in ``rl_slot``:
    the first start copies those still counting to ``rl_subwindow`` (once:
    a later reset is not undone by the next start) and leaves the old table."""
    import sqlite3

    from outpost.store.sqlite import SqliteStore
    from outpost.store.windows import subwindow_expiry, subwindow_index
    path = str(tmp_path / "state.db")
    now = time.time()
    cur = subwindow_index(now, 60.0)
    old = sqlite3.connect(path)
    old.executescript("CREATE TABLE rl_slot (id TEXT NOT NULL, slot INTEGER NOT NULL, n INTEGER NOT NULL,"
                      " expires REAL NOT NULL, PRIMARY KEY (id, slot)) WITHOUT ROWID;")
    old.executemany("INSERT INTO rl_slot VALUES (?, ?, ?, ?)",
                    [("up/a@60", cur, 3, subwindow_expiry(cur, 60.0)),
                     ("up/gone@60", cur - 200, 5, subwindow_expiry(cur - 200, 60.0))])
    old.commit()
    old.close()
    store = SqliteStore(path)
    try:
        assert store.peek([Bucket("up/a", 4, 60.0)])[0].used == 3
        assert store.hit([Bucket("up/a", 4, 60.0)]).allowed
        assert not store.hit([Bucket("up/a", 4, 60.0)]).allowed
        assert store.reset("up/a") == 1
    finally:
        store.close()
    again = SqliteStore(path)
    try:
        assert again.peek([Bucket("up/a", 4, 60.0)])[0].used == 0
    finally:
        again.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT count(*) FROM rl_slot").fetchone()[0] == 2
        assert db.execute("SELECT count(*) FROM rl_subwindow").fetchone()[0] == 0
    finally:
        db.close()


def test_sqlite_sweep_deletes_a_backlog_in_steps(tmp_path, monkeypatch) -> None:
    """A sweep holds the write lock in a message's transaction: it deletes
    at most ``_SWEEP_ROWS`` expired rows of a table, and the next
    transactions go on with the rest (one statement took 0.9 s for a
    minute of fingerprints at 100 msgs/s)."""
    import sqlite3

    from outpost.store import sqlite as sqlite_store
    monkeypatch.setattr(sqlite_store, "_SWEEP_ROWS", 3)
    store = sqlite_store.SqliteStore(str(tmp_path / "state.db"), StoreSettings(sweep_interval=3600))
    db = sqlite3.connect(str(tmp_path / "state.db"))
    try:
        store.fingerprint_add_message([f"old{i}" for i in range(7)], "a", 1, 0.05)
        time.sleep(0.05 + PAST)
        store._next_sweep = 0.0                          # the hour is up
        left = []
        for n in range(4):
            store.hit([Bucket(f"sweep/{n}", 10, 60.0)])
            left.append(db.execute("SELECT count(*) FROM fingerprint").fetchone()[0])
        assert left == [4, 1, 0, 0]
    finally:
        db.close()
        store.close()


def test_memory_sweep_forgets_the_fingerprints_due_and_only_those() -> None:
    """The memory store (also each worker's fallback under
    ``on_store_error: local``) sweeps the fingerprints whose window has
    passed since their last count, found in a queue of their ends (a pass
    over every fingerprint held the store's mutex 0.55 s at 30 000 messages
    in the window, ``bench.fingerprint_store --sweep``).  One counted again
    since is kept and queued for its new end, and a fingerprint has one
    entry in the queue however often it is counted (a bulk run does not
    grow the queue by one a message)."""
    clock = FakeClock(1000.0)
    store = MemoryStore(StoreSettings(sweep_interval=1.0), clock=clock)
    store.fingerprint_add("a", "m", 1, 10.0)
    store.fingerprint_add("b", "m", 1, 10.0)
    clock.t = 1005.0
    store.fingerprint_add("a", "m", 1, 10.0)             # a lives on until 1015
    store.fingerprint_add("c", "m", 1, 10.0)
    for _ in range(100):                                  # one queued entry per fingerprint,
        store.fingerprint_add("c", "m", 1, 10.0)         # however often it is counted
    assert len(store._fingerprint_due) == 3
    clock.t = 1012.0
    store.hit([Bucket("sweep/t", 10, 60.0)])             # a sweep
    assert sorted(store._fingerprints) == ["a", "c"]
    assert store._fingerprint_due == deque([(1015.0, "c"), (1015.0, "a")])   # a queued again
    clock.t = 1016.0
    store.hit([Bucket("sweep/t", 10, 60.0)])
    assert sorted(store._fingerprints) == []
    assert not store._fingerprint_due
    assert store.fingerprint_add("a", "m", 1, 10.0).messages == 1   # counted afresh


def test_sqlite_side_files_follow_the_database(tmp_path) -> None:
    """``<db>-writer`` (the writers' lock) and ``<db>-conn`` (connection
    slots) are created next to the database with its permission bits, and
    owned like it when root opens a database that another user owns."""
    from outpost.store.sqlite import SqliteStore
    path = tmp_path / "state.db"
    store = SqliteStore(str(path))
    store.conn_acquire("192.0.2.1", 5, f"{HOST}:{os.getpid()}:1")
    store.put_blob("x", b"1")                          # a write: takes the writer lock
    side = [tmp_path / "state.db-writer", tmp_path / "state.db-conn"]
    mode = stat.S_IMODE(path.stat().st_mode)
    for f in side:
        assert f.exists()
        assert stat.S_IMODE(f.stat().st_mode) & 0o444 == 0o444 & mode, f
    assert stat.S_IMODE(side[1].stat().st_mode) == mode & 0o666
    store.close()
    if os.geteuid() != 0:
        return
    os.chown(path, 65534, 65534)                       # nobody
    for f in side:
        f.unlink()
    again = SqliteStore(str(path))
    try:
        again.conn_release("192.0.2.1", f"{HOST}:{os.getpid()}:1")
        again.put_blob("x", b"2")
        for f in side:
            assert (f.stat().st_uid, f.stat().st_gid) == (65534, 65534), f
    finally:
        again.close()


def test_sqlite_page_caches_stay_in_their_first_block(tmp_path) -> None:
    """Every pooled connection keeps at most 20 pages of cache (SQLite's
    SQLITE_DEFAULT_PCACHE_INITSZ, allocated once per connection): with the
    default 2 MB cache, emptied at each commit of another worker, pages were
    malloc'ed and freed per transaction (heap churn, #14 soak).
    Several threads at once, so that the pool holds several connections."""
    from outpost.store.sqlite import SqliteStore
    store = SqliteStore(str(tmp_path / "state.db"))
    other = SqliteStore(str(tmp_path / "state.db"))    # another worker, committing too
    try:
        start = threading.Barrier(6)

        def work(i: int) -> None:
            start.wait(timeout=10)
            for n in range(12):
                (store if n % 2 else other).fingerprint_add(f"fp{i}-{n}", "m", 1, 3600)
                store.get_blob("x")

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        pool = list(store._pool) + list(other._pool)
        assert len(pool) >= 2
        for db in pool:
            pages = db.execute("PRAGMA cache_size").fetchone()[0]
            assert 0 < pages <= 20, pages
    finally:
        store.close()
        other.close()


# -- open_store --------------------------------------------------------------------------------

def test_open_store_urls(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown scheme 'mysql'"):
        open_store("mysql://localhost/x")
    with pytest.raises(ValueError, match="absolute"):
        open_store("sqlite://relative.db")
    with pytest.raises(ValueError):
        open_store("memory:extra")
    store = open_store(f"sqlite://{tmp_path}/a/b/c.db", StoreSettings(on_store_error="accept"))
    assert os.path.isfile(tmp_path / "a" / "b" / "c.db")
    assert type(store).__name__ == "ResilientStore" and not store.fallback  # releases only
    assert type(store.primary).__name__ == "SqliteStore"
    store.close()
    local = open_store(f"sqlite://{tmp_path}/d.db")               # default: local
    assert type(local).__name__ == "ResilientStore"
    assert type(local.primary).__name__ == "SqliteStore"
    assert type(open_store("memory:")).__name__ == "MemoryStore"  # nothing to fall back from


@pytest.mark.parametrize("field,value", [("op_timeout", 0), ("key_prefix", ""),
                                         ("on_store_error", "ignore"), ("max_events", 0),
                                         ("retries", -1)])
def test_settings_validation(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        StoreSettings(**{field: value})


# -- state expiry ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
def test_empty_buckets_expire(make_store) -> None:
    store = make_store(sweep_interval=0.1)
    gone, kept = Bucket("exp/gone", 4, 0.4), Bucket("exp/kept", 4, 60.0)
    store.hit([gone, kept])
    store.record_event("exp/event", ALIVE)
    if store.url.startswith("redis"):
        import redis
        r = redis.Redis.from_url(store.url)
        prefix = store.settings.key_prefix
        ttl = r.pttl(f"{prefix}rl:exp/kept@60")
        assert 60000 - ALIVE * 1000 < ttl <= 61001     # empty one window + one subwindow later
        assert 0 < r.pttl(f"{prefix}ev:exp/event") <= ALIVE * 1000 + 1
        time.sleep(ALIVE + PAST)
        assert not r.exists(f"{prefix}rl:exp/gone@0.4", f"{prefix}ev:exp/event")
        assert r.exists(f"{prefix}rl:exp/kept@60")
        r.close()
    else:
        import sqlite3
        time.sleep(ALIVE + PAST)
        store.hit([Bucket("exp/trigger", 4, 60.0)])   # sweeps expired rows
        db = sqlite3.connect(store.url[len("sqlite://"):])
        ids = [row[0] for row in db.execute("SELECT DISTINCT id FROM rl_subwindow ORDER BY id")]
        events = db.execute("SELECT count(*) FROM event").fetchone()[0]
        db.close()
        assert ids == ["exp/kept@60", "exp/trigger@60"] and events == 0


def _stored_subwindows(store: Store, bucket_id: str) -> int:
    """How many subwindows the backend holds for a bucket id (sqlite rows / hash fields)."""
    if store.url.startswith("redis"):
        import redis
        r = redis.Redis.from_url(store.url)
        try:
            return int(r.hlen(f"{store.settings.key_prefix}rl:{bucket_id}"))
        finally:
            r.close()
    import sqlite3
    db = sqlite3.connect(store.url[len("sqlite://"):])
    try:
        return db.execute("SELECT count(*) FROM rl_subwindow WHERE id = ?", (bucket_id,)).fetchone()[0]
    finally:
        db.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
def test_subwindows_per_bucket_are_bounded(store: Store) -> None:
    b = [Bucket("bound/b", 10**6, 0.6)]                # subwindows of 10 ms
    end = time.time() + 1.5                            # ~150 subwindows touched
    most = 0
    while time.time() < end:
        assert store.hit(b).allowed
        most = max(most, _stored_subwindows(store, "bound/b@0.6"))
        time.sleep(0.003)
    assert 30 < most <= 61


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_redis_replaces_old_gcra_key(store: Store) -> None:
    import redis
    r = redis.Redis.from_url(store.url)
    key = f"{store.settings.key_prefix}rl:old/gcra@60"
    r.set(key, "1234567890.5", px=60000)              # a TAT string of the previous version
    b = [Bucket("old/gcra", 2, 60.0)]
    assert store.peek(b)[0].used == 0
    assert store.hit(b, dry_run=True).allowed
    assert r.type(key) == b"string"                    # a dry run writes nothing
    assert admitted(store, b, 3) == [True, True, False]
    assert r.type(key) == b"hash" and store.peek(b)[0].used == 2
    r.close()


def test_reset_stops_at_a_terminator(store: Store) -> None:
    """``unlock``/``reset`` of webfarm/a never clears webfarm/alice's history
    or counters (every backend)."""
    a = Bucket("rl:id:webfarm/a:msg:60", 5, 60.0)
    alice = Bucket("rl:id:webfarm/alice:msg:60", 5, 60.0)
    for bucket in (a, alice):
        store.hit([bucket])
    for key in ("hits:webfarm/a", "hits:webfarm/alice", "spam:webfarm/a", "spam:webfarm/alice"):
        store.record_event(key, 600.0)
    assert store.reset("hits:webfarm/a") == 1
    assert store.reset("spam:webfarm/a") == 1
    assert store.reset("rl:id:webfarm/a") == 1          # the bucket key continues after ':'
    assert store.record_event("hits:webfarm/alice", 600.0) == 2
    assert store.record_event("spam:webfarm/alice", 600.0) == 2
    assert store.record_event("hits:webfarm/a", 600.0) == 1
    assert [s.used for s in store.peek([a, alice])] == [0, 1]
    assert store.reset("rl:id:webfarm/al") == 0
    assert store.reset("rl:id:webfarm/") == 1           # a prefix ending in '/' takes all below
