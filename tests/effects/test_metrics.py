"""The pieces of the metrics endpoint (outpost.effects.metrics), each on real
parts: prometheus-client's multiprocess files written by real processes, a
sqlite store, a report spool filled by the real sender, a Redis address
nobody answers on."""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from dataclasses import replace

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from outpost.config import parse_config
from outpost.config.model import MetricsSettings
from outpost.effects import metrics
from outpost.effects.reports import ReportSender, Spool, list_items
from outpost.store import open_store
from outpost.store.settings import StoreSettings

from .reports.conftest import make_event, make_settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = textwrap.dedent("""\
    report_abuse_to: abuse@example.net
    domains: [example.com]
    store: {store}
    metrics: {{listen: "127.0.0.1:9467", top_users: {top}}}
    reports: {{spool_dir: {spool}, smtp: {{port: 9}}}}
    users:
      - {{name: alice, type: login, logins: [alice@example.com], domains: [example.com]}}
    """)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_config(tmp_path, store=None, top=20):
    store = store or f"sqlite:///{tmp_path}/state.db"
    return parse_config(CONFIG.format(store=store, top=top, spool=tmp_path / "spool"))


def test_label_is_bounded_and_cut_at_the_detail():
    assert metrics.label("scan_error:rspamd, spamassassin") == "scan_error"
    assert metrics.label("spf_softfail") == "spf_softfail"
    assert metrics.label("") == "none"
    assert metrics.label("Weird Tag-" + "x" * 100) == ("weird_tag_" + "x" * 100)[:40]


# -- workers' files, summed and cut to the top users -------------------------------------

WORKER = textwrap.dedent("""\
    import sys
    from outpost.effects.metrics import WorkerMetrics
    from outpost.core.types import Action, Decision, Message
    m = WorkerMetrics(checks=[("rspamd", "tempfail")])
    for user, n in [a.split("=") for a in sys.argv[1:]]:
        for _ in range(int(n)):
            m.message(Decision(Action.ACCEPT, reason="ok"), Message(user_name=user, spent=0.002))
    """)


def run_worker(path: str, *counts: str) -> int:
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=path,
               PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "milter"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", WORKER, *counts], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return proc.pid


def samples_of(collector) -> dict:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in registry.collect() for s in fam.samples}


def test_values_of_all_workers_are_summed_and_users_cut_to_top_n(tmp_path):
    path = str(tmp_path)
    pid1 = run_worker(path, "alice=5", "bob=1", "carol=3")
    pid2 = run_worker(path, "bob=3", "dave=2")
    for pid in (pid1, pid2):            # exited: their live gauges go, counters stay
        metrics.process_dead(pid, path)
    got = samples_of(metrics.TopUsers(path, top=2))
    assert got[("outpost_messages_total", (("action", "accept"), ("reason", "ok")))] == 14
    assert got[("outpost_message_seconds_count", ())] == 14
    users = {dict(k[1])["user"]: v for k, v in got.items() if k[0] == "outpost_user_messages_total"}
    assert users == {"alice": 5, "bob": 4}       # carol (3) and dave (2) are not in the top 2
    # zero series exist for every limit and configured check from the start
    assert got[("outpost_limit_hits_total", (("limit", "rate_limit"),))] == 0
    assert got[("outpost_check_failures_total", (("check", "rspamd"), ("policy", "tempfail")))] == 0
    # workers that exited are not counted as alive
    assert got.get(("outpost_workers", ()), 0) == 0


def test_top_users_zero_exports_no_user_series(tmp_path):
    run_worker(str(tmp_path), "alice=1")
    got = samples_of(metrics.TopUsers(str(tmp_path), top=0))
    assert not [k for k in got if k[0] == "outpost_user_messages_total"]
    assert got[("outpost_messages_total", (("action", "accept"), ("reason", "ok")))] == 1


# -- a worker's own records ------------------------------------------------------------------

def worker_metrics():
    registry = CollectorRegistry()
    return metrics.WorkerMetrics(registry=registry, checks=[("spamassassin", "tempfail")]), registry


def test_message_records_limits_dkim_scores_and_check_failures():
    from outpost.core.types import Action, Decision, Message
    from outpost.spam.engine import CheckFailure, Verdict
    m, reg = worker_metrics()
    verdict = Verdict(score=7.5, cls="spam", evidence=(),
                      errors=(CheckFailure("spamassassin", "timed out", "tempfail"),), tempfail=True)
    m.message(Decision(Action.TEMPFAIL, reason="scan_error:spamassassin"),
              Message(user_name="alice", verdict=verdict, spent=0.01))
    m.message(Decision(Action.TEMPFAIL, reason="rate_limit"), Message(user_name="alice"))
    m.message(Decision(Action.TEMPFAIL, reason="dkim_error"), Message(user_name="alice"))
    m.recipient_refused(Decision(Action.TEMPFAIL, reason="rate_limit"))
    get = reg.get_sample_value
    assert get("outpost_messages_total", {"action": "tempfail", "reason": "scan_error"}) == 1
    assert get("outpost_check_failures_total", {"check": "spamassassin", "policy": "tempfail"}) == 1
    assert get("outpost_spam_score_count") == 1 and get("outpost_spam_score_sum") == 7.5
    assert get("outpost_spam_score_bucket", {"le": "6.0"}) == 0
    assert get("outpost_spam_score_bucket", {"le": "8.0"}) == 1
    assert get("outpost_limit_hits_total", {"limit": "rate_limit"}) == 2     # at end of message and at RCPT
    assert get("outpost_recipients_refused_total", {"reason": "rate_limit"}) == 1
    assert get("outpost_dkim_failures_total") == 1
    assert get("outpost_user_messages_total", {"user": "alice", "action": "tempfail"}) == 3
    assert get("outpost_message_seconds_count") == 3


def test_unmapped_senders_get_no_user_series():
    from outpost.core.types import Action, Decision, Message
    m, reg = worker_metrics()
    m.message(Decision(Action.REJECT, reason="unknown_sender"), Message())
    assert reg.get_sample_value("outpost_messages_total",
                                {"action": "reject", "reason": "unknown_sender"}) == 1
    assert not [s for f in reg.collect() for s in f.samples if s.name == "outpost_user_messages_total"]


def test_store_fallbacks_and_degraded_state_follow_the_resilient_store():
    """A Redis nobody answers on, with on_store_error: local: every call
    falls back to memory; the exported counts follow, and never count twice."""
    store = open_store(f"redis://127.0.0.1:{closed_port()}/0",
                       StoreSettings(on_store_error="local", retry_interval=60.0))
    m, reg = worker_metrics()
    try:
        m.sync_store(store)
        assert reg.get_sample_value("outpost_store_degraded_workers") == 0
        store.get_lock("alice")
        store.get_lock("bob")
        m.sync_store(store)
        m.sync_store(store)
        assert store.fallbacks == 2
        assert reg.get_sample_value("outpost_store_fallbacks_total") == 2
        assert reg.get_sample_value("outpost_store_outages_total") == 1
        assert reg.get_sample_value("outpost_store_degraded_workers") == 1
    finally:
        store.close()


def test_content_cache_lookups_are_exported_and_never_counted_twice():
    """The engine's content cache counts its lookups; the worker exports
    them (on its heartbeat) as deltas, so a sync repeated adds nothing."""
    from outpost.spam.engine import ContentCache
    m, reg = worker_metrics()

    def lookups(result):
        return reg.get_sample_value("outpost_content_cache_lookups_total", {"result": result})

    assert (lookups("hit"), lookups("miss")) == (0, 0)         # series exist from the start
    cache = ContentCache()
    assert cache.get(b"k") is None and cache.get(b"other") is None
    m.sync_content_cache(cache)
    assert (lookups("hit"), lookups("miss")) == (0, 2)
    cache.put(b"k", "parsed", 10)
    assert cache.get(b"k") is not None and cache.get(b"k") is not None
    m.sync_content_cache(cache)
    m.sync_content_cache(cache)
    assert (lookups("hit"), lookups("miss")) == (2, 2)


def test_decision_log_losses_are_exported_and_never_counted_twice():
    """The recorder's dropped entries and failed flushes (a real recorder
    over a store whose decision log fails) reach the counters."""
    from outpost.core.types import Action, Decision, Message
    from outpost.stats import MAX_PENDING_DECISIONS, StatsRecorder
    from outpost.store.base import StoreError
    from outpost.store.memory import MemoryStore

    class Failing(MemoryStore):
        def decision_add(self, entries):
            raise StoreError("down")

    rec = StatsRecorder(Failing())
    m, reg = worker_metrics()
    m.sync_decisions(rec)
    assert reg.get_sample_value("outpost_decisions_dropped_total") == 0
    assert reg.get_sample_value("outpost_decision_log_errors_total") == 0
    for n in range(MAX_PENDING_DECISIONS + 7):
        rec.record(Message(user_name="webfarm"), Decision(Action.ACCEPT), f"Q{n}")
    assert not rec.flush()
    m.sync_decisions(rec)
    m.sync_decisions(rec)
    assert reg.get_sample_value("outpost_decisions_dropped_total") == 7
    assert reg.get_sample_value("outpost_decision_log_errors_total") == 1
    rec.record(Message(user_name="webfarm"), Decision(Action.ACCEPT), "Q")
    assert not rec.flush()
    m.sync_decisions(rec)
    assert reg.get_sample_value("outpost_decisions_dropped_total") == 8
    assert reg.get_sample_value("outpost_decision_log_errors_total") == 2


# -- shared state read at scrape time ---------------------------------------------------------

def test_locks_are_counted_by_scope_and_setter_and_cached(tmp_path):
    config = make_config(tmp_path)
    store = open_store(config.store, config.store_settings)
    now = [100.0]
    state = metrics.StateCollector(config, ttl=5.0, clock=lambda: now[0])
    try:
        store.set_lock("alice/a@example.com", "spam", 3600)
        store.set_lock("alice/b@example.com", "manual", None, by="operator")
        store.set_lock("user:alice", "spam", 3600)
        got = samples_of(state)
        assert got[("outpost_locks_active", (("by", "auto"), ("scope", "identity")))] == 1
        assert got[("outpost_locks_active", (("by", "operator"), ("scope", "identity")))] == 1
        assert got[("outpost_locks_active", (("by", "auto"), ("scope", "user")))] == 1
        assert got[("outpost_store_up", ())] == 1
        store.set_lock("alice/c@example.com", "spam", 3600)
        now[0] += 4.9                                # a scrape storm reads the cache
        assert samples_of(state)[("outpost_locks_active", (("by", "auto"), ("scope", "identity")))] == 1
        now[0] += 0.2
        assert samples_of(state)[("outpost_locks_active", (("by", "auto"), ("scope", "identity")))] == 2
    finally:
        state.close()
        store.close()


def test_store_down_is_a_gauge_not_a_failed_scrape(tmp_path):
    config = make_config(tmp_path, store=f"redis://127.0.0.1:{closed_port()}/0")
    state = metrics.StateCollector(config)
    try:
        got = samples_of(state)
    finally:
        state.close()
    assert got[("outpost_store_up", ())] == 0
    assert not [k for k in got if k[0] == "outpost_locks_active"]
    assert ("outpost_report_spool_items", (("state", "new"),)) in got


def test_spool_counts_match_reports_list(tmp_path):
    """Events new, held (over the per-user limit) and queued (the relay
    refuses): the counts by file agree with ``outpost reports list``."""
    settings = make_settings(tmp_path, port=closed_port(), max_per_user=2, max_per_hour=100)
    spool = Spool.from_settings(settings)
    t0 = time.time()
    for i in range(6):
        spool.put(make_event(i, identity=f"id{i}", arrival_time=t0 + i))
    ReportSender(spool, settings).run_once(now=t0 + 60)
    for i in range(6, 9):
        spool.put(make_event(i, identity=f"id{i}", arrival_time=t0 + i))
    expected = collections.Counter(item.state for item in list_items(spool))
    assert expected["new"] == 3 and expected["held"] and expected["queued"], expected
    got = metrics.spool_counts(settings.spool_dir)
    assert set(got) == {"new", "held", "folding", "queued", "sending", "failed"}
    assert {k: v for k, v in got.items() if v} == dict(expected)


# -- the HTTP endpoint ------------------------------------------------------------------------

def test_endpoint_serves_the_text_format(tmp_path):
    path = tmp_path / "mp"
    path.mkdir()
    run_worker(str(path), "alice=2")
    config = replace(make_config(tmp_path), metrics=MetricsSettings(port=0))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    port = sock.getsockname()[1]
    stop = threading.Event()
    t = threading.Thread(target=metrics.serve, args=(config, sock, str(path), stop))
    t.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/plain")
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["outpost_messages"].type == "counter"
    assert fams["outpost_stage_seconds"].type == "histogram"
    assert fams["outpost_store_up"].samples[0].value == 1
    assert [s.value for s in fams["outpost_user_messages"].samples if s.name.endswith("_total")] == [2]


def test_a_stalled_client_does_not_block_scrapes(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "CLIENT_TIMEOUT", 1.0)
    path = tmp_path / "mp"
    path.mkdir()
    config = replace(make_config(tmp_path), metrics=MetricsSettings(port=0))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    port = sock.getsockname()[1]
    stop = threading.Event()
    t = threading.Thread(target=metrics.serve, args=(config, sock, str(path), stop))
    t.start()
    stalled = socket.create_connection(("127.0.0.1", port))
    try:
        stalled.sendall(b"GET /metrics HTTP/1.1\r\n")          # and nothing more
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            assert b"outpost_store_up" in resp.read()
        stalled.settimeout(10)
        started = time.monotonic()
        assert stalled.recv(100) == b""                         # dropped after CLIENT_TIMEOUT
        assert time.monotonic() - started < 5
    finally:
        stalled.close()
        stop.set()
        t.join(10)
