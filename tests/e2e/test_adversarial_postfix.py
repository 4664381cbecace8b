"""Hostile and broken input through real Postfix: each gets a clear SMTP
answer, nothing is lost, and Outpost keeps serving (the next message is
fine).  Spam engine and signing on, as in production."""

from __future__ import annotations

import textwrap
import time

import pytest

from tests.services.postfix import PostfixInstance
from tests.services.sink import SmtpSink
from tests.services.smtp import build_message, send

from .outpost_proc import Outpost

CONFIG = textwrap.dedent("""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    domains: [example.com]
    defaults:
      limits: {max_recipients: 6000}
    spam:
      max_scan: 262144
    users:
      - name: alice
        type: ip
        ips: [203.0.113.0/24]
        domains: [example.com]
    """)


@pytest.fixture(scope="module")
def relay():
    sink = SmtpSink().start()
    pf = PostfixInstance(sink_port=sink.port, main_overrides={
        "message_size_limit": "80000000", "smtpd_recipient_limit": "6000",
        "header_size_limit": "2000000", "smtpd_timeout": "120s",
        # Postfix would add a missing From/Date/Message-ID for "local" clients
        # before Outpost sees the headers; here no client is local.
        "local_header_rewrite_clients": ""})
    pf.start()
    op = Outpost(pf.milter_socket, CONFIG).start()
    try:
        yield pf, op, sink
    finally:
        op.stop(graceful=False)
        pf.cleanup()
        sink.stop()


def alice(pf, message, rcpts=("x@dest.example",), timeout=120):
    # a customer's server relaying by IP (Postfix adds no missing headers for it,
    # unlike for local or authenticated clients: local_header_rewrite_clients)
    return send(pf.relay_port, xclient={"ADDR": "203.0.113.9"}, mail_from="alice@example.com",
                rcpt_tos=list(rcpts), message=message, timeout=timeout)


def still_serving(pf, sink):
    sink.clear()
    r = alice(pf, build_message("alice@example.com", "x@dest.example", subject="after"))
    assert r.accepted, r
    [m] = sink.wait_for(1, timeout=30)
    assert m.headers("X-Outpost-User") == ["alice"]


def head(extra: bytes = b"", body: bytes = b"Hello.\r\n") -> bytes:
    return (b"From: alice@example.com\r\nTo: x@dest.example\r\nSubject: test\r\n"
            b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <a@example.com>\r\n" + extra + b"\r\n" + body)


@pytest.mark.parametrize("name,message,accepted", [
    ("100 KB single header", head(b"X-Big: " + b"a" * 100_000 + b"\r\n"), True),
    # over max_headers (1 000): refused whole, none of it kept
    ("10 000 header fields", head(b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))), (552, "5.3.4")),
    ("invalid UTF-8 and 8-bit in Subject and From",
     b"From: \xff\xfe Al\xe9 <alice@example.com>\r\nTo: x@dest.example\r\nSubject: caf\xe9 \xc3\x28\r\n\r\nbody\r\n",
     True),
    ("body without final CRLF", head(body=b"no newline at the end"), True),
    ("broken MIME: 100-deep nesting, missing boundary",
     head(b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b0\r\n",
          b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
                   for i in range(100)) + b"--nope\r\ntext\r\n"), True),
    ("two From headers", head(b"From: mallory@example.com\r\n"), (550, "5.6.0")),
    ("From with two addresses",
     b"From: alice@example.com, bob@example.com\r\nTo: x@dest.example\r\n\r\nbody\r\n", (550, "5.6.0")),
    ("no From", b"To: x@dest.example\r\nSubject: none\r\n\r\nbody\r\n", (550, "5.6.0")),
])
def test_hostile_message(relay, name, message, accepted):
    pf, op, sink = relay
    sink.clear()
    r = alice(pf, message)
    if accepted is True:
        assert r.accepted, (name, r)
        [m] = sink.wait_for(1, timeout=30)
        assert m.headers("X-Outpost-User") == ["alice"], name
    else:
        code, xcode = accepted
        assert (r.stage, r.code) == ("end", code) and r.text.startswith(xcode), (name, r)
    still_serving(pf, sink)


def test_5000_recipients(relay):
    pf, op, sink = relay
    sink.clear()
    rcpts = [f"r{i}@dest.example" for i in range(5000)]
    r = alice(pf, build_message("alice@example.com", "r0@dest.example"), rcpts=rcpts)
    assert r.accepted and not r.refused_rcpts, r
    deadline = time.monotonic() + 90
    while sum(len(m.rcpt_tos) for m in sink.messages) < 5000 and time.monotonic() < deadline:
        time.sleep(0.2)
    delivered = sorted(r for m in sink.messages for r in m.rcpt_tos)
    assert delivered == sorted(rcpts)                  # every recipient, once (Postfix splits by 50)
    assert all(m.headers("X-Outpost-User") == ["alice"] for m in sink.messages)
    still_serving(pf, sink)


def test_50_mb_message_scanned_partially_with_bounded_memory(relay):
    pf, op, sink = relay
    sink.clear()
    big = head(b"MIME-Version: 1.0\r\n", (b"x" * 998 + b"\r\n") * 50_000)   # 50 MB
    r = alice(pf, big, timeout=300)
    assert r.accepted, r
    [m] = sink.wait_for(1, timeout=120)
    assert m.headers("X-Outpost-Scan")[0].startswith("partial (first 262144 of ")
    for pid in op.children():
        with open(f"/proc/{pid}/status") as fh:
            rss = [int(line.split()[1]) for line in fh if line.startswith("VmHWM:")][0]
        assert rss < 400_000, f"worker {pid} peaked at {rss} kB"
    still_serving(pf, sink)


def test_odd_logins_and_percent_in_replies(relay):
    pf, op, sink = relay
    sink.clear()
    r = send(pf.submission_port, xclient={"LOGIN": "nobody%40evil.example"}, mail_from="alice@example.com",
             rcpt_tos=["x@dest.example"])
    assert (r.stage, r.code) == ("mail", 550), r
    still_serving(pf, sink)
