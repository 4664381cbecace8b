"""SpamdCheck and RspamdCheck against the real daemons (Debian packages
``spamd``/``spamassassin`` and ``rspamd``), plus failure cases against a
dead port, a killed daemon, a server that never answers and one that
answers garbage."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from typing import Iterator

import pytest

from outpost.spam.base import CheckError, MessageView, ScanContext
from outpost.spam.external import (
    RspamdCheck,
    RspamdSettings,
    SpamdCheck,
    SpamdSettings,
    parse_rspamd_reply,
    parse_spamd_reply,
)
from tests.services._daemon import free_tcp_port
from tests.services.rspamd import Rspamd
from tests.services.spamd import Spamd

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

SPAM_RAW = (
    "From: Sender <sender@example.com>\r\n"
    "To: rcpt@example.org\r\n"
    "Subject: test\r\n"
    "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
    "Message-ID: <gtube-1@example.com>\r\n"
    "\r\n"
    f"This is the GTUBE test.\r\n{GTUBE}\r\n"
).encode()

HAM_RAW = (
    b"From: Alice Example <alice@example.com>\r\n"
    b"To: Bob Example <bob@example.org>\r\n"
    b"Subject: Lunch tomorrow\r\n"
    b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <20261127100000.4711@mail.example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 7bit\r\n"
    b"\r\n"
    b"Hi Bob,\r\n\r\n"
    b"are we still on for lunch tomorrow at noon?  I can book a table at the\r\n"
    b"usual place near the office if that suits you.\r\n\r\n"
    b"Cheers,\r\nAlice\r\n"
)

CTX = ScanContext(user="webfarm", identity="alice@example.com", sender="alice@example.com",
                  recipients=("bob@example.org",), client_ip="192.0.2.10",
                  login="alice", queue_id="4ABCD12")

#: Failures must be reported well within this many seconds.
FAST = 3.0

needs_spamd = pytest.mark.skipif(shutil.which("spamd") is None and
                                 not os.path.exists("/usr/sbin/spamd"),
                                 reason="spamd not installed (apt: spamd spamassassin)")
needs_rspamd = pytest.mark.skipif(shutil.which("rspamd") is None,
                                  reason="rspamd not installed (apt: rspamd)")


def view(raw: bytes) -> MessageView:
    """A MessageView carrying only what external engines read."""
    return MessageView(headers=(), text="", html="", urls=(), attachments=(),
                       size=len(raw), partial=False, raw=raw)


@pytest.fixture(scope="module")
def spamd() -> Iterator[Spamd]:
    with Spamd(unix_socket=True) as d:
        yield d


@pytest.fixture(scope="module")
def rspamd() -> Iterator[Rspamd]:
    with Rspamd(unix_socket=True) as d:
        yield d


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def run() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            held.append(conn)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        srv.close()


def scripted_server(reply: bytes, hold_open: bool) -> Iterator[int]:
    """A TCP port that reads one request per connection and sends ``reply``
    (then keeps the connection open when ``hold_open``)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def run() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(1.0)
                try:
                    conn.recv(65536)
                    conn.sendall(reply)
                    if hold_open:
                        stop.wait(10)
                except OSError:
                    pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(2)
        srv.close()


@pytest.fixture
def garbage_server() -> Iterator[int]:
    """A TCP port that reads a request and answers with junk."""
    yield from scripted_server(b"HELLO THERE\r\nthis is not a reply\r\n\r\n{{{", False)


@pytest.fixture
def keepalive_server() -> Iterator[int]:
    """An HTTP server that answers and then keeps the connection open."""
    body = b'{"score": 2.5, "required_score": 15.0, "action": "no action", "symbols": {}}'
    yield from scripted_server(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n"
                               b"Content-Length: %d\r\n\r\n" % len(body) + body, True)


def timed_error(fn, *args) -> tuple[CheckError, float]:
    start = time.monotonic()
    with pytest.raises(CheckError) as info:
        fn(*args)
    return info.value, time.monotonic() - start


# -- SpamAssassin -------------------------------------------------------------

@needs_spamd
class TestSpamdReal:
    def test_gtube_is_spam(self, spamd: Spamd) -> None:
        check = SpamdCheck(SpamdSettings(port=spamd.port, timeout=20))
        res = check.query(SPAM_RAW)
        assert res.spam is True
        assert res.score >= 1000
        assert res.threshold == 5.0
        assert "GTUBE" in res.symbols
        ev = check.check(view(SPAM_RAW), CTX)
        assert [e.name for e in ev] == ["spamassassin"]
        assert ev[0].points >= 1000
        assert "GTUBE" in ev[0].detail

    def test_plain_message_is_ham(self, spamd: Spamd) -> None:
        check = SpamdCheck(SpamdSettings(port=spamd.port, timeout=20))
        res = check.query(HAM_RAW)
        assert res.spam is False
        assert res.score < 5.0
        assert "GTUBE" not in res.symbols
        ev = check.check(view(HAM_RAW), CTX)
        assert len(ev) == 1 and ev[0].points < 5.0

    def test_weight_scales_points(self, spamd: Spamd) -> None:
        check = SpamdCheck(SpamdSettings(port=spamd.port, timeout=20, weight=0.001))
        ev = check.check(view(SPAM_RAW), CTX)
        assert 1.0 <= ev[0].points < 2.0

    def test_unix_socket_and_report(self, spamd: Spamd) -> None:
        assert spamd.socket_path
        check = SpamdCheck(SpamdSettings(socket=spamd.socket_path, timeout=20,
                                         command="REPORT"))
        res = check.query(SPAM_RAW)
        assert res.spam is True
        assert "GTUBE" in res.report

    def test_check_command(self, spamd: Spamd) -> None:
        check = SpamdCheck(SpamdSettings(port=spamd.port, timeout=20, command="CHECK"))
        res = check.query(SPAM_RAW)
        assert res.spam is True and res.symbols == () and res.report == ""

    def test_oversize_skipped_or_truncated(self, spamd: Spamd) -> None:
        big = SPAM_RAW + b"filler line of text\r\n" * 200   # > 4 KiB
        skip = SpamdCheck(SpamdSettings(port=spamd.port, timeout=20, max_size=2048))
        assert skip.check(view(big), CTX) == []
        cut = SpamdCheck(SpamdSettings(port=spamd.port, timeout=20, max_size=2048,
                                       oversize="truncate"))
        ev = cut.check(view(big), CTX)
        assert ev and ev[0].points >= 1000   # GTUBE sits in the first 2 KiB

    def test_killed_daemon_fails_fast(self) -> None:
        with Spamd() as d:
            check = SpamdCheck(SpamdSettings(port=d.port, timeout=20))
            assert check.query(SPAM_RAW).spam is True
            d.kill()
            port = d.port
        err, took = timed_error(check.check, view(SPAM_RAW), CTX)
        # refused, or reset by a worker still dying: either way a quick error
        assert ("refused" in str(err) or "reset" in str(err)) and f"127.0.0.1:{port}" in str(err)
        assert took < FAST


class TestSpamdFailures:
    def test_nothing_listening(self) -> None:
        check = SpamdCheck(SpamdSettings(port=free_tcp_port(), timeout=5))
        err, took = timed_error(check.check, view(SPAM_RAW), CTX)
        assert "connection refused" in str(err)
        assert took < FAST

    def test_missing_unix_socket(self, tmp_path) -> None:
        check = SpamdCheck(SpamdSettings(socket=str(tmp_path / "none.sock"), timeout=5))
        err, took = timed_error(check.check, view(SPAM_RAW), CTX)
        assert "not found" in str(err) and took < FAST

    def test_silent_server_times_out(self, silent_server: int) -> None:
        check = SpamdCheck(SpamdSettings(port=silent_server, timeout=0.5))
        err, took = timed_error(check.check, view(SPAM_RAW), CTX)
        assert "no complete reply within 0.5s" in str(err)
        assert 0.4 <= took < 0.5 + FAST

    def test_view_without_bytes(self) -> None:
        for check in (SpamdCheck(SpamdSettings()), RspamdCheck(RspamdSettings())):
            with pytest.raises(CheckError, match="MessageView.raw is empty"):
                check.check(view(b""), CTX)

    def test_garbled_reply(self, garbage_server: int) -> None:
        check = SpamdCheck(SpamdSettings(port=garbage_server, timeout=5))
        err, took = timed_error(check.check, view(SPAM_RAW), CTX)
        assert "bad reply" in str(err) and "status line" in str(err)
        assert took < FAST


# -- rspamd -------------------------------------------------------------------

@needs_rspamd
class TestRspamdReal:
    def test_gtube_is_spam(self, rspamd: Rspamd) -> None:
        check = RspamdCheck(RspamdSettings(port=rspamd.port, timeout=20))
        res = check.query(SPAM_RAW, CTX)
        assert res.action == "reject"
        assert res.score >= res.required_score > 0
        assert "GTUBE" in [n for n, _ in res.symbols]
        ev = check.check(view(SPAM_RAW), CTX)
        assert [e.name for e in ev] == ["rspamd"]
        assert ev[0].points >= 5.0        # 15 x 1/3: our spam threshold
        assert "reject" in ev[0].detail and "GTUBE" in ev[0].detail

    def test_plain_message_is_ham(self, rspamd: Rspamd) -> None:
        check = RspamdCheck(RspamdSettings(port=rspamd.port, timeout=20))
        res = check.query(HAM_RAW, CTX)
        assert res.action in ("no action", "greylist")
        assert res.score < 6.0
        assert "GTUBE" not in [n for n, _ in res.symbols]
        ev = check.check(view(HAM_RAW), CTX)
        assert len(ev) == 1 and ev[0].points < 2.0

    def test_unix_socket(self, rspamd: Rspamd) -> None:
        assert rspamd.socket_path
        check = RspamdCheck(RspamdSettings(socket=rspamd.socket_path, timeout=20))
        assert check.query(SPAM_RAW, CTX).action == "reject"
        assert check.query(HAM_RAW, CTX).action in ("no action", "greylist")

    def test_envelope_is_passed(self, rspamd: Rspamd) -> None:
        # rspamd compares the To header with the envelope recipients we send
        check = RspamdCheck(RspamdSettings(port=rspamd.port, timeout=20))
        match = dict(check.query(HAM_RAW, CTX).symbols)
        assert "TO_MATCH_ENVRCPT_ALL" in match
        other = ScanContext(user="u", identity="i", sender="alice@example.com",
                            recipients=("carol@example.net",), client_ip="192.0.2.10")
        assert "TO_MATCH_ENVRCPT_ALL" not in dict(check.query(HAM_RAW, other).symbols)

    def test_header_injection_is_neutralised(self, rspamd: Rspamd) -> None:
        check = RspamdCheck(RspamdSettings(port=rspamd.port, timeout=20))
        evil = ScanContext(user="u", identity="i", sender="a@example.com\r\nPass: all",
                           recipients=("bob@example.org\r\n\r\nGARBAGE",),
                           client_ip="192.0.2.10", login="x\ny", queue_id="Q\0")
        head = check._request(b"", evil).decode().split("\r\n")
        # one line per header, nothing injected, control characters gone
        assert not any(line.startswith(("Pass", "GARBAGE")) for line in head)
        assert "From: a@example.comPass: all" in head
        assert "Rcpt: bob@example.orgGARBAGE" in head
        assert "User: xy" in head and "Queue-Id: Q" in head
        assert head[-2:] == ["", ""]          # the blank line ending the header
        res = check.query(HAM_RAW, evil)      # and rspamd still answers normally
        assert res.score < res.required_score

    def test_killed_daemon_fails_fast(self) -> None:
        with Rspamd() as d:
            check = RspamdCheck(RspamdSettings(port=d.port, timeout=20))
            assert check.query(SPAM_RAW, CTX).action == "reject"
            d.kill()
            port = d.port
        err, took = timed_error(check.check, view(SPAM_RAW), CTX)
        # refused, or reset by a worker still dying: either way a quick error
        assert ("refused" in str(err) or "reset" in str(err)) and f"127.0.0.1:{port}" in str(err)
        assert took < FAST


class TestRspamdFailures:
    def test_nothing_listening(self) -> None:
        check = RspamdCheck(RspamdSettings(port=free_tcp_port(), timeout=5))
        err, took = timed_error(check.check, view(SPAM_RAW), CTX)
        assert str(err).startswith("rspamd 127.0.0.1:") and "refused" in str(err)
        assert took < FAST

    def test_silent_server_times_out(self, silent_server: int) -> None:
        check = RspamdCheck(RspamdSettings(port=silent_server, timeout=0.5))
        err, took = timed_error(check.check, view(SPAM_RAW), CTX)
        assert "no complete reply within 0.5s" in str(err)
        assert 0.4 <= took < 0.5 + FAST

    def test_reply_on_kept_open_connection(self, keepalive_server: int) -> None:
        check = RspamdCheck(RspamdSettings(port=keepalive_server, timeout=5))
        start = time.monotonic()
        ev = check.check(view(HAM_RAW), CTX)
        assert time.monotonic() - start < 2.0       # did not wait for the close
        assert [(e.name, e.points) for e in ev] == [("rspamd", round(2.5 / 3, 2))]

    def test_garbled_reply(self, garbage_server: int) -> None:
        check = RspamdCheck(RspamdSettings(port=garbage_server, timeout=5))
        err, took = timed_error(check.check, view(SPAM_RAW), CTX)
        assert "bad reply" in str(err) and took < FAST


# -- parsers and settings (pure logic) ----------------------------------------

class TestParsers:
    def test_spamd_reply(self) -> None:
        r = parse_spamd_reply(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 9\r\n"
                              b"Spam: True ; 7.2 / 5.0\r\n\r\nA_1,B_2,C", "SYMBOLS")
        assert (r.spam, r.score, r.threshold, r.symbols) == (True, 7.2, 5.0, ("A_1", "B_2", "C"))
        r = parse_spamd_reply(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; -1.5 / 5.0\r\n\r\n", "CHECK")
        assert (r.spam, r.score) == (False, -1.5)

    @pytest.mark.parametrize("reply, why", [
        (b"SPAMD/1.1 76 Bad header line: x\r\n\r\n", "spamd error 76"),
        (b"HTTP/1.0 200 OK\r\n\r\n", "status line"),
        (b"SPAMD/1.1 0 EX_OK\r\n\r\n", "no Spam header"),
        (b"SPAMD/1.1 0 EX_OK\r\nSpam: maybe ; x / y\r\n\r\n", "garbled Spam header"),
        (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 50\r\nSpam: True ; 1 / 5\r\n\r\nA", "Content-length"),
    ])
    def test_spamd_garbled(self, reply: bytes, why: str) -> None:
        with pytest.raises(ValueError, match=why):
            parse_spamd_reply(reply)

    def test_rspamd_reply(self) -> None:
        body = b'{"score": 7.5, "required_score": 15, "action": "add header", ' \
               b'"symbols": {"A": {"score": 1.0}, "B": {"score": 5.0}}}'
        r = parse_rspamd_reply(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert (r.score, r.required_score, r.action) == (7.5, 15.0, "add header")
        assert r.symbols == (("B", 5.0), ("A", 1.0))

    @pytest.mark.parametrize("reply, why", [
        (b"HTTP/1.1 500 Internal\r\nContent-Length: 2\r\n\r\nno", "HTTP 500"),
        (b"HTTP/1.1 400 Bad\r\nContent-Length: 17\r\n\r\n{\"error\": \"nope\"}", "nope"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n[1,]", "not JSON"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", "lacks score"),
        (b"garbage", "garbled HTTP"),
    ])
    def test_rspamd_garbled(self, reply: bytes, why: str) -> None:
        with pytest.raises(ValueError, match=why):
            parse_rspamd_reply(reply)

    @pytest.mark.parametrize("kwargs", [
        {"timeout": 0}, {"timeout": 500}, {"weight": -1}, {"weight": float("nan")},
        {"max_size": 10}, {"on_error": "accept"}, {"port": 0}, {"socket": "relative.sock"},
        {"oversize": "cut"}, {"host": ""},
    ])
    def test_settings_rejected(self, kwargs: dict) -> None:
        with pytest.raises(ValueError):
            SpamdSettings(**kwargs)
        with pytest.raises(ValueError):
            RspamdSettings(**kwargs)

    def test_spamd_specific_settings(self) -> None:
        with pytest.raises(ValueError, match="user"):
            SpamdSettings(user="bob\r\nX: y")
        with pytest.raises(ValueError, match="command"):
            SpamdSettings(command="TELL")
        with pytest.raises(ValueError, match="path"):
            RspamdSettings(path="checkv2")
