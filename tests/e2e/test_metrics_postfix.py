"""Metrics end to end: real Postfix → Outpost (2 workers, ``metrics:`` on a
loopback port) → sink; the endpoint is scraped over HTTP and parsed with
prometheus_client's own parser.  The dashboard and alert rules shipped in
contrib/ are checked against the names the endpoint really exposes."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
import urllib.request

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.corpus import HAM, SPAM, corpus_message
from tests.services.postfix import free_port
from tests.services.smtp import send

from .outpost_proc import ROOT, Outpost


def config(port: int) -> str:
    return textwrap.dedent(f"""\
        hostname: relay.example.net
        report_abuse_to: abuse@example.net
        domains: [example.com]
        metrics: {{listen: "127.0.0.1:{port}", top_users: 1}}
        users:
          - name: alice
            type: login
            logins: [alice@example.com]
            domains: [example.com]
          - name: bob
            type: login
            logins: [bob@example.com]
            domains: [example.com]
        """)


@pytest.fixture(scope="module")
def outpost(postfix):
    port = free_port()
    proc = Outpost(postfix.milter_socket, config(port), workers=2).start()
    proc.metrics_url = f"http://127.0.0.1:{port}/metrics"
    yield proc
    proc.stop()


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_scrape(url: str, ready, timeout: float = 20.0):
    """Scrape until ``ready(samples)`` (a message is counted when its
    connection closes, just after the client's QUIT)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def submit(postfix, login, message=None):
    return send(postfix.submission_port, xclient={"LOGIN": login}, mail_from=login,
                rcpt_tos=["rcpt@dest.example"], message=message)


def test_counters_by_action_and_reason_summed_over_workers(postfix, outpost, sink):
    url = outpost.metrics_url
    before = scrape(url)
    results = [
        submit(postfix, "alice@example.com", corpus_message("ham", HAM, "alice@example.com")),
        submit(postfix, "mallory@example.net"),                                  # unknown sender
        submit(postfix, "bob@example.com", corpus_message("spam", SPAM, "bob@example.com")),
        submit(postfix, "alice@example.com", corpus_message("ham", HAM, "alice@example.com")),
    ]
    assert results[0].accepted and results[3].accepted, results
    assert (results[1].stage, results[1].code) == ("mail", 550), results[1]
    assert (results[2].stage, results[2].code) == ("end", 550), results[2]
    assert len(sink.wait_for(2)) == 2

    def delta(samples, name, **labels):
        return value(samples, name, **labels) - value(before, name, **labels)

    def counted(samples):
        return delta(samples, "outpost_message_seconds_count") >= 4

    after = wait_scrape(url, counted)
    assert delta(after, "outpost_messages_total", action="accept", reason="ok") == 2
    assert delta(after, "outpost_messages_total", action="reject", reason="unknown_sender") == 1
    assert delta(after, "outpost_messages_total", action="reject", reason="spam") == 1
    # every message has its time account, scanned ones their score
    assert delta(after, "outpost_message_seconds_count") == 4
    assert delta(after, "outpost_spam_score_count") == 3
    assert delta(after, "outpost_spam_score_bucket", le="+Inf") == 3
    assert delta(after, "outpost_stage_seconds_count", stage="envfrom") == 4
    assert delta(after, "outpost_stage_seconds_count", stage="eom") == 3
    # both workers took part (Postfix spreads connections; 2 workers are alive)
    assert value(after, "outpost_workers") == 2
    # per-user series cut to the top 1 user: alice (2 messages), not bob (1)
    users = {dict(k[1])["user"] for k in after if k[0] == "outpost_user_messages_total"}
    assert users == {"alice"}
    assert value(after, "outpost_store_up") == 1
    assert value(after, "outpost_store_degraded_workers") == 0
    assert ("outpost_report_spool_items", (("state", "queued"),)) in after
    assert ("outpost_content_cache_lookups_total", (("result", "hit"),)) in after

    # the three scanned messages' content-cache lookups reach the endpoint
    # with the workers' heartbeats (every 10 s)
    def looked_up(samples):
        return sum(delta(samples, "outpost_content_cache_lookups_total", result=r)
                   for r in ("hit", "miss"))

    synced = wait_scrape(url, lambda samples: looked_up(samples) >= 3, timeout=25.0)
    assert looked_up(synced) == 3


def test_counters_do_not_go_backwards_when_a_worker_is_killed(postfix, outpost, sink):
    url = outpost.metrics_url
    for _ in range(2):
        assert submit(postfix, "alice@example.com",
                      corpus_message("ham", HAM, "alice@example.com")).accepted
    sink.wait_for(2)
    before = wait_scrape(url, lambda s: value(s, "outpost_workers") == 2)
    workers = [p for p in outpost.children() if _cmd_is_worker(p, outpost)]
    assert len(workers) == 2, workers
    for pid in workers:                  # every worker that counted anything dies
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30     # two new workers, past their metrics set-up
    while True:
        new = [p for p in outpost.children() if p not in workers and _cmd_is_worker(p, outpost)]
        log = outpost.log()
        if len(new) == 2 and all(f"worker {p} serving" in log for p in new):
            break
        assert time.monotonic() < deadline, (new, log[-2000:])
        time.sleep(0.1)
    after = scrape(url)
    assert value(after, "outpost_workers") == 2          # the dead ones are not alive
    for key, v in before.items():
        if key[0].endswith(("_total", "_count", "_sum", "_bucket")) and key[0] != "outpost_user_messages_total":
            assert after.get(key, 0.0) >= v, (key, v, after.get(key))
    # and the new workers count on top
    r = submit(postfix, "alice@example.com", corpus_message("ham", HAM, "alice@example.com"))
    assert r.accepted
    ok = ("outpost_messages_total", (("action", "accept"), ("reason", "ok")))
    later = wait_scrape(url, lambda s: s.get(ok, 0) > before[ok])
    assert later[ok] == before[ok] + 1


def _holds_listener(pid: int, port: int) -> bool:
    """True if ``pid`` holds the TCP listener on loopback ``port``."""
    with open("/proc/net/tcp") as fh:
        inodes = {f"socket:[{f[9]}]" for f in (line.split() for line in fh.read().splitlines()[1:])
                  if f[1] == f"0100007F:{port:04X}" and f[3] == "0A"}
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def test_a_killed_metrics_process_is_replaced(postfix, outpost, sink):
    url = outpost.metrics_url
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    before = scrape(url)
    [pid] = [p for p in outpost.children() if _holds_listener(p, port)]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:
        new = [p for p in outpost.children() if p != pid and _holds_listener(p, port)]
        if new:
            break
        assert time.monotonic() < deadline, outpost.log()[-2000:]
        time.sleep(0.1)
    after = wait_scrape(url, lambda s: True)
    assert "metrics process %d died" % pid in outpost.log()
    for key, v in before.items():
        if key[0].endswith("_total"):
            assert after.get(key, 0.0) >= v, key


def test_reload_moves_the_listener_and_keeps_the_counts(postfix, outpost, sink):
    """SIGHUP with a new metrics.listen: the new address answers, the old
    one no longer does, and the counts of the old generation are kept."""
    old_url = outpost.metrics_url
    before = scrape(old_url)
    port = free_port()
    outpost.write_config(config(port))
    outpost.proc.proc.send_signal(signal.SIGHUP)
    new_url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 30
    while True:
        try:
            after = scrape(new_url)
            break
        except OSError:
            assert time.monotonic() < deadline, outpost.log()[-2000:]
            time.sleep(0.1)
    outpost.metrics_url = new_url
    with pytest.raises(OSError):
        scrape(old_url)
    ok = ("outpost_messages_total", (("action", "accept"), ("reason", "ok")))
    assert after[ok] >= before[ok] > 0
    assert submit(postfix, "alice@example.com", corpus_message("ham", HAM, "alice@example.com")).accepted
    later = wait_scrape(new_url, lambda s: s.get(ok, 0) > before[ok])
    assert later[ok] == before[ok] + 1


def _cmd_is_worker(pid: int, outpost) -> bool:
    """Workers are the children that hold the milter socket's listener
    (not the metrics process, not the report sender)."""
    path = str(outpost.proc.socket_path)
    with open("/proc/net/unix") as fh:
        inodes = {f"socket:[{f[6]}]" for f in (line.split() for line in fh.read().splitlines()[1:])
                  if len(f) >= 8 and f[7] == path}
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


# -- the shipped dashboard and alert rules -----------------------------------------------

#: Grafana's variables, replaced by values of their kind before parsing.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "6h", "$instance": ".*"}


def selectors(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (parsed: a syntax error
    fails the test)."""
    for var, val in GRAFANA_VARS.items():
        expr = expr.replace(var, val)
    assert "$" not in expr, expr
    names: set[str] = set()

    def walk(node) -> None:
        if type(node).__name__ == "VectorSelector":
            assert node.name, f"selector without a metric name in {expr}"
            names.add(node.name)
        for attr in ("lhs", "rhs", "expr", "param", "args", "vector_selector"):
            child = getattr(node, attr, None)
            for c in child if isinstance(child, list) else [child] if child is not None else []:
                walk(c)

    walk(promql_parser.parse(expr))
    return names


def exposed_names(postfix, outpost) -> set[str]:
    """Family and sample names on the page, once both workers are set up
    and a message was counted (per-user series exist only then)."""
    url = outpost.metrics_url
    assert submit(postfix, "alice@example.com", corpus_message("ham", HAM, "alice@example.com")).accepted
    wait_scrape(url, lambda s: value(s, "outpost_workers") == 2
                and any(k[0] == "outpost_user_messages_total" for k in s))
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
    return names


def test_grafana_dashboard_uses_only_exposed_metrics(postfix, outpost, sink):
    names = exposed_names(postfix, outpost)
    board = json.loads((ROOT / "contrib/grafana/outpost.json").read_text())
    assert board["title"] and board["uid"] and board["schemaVersion"] >= 30
    assert board["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", ())]
    exprs += [v["query"]["query"] for v in board["templating"]["list"]]
    assert len(exprs) >= 10
    for e in exprs:
        if e.startswith("label_values("):           # Grafana's, not PromQL
            e = e[len("label_values("):].split(",")[0]
        used = selectors(e)
        assert used and used <= names, (e, used - names)
    for p in board["panels"]:
        assert p["type"] in ("row", "timeseries", "stat", "bargauge"), p["type"]
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24


def test_alert_rules_use_only_exposed_metrics(postfix, outpost, sink):
    names = exposed_names(postfix, outpost)
    rules = yaml.safe_load((ROOT / "contrib/prometheus/alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    for wanted in ("OutpostStoreDegraded", "OutpostReportSpoolGrowing", "OutpostTempfailRate",
                   "OutpostLockStorm"):
        assert wanted in alerts
    for name, expr in alerts.items():
        used = selectors(expr)
        assert used and used <= names, (name, used - names)
    for g in rules["groups"]:
        for r in g["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
            assert r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"]
