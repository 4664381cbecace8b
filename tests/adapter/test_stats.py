"""The adapter counts every message with a final answer for ``outpost
stats`` (after the reply: when the connection closes or the next message
starts), and a flush adds the counts to the store."""

import functools

import Milter
import pytest
from Milter.testctx import TestCtx as MilterTestCtx

from outpost.adapter.milter import OutpostMilter
from outpost.stats import StatsRecorder, summary

from .test_milter_testctx import feed


@pytest.fixture
def runtime(monkeypatch, memory_runtime):
    memory_runtime.stats = StatsRecorder(memory_runtime.store)
    monkeypatch.setattr(Milter, "NOREPLY", Milter.CONTINUE)
    monkeypatch.setattr(MilterTestCtx, "default_opts", list(MilterTestCtx.default_opts))
    monkeypatch.setattr(Milter, "factory", functools.partial(OutpostMilter, memory_runtime))
    return memory_runtime


def test_messages_are_counted_and_flushed_to_the_store(runtime):
    store = runtime.store
    for _ in range(2):
        ctx, rc = feed(rcpts=("x@dest.example", "y@dest.example"))
        assert rc == Milter.CONTINUE
        ctx._close()
    ctx, rc = feed(ip="198.51.100.200")                 # nobody's address: 550
    assert rc == Milter.REJECT
    ctx._close()
    assert store.stat_read("m", 60) == {}               # not yet flushed
    assert runtime.stats.flush()
    hour = store.stat_read("m", 60)
    assert hour["m"] == 3 and hour["b"] == 1 and hour["rc"] == 4 + 0
    assert hour["a:accept"] == 2 and hour["a:reject"] == 1 and hour["r:unknown_sender"] == 1
    assert hour["u:webfarm"] == 2 and hour["ur:webfarm"] == 4
    assert hour["i:webfarm/1001"] == 2                  # X-PHP-Originating-Script identity
    day = summary(store.stat_read("h", 24))
    assert day["messages"] == 3 and day["blocked"] == 1
    assert day["top_users_by_messages"] == [{"user": "webfarm", "count": 2}]
    assert runtime.stats.flush() and store.stat_read("m", 60) == hour   # nothing twice


def test_counts_survive_a_failing_store(runtime, monkeypatch):
    from outpost.store.base import StoreError
    ctx, rc = feed()
    ctx._close()

    def down(*args):
        raise StoreError("down")
    real = runtime.store.stat_add
    monkeypatch.setattr(runtime.store, "stat_add", down)
    assert not runtime.stats.flush()
    monkeypatch.setattr(runtime.store, "stat_add", real)
    ctx, rc = feed()
    ctx._close()
    assert runtime.stats.flush()
    assert runtime.store.stat_read("m", 60)["m"] == 2


def test_decisions_reach_the_log_after_the_reply_and_a_failing_log_changes_no_answer(
        runtime, monkeypatch):
    from outpost.store.base import StoreError
    ctx, rc = feed()
    assert rc == Milter.CONTINUE
    ctx._close()
    ctx, rc = feed(ip="198.51.100.200")                 # nobody's address: 550
    assert rc == Milter.REJECT
    ctx._close()
    assert runtime.store.decision_read(10) == []        # nothing on the reply path
    assert runtime.stats.flush()
    rejected, accepted = runtime.store.decision_read(10)
    assert (accepted.action, accepted.user, accepted.identity) == ("accept", "webfarm", "1001")
    assert accepted.token                                # its X-Outpost-ID
    assert (rejected.action, rejected.reason) == ("reject", "unknown_sender")
    assert rejected.reply.startswith("550 ")

    def down(entries):
        raise StoreError("down")
    monkeypatch.setattr(runtime.store, "decision_add", down)
    ctx, rc = feed()
    assert rc == Milter.CONTINUE                         # the answer does not change
    ctx._close()
    assert not runtime.stats.flush()
    assert runtime.stats.decision_errors == 1
    assert runtime.store.stat_read("m", 60)["m"] == 3    # the counts went on
