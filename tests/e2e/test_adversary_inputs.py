"""The adversarial inputs of reliability.md through real Postfix, beyond the
ones ``test_adversarial_postfix.py`` covers (one big header, 10 000 headers,
a 50 MB body, no final CRLF, one two-From case, 5 000 recipients under the
limit): control characters in the AUTH name, MAIL FROM and HELO, 8-bit and
invalid UTF-8 in Subject and From, many kinds of several From addresses,
broken MIME, 5 000 recipients over the limit, and forged copies of the
headers Outpost stamps in every case, fold and place.

Each case: the right SMTP reply (one printable line), the daemon alive (no
worker died, the next message is fine), nothing lost (an accepted message
arrives once, a refused one never), no forged line in Outpost's log, and an
accepted message carries exactly one set of Outpost's stamped headers.
"""

from __future__ import annotations

import base64
import re
import shutil
import socket
import textwrap

import pytest

from tests.services.postfix import PostfixInstance
from tests.services.sink import SmtpSink
from tests.services.smtp import build_message, send

from . import hostile
from .outpost_proc import Outpost

CONFIG = textwrap.dedent("""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    domains: [example.com]
    users:
      - name: alice
        type: ip
        ips: [203.0.113.0/24]
        domains: [example.com]
      - name: bulk
        type: ip
        ips: [198.51.100.0/24]
        domains: [example.com]
        limits: {max_recipients: 100}
      - name: carol
        type: login
        logins: ["carol o'neil %\\"q\\"@example.com", "\u00e9lodie@example.com"]
        domains: [example.com]
    """)

ODD_LOGIN = "carol o'neil %\"q\"@example.com"
UTF8_LOGIN = "\u00e9lodie@example.com"
ALICE_IP = "203.0.113.9"
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} outpost\[\d+\] [A-Z]+ ")


@pytest.fixture(scope="module")
def relay():
    sink = SmtpSink().start()
    pf = PostfixInstance(sink_port=sink.port, main_overrides={
        "smtpd_recipient_limit": "6000", "header_size_limit": "2000000",
        "smtpd_hard_error_limit": "6000",          # 4 900 refused recipients in one session
        "local_header_rewrite_clients": ""})       # no From/Date added behind Outpost's back
    pf.build()
    for login in (ODD_LOGIN, UTF8_LOGIN):
        pf.add_sasl_user(login, "pw")
    pf.start()
    op = Outpost(pf.milter_socket, CONFIG).start()
    try:
        yield pf, op, sink
    finally:
        op.stop(graceful=False)
        shutil.rmtree(op.dir, ignore_errors=True)
        pf.cleanup()
        sink.stop()


class Env:
    """One test's view of the relay: an empty sink and queue at the start;
    :meth:`intact` at the end checks that the daemon came through."""

    def __init__(self, pf, op, sink) -> None:
        self.pf, self.op, self.sink = pf, op, sink
        pf.wait_queue_empty(timeout=30)
        sink.clear()
        self.workers = sorted(op.children())
        self.log_start = len(op.log())

    def intact(self) -> None:
        """Same workers, every new log line a real record (no forged line, no
        traceback), and the next ordinary message accepted and stamped."""
        pf, op, sink = self.pf, self.op, self.sink
        pf.wait_queue_empty(timeout=60)
        bad = [ln for ln in op.log()[self.log_start:].splitlines() if not LOG_LINE.match(ln)]
        assert not bad, "forged, broken or traceback lines in Outpost's log:\n" + "\n".join(bad[:40])
        assert sorted(op.children()) == self.workers, "a worker died"
        sink.clear()
        r = send(pf.relay_port, xclient={"ADDR": ALICE_IP}, mail_from=hostile.SENDER,
                 rcpt_tos=["next@dest.example"],
                 message=build_message(hostile.SENDER, "next@dest.example", subject="after"))
        assert r.accepted, r
        [m] = sink.wait_for(1, timeout=30)
        assert_stamped_once(m.data, "alice", ALICE_IP)


@pytest.fixture
def env(relay):
    return Env(*relay)


# -- helpers --------------------------------------------------------------------------------

def assert_stamped_once(data: bytes, user: str, ip: str) -> None:
    """Exactly one of each stamped header, with Outpost's values; no other
    Outpost header twice; no forged value left (:func:`hostile.stamp_problems`)."""
    problems = hostile.stamp_problems(data)
    assert not problems, problems
    values = dict(hostile.fields(data))
    assert values["x-outpost-user"] == user.encode()
    assert values["x-outpost-domain"] == b"example.com"
    assert values["x-originating-ip"] == f"[{ip}]".encode()
    assert values["x-report-abuse-to"] == b"abuse@example.net"
    assert re.fullmatch(rb"[A-Za-z0-9_-]{20,}", values["x-outpost-id"]), values["x-outpost-id"]


def assert_one_line(text: str) -> None:
    assert text.isprintable() and "\n" not in text and "\r" not in text, repr(text)


def delivered_once(pf, sink) -> bytes:
    pf.wait_queue_empty(timeout=60)
    [m] = sink.wait_for(1, timeout=30)
    assert len(sink.messages) == 1
    return m.data


def nothing_delivered(pf, sink) -> None:
    pf.wait_queue_empty(timeout=60)
    assert sink.messages == []


class Dialog:
    """A raw SMTP session: bytes out exactly as given, replies (code, text) back."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                return 0, "connection closed"
            lines.append(line[4:].rstrip(b"\r\n").decode("utf-8", "replace"))
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def cmd(self, line: bytes) -> tuple[int, str]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def data(self, message: bytes) -> tuple[int, str]:
        code, text = self.cmd(b"DATA")
        if code != 354:
            return code, text
        body = message.replace(b"\r\n.", b"\r\n..")
        self.sock.sendall(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        return self.reply()

    def close(self) -> None:
        try:
            self.cmd(b"QUIT")
        except OSError:
            pass
        self.sock.close()


# -- the AUTH name ------------------------------------------------------------------------

@pytest.mark.parametrize("xtext,seen", [
    ("carol+0D+0Ax-outpost-user:+20forged@example.com", "carol??x-outpost-user: forged@example.com"),
    ("alice@example.com+0Aoutpost+5B1+5D+20INFO+20forged", "alice@example.com?outpost[1] INFO forged"),
    ("al+09ice+0B@example.com", "al?ice?@example.com"),
    ("nobody+00carol@example.com", "nobody"),          # Postfix stops at the NUL
])
def test_controls_in_auth_name_via_xclient(env, xtext, seen):
    """Postfix turns CR/LF/TAB of an XCLIENT LOGIN into '?' and stops at
    NUL: Outpost sees a login nobody has, refuses it in one line, and logs it
    in one record."""
    pf, sink = env.pf, env.sink
    r = send(pf.submission_port, xclient={"LOGIN": xtext}, mail_from=hostile.SENDER,
             rcpt_tos=["x@dest.example"])
    assert (r.stage, r.code) == ("mail", 550), r
    assert_one_line(r.text)
    assert r.text == f"5.7.1 Login {seen} is not an authorized outgoing sender"
    nothing_delivered(pf, sink)
    env.intact()


@pytest.mark.parametrize("authcid", [b"carol\r\nx@example.com", b"carol\x00x", b"\r\n", b"\x00"])
def test_controls_in_auth_name_via_sasl(env, authcid):
    """Real SASL refuses such names before Outpost is asked (535, or 454
    when Cyrus finds no name at all), and the session's mail is not let
    through unauthenticated."""
    pf, sink = env.pf, env.sink
    d = Dialog(pf.submission_port)
    try:
        d.cmd(b"EHLO client.example")
        code, text = d.cmd(b"AUTH PLAIN " + base64.b64encode(b"\0" + authcid + b"\0pw"))
        assert code in (454, 535), (code, text)
        code, text = d.cmd(b"AUTH LOGIN " + base64.b64encode(authcid))
        if code == 334:
            code, text = d.cmd(base64.b64encode(b"pw"))
        assert code in (454, 535), (code, text)
        code, text = d.cmd(b"MAIL FROM:<alice@example.com>")
        assert code == 550 and "is not an authorized outgoing sender" in text, (code, text)
    finally:
        d.close()
    nothing_delivered(pf, sink)
    env.intact()


@pytest.mark.parametrize("login", [ODD_LOGIN, UTF8_LOGIN])
def test_odd_but_valid_sasl_names_map(env, login):
    """A SASL name with blanks, quotes, %, or non-ASCII maps to its user."""
    pf, sink = env.pf, env.sink
    r = send(pf.submission_port, login=login, password="pw", mail_from=hostile.SENDER,
             rcpt_tos=["x@dest.example"], message=build_message(hostile.SENDER, "x@dest.example"))
    assert r.accepted, r
    assert_stamped_once(delivered_once(pf, sink), "carol", "127.0.0.1")
    env.intact()


# -- MAIL FROM and HELO ---------------------------------------------------------------------

def relay_dialog(pf, helo: bytes = b"EHLO client.example") -> Dialog:
    d = Dialog(pf.relay_port)
    assert d.cmd(b"EHLO client.example")[0] == 250
    assert d.cmd(b"XCLIENT ADDR=" + ALICE_IP.encode())[0] == 220
    code, text = d.cmd(helo)
    assert code == 250, (code, text)
    return d


@pytest.mark.parametrize("mail,code", [
    (b"MAIL FROM:<al\x00ice@example.com>", 501),
    (b"MAIL FROM:<alice@example.com\x00>", 501),
    (b"MAIL FROM:<al\xe9ice@example.com>", 500),
    (b"MAIL FROM:<alice@example.com>\rX", 555),
    (b'MAIL FROM:<"al\\\nice"@example.com>', 501),       # a bare LF ends the command
])
def test_mail_from_refused_by_postfix(env, mail, code):
    """NUL, invalid UTF-8, a bare CR or LF in MAIL FROM never reach Outpost."""
    pf, sink = env.pf, env.sink
    d = relay_dialog(pf)
    try:
        assert d.cmd(mail)[0] == code
        if b"\n" in mail:
            assert d.reply()[0] == 500               # what followed the LF: a second, bad command
        assert d.cmd(b"RCPT TO:<x@dest.example>")[0] == 503      # no transaction started
    finally:
        d.close()
    nothing_delivered(pf, sink)
    env.intact()


@pytest.mark.parametrize("mail", [
    b'MAIL FROM:<"al\\\rice"@example.com>',             # quoted CR: reaches Outpost
    b'MAIL FROM:<"a l\\"i%ce"@example.com>',
    b"MAIL FROM:<\xc3\xa9lodie@example.com> SMTPUTF8",
])
def test_mail_from_with_controls_reaching_outpost(env, mail):
    """A quoted CR, quotes, % and UTF-8 in the envelope sender: accepted for
    the customer's domain, stamped once, logged on one line (checked by env)."""
    pf, sink = env.pf, env.sink
    d = relay_dialog(pf)
    try:
        code, text = d.cmd(mail)
        assert code == 250, (code, text)
        assert d.cmd(b"RCPT TO:<x@dest.example>")[0] == 250
        code, text = d.data(hostile.message())
        assert code == 250, (code, text)
    finally:
        d.close()
    assert_stamped_once(delivered_once(pf, sink), "alice", ALICE_IP)
    env.intact()


@pytest.mark.parametrize("helo", [b"EHLO a\x00b", b"HELO a\rb", b"EHLO x-outpost-user:forged",
                                  b"EHLO " + b"h" * 500])
def test_odd_helo(env, helo):
    pf, sink = env.pf, env.sink
    d = relay_dialog(pf, helo)
    try:
        assert d.cmd(b"MAIL FROM:<alice@example.com>")[0] == 250
        assert d.cmd(b"RCPT TO:<x@dest.example>")[0] == 250
        code, text = d.data(hostile.message())
        assert code == 250, (code, text)
    finally:
        d.close()
    assert_stamped_once(delivered_once(pf, sink), "alice", ALICE_IP)
    env.intact()


# -- 5 000 recipients over the user's limit ---------------------------------------------------

def test_5000_recipients_over_the_limit(env):
    """The first 100 are taken, each further one gets 452 4.5.3, and the
    message goes to exactly those 100, stamped once."""
    pf, sink = env.pf, env.sink
    rcpts = [f"r{i}@dest.example" for i in range(5000)]
    r = send(pf.relay_port, xclient={"ADDR": "198.51.100.7"}, mail_from=hostile.SENDER,
             rcpt_tos=rcpts, message=hostile.message(), timeout=120)
    assert r.accepted, r
    assert sorted(r.refused_rcpts) == sorted(rcpts[100:])
    assert {c for c, _ in r.refused_rcpts.values()} == {452}
    assert all(t.startswith("4.5.3 Too many recipients") for _, t in r.refused_rcpts.values())
    pf.wait_queue_empty(timeout=60)
    msgs = sink.messages
    assert sorted(a for m in msgs for a in m.rcpt_tos) == sorted(rcpts[:100])
    for m in msgs:
        assert_stamped_once(m.data, "bulk", "198.51.100.7")
    env.intact()


# -- hostile messages: 8-bit, several From, broken MIME, forged headers ----------------------

def _cases(group):
    """Parametrize over catalogue entries; a known hole is a strict xfail
    (it must start passing when the hole is closed)."""
    return pytest.mark.parametrize("case", [
        pytest.param(c, id=c.name,
                     marks=[pytest.mark.xfail(strict=True, reason=c.hole)] if c.hole else [])
        for c in group])


def check_message(env, case: hostile.Hostile, forged: bool = False) -> None:
    """Send ``case`` (with forged Outpost headers added: ``forged``) and
    check its outcome."""
    pf, sink = env.pf, env.sink
    data = hostile.forge(case.data) if forged else case.data
    r = send(pf.relay_port, xclient={"ADDR": ALICE_IP}, mail_from=hostile.SENDER,
             rcpt_tos=["x@dest.example"], message=data, timeout=60)
    assert_one_line(r.text)
    if case.accepted:
        assert r.accepted, r
        assert_stamped_once(delivered_once(pf, sink), "alice", ALICE_IP)
    else:
        assert (r.stage, r.code) == ("end", 550), r
        assert r.text.startswith("5."), r
        nothing_delivered(pf, sink)
    env.intact()


FORGED_TOO = pytest.mark.parametrize("forged", [False, True], ids=["", "forged"])


@_cases(hostile.EIGHT_BIT)
@FORGED_TOO
def test_eight_bit_and_invalid_utf8(env, case, forged):
    check_message(env, case, forged)


@_cases(hostile.MULTI_FROM)
@FORGED_TOO
def test_several_from_addresses(env, case, forged):
    check_message(env, case, forged)


@_cases(hostile.BROKEN_MIME)
@FORGED_TOO
def test_broken_mime(env, case, forged):
    check_message(env, case, forged)


@_cases(hostile.FORGED)
def test_forged_outpost_headers(env, case):
    check_message(env, case)


def test_replayed_outpost_id_is_replaced(env):
    """A genuine X-Outpost-ID copied from an earlier message (which ``outpost
    whois`` would trust) is removed like any forged value: the new message
    carries its own token, once."""
    pf, sink = env.pf, env.sink
    r = send(pf.relay_port, xclient={"ADDR": ALICE_IP}, mail_from=hostile.SENDER,
             rcpt_tos=["x@dest.example"], message=hostile.message())
    assert r.accepted, r
    token = dict(hostile.fields(delivered_once(pf, sink)))["x-outpost-id"]
    sink.clear()
    replay = hostile.message(b"X-Outpost-ID: " + token + b"\r\n", top=b"x-outpost-id: " + token + b"\r\n")
    r = send(pf.relay_port, xclient={"ADDR": ALICE_IP}, mail_from=hostile.SENDER,
             rcpt_tos=["x@dest.example"], message=replay)
    assert r.accepted, r
    data = delivered_once(pf, sink)
    assert_stamped_once(data, "alice", ALICE_IP)
    assert token not in hostile.header_block(data)
    env.intact()
