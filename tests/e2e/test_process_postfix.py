"""Process behaviour end to end: internal errors, killed workers, reload,
shutdown and stale sockets — real Postfix, real Outpost processes."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import time

import pytest

from tests.services.milter import unix_socket_ready
from tests.services.smtp import build_message, send

from .outpost_proc import E2E_CONFIG, Outpost


@pytest.fixture
def outpost(postfix):
    proc = Outpost(postfix.milter_socket, E2E_CONFIG + "reports: {enabled: false}\n",
                   faults=True).start()
    yield proc
    proc.stop(graceful=False)


def _children(pid: int) -> list[int]:
    """Children of the master ``pid`` (its workers: reports are off here)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    """Wait until none of ``pids`` is a live process (a zombie counts as gone)."""
    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except OSError:
            return False
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, f"processes {pids} still alive after {timeout}s"
        time.sleep(0.02)


def _send_ip(postfix, **kw):
    return send(postfix.relay_port, xclient={"ADDR": "203.0.113.5"}, mail_from="web@example.com",
                rcpt_tos=["x@dest.example"], **kw)


def test_internal_error_gives_451_and_next_message_is_fine(postfix, outpost, sink):
    bad = build_message("web@example.com", "x@dest.example", headers={"X-Test-Fault": "1"})
    r = _send_ip(postfix, message=bad)
    assert (r.stage, r.code) == ("end", 451) and r.text.startswith("4.3.0"), r
    log = outpost.log()
    # the queue id once, as the line's QID: prefix
    assert re.search(r" outpost\.milter: [0-9A-Za-z]+: internal error at eom "
                     r"\(client=203\.0\.113\.5\); answering 451 4\.3\.0", log), log
    assert "RuntimeError: fault injected" in log
    assert "Traceback" in log
    r2 = _send_ip(postfix)
    assert r2.accepted, r2
    [m] = sink.wait_for(1)
    assert m.headers("X-Outpost-User") == ["webfarm"]
    assert sink.messages == [m]                    # the failed one was not relayed


def test_internal_error_at_the_no_reply_header_stage_gives_451_at_end_of_data(postfix, outpost, sink):
    """Postfix does not wait for the header callbacks' answers: the failure
    is answered at end of DATA, and the message is not relayed."""
    bad = build_message("web@example.com", "x@dest.example", headers={"X-Test-Fault": "header"})
    r = _send_ip(postfix, message=bad)
    assert (r.stage, r.code) == ("end", 451) and r.text.startswith("4.3.0"), r
    log = outpost.log()
    # no queue id from Postfix yet at this stage: no QID: prefix (as on every line)
    assert "internal error at header (client=203.0.113.5); answering 451 4.3.0" in log, log
    assert "at the header stage" in log
    r2 = _send_ip(postfix)
    assert r2.accepted, r2
    [m] = sink.wait_for(1)
    assert sink.messages == [m] and m.headers("X-Outpost-User") == ["webfarm"]


def _connect_from(port: int, source: str):
    c = smtplib.SMTP(timeout=15, source_address=(source, 0))
    c.connect("127.0.0.1", port)
    c.ehlo("client.example")
    code, _ = c.docmd("MAIL", "FROM:<app@example.com>")
    if code == 250:
        c.rset()
    return c, code


def _comms(pid: int) -> list[str]:
    """The kernel's names of the threads of ``pid``."""
    return [open(f"/proc/{pid}/task/{tid}/comm").read().strip() for tid in os.listdir(f"/proc/{pid}/task")]


def test_processes_and_their_threads_are_named_by_role(postfix, outpost, sink):
    """ps, top and perf tell the master from the workers, and every
    thread of a worker (libmilter's connection threads) is a worker's."""
    held = [_connect_from(postfix.relay_port, "127.0.0.78") for _ in range(4)]   # open sessions
    try:
        assert [code for _, code in held] == [250] * 4, outpost.log()[-3000:]
        master = outpost.proc.proc.pid
        assert _comms(master)[0] == "outpost-master"
        workers = _children(master)
        assert len(workers) == 2
        threads = [c for w in workers for c in _comms(w)]
        assert set(threads) == {"outpost-worker"}
        assert len(threads) >= 2 * 3 + 4        # main, heartbeat, statistics; a session's thread each
    finally:
        for c, _ in held:
            c.close()


def test_slots_of_a_killed_worker_are_reclaimed(postfix, outpost, sink):
    held = [_connect_from(postfix.relay_port, "127.0.0.77") for _ in range(10)]
    assert [code for _, code in held] == [250] * 10, outpost.log()[-3000:] + postfix.maillog()[-3000:]
    extra, code = _connect_from(postfix.relay_port, "127.0.0.77")
    extra.close()
    assert code == 421
    master = outpost.proc.proc.pid
    workers = _children(master)
    assert len(workers) == 2
    for w in workers:
        os.kill(w, signal.SIGKILL)                 # no close callbacks run
    for c, _ in held:
        try:
            c.close()
        except OSError:
            pass
    deadline = time.monotonic() + 20
    while len(set(_children(master)) - set(workers)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    new = set(_children(master)) - set(workers)
    assert len(new) == 2, "the master replaces dead workers"
    while not all(f"worker {pid} serving" in outpost.log() for pid in new):   # slots freed before
        assert time.monotonic() < deadline, outpost.log()[-3000:]
        time.sleep(0.05)
    fresh = [_connect_from(postfix.relay_port, "127.0.0.77") for _ in range(10)]
    try:
        assert [code for _, code in fresh] == [250] * 10
    finally:
        for c, _ in fresh:
            c.close()


def test_sighup_reload_and_invalid_config_keeps_old(postfix, outpost, sink):
    r = send(postfix.relay_port, xclient={"ADDR": "198.51.100.40"}, mail_from="a@example.com")
    assert r.code == 550
    outpost.write_config("reports: {enabled: false}\n" + E2E_CONFIG
                         + "  - name: newcomer\n    type: ip\n    ips: [198.51.100.40/32]\n"
                           "    domains: [example.com]\n")
    os.kill(outpost.proc.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = send(postfix.relay_port, xclient={"ADDR": "198.51.100.40"}, mail_from="a@example.com")
        if r.accepted:
            break
        time.sleep(0.3)
    assert r.accepted, r
    # an invalid configuration is refused and the running one stays
    outpost.write_config(E2E_CONFIG.replace("203.0.113.0/28", "203.0.113.300"))
    os.kill(outpost.proc.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload refused" not in outpost.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "reload refused, keeping the running configuration" in outpost.log()
    assert "users[0].ips[0]: '203.0.113.300' is not an IP network" in outpost.log()
    r = send(postfix.relay_port, xclient={"ADDR": "198.51.100.40"}, mail_from="a@example.com")
    assert r.accepted, r


def test_sigterm_clean_shutdown_and_restart_on_stale_socket(postfix, outpost, sink):
    sock = postfix.milter_socket
    assert outpost.stop(graceful=True) == 0
    assert not sock.exists(), "clean shutdown removes the socket"
    r = _send_ip(postfix)
    assert r.code == 451, r                           # Postfix: milter_default_action = tempfail
    outpost.start()
    master = outpost.proc.proc.pid
    deadline = time.monotonic() + 10          # the socket listens before the workers are forked
    while len(workers := _children(master)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(master, signal.SIGKILL)
    for w in workers:
        os.kill(w, signal.SIGKILL)
    _wait_gone([master, *workers])
    assert sock.exists() and not unix_socket_ready(sock)   # stale socket left behind
    outpost.proc.proc = None
    outpost.start()
    r = _send_ip(postfix)
    assert r.accepted, r
