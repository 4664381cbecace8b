"""Rate limits, locks and monitor mode end to end: real Postfix → Outpost
(sqlite store, 2 workers) → sink; and two relays sharing one real Redis."""

from __future__ import annotations

import subprocess
import textwrap
import time

import pytest

from tests.services.postfix import PostfixInstance
from tests.services.redis import RedisServer
from tests.services.smtp import build_message, send

from .outpost_proc import Outpost

CONFIG = textwrap.dedent("""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    domains: [example.com]
    defaults:
      limits:
        messages: ["60/1m", "1000/1h"]
        max_recipients: 5
    users:
      - name: alice
        type: login
        logins: [alice@example.com]
        domains: [example.com]
      - name: limited
        type: login
        logins: [bob@example.com]
        domains: [example.com]
        limits: {messages: ["3/1m"]}
        lock: {after_limit_hits: 2, window: 10m, duration: 1h}
      - name: watched
        type: login
        logins: [eve@example.com]
        domains: [example.com]
        mode: monitor
        limits: {messages: ["2/1m"]}
    """)


@pytest.fixture(scope="module")
def outpost(postfix):
    proc = Outpost(postfix.milter_socket, CONFIG,
                   faults=True).start()
    yield proc
    proc.stop()


def as_login(postfix, login, rcpts=("x@dest.example",), message=None, port=None):
    return send(port or postfix.submission_port, xclient={"LOGIN": login}, mail_from=login,
                rcpt_tos=list(rcpts), message=message)


def cli(outpost, *args):
    return subprocess.run([*outpost.proc.argv[:3], *args, "-c", str(outpost.config_path)],
                          capture_output=True, text=True, env=outpost.proc.env, timeout=60)


def test_61st_message_in_a_minute_is_refused_and_tempfails_do_not_count(postfix, outpost, sink):
    fault = build_message("alice@example.com", "x@dest.example", headers={"X-Test-Fault": "1"})
    for _ in range(3):                               # tempfailed by an internal error: not counted
        assert as_login(postfix, "alice@example.com", message=fault).code == 451
    results = [as_login(postfix, "alice@example.com") for _ in range(61)]
    assert [r.accepted for r in results[:60]] == [True] * 60, [str(r) for r in results if not r.accepted][:3]
    last = results[60]
    assert (last.code, last.stage) == (451, "rcpt"), last
    assert last.text == "4.7.1 Too many messages from alice@example.com (60/1m); please wait and try again"
    # refused attempts are not counted either
    assert as_login(postfix, "alice@example.com").code == 451
    sink.wait_for(60)
    usage = cli(outpost, "usage", "alice/alice@example.com")
    assert usage.returncode == 0, usage.stderr
    lines = [" ".join(ln.split()) for ln in usage.stdout.splitlines()]
    assert any(ln.startswith("messages 60/1m 60/60, resets in") for ln in lines), usage.stdout
    assert any(ln.startswith("messages 1000/1h 60/1000, resets in") for ln in lines), usage.stdout


def test_max_recipients_refused_at_rcpt(postfix, outpost, sink):
    rcpts = [f"r{i}@dest.example" for i in range(7)]
    watched = as_login(postfix, "eve@example.com", rcpts=rcpts)   # monitor user: all delivered
    assert watched.accepted and not watched.refused_rcpts, watched
    r = send(postfix.submission_port, xclient={"LOGIN": "bob@example.com"}, mail_from="bob@example.com",
             rcpt_tos=rcpts)
    assert r.accepted, r
    assert sorted(r.refused_rcpts) == ["r5@dest.example", "r6@dest.example"]
    assert all(code == 452 and "4.5.3 Too many recipients" in text for code, text in r.refused_rcpts.values())
    msgs = sink.wait_for(2)
    bob = [m for m in msgs if m.mail_from == "bob@example.com"][0]
    assert len(bob.rcpt_tos) == 5
    eve = [m for m in msgs if m.mail_from == "eve@example.com"][0]
    assert len(eve.rcpt_tos) == 7
    assert "tempfail (max_recipients: 452 4.5.3 Too many recipients)" in eve.headers("X-Outpost-Would")[0]


def test_lock_after_repeated_hits_and_unlock_through_cli(postfix, outpost, sink):
    cli(outpost, "reset", "limited/bob@example.com")
    for _ in range(3):
        assert as_login(postfix, "bob@example.com").accepted
    for _ in range(2):                                        # two limit hits → locked
        r = as_login(postfix, "bob@example.com")
        assert r.text.startswith("4.7.1 Too many messages"), r
    r = as_login(postfix, "bob@example.com")
    assert (r.code, r.stage) == (451, "rcpt")
    assert r.text == ("4.7.1 Sending from bob@example.com is suspended because of suspected abuse; "
                      "contact abuse@example.net")
    # the abuse desk stays reachable
    assert as_login(postfix, "bob@example.com", rcpts=["abuse@example.net"]).accepted
    locks = cli(outpost, "locks")
    assert "limited/bob@example.com" in locks.stdout and "2 rate-limit hits" in locks.stdout
    assert cli(outpost, "unlock", "limited/bob@example.com").stdout.strip() == "unlocked limited/bob@example.com"
    assert "no identity is locked" in cli(outpost, "locks").stdout
    cli(outpost, "reset", "limited/bob@example.com")
    assert as_login(postfix, "bob@example.com").accepted
    # an operator lock, with a duration
    out = cli(outpost, "lock", "limited/bob@example.com", "--for", "2h")
    assert out.returncode == 0 and "locked limited/bob@example.com until" in out.stdout
    assert as_login(postfix, "bob@example.com").text.startswith("4.7.1 Sending from bob@example.com is suspended")
    cli(outpost, "unlock", "limited/bob@example.com")


def test_monitor_mode_blocks_nothing_and_says_what_it_would(postfix, outpost, sink):
    cli(outpost, "reset", "watched/eve@example.com")
    results = [as_login(postfix, "eve@example.com") for _ in range(4)]
    assert all(r.accepted for r in results), [str(r) for r in results]
    msgs = [m for m in sink.wait_for(4) if m.mail_from == "eve@example.com"]
    would = [m.headers("X-Outpost-Would") for m in msgs]
    assert would[:2] == [[], []]
    for w in would[2:]:
        assert len(w) == 1 and w[0].startswith("tempfail (rate_limit: 451 4.7.1 Too many messages from "
                                               "eve@example.com (2/1m)")


SHARED = textwrap.dedent("""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    domains: [example.com]
    on_store_error: {policy}
    users:
      - name: carol
        type: login
        logins: [carol@example.com]
        domains: [example.com]
        limits: {{messages: ["10/1m"]}}
    """)


@pytest.fixture
def cluster(smtp_sink):
    """Two relays (Postfix + Outpost each) sharing one real Redis."""
    redis = RedisServer().start()
    nodes = []
    try:
        for _ in range(2):
            pf = PostfixInstance(sink_port=smtp_sink.port)
            pf.start()
            nodes.append((pf, None))
        yield redis, nodes
    finally:
        for pf, _ in nodes:
            pf.cleanup()
        redis.close()


def start_outposts(nodes, redis, policy):
    started = []
    for pf, _ in nodes:
        op = Outpost(pf.milter_socket, SHARED.format(policy=policy), workers=1, store=redis.url)
        started.append((pf, op.start()))
    return started


def test_two_relays_sharing_redis_enforce_one_limit(cluster, sink):
    redis, nodes = cluster
    relays = start_outposts(nodes, redis, "tempfail")
    try:
        results = []
        for _ in range(8):
            for pf, _ in relays:
                results.append(send(pf.submission_port, xclient={"LOGIN": "carol@example.com"},
                                    mail_from="carol@example.com", rcpt_tos=["x@dest.example"]))
        assert sum(r.accepted for r in results) == 10
        assert all(r.code == 451 and "(10/1m)" in r.text for r in results if not r.accepted)
        assert len(sink.wait_for(10)) == 10
    finally:
        for _, op in relays:
            op.stop(graceful=False)


def test_redis_down_tempfail_policy_loses_nothing_and_recovers(cluster, sink):
    redis, nodes = cluster
    relays = start_outposts(nodes[:1], redis, "tempfail")
    pf = relays[0][0]
    try:
        def one():
            return send(pf.submission_port, xclient={"LOGIN": "carol@example.com"},
                        mail_from="carol@example.com", rcpt_tos=["x@dest.example"])
        assert one().accepted
        redis.stop()
        down = [one() for _ in range(3)]
        assert all(r.code == 451 and "4.3.0" in r.text for r in down), [str(r) for r in down]
        redis.start()                                  # same port, no Outpost restart
        deadline = time.monotonic() + 15
        while not (r := one()).accepted and time.monotonic() < deadline:
            time.sleep(0.5)
        assert r.accepted, r
        assert len(sink.wait_for(2)) == 2              # nothing relayed while the store was down
    finally:
        relays[0][1].stop(graceful=False)


def test_redis_down_local_policy_keeps_limiting(cluster, sink):
    redis, nodes = cluster
    relays = start_outposts(nodes[:1], redis, "local")
    pf, op = relays[0]
    try:
        redis.stop()
        results = [send(pf.submission_port, xclient={"LOGIN": "carol@example.com"},
                        mail_from="carol@example.com", rcpt_tos=["x@dest.example"]) for _ in range(13)]
        accepted = sum(r.accepted for r in results)
        assert accepted == 10, [str(r) for r in results]          # one worker: the local limit is exact
        assert "store" in op.log().lower()
        redis.start()
    finally:
        op.stop(graceful=False)
