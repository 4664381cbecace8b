"""SqliteStore's fingerprint counts: running totals against the sums over
every entry (the code before them), on random histories with a clock that
moves on, the sweep on or off; the totals of a database of the earlier
version are built when it opens.  (What a busy fingerprint costs:
``python -m bench.fingerprint_store``.)"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost.store import StoreSettings
from outpost.store.base import FingerprintStats
from outpost.store.sqlite import SqliteStore
from tests.store.conftest import SqliteClock

WINDOW = 60.0
CAP = 4
FPS = ("f1", "f2", "f3")
MEMBERS = ("alice", "bob", "carol")


@dataclass
class Reference:
    """What the code before the running totals answered: each message an
    entry; the totals are sums over a fingerprint's entries newer than the
    window's start; past ``cap`` of them the oldest go."""

    cap: int
    entries: list[tuple[str, float, str, int]] = field(default_factory=list)

    def add(self, fp: str, member: str, recipients: int, now: float
            ) -> tuple[FingerprintStats, FingerprintStats]:
        cutoff = now - WINDOW
        self.entries = [e for e in self.entries if not (e[0] == fp and e[1] <= cutoff)]
        self.entries.append((fp, now, member, recipients))
        mine = [e for e in self.entries if e[0] == fp]
        if len(mine) > self.cap:
            drop = {id(e) for e in sorted(mine, key=lambda e: e[1])[:len(mine) - self.cap]}
            self.entries = [e for e in self.entries if id(e) not in drop]
            mine = [e for e in self.entries if e[0] == fp]
        own = [e for e in mine if e[2] == member]
        return (FingerprintStats(len(mine), sum(e[3] for e in mine), len({e[2] for e in mine})),
                FingerprintStats(len(own), sum(e[3] for e in own), min(len(own), 1)))


def totals_rows(store: SqliteStore) -> list[tuple]:
    db = sqlite3.connect(store.path)
    try:
        return [db.execute("SELECT * FROM fingerprint_total ORDER BY fp").fetchall(),
                db.execute("SELECT * FROM fingerprint_member ORDER BY fp, member").fetchall()]
    finally:
        db.close()


def sums_of_entries(store: SqliteStore) -> list[tuple]:
    """The totals recomputed from the entries left: what the running
    totals must equal after every transaction (the sweep leaves none
    behind that a total still counts)."""
    db = sqlite3.connect(store.path)
    try:
        members = db.execute("SELECT fp, member, count(*), sum(recipients) FROM fingerprint "
                             "GROUP BY fp, member ORDER BY fp, member").fetchall()
        totals = db.execute("SELECT fp, count(*), sum(recipients), count(DISTINCT member) "
                            "FROM fingerprint GROUP BY fp ORDER BY fp").fetchall()
        return [totals, members]
    finally:
        db.close()


#: (seconds since the previous message, fingerprints of the message, member, recipients)
steps_st = st.lists(
    st.tuples(st.one_of(st.sampled_from((0.5, WINDOW, WINDOW + 0.5)), st.floats(0.01, 45.0)),
              st.lists(st.sampled_from(FPS), min_size=1, max_size=3, unique=True),
              st.sampled_from(MEMBERS), st.integers(1, 5)),
    min_size=1, max_size=30)


@pytest.mark.parametrize("sweep", [False, True], ids=["no-sweep", "sweep-every-transaction"])
def test_running_totals_answer_as_the_sums_over_entries(tmp_path, clock: SqliteClock, sweep: bool) -> None:
    n = iter(range(10**6))

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(steps=steps_st)
    def check(steps) -> None:
        store = SqliteStore(f"{tmp_path}/fp{next(n)}.db",
                            StoreSettings(max_fingerprint_entries=CAP, sweep_interval=0.001))
        if not sweep:
            store._next_sweep = float("inf")
        ref = Reference(CAP)
        try:
            for dt, fps, member, recipients in steps:
                clock.t += dt
                got = store.fingerprint_add_message(fps, member, recipients, WINDOW)
                want = [ref.add(fp, member, recipients, clock.t) for fp in fps]
                assert got == want
                assert totals_rows(store) == sums_of_entries(store)
        finally:
            store.close()

    check()


def test_fingerprint_add_many_counts_as_one_by_one(tmp_path, clock: SqliteClock) -> None:
    """Items of several members and a fingerprint twice in one call."""
    store = SqliteStore(f"{tmp_path}/many.db", StoreSettings(max_fingerprint_entries=CAP))
    ref = Reference(CAP)
    items = [("f1", "alice", 2), ("f2", "bob", 1), ("f1", "bob", 3), ("f1", "carol", 1),
             ("f1", "alice", 1), ("f1", "dave", 2)]
    clock.t += 1
    got = store.fingerprint_add_many(items, WINDOW)
    want = []
    for fp, member, rcpts in items:
        clock.t += 0.001                    # the reference needs an order among equal times
        want.append(ref.add(fp, member, rcpts, clock.t)[0])
    assert got == want
    assert totals_rows(store) == sums_of_entries(store)
    store.close()


def test_totals_of_an_earlier_version_are_built_on_open(tmp_path, clock: SqliteClock) -> None:
    """A database whose entries have no running totals (the version before)
    gets them when a process opens it, and counting goes on from there."""
    path = f"{tmp_path}/old.db"
    store = SqliteStore(path, StoreSettings())
    for member, rcpts in (("alice", 2), ("bob", 3), ("alice", 1)):
        clock.t += 1
        store.fingerprint_add_message(["f1", "f2"], member, rcpts, WINDOW)
    store.close()
    db = sqlite3.connect(path)
    db.executescript("DROP TABLE fingerprint_total; DROP TABLE fingerprint_member;")
    db.close()
    store = SqliteStore(path, StoreSettings())
    assert totals_rows(store) == sums_of_entries(store)
    clock.t += 1
    (everybody, mine), _ = store.fingerprint_add_message(["f1", "f2"], "carol", 4, WINDOW)
    assert everybody == FingerprintStats(messages=4, recipients=10, members=3)
    assert mine == FingerprintStats(messages=1, recipients=4, members=1)
    store.close()
