"""The spine end to end: real Postfix → real Outpost (2 workers, sqlite store) → sink.

Clients are made to look like customers with XCLIENT (ADDR, LOGIN) and with
real SASL AUTH, as the Postfix harness allows."""

from __future__ import annotations

import smtplib
import subprocess
import time

import pytest

from outpost.core.idtoken import TokenCodec, read_secret
from tests.services.smtp import build_message, send

from .outpost_proc import Outpost


@pytest.fixture(scope="module")
def outpost(postfix):
    proc = Outpost(postfix.milter_socket).start()
    postfix.add_sasl_user("alice@example.com", "alicepw")
    postfix.add_sasl_user("mallory@example.net", "mallorypw")
    yield proc
    proc.stop()


def codec(outpost):
    return TokenCodec(read_secret(str(outpost.secret_file)))


def test_authenticated_user_accepted_with_headers(postfix, outpost, sink):
    r = send(postfix.submission_port, login="alice@example.com", password="alicepw",
             mail_from="alice@example.com", rcpt_tos=["bob@dest.example"])
    assert r.accepted, r
    [m] = sink.wait_for(1)
    assert m.headers("X-Outpost-User") == ["alice"]
    assert b"\r\nX-Outpost-User: alice\r\n" in m.data          # byte-exact, one blank after the colon
    assert m.headers("X-Outpost-Domain") == ["example.com"]
    assert m.headers("X-Originating-IP") == ["[127.0.0.1]"]
    assert m.headers("X-Report-Abuse-To") == ["abuse@example.net"]
    origin = codec(outpost).open(m.headers("X-Outpost-ID")[0])
    assert (origin.user, origin.identity, origin.queue_id) == ("alice", "alice@example.com", r.queue_id)
    # outpost whois reverses it
    out = subprocess.run([*outpost.proc.argv[:3], "whois", "-c", str(outpost.config_path),
                          m.headers("X-Outpost-ID")[0]], capture_output=True, text=True,
                         env=outpost.proc.env, timeout=30)
    assert out.returncode == 0 and "identity:  alice@example.com" in out.stdout and r.queue_id in out.stdout


def test_ip_user_accepted_identity_header_removed(postfix, outpost, sink):
    msg = build_message("web@example.com", "x@dest.example",
                        headers={"X-PHP-Originating-Script": "1042:contact.php"})
    r = send(postfix.relay_port, xclient={"ADDR": "203.0.113.5"}, mail_from="web@example.com",
             rcpt_tos=["x@dest.example"], message=msg)
    assert r.accepted, r
    [m] = sink.wait_for(1)
    assert m.headers("X-Outpost-User") == ["webfarm"]
    assert m.headers("X-Originating-IP") == ["[203.0.113.5]"]
    assert m.headers("X-PHP-Originating-Script") == []
    assert codec(outpost).open(m.headers("X-Outpost-ID")[0]).identity == "1042"


def test_unknown_ip_refused(postfix, outpost, sink):
    r = send(postfix.relay_port, xclient={"ADDR": "198.51.100.23"}, mail_from="x@example.com")
    assert (r.stage, r.code) == ("mail", 550), r
    assert "5.7.1 198.51.100.23 is not an authorized outgoing sender" in r.text


def test_unmapped_login_refused(postfix, outpost, sink):
    r = send(postfix.submission_port, xclient={"ADDR": "198.51.100.24"}, login="mallory@example.net",
             password="mallorypw", mail_from="mallory@example.com")
    assert (r.stage, r.code) == ("mail", 550), r
    assert "5.7.1 Login mallory@example.net is not an authorized outgoing sender" in r.text


def test_foreign_sender_domain_refused(postfix, outpost, sink):
    r = send(postfix.submission_port, login="alice@example.com", password="alicepw",
             mail_from="alice@example.org")
    assert (r.stage, r.code) == ("mail", 550), r
    assert "5.7.1 Sender domain example.org is not allowed for alice" in r.text


def test_header_from_spoof_refused(postfix, outpost, sink):
    msg = build_message("ceo@bank.example", "x@dest.example")
    r = send(postfix.submission_port, login="alice@example.com", password="alicepw",
             mail_from="alice@example.com", rcpt_tos=["x@dest.example"], message=msg)
    assert (r.stage, r.code) == ("end", 550), r
    assert "Header From domain bank.example is not allowed for alice" in r.text
    assert sink.messages == []


def test_forged_headers_stripped(postfix, outpost, sink):
    raw = (b"From: alice@example.com\r\nTo: x@dest.example\r\nSubject: forged\r\n"
           b"X-Outpost-ID: AAAAforged\r\nx-outpost-user: root\r\nX-OUTPOST-USER: admin\r\n"
           b"X-Originating-IP: [10.9.9.9]\r\nx-report-abuse-to: nobody@evil.example\r\n"
           b"X-Outpost-Class: forged-class\r\n\r\nbody\r\n")
    r = send(postfix.submission_port, login="alice@example.com", password="alicepw",
             mail_from="alice@example.com", rcpt_tos=["x@dest.example"], message=raw)
    assert r.accepted, r
    [m] = sink.wait_for(1)
    assert m.headers("X-Outpost-User") == ["alice"]
    assert m.headers("X-Originating-IP") == ["[127.0.0.1]"]
    assert m.headers("X-Report-Abuse-To") == ["abuse@example.net"]
    assert len(m.headers("X-Outpost-Class")) == 1 and m.headers("X-Outpost-Class") != ["forged-class"]
    assert len(m.headers("X-Outpost-ID")) == 1 and "AAAAforged" not in m.headers("X-Outpost-ID")[0]
    codec(outpost).open(m.headers("X-Outpost-ID")[0])        # ours, not the forgery


def _hold_connection(port: int, source: str) -> tuple[smtplib.SMTP, int, str]:
    """A real TCP connection from ``source`` (a 127/8 address) kept open,
    with the reply to its first MAIL FROM (then RSET)."""
    c = smtplib.SMTP(timeout=15, source_address=(source, 0))
    try:
        code, text = c.connect("127.0.0.1", port)
        if code == 220:
            c.ehlo("client.example")
            code, text = c.docmd("MAIL", "FROM:<app@example.com>")
            if code == 250:
                c.rset()
    except smtplib.SMTPServerDisconnected as exc:
        code, text = 0, str(exc)
    return c, code, text.decode() if isinstance(text, bytes) else text


def test_eleventh_concurrent_connection_gets_421(postfix, outpost, sink):
    held = []
    try:
        for i in range(10):
            c, code, text = _hold_connection(postfix.relay_port, "127.0.0.77")
            held.append(c)
            assert code == 250, (i, code, text)
        c, code, text = _hold_connection(postfix.relay_port, "127.0.0.77")
        held.append(c)
        assert code == 421 and "4.7.0 Too many concurrent SMTP connections from this IP address; " \
                               "please try again later" in text, (code, text)
        postfix.wait_for_log(r"milter-reject: MAIL from .*Too many concurrent SMTP", timeout=10)
        # another address is not affected
        c2, code2, _ = _hold_connection(postfix.relay_port, "127.0.0.78")
        held.append(c2)
        assert code2 == 250
    finally:
        for c in held:
            try:
                c.close()
            except OSError:
                pass
    # slots are freed at close: a new connection gets in
    deadline = time.monotonic() + 10
    while True:
        c, code, _ = _hold_connection(postfix.relay_port, "127.0.0.77")
        c.close()
        if code == 250 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert code == 250


