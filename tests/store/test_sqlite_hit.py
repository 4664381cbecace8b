"""SqliteStore.hit: the sums in SQLite (the common case) against the
decision over every stored subwindow (the code before, still the path of a
refusal or a clock that went back): the same answers, the same waits and
the same rows, on random histories at a fixed clock."""

from __future__ import annotations

import sqlite3
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost.store import Bucket, StoreSettings
from outpost.store.base import HitResult
from outpost.store.sqlite import SqliteStore
from outpost.store.windows import (
    SUBWINDOWS,
    WindowCounts,
    bucket_id,
    subwindow_expiry,
    subwindow_index,
    window_decide,
)
from tests.store.conftest import SqliteClock

WINDOWS = (3.0, 60.0, 3600.0)
KEYS = ("rl:id:a", "rl:user:b")
#: Subwindow offsets from the current one, the edges more often.
OFFSETS = st.one_of(st.sampled_from((-SUBWINDOWS - 1, -SUBWINDOWS, -SUBWINDOWS + 1, -1, 0, 1, 2)),
                    st.integers(-130, 4))


@pytest.fixture
def stores(tmp_path, clock: SqliteClock) -> Iterator[tuple[SqliteStore, SqliteStore]]:
    """(new, old): two stores, no sweep (it would delete other buckets'
    expired rows at moments the two paths choose differently)."""
    pair = (SqliteStore(f"{tmp_path}/new.db", StoreSettings()),
            SqliteStore(f"{tmp_path}/old.db", StoreSettings()))
    for s in pair:
        s._next_sweep = float("inf")
    yield pair
    for s in pair:
        s.close()


def old_hit(store: SqliteStore, buckets: list[Bucket], now: float, dry_run: bool) -> HitResult:
    """The code before: every subwindow into Python, window_decide."""
    if dry_run:
        with store._conn() as db:
            stored = store._subwindows(db, buckets)
        return window_decide(buckets, lambda bid, w: WindowCounts(w, stored.get(bid)), now,
                             dry_run=True)[0]
    with store._tx() as db:
        return store._hit_subwindows(db, buckets, now)


def rows(store: SqliteStore) -> list[tuple]:
    db = sqlite3.connect(store.path)
    try:
        return db.execute("SELECT id, subwindow, n, expires FROM rl_subwindow "
                          "ORDER BY id, subwindow").fetchall()
    finally:
        db.close()


def put_rows(store: SqliteStore, history: list[tuple[str, int, int, float]]) -> None:
    db = sqlite3.connect(store.path)
    with db:
        db.execute("DELETE FROM rl_subwindow")
        db.executemany("INSERT OR REPLACE INTO rl_subwindow VALUES (?, ?, ?, ?)", history)
    db.close()


buckets_st = st.lists(
    st.builds(Bucket, key=st.sampled_from(KEYS), limit=st.integers(1, 25),
              window=st.sampled_from(WINDOWS), cost=st.integers(0, 5)),
    min_size=1, max_size=5)
#: (bucket key, window, subwindow offset from the current one, n)
history_st = st.lists(
    st.tuples(st.sampled_from(KEYS), st.sampled_from(WINDOWS), OFFSETS, st.integers(1, 4)),
    max_size=40)
#: (buckets, dry run, seconds from the history's "now": back, none or ahead)
steps_st = st.lists(st.tuples(buckets_st, st.booleans(),
                              st.one_of(st.just(0.0), st.floats(-5.0, 90.0))),
                    min_size=1, max_size=4)


def test_same_answers_waits_and_rows_as_the_code_before(stores, clock: SqliteClock) -> None:
    new, old = stores

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(start=st.floats(1.0e9, 1.0e9 + 86400.0), history=history_st, steps=steps_st)
    def check(start: float, history, steps) -> None:
        made = {}
        for key, window, offset, n in history:
            index = subwindow_index(start, window) + offset
            made[(f"{key}@{window:g}", index)] = (n, subwindow_expiry(index, window))
        table = [(bid, index, n, expires) for (bid, index), (n, expires) in made.items()]
        put_rows(new, table)
        put_rows(old, table)
        for buckets, dry_run, dt in steps:
            clock.t = start + dt               # may go back before the history's "now"
            got = new.hit(buckets, dry_run=dry_run)
            want = old_hit(old, buckets, clock.t, dry_run)
            assert got == want
            assert rows(new) == rows(old)

    check()


def busy(store: SqliteStore, bucket: Bucket, now: float, per: int, span: int = SUBWINDOWS) -> None:
    """``per`` units in each of the ``span + 1`` subwindows up to the current one."""
    cur = subwindow_index(now, bucket.window)
    put_rows(store, [(bucket_id(bucket), i, per, subwindow_expiry(i, bucket.window))
                     for i in range(cur - span, cur + 1)])


def test_exactly_at_the_limit(stores, clock: SqliteClock) -> None:
    new, old = stores
    b = Bucket("rl:id:x", 61 * 3 + 2, 60.0, cost=2)
    for s in stores:
        busy(s, b, clock.t, 3)
    assert new.hit([b], dry_run=True).allowed          # count + cost == limit
    assert new.hit([b]).allowed
    assert old_hit(old, [b], clock.t, False).allowed
    assert rows(new) == rows(old)
    refused = new.hit([b])
    assert refused == old_hit(old, [b], clock.t, False)
    assert not refused.allowed and refused.retry_after > 0
    assert new.hit([b], dry_run=True) == refused
    assert rows(new) == rows(old)                       # a refusal counts nothing


def test_expired_subwindows_go_and_the_rest_counts(stores, clock: SqliteClock) -> None:
    new, _ = stores
    b = Bucket("rl:id:x", 10**6, 60.0)
    busy(new, b, clock.t, 2, span=90)                   # 30 subwindows that no longer count
    assert new.hit([b]).allowed
    cur = subwindow_index(clock.t, b.window)
    got = rows(new)
    assert [r[1] for r in got] == list(range(cur - SUBWINDOWS, cur + 1))
    assert got[-1][2] == 3 and new.peek([b])[0].used == 61 * 2 + 1


def test_clock_back_counts_what_is_ahead(stores, clock: SqliteClock) -> None:
    new, old = stores
    b = Bucket("rl:id:x", 10, 60.0)
    for s in stores:
        assert [s.hit([b]).allowed for _ in range(4)] == [True] * 4
    clock.t -= 10.0                                     # the wall clock stepped back 10 s
    assert new.peek([b])[0].used == 4
    for _ in range(6):
        assert new.hit([b]) == old_hit(old, [b], clock.t, False)
        assert rows(new) == rows(old)
    cur = subwindow_index(clock.t, b.window)
    assert rows(new) == [(bucket_id(b), cur, 10, subwindow_expiry(cur, b.window))]
    assert not new.hit([b]).allowed and new.peek([b])[0].used == 10
