"""Message statistics (``stat_add`` / ``stat_read``): shared by every
process using the store, summed over the period, bounded, expiring."""

from __future__ import annotations

import pytest

from outpost.store import Store, StoreSettings
from outpost.store.base import stat_buckets
from outpost.store.memory import MemoryStore


def test_counts_are_summed_and_seen_by_another_store(make_store, backend) -> None:
    a = make_store()
    b = a if backend == "memory" else make_store()      # memory: one process' own
    a.stat_add([("m", 2), ("u:webfarm", 2), ("b", 1)], [("i:webfarm/1042", 2)])
    b.stat_add([("m", 3), ("u:alice", 3)], [("i:alice/alice@example.com", 3)])
    for period, count in (("m", 60), ("h", 24)):
        got = a.stat_read(period, count)
        assert got["m"] == 5 and got["u:webfarm"] == 2 and got["u:alice"] == 3 and got["b"] == 1
    # the recent names are in the minute buckets only
    assert b.stat_read("m", 60)["i:webfarm/1042"] == 2
    assert "i:webfarm/1042" not in b.stat_read("h", 24)


def test_empty_store_reads_nothing(store: Store) -> None:
    assert store.stat_read("m", 60) == {}
    assert store.stat_read("h", 24) == {}


def test_recent_names_are_bounded_per_bucket(make_store) -> None:
    store = make_store(max_stat_names=3)
    store.stat_add([("m", 1)], [(f"i:u/{n}", 1) for n in range(5)])
    store.stat_add([("m", 1)], [("i:u/0", 4), ("i:u/9", 1)])
    got = store.stat_read("m", 60)
    names = {k: v for k, v in got.items() if k.startswith("i:")}
    assert names == {"i:u/0": 5, "i:u/1": 1, "i:u/2": 1}   # new names beyond 3 dropped
    assert got["m"] == 2                                      # totals are not bounded


@pytest.mark.parametrize("period,count", [("m", 0), ("m", 61), ("h", 25), ("x", 1)])
def test_bad_read_arguments(store: Store, period: str, count: int) -> None:
    with pytest.raises((ValueError, KeyError)):
        store.stat_read(period, count)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_buckets_leave_their_period() -> None:
    clock = Clock(1_000_000 * 3600.0)
    store = MemoryStore(StoreSettings(), clock=clock)
    store.stat_add([("m", 1)], [("i:u/a", 1)])
    clock.t += 59 * 60
    store.stat_add([("m", 10)])
    assert store.stat_read("m", 60)["m"] == 11          # 59 minutes ago: still in the hour
    assert store.stat_read("m", 1)["m"] == 10
    clock.t += 60
    assert store.stat_read("m", 60) == {"m": 10}        # an hour ago: gone, names too
    assert store.stat_read("h", 24)["m"] == 11
    clock.t += 24 * 3600
    assert store.stat_read("h", 24) == {}


def test_stat_buckets_indexes() -> None:
    assert stat_buckets("m", 120.5, 3) == [2, 1, 0]
    assert stat_buckets("h", 7200.0, 1) == [2]
