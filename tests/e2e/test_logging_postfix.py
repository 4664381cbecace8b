"""Outpost's log lines through a real Postfix: with ``log: {target:
syslog}`` each message's line reaches a syslog socket (a Unix datagram
socket bound by the test, standing in for /dev/log) as mail.info with the
queue id Postfix logged for the same message; an internal error arrives at
mail.err with its queue id; SIGHUP applies a changed ``log:`` block."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import tempfile
import time

import pytest

from tests.services.smtp import build_message, send

from .outpost_proc import E2E_CONFIG, Outpost
from .test_process_postfix import _wait_gone


class SyslogReceiver:
    """A Unix datagram socket standing in for /dev/log."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="outpost-syslog-")
        self.path = os.path.join(self.dir, "dev-log")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.lines: list[bytes] = []

    def wait_for(self, pattern: bytes, timeout: float = 15.0) -> re.Match:
        """The first line received (now or within ``timeout``) matching ``pattern``."""
        rx = re.compile(pattern, re.S)
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                m = rx.match(line)
                if m:
                    return m
            seen = len(self.lines)
            left = deadline - time.monotonic()
            assert left > 0, f"no syslog line matching {pattern!r}; got {self.lines[-20:]}"
            self.sock.settimeout(left)
            try:
                self.lines.append(self.sock.recv(1 << 20))
            except socket.timeout:
                pass

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


def config(receiver: SyslogReceiver, fmt: str = "text") -> str:
    return (E2E_CONFIG + "reports: {enabled: false}\n"
            f"log: {{target: syslog, facility: mail, format: {fmt}, syslog_address: {receiver.path}}}\n")


@pytest.fixture(scope="module")
def receiver():
    r = SyslogReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def outpost(postfix, receiver):
    proc = Outpost(postfix.milter_socket, config(receiver),
                   faults=True).start()
    yield proc
    proc.stop(graceful=False)


def _send(postfix, **kw):
    message = build_message("web@example.com", "x@dest.example", **kw)
    msgid = re.search(rb"^Message-ID: (<[^>]+>)", message, re.M | re.I).group(1).decode()
    return send(postfix.relay_port, xclient={"ADDR": "203.0.113.5"}, mail_from="web@example.com",
                rcpt_tos=["x@dest.example"], message=message), msgid


def _postfix_logged(postfix, line: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while line not in postfix.maillog():
        assert time.monotonic() < deadline, f"Postfix never logged {line!r}"
        time.sleep(0.05)


def test_message_line_is_mail_info_with_postfix_queue_id(postfix, outpost, receiver, sink):
    r, msgid = _send(postfix, headers={"X-AuthUser": "carol"})
    assert r.accepted, r
    m = receiver.wait_for(rb"<22>outpost\[(\d+)\]: outpost\.message: ([0-9A-Za-z]+): "
                          rb"ip=203\.0\.113\.5 .*identity=carol .*action=accept reason=ok .*ms=[\d.]+$")
    pid, qid = int(m.group(1)), m.group(2).decode()
    assert pid in outpost.children()                        # a worker's own pid, not the master's
    _postfix_logged(postfix, f"{qid}: message-id={msgid}")   # the same message in Postfix's log
    assert b"\0" not in m.group(0) and not re.match(rb"<22>\w{3} [ \d]\d ", m.group(0))  # no own stamp


def test_internal_error_is_mail_err_with_its_queue_id(postfix, outpost, receiver, sink):
    r, msgid = _send(postfix, headers={"X-Test-Fault": "1"})
    assert (r.stage, r.code) == ("end", 451), r
    m = receiver.wait_for(rb"<19>outpost\[\d+\]: outpost\.milter: ([0-9A-Za-z]+): internal error at eom "
                          rb".*RuntimeError: fault injected")
    qid = m.group(1).decode()
    _postfix_logged(postfix, f"{qid}: message-id={msgid}")
    receiver.wait_for(rb"<22>outpost\[\d+\]: outpost\.message: " + qid.encode()
                      + rb": .*action=tempfail reason=internal_error")


def test_sighup_applies_a_new_log_block(postfix, outpost, receiver, sink):
    old = outpost.children()
    outpost.write_config(config(receiver, fmt="json"))
    os.kill(outpost.proc.proc.pid, signal.SIGHUP)
    receiver.wait_for(rb'<22>outpost\[\d+\]: \{.*"msg": "configuration reloaded')
    _wait_gone(old, timeout=40)
    r, msgid = _send(postfix, headers={"X-AuthUser": "dave"})
    assert r.accepted, r
    m = receiver.wait_for(rb'<22>outpost\[\d+\]: (\{.*"logger": "outpost\.message".*"identity": "dave".*\})$')
    line = json.loads(m.group(1))
    assert line["level"] == "info" and line["action"] == "accept" and line["user"] == "webfarm"
    _postfix_logged(postfix, f"{line['qid']}: message-id={msgid}")
