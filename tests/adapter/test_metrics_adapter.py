"""The adapter records each message's decision and stage times into the
worker's metrics (driven through pymilter's TestCtx), and a failing metrics
update never changes an answer."""

import functools

import Milter
import pytest
from Milter.testctx import TestCtx as MilterTestCtx
from prometheus_client import CollectorRegistry

from outpost.adapter.milter import OutpostMilter
from outpost.effects.metrics import WorkerMetrics

from .test_milter_testctx import feed


@pytest.fixture
def recorded(monkeypatch, memory_runtime):
    monkeypatch.setattr(Milter, "NOREPLY", Milter.CONTINUE)
    monkeypatch.setattr(MilterTestCtx, "default_opts", list(MilterTestCtx.default_opts))
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry=registry)
    monkeypatch.setattr(Milter, "factory", functools.partial(OutpostMilter, memory_runtime, metrics=metrics))
    return registry


def test_decisions_and_stage_times_are_recorded(recorded):
    ctx, rc = feed()                                   # webfarm, accepted
    assert rc == Milter.CONTINUE
    ctx._close()
    ctx, rc = feed(ip="198.51.100.9")                  # nobody's address
    assert rc == Milter.REJECT
    ctx._close()
    get = recorded.get_sample_value
    assert get("outpost_messages_total", {"action": "accept", "reason": "ok"}) == 1
    assert get("outpost_messages_total", {"action": "reject", "reason": "unknown_sender"}) == 1
    assert get("outpost_message_seconds_count") == 2
    assert get("outpost_stage_seconds_count", {"stage": "envfrom"}) == 2
    assert get("outpost_stage_seconds_count", {"stage": "eom"}) == 1
    assert get("outpost_user_messages_total", {"user": "webfarm", "action": "accept"}) == 1


def test_refused_recipients_are_counted(recorded):
    rcpts = [f"r{i}@dest.example" for i in range(5)]   # max_recipients: 4
    ctx, rc = feed(rcpts=rcpts)
    assert rc == Milter.TEMPFAIL                        # 452 4.5.3 for the fifth
    ctx._close()
    assert recorded.get_sample_value("outpost_recipients_refused_total", {"reason": "max_recipients"}) == 1
    assert recorded.get_sample_value("outpost_limit_hits_total", {"limit": "max_recipients"}) == 1


def test_a_failing_metrics_update_changes_no_answer(recorded, monkeypatch, caplog):
    def broken(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(WorkerMetrics, "message", broken)
    monkeypatch.setattr(WorkerMetrics, "stage", broken)
    ctx, rc = feed()
    assert rc == Milter.CONTINUE
    ctx, rc = feed()                                   # the first one's record runs here
    assert rc == Milter.CONTINUE
    assert "metrics update failed" in caplog.text
