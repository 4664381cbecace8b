"""Prometheus metrics (``metrics:``), summed over all workers.

Workers record into prometheus-client's multiprocess mode: every process
writes its values to memory-mapped files in one private directory
(``PROMETHEUS_MULTIPROC_DIR``, made empty by the master at start, before
anything imports prometheus_client).  A dedicated child of the master (the
*metrics process*) serves the HTTP endpoint: at each scrape it sums the
files of all workers, alive or dead (counters of a worker that died keep
counting: a scrape never goes backwards), and adds the gauges that describe
shared state (locks, report spool, store reachability), read at most every
:data:`STATE_TTL` seconds whatever the scrape rate.

Per-user series: workers count messages per (user, action) — users are the
configured ones, never a name taken from the message, so the set is bounded
by the configuration — and the endpoint shows only the ``top_users`` users
with the most messages.  Hot counters carry no user label.

What is recorded comes from the core's :class:`~outpost.core.types.Decision`
and the message's account (time spent, spam verdict), in the adapter after
the reply went to the MTA; the core itself records nothing.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable, Optional

if TYPE_CHECKING:
    from prometheus_client import Counter

    from ..config import Config
    from ..core.types import Decision, Message
    from ..store import Store

log = logging.getLogger("outpost.metrics")

ENV = "PROMETHEUS_MULTIPROC_DIR"
CLIENT_TIMEOUT = 10.0      # seconds a scrape connection may stay idle
STATE_TTL = 5.0            # seconds the shared-state gauges are reused between scrapes
#: Refusal reasons that are limits (counted in outpost_limit_hits_total).
LIMIT_REASONS = frozenset({"rate_limit", "max_recipients", "connection_limit", "header_limit"})
#: Reasons a recipient is refused for (series created at 0).
REFUSED_RECIPIENT_REASONS = ("rate_limit", "max_recipients", "locked", "user_locked", "store_error")
#: Decisions whose series exist from the start (at 0).
INITIAL_DECISIONS = (("accept", "ok"), ("reject", "unknown_sender"), ("reject", "spam"),
                     ("tempfail", "internal_error"), ("tempfail", "store_error"))
#: Stages timed (body chunks and headers are not: the clock would cost more
#: than the work; their time is in outpost_message_seconds).
STAGES = ("envfrom", "envrcpt", "eoh", "eom")
TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                2.5, 5.0, 10.0, 30.0)
SCORE_BUCKETS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0)
_LABEL = re.compile(r"[^a-z0-9_]")


def label(text: str, limit: int = 40) -> str:
    """A bounded label value from an internal tag (``scan_error:rspamd`` →
    ``scan_error``)."""
    return _LABEL.sub("_", text.split(":", 1)[0].lower())[:limit] or "none"


# -- the multiprocess directory (master) ----------------------------------------------

def prepare_dir(parent: Optional[str] = None) -> str:
    """Make an empty private directory for the workers' value files and
    point ``PROMETHEUS_MULTIPROC_DIR`` at it.  Call before prometheus_client
    is imported in this process (the value class is chosen at import) and
    before forking workers.  ``parent``: systemd's ``RUNTIME_DIRECTORY``
    when set, else the temporary directory."""
    parent = parent or os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
    path = tempfile.mkdtemp(prefix="outpost-metrics-", dir=parent)     # mode 0700, ours
    os.environ[ENV] = path
    return path


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.environ.get(ENV) == path:
        del os.environ[ENV]


def process_dead(pid: int, path: str) -> None:
    """Drop the live gauges of a worker that exited (its counters stay)."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(pid, path)


# -- the worker side ----------------------------------------------------------------------

class WorkerMetrics:
    """The instruments a worker records into (one per worker process).

    ``registry`` None (production): the values go to the multiprocess files
    only; tests pass a :class:`prometheus_client.CollectorRegistry`."""

    def __init__(self, registry=None, checks: Iterable[tuple[str, str]] = ()) -> None:
        from prometheus_client import Counter, Gauge, Histogram
        kw = {"registry": registry}
        self.messages = Counter("outpost_messages", "Messages by final action and reason.",
                                ["action", "reason"], **kw)
        self.recipients_refused = Counter("outpost_recipients_refused",
                                          "Recipients refused at RCPT TO, by reason.", ["reason"], **kw)
        self.limit_hits = Counter("outpost_limit_hits", "Refusals because of a limit, by limit.",
                                  ["limit"], **kw)
        self.stage_seconds = Histogram("outpost_stage_seconds", "Time Outpost spent in one milter stage.",
                                       ["stage"], buckets=TIME_BUCKETS, **kw)
        self.message_seconds = Histogram("outpost_message_seconds",
                                         "Time Outpost spent on one message (all its stages).",
                                         buckets=TIME_BUCKETS, **kw)
        self.spam_score = Histogram("outpost_spam_score", "Spam scores of scanned messages.",
                                    buckets=SCORE_BUCKETS, **kw)
        self.check_failures = Counter("outpost_check_failures",
                                      "Spam checks that failed (external engines, DNS lists, ...), "
                                      "by check and on_error policy.", ["check", "policy"], **kw)
        self.dkim_failures = Counter("outpost_dkim_failures",
                                     "Messages that could not be DKIM-signed (answered 451).", **kw)
        self.store_fallbacks = Counter("outpost_store_fallbacks",
                                       "Store operations served from process memory "
                                       "(on_store_error: local).", **kw)
        self.store_outages = Counter("outpost_store_outages", "Store outages seen by the workers.", **kw)
        self.decisions_dropped = Counter("outpost_decisions_dropped",
                                         "Decision-log entries dropped: the store failed while "
                                         "more were waiting than a worker keeps.", **kw)
        self.decision_log_errors = Counter("outpost_decision_log_errors",
                                           "Flushes of the decision log to the store that failed.", **kw)
        self.content_cache = Counter("outpost_content_cache_lookups",
                                     "Lookups of the spam engine's content cache, by result (hit: "
                                     "an earlier message with the same content was parsed, and "
                                     "scanned by the content-only checks, already).",
                                     ["result"], **kw)
        self.store_degraded = Gauge("outpost_store_degraded_workers",
                                    "Workers currently bypassing the shared store.",
                                    multiprocess_mode="livesum", **kw)
        self.workers = Gauge("outpost_workers", "Workers alive.", multiprocess_mode="livesum", **kw)
        self.user_messages = Counter("outpost_user_messages",
                                     "Messages per user and action (only the top_users users "
                                     "with the most messages are exported).", ["user", "action"], **kw)
        self._stages = {s: self.stage_seconds.labels(s) for s in STAGES}
        # Series that exist from the start (at 0): rate() and alerts see the first one.
        for action, reason in INITIAL_DECISIONS:
            self.messages.labels(action, reason)
        for reason in sorted(LIMIT_REASONS):
            self.limit_hits.labels(reason)
        for reason in REFUSED_RECIPIENT_REASONS:
            self.recipients_refused.labels(reason)
        for check, policy in checks:
            self.check_failures.labels(label(check), label(policy))
        # what each group of running totals kept elsewhere had reached when
        # last exported (:meth:`_add_growth`)
        self._exported: dict[str, tuple[int, ...]] = {}
        self._cache_results = (self.content_cache.labels("hit"), self.content_cache.labels("miss"))
        self._degraded = 0
        self._lock = threading.Lock()
        # Labelled children by label values (labels() costs more than the
        # increment); bounded: reasons come from the code, users from the
        # configuration.
        self._by_decision: dict[tuple[str, str], tuple[Counter, Optional[Counter]]] = {}
        self._by_user: dict[tuple[str, str], Counter] = {}
        self.workers.set(1)

    @classmethod
    def for_runtime(cls, runtime) -> "WorkerMetrics":
        """The instruments of a worker, with a zero series for every
        configured spam check (name, on_error policy)."""
        engine = runtime.policy.engine
        checks = [(c.name, engine.settings.failure_policy.get(c.name, "ignore"))
                  for c in engine.checks] if engine is not None else []
        return cls(checks=checks)

    def stage(self, stage: str, seconds: float) -> None:
        child = self._stages.get(stage)
        if child is not None:
            child.observe(seconds)

    def message(self, decision: "Decision", msg: "Message") -> None:
        """Record one message's final decision and account."""
        action = decision.action.value
        key = (action, decision.reason)
        children = self._by_decision.get(key)
        if children is None:
            reason = label(decision.reason)
            children = (self.messages.labels(action, reason),
                        self.limit_hits.labels(reason) if reason in LIMIT_REASONS
                        else self.dkim_failures if reason == "dkim_error" else None)
            if len(self._by_decision) < 1000:
                self._by_decision[key] = children
        children[0].inc()
        if children[1] is not None:
            children[1].inc()
        self.message_seconds.observe(msg.spent)
        verdict = msg.verdict
        if verdict is not None:
            self.spam_score.observe(float(verdict.score))
            for failure in getattr(verdict, "errors", ()):
                self.check_failures.labels(label(failure.check), label(failure.policy)).inc()
        if msg.user_name:
            ukey = (msg.user_name, action)
            child = self._by_user.get(ukey)
            if child is None:
                child = self._by_user[ukey] = self.user_messages.labels(msg.user_name, action)
            child.inc()

    def recipient_refused(self, decision: "Decision") -> None:
        reason = label(decision.reason)
        self.recipients_refused.labels(reason).inc()
        if reason in LIMIT_REASONS:
            self.limit_hits.labels(reason).inc()

    def _add_growth(self, group: str, totals: tuple[int, ...], counters: tuple) -> None:
        """Add to each of ``counters`` how far its running total in
        ``totals`` (counted elsewhere: the store wrapper, the statistics
        recorder, the content cache) grew since the last export of
        ``group``.  No lock when nothing grew (the store's, every message)."""
        if totals == self._exported.get(group):
            return
        with self._lock:
            seen = self._exported.get(group, (0,) * len(totals))
            self._exported[group] = tuple(max(t, s) for t, s in zip(totals, seen))
        for total, before, counter in zip(totals, seen, counters):
            if total > before:
                counter.inc(total - before)

    def sync_store(self, store) -> None:
        """Export the store wrapper's fallback and outage counts and state
        (:class:`~outpost.store.resilient.ResilientStore`; other stores have none)."""
        self._add_growth("store", (getattr(store, "fallbacks", 0), getattr(store, "outages", 0)),
                         (self.store_fallbacks, self.store_outages))
        degraded = 1 if getattr(store, "degraded", False) else 0
        if degraded != self._degraded:
            self._degraded = degraded
            self.store_degraded.set(degraded)

    def sync_content_cache(self, cache) -> None:
        """Export the content cache's lookups
        (:class:`~outpost.spam.engine.ContentCache`'s ``hits`` and
        ``misses``, counted by the cache as messages are scanned)."""
        self._add_growth("content cache", (cache.hits, cache.misses), self._cache_results)

    def sync_decisions(self, stats) -> None:
        """Export the decision log's losses (:class:`~outpost.stats.StatsRecorder`'s
        ``decisions_dropped`` and ``decision_errors``; the recorder counts them,
        on its flush thread)."""
        self._add_growth("decisions", (stats.decisions_dropped, stats.decision_errors),
                         (self.decisions_dropped, self.decision_log_errors))


# -- the endpoint side ---------------------------------------------------------------------

class TopUsers:
    """The workers' summed values (multiprocess files), with the per-user
    family cut to the ``top`` users with the most messages."""

    FAMILY = "outpost_user_messages"

    def __init__(self, path: str, top: int) -> None:
        self.path, self.top = path, top

    def collect(self):
        import glob

        from prometheus_client.multiprocess import MultiProcessCollector
        families = MultiProcessCollector.merge(glob.glob(os.path.join(self.path, "*.db")),
                                               accumulate=True)
        for family in families:
            if family.name == self.FAMILY:
                totals: dict[str, float] = {}
                for s in family.samples:
                    if s.name.endswith("_total"):
                        totals[s.labels["user"]] = totals.get(s.labels["user"], 0.0) + s.value
                keep = set(sorted(totals, key=lambda u: (-totals[u], u))[: self.top])
                family.samples = [s for s in family.samples if s.labels.get("user") in keep]
            yield family


class StateCollector:
    """Gauges of shared state, read at scrape time at most every ``ttl``
    seconds: locks in the store, report spool items by state, whether the
    endpoint reached the store."""

    def __init__(self, config: "Config", ttl: float = STATE_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.ttl = ttl
        self.clock = clock
        self._store: Optional[Store] = None
        self._mutex = threading.Lock()
        self._cached: Optional[tuple[float, list]] = None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def collect(self):
        with self._mutex:
            now = self.clock()
            if self._cached is None or not 0 <= now - self._cached[0] < self.ttl:
                self._cached = (now, self._read())
            return list(self._cached[1])

    def _read(self) -> list:
        from prometheus_client.core import GaugeMetricFamily
        out = []
        locks = GaugeMetricFamily("outpost_locks_active",
                                  "Locks in the store, by scope (identity|user) and who set them.",
                                  labels=["scope", "by"])
        up = GaugeMetricFamily("outpost_store_up", "1 if the metrics endpoint reached the shared store.")
        try:
            counts = self._locks()
        except Exception as exc:  # noqa: BLE001 - any store failure is "down", never a failed scrape
            log.warning("metrics: cannot list locks: %s", exc)
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            for (scope, by), n in sorted(counts.items()):
                locks.add_metric([scope, by], n)
        out += [locks, up]
        if self.config.reports is not None:
            spool = GaugeMetricFamily("outpost_report_spool_items",
                                      "Abuse-report spool items by state.", labels=["state"])
            try:
                for state, n in spool_counts(self.config.reports.spool_dir).items():
                    spool.add_metric([state], n)
            except OSError as exc:
                log.warning("metrics: cannot count the report spool: %s", exc)
            out.append(spool)
        return out

    def _locks(self) -> dict[tuple[str, str], int]:
        from ..core.keys import lock_user
        from ..runtime import open_shared_store
        if self._store is None:
            self._store = open_shared_store(self.config)
        counts: dict[tuple[str, str], int] = {("identity", "auto"): 0, ("identity", "operator"): 0,
                                               ("user", "auto"): 0, ("user", "operator"): 0}
        for lock in self._store.list_locks():
            key = ("user" if lock_user(lock.key) else "identity", label(lock.by))
            counts[key] = counts.get(key, 0) + 1
        return counts


#: spool state → (subdirectory, nested in per-key groups, file extensions)
_SPOOL = (("new", "new", False), ("held", "held", True), ("folding", "folding", True),
          ("queued", "queue", False), ("sending", "sending", False), ("failed", "failed", False))


def spool_counts(spool_dir: str) -> dict[str, int]:
    """Items per state (``outpost reports list`` states) by counting files,
    without reading them (the spool is bounded by ``max_spool``)."""
    def files(path: str) -> Iterable[os.DirEntry]:
        try:
            with os.scandir(path) as it:
                return [e for e in it if not e.name.startswith(".")]
        except FileNotFoundError:
            return []

    out = {}
    for state, sub, grouped in _SPOOL:
        n = 0
        for entry in files(os.path.join(spool_dir, sub)):
            if grouped and entry.is_dir(follow_symlinks=False):
                n += sum(1 for e in files(entry.path) if e.name.endswith((".evt", ".rpt")))
            elif entry.name.endswith((".evt", ".rpt")):
                n += 1
        out[state] = n
    return out


def build_registry(config: "Config", path: str):
    """The registry the endpoint serves: summed worker values + shared state."""
    from prometheus_client import CollectorRegistry
    assert config.metrics is not None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TopUsers(path, config.metrics.top_users))
    state = StateCollector(config)
    registry.register(state)
    return registry, state


def serve(config: "Config", sock, path: str, stop: threading.Event) -> None:
    """Body of the metrics process: answer ``GET /metrics`` (any path) on
    the listening socket ``sock`` (bound by the master) until ``stop``.
    A process of its own, so that a flood of scrapes or a stalled client
    costs no worker anything."""
    from http.server import ThreadingHTTPServer

    from prometheus_client.exposition import MetricsHandler
    registry, state = build_registry(config, path)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

    handler = MetricsHandler.factory(registry)
    # a client that stalls loses its thread, not ours (factory() is typed as returning a bare type)
    handler.timeout = CLIENT_TIMEOUT  # type: ignore[attr-defined]
    server = Server(sock.getsockname()[:2], handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    def shut_down_on_stop() -> None:
        stop.wait()
        server.shutdown()

    threading.Thread(target=shut_down_on_stop, daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        state.close()
        server.server_close()
