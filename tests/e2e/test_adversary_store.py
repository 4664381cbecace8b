"""The shared store under faults, end to end: real Postfix → Outpost (one
worker, ``on_store_error: local``) → a real Redis that is paused while
connections are open; IPv6 clients of one /64; workers whose store is down
when they start; workers that die at start.

Threat model: "a slot, count or lock taken in the shared store is freed or
expires in the shared store"."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import smtplib
import textwrap
import time

import pytest
import redis

from tests.services.poll import wait_until
from tests.services.redis import RedisServer, free_port
from tests.services.smtp import send

from .outpost_proc import Outpost

PREFIX = "e2estore:"

CONFIG = textwrap.dedent(f"""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    reports: {{enabled: false}}
    connection_limit: 3
    on_store_error: local
    store_options: {{key_prefix: '{PREFIX}', retry_interval: 1, op_timeout: 0.3,
                    connect_timeout: 0.3}}
    domains: [example.com]
    users:
      - name: webfarm
        type: ip
        ips: [203.0.113.0/28, "2001:db8:77::/48"]
        domains: [example.com]
    """)


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def outpost(postfix, redis_server):
    postfix.set_main(inet_protocols="all")     # XCLIENT ADDR=IPV6:… (still on 127.0.0.1)
    proc = Outpost(postfix.milter_socket, CONFIG, workers=1, store=redis_server.url).start()
    yield proc
    proc.stop()


def rdb(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


def shared_count(server: RedisServer, key: str) -> int:
    r = rdb(server)
    try:
        return int(r.scard(f"{PREFIX}conn:{key}"))
    finally:
        r.close()


def hold(port: int, addr: str) -> tuple[smtplib.SMTP, int]:
    """An open connection made to look like ``addr`` (XCLIENT), after MAIL
    FROM: (connection, MAIL FROM reply code)."""
    c = smtplib.SMTP("127.0.0.1", port, timeout=15)
    c.ehlo("client.example")
    code, text = c.docmd("XCLIENT", f"ADDR={addr}")
    assert code == 220, (code, text)
    c.ehlo("client.example")
    code, _ = c.docmd("MAIL", "FROM:<web@example.com>")
    return c, code


def close(conns) -> None:
    for c in conns:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            c.quit()


def test_slots_closed_during_a_store_hiccup_are_freed_in_the_store(postfix, outpost,
                                                                   redis_server, sink):
    ip = "203.0.113.5"
    held = [hold(postfix.relay_port, ip) for _ in range(3)]
    try:
        assert [code for _, code in held] == [250] * 3, outpost.log()[-3000:]
        assert shared_count(redis_server, ip) == 3
        extra, code = hold(postfix.relay_port, ip)
        close([extra])
        assert code == 421                              # the limit is enforced through Redis
        r = rdb(redis_server)
        r.execute_command("CLIENT", "PAUSE", 5000, "ALL")   # Redis stops answering
        try:
            # another client's connection meets the paused store: the worker
            # serves from memory for retry_interval (1 s)
            other, code = hold(postfix.relay_port, "203.0.113.6")
            assert code == 250
            assert "unavailable, serving from process memory" in outpost.log()
        finally:
            r.execute_command("CLIENT", "UNPAUSE")
            r.close()
        close([c for c, _ in held] + [other])           # closed while serving from memory
        held = []
        # Connections of a third client make the worker probe Redis again
        # after retry_interval; the releases owed to it are paid first.  Before
        # the fix the count stayed at 3 and the client got 421 until restart.
        wait_until(lambda: send(postfix.relay_port, xclient={"ADDR": "203.0.113.7"},
                              mail_from="web@example.com", rcpt_tos=["x@dest.example"]).accepted
                 and shared_count(redis_server, ip) == 0, what="the shared count back to 0")
        assert shared_count(redis_server, "203.0.113.6") == 0
        again = [hold(postfix.relay_port, ip) for _ in range(3)]
        try:
            assert [code for _, code in again] == [250] * 3
            assert shared_count(redis_server, ip) == 3       # counted in Redis again
            extra, code = hold(postfix.relay_port, ip)
            close([extra])
            assert code == 421
        finally:
            close([c for c, _ in again])
    finally:
        close([c for c, _ in held])


def test_ipv6_clients_of_one_64_share_the_connection_limit(postfix, outpost, redis_server, sink):
    held = [hold(postfix.relay_port, f"IPV6:2001:db8:77::{i}") for i in (1, 2, 3)]
    try:
        assert [code for _, code in held] == [250] * 3, outpost.log()[-3000:]
        assert shared_count(redis_server, "2001:db8:77::/64") == 3
        extra, code = hold(postfix.relay_port, "IPV6:2001:db8:77::ffff:1")   # same /64
        close([extra])
        assert code == 421
        neighbour, code = hold(postfix.relay_port, "IPV6:2001:db8:77:1::1")  # next /64
        close([neighbour])
        assert code == 250
    finally:
        close([c for c, _ in held])
    wait_until(lambda: shared_count(redis_server, "2001:db8:77::/64") == 0, what="slots freed")


# -- workers and a store that is down when they start (no MTA needed) ---------------

START_CONFIG = textwrap.dedent("""\
    report_abuse_to: abuse@example.net
    reports: {enabled: false}
    on_store_error: tempfail
    store_options: {connect_timeout: 0.2, op_timeout: 0.2}
    domains: [example.com]
    users:
      - {name: alice, type: login, logins: [alice@example.com], domains: [example.com]}
    """)


def test_store_down_at_start_workers_keep_serving(tmp_path):
    """``on_store_error: tempfail`` and Redis down at start: the worker
    serves (and answers tempfail) instead of dying and being respawned."""
    dead = RedisServer(port=free_port())                  # never started
    proc = Outpost(tmp_path / "o.sock", START_CONFIG, workers=1, store=dead.url).start()
    try:
        wait_until(lambda: "serving" in proc.log(), what="a worker serving")
        first = wait_until(proc.children, what="a worker")
        time.sleep(3.0)        # an observation window: a respawning worker dies within it
        assert proc.children() == first, proc.log()[-3000:]
        log = proc.log()
        assert "worker crashed" not in log and "died" not in log, log[-3000:]
        assert "the store does not answer" in log
    finally:
        proc.stop()
        dead.close()


def test_workers_dying_at_start_are_respawned_with_back_off(tmp_path):
    """A worker that cannot start (here: the sqlite store's folder is
    replaced by a file after the master started, so no worker can open the
    store; the master read the secret and keys once, at start) is replaced
    after a doubling delay, not every 0.2 s; the master still stops at once on
    SIGTERM."""
    db = tmp_path / "db"
    db.mkdir()
    proc = Outpost(tmp_path / "o.sock", START_CONFIG.replace("tempfail", "local"), workers=1,
                   store=f"sqlite:///{db}/state.db").start()
    try:
        wait_until(lambda: "serving" in proc.log(), what="a worker serving")
        shutil.rmtree(db)
        db.write_text("not a folder")
        for pid in proc.children():
            os.kill(pid, signal.SIGKILL)
        time.sleep(5.0)        # an observation window: without back-off ~20 restarts
        deaths = proc.log().count(" died (status ")
        assert 2 <= deaths <= 6, proc.log()[-3000:]
        assert "starting a new one in 3.2 s" in proc.log() or "in 1.6 s" in proc.log()
        t0 = time.monotonic()
        assert proc.stop() == 0
        assert time.monotonic() - t0 < 5
    finally:
        if proc.proc.running:
            proc.stop(graceful=False)


def test_a_report_sender_dying_at_start_is_restarted_with_back_off(tmp_path):
    """A report sender that cannot start (its spool folder replaced by a
    file) is restarted after a doubling delay, not at once in a loop; the
    reports stay spooled for when it can."""
    spool = tmp_path / "reports"
    config = START_CONFIG.replace("reports: {enabled: false}",
                                  f"reports: {{spool_dir: {spool}, smtp: {{port: 9}}, "
                                  f"listener_auth: none}}")
    proc = Outpost(tmp_path / "o.sock", config.replace("tempfail", "local"), workers=1,
                   store=f"sqlite:///{tmp_path}/state.db").start()
    try:
        workers = {int(w) for w in __import__("re").findall(r"worker (\d+) serving", proc.log())}
        [sender] = [p for p in wait_until(lambda: [p for p in proc.children() if p not in workers],
                                          what="the report sender")]
        shutil.rmtree(spool)
        spool.write_text("not a folder")
        os.kill(sender, signal.SIGKILL)
        time.sleep(2.0)        # an observation window: without back-off one restart per 0.2 s
        deaths = proc.log().count("report sender ")
        assert 2 <= deaths <= 5, proc.log()[-3000:]
        assert "starting a new one in 0.4 s" in proc.log(), proc.log()[-3000:]
        assert proc.stop() == 0
    finally:
        if proc.proc.running:
            proc.stop(graceful=False)


def cli(outpost, *args):
    import subprocess
    return subprocess.run([*outpost.proc.argv[:3], *args, "-c", str(outpost.config_path)],
                          capture_output=True, text=True, env=outpost.proc.env, timeout=60)


def test_lock_with_the_store_paused_fails_and_says_so(outpost, redis_server):
    """``outpost lock`` never "locks" in its own memory (``on_store_error:
    local`` is for serving mail, not for commands)."""
    r = rdb(redis_server)
    r.execute_command("CLIENT", "PAUSE", 5000, "ALL")
    try:
        out = cli(outpost, "lock", "webfarm/mallory")
    finally:
        r.execute_command("CLIENT", "UNPAUSE")
    assert out.returncode == 3, out
    assert out.stdout == "" and out.stderr.startswith(
        "outpost: store error, the command did not complete: redis store"), out.stderr
    assert not r.exists(f"{PREFIX}lock:webfarm/mallory")
    out = cli(outpost, "lock", "webfarm/mallory")
    assert out.returncode == 0 and out.stdout.startswith("locked webfarm/mallory"), out
    assert r.exists(f"{PREFIX}lock:webfarm/mallory")
    r.delete(f"{PREFIX}lock:webfarm/mallory")
    r.srem(f"{PREFIX}locks", "webfarm/mallory")
    r.close()
