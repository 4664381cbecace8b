"""The pymilter adapter, driven through pymilter's own Milter.testctx.TestCtx.

Traps handled (see shared notes): NOREPLY patched to CONTINUE so _feedFile
goes past envfrom; a fresh copy of TestCtx.default_opts per test; hostaddr is
a bare string here.
"""

import email
import functools
import io
import textwrap

import Milter
import pytest
from Milter.testctx import TestCtx as MilterTestCtx

from outpost.adapter.milter import OutpostMilter
from outpost.logs import ContextFilter


@pytest.fixture
def runtime(monkeypatch, memory_runtime):
    monkeypatch.setattr(Milter, "NOREPLY", Milter.CONTINUE)
    monkeypatch.setattr(MilterTestCtx, "default_opts", list(MilterTestCtx.default_opts))
    monkeypatch.setattr(Milter, "factory", functools.partial(OutpostMilter, memory_runtime))
    return memory_runtime


MESSAGE = textwrap.dedent("""\
    From: Bob <bob@example.com>
    To: x@dest.example
    Subject: hello
    X-Outpost-ID: forged
    x-outpost-user: forged-user
    X-PHP-Originating-Script: 1001:mail.php

    body line
    """)


def feed(text=MESSAGE, ip="192.0.2.5", login=None, sender="bob@example.com", rcpts=("x@dest.example",),
         qid="4XyZ01"):
    ctx = MilterTestCtx()
    if login:
        ctx._setsymval("{auth_authen}", login)
    ctx._setsymval("i", qid)
    rc = ctx._connect(host="client.example", helo="client.example", ip=ip)
    if rc != Milter.CONTINUE:
        return ctx, rc
    rc = ctx._feedFile(io.BytesIO(text.encode()), sender, *rcpts)
    return ctx, rc


def test_accepted_message_is_stamped_and_forgeries_removed(runtime):
    ctx, rc = feed()
    assert rc == Milter.CONTINUE
    msg = ctx._msg
    # header_leading_space is negotiated: the value carries the blank after the colon
    assert msg["X-Outpost-User"] == " webfarm"
    assert msg["X-Outpost-Domain"] == " example.com"
    assert msg["X-Originating-IP"] == " [192.0.2.5]"
    assert msg.get_all("X-Outpost-ID") != ["forged"] and len(msg.get_all("X-Outpost-ID")) == 1
    origin = runtime.codec.open(msg["X-Outpost-ID"])
    assert (origin.user, origin.identity, origin.queue_id) == ("webfarm", "1001", "4XyZ01")
    assert msg.get("X-PHP-Originating-Script") is None       # identity header marked remove
    assert msg.get_all("X-Outpost-User") == [" webfarm"]
    ctx._close()
    assert runtime.store.conn_count("192.0.2.5") == 0          # slot freed at close


def test_unknown_sender_rejected_with_reply(runtime):
    ctx, rc = feed(ip="198.51.100.9")
    assert rc == Milter.REJECT
    assert ctx._reply == ("550", "5.7.1", "198.51.100.9 is not an authorized outgoing sender")


def test_login_with_percent_gets_an_escaped_reply(runtime):
    ctx, rc = feed(ip="198.51.100.9", login="100%evil@example.net")
    assert rc == Milter.REJECT
    assert ctx._reply[2] == "Login 100%%evil@example.net is not an authorized outgoing sender"


def test_connection_limit_421(runtime):
    ctxs = [MilterTestCtx() for _ in range(3)]
    for c in ctxs:
        assert c._connect(ip="198.51.100.7") == Milter.CONTINUE
    extra = MilterTestCtx()
    assert extra._connect(ip="198.51.100.7") == Milter.CONTINUE
    assert extra._envfrom("<bob@example.com>") == Milter.TEMPFAIL
    assert extra._reply == ("421", "4.7.0", "Too many concurrent SMTP connections from this IP address; "
                                           "please try again later")
    ctxs[0]._close()
    again = MilterTestCtx()
    again._connect(ip="198.51.100.7")
    assert again.getpriv().session.conn_slot is not None


def test_internal_error_tempfails_and_next_message_is_fine(runtime, monkeypatch, caplog):
    real = runtime.policy.end_of_message
    calls = []

    def broken(session, queue_id=""):
        if not calls:
            calls.append(1)
            raise KeyError("boom")
        return real(session, queue_id)

    monkeypatch.setattr(runtime.policy, "end_of_message", broken)
    caplog.handler.addFilter(ContextFilter())          # the QID: prefix, as outpost's handlers
    ctx, rc = feed(qid="QERR1")
    assert rc == Milter.TEMPFAIL
    assert ctx._reply == ("451", "4.3.0", "Temporary local problem; please try again later")
    [record] = [r for r in caplog.records if r.getMessage().startswith("internal error")]
    assert record.getMessage() == "internal error at eom (client=192.0.2.5); answering 451 4.3.0"
    assert (record.qid, record.qid_prefix) == ("QERR1", "QERR1: ")   # the queue id once, as prefix
    assert "KeyError: 'boom'" in caplog.text
    assert not ctx._headerschanged and ctx._msg["X-Outpost-ID"] == "forged"   # nothing stamped
    ctx2, rc2 = feed(qid="QOK2")
    assert rc2 == Milter.CONTINUE and ctx2._msg["X-Outpost-User"] == " webfarm"


def test_internal_error_at_connect_answers_451_at_mail_from(runtime, monkeypatch, caplog):
    """connect is a no-reply stage: its failure refuses the session's mail
    at MAIL FROM (never accepts it unfiltered), and the next session is fine."""
    real = runtime.policy.connect

    def broken(session, addr, hostname="", client_port=None):
        raise KeyError("boom")

    monkeypatch.setattr(runtime.policy, "connect", broken)
    ctx = MilterTestCtx()
    assert ctx._connect(ip="192.0.2.5") == Milter.CONTINUE
    assert ctx._envfrom("<bob@example.com>") == Milter.TEMPFAIL
    assert ctx._reply == ("451", "4.3.0", "Temporary local problem; please try again later")
    assert "internal error at connect" in caplog.text and "KeyError: 'boom'" in caplog.text
    monkeypatch.setattr(runtime.policy, "connect", real)
    ctx2, rc2 = feed()
    assert rc2 == Milter.CONTINUE and ctx2._msg["X-Outpost-User"] == " webfarm"


@pytest.mark.parametrize("stage", ["header", "body"])
def test_error_at_a_no_reply_stage_tempfails_at_end_of_message(runtime, monkeypatch, caplog, stage):
    """header and body are no-reply stages: libmilter turns their 451 into
    no answer, so the failed message must get its 451 at end of message,
    never be accepted unfiltered.  The next message is fine."""
    import logging
    caplog.set_level(logging.INFO)

    def broken(*_args):
        raise KeyError("boom")

    ctx = MilterTestCtx()
    ctx._setsymval("i", "QNR1")
    assert ctx._connect(ip="192.0.2.5") == Milter.CONTINUE
    assert ctx._envfrom("<bob@example.com>") == Milter.CONTINUE
    assert ctx._envrcpt("<x@dest.example>") == Milter.CONTINUE
    with monkeypatch.context() as patch:
        patch.setattr(runtime.policy, stage, broken)
        ctx._header("From", "bob@example.com")       # the MTA does not wait for these answers
        ctx.getpriv().body(b"text\r\n")
    ctx._reply = None
    assert ctx._eom() == Milter.TEMPFAIL
    assert ctx._reply == ("451", "4.3.0", "Temporary local problem; please try again later")
    assert not ctx._headerschanged                                 # nothing stamped
    assert f"internal error at {stage} (client=192.0.2.5); answering 451 4.3.0" in caplog.text
    ctx._setsymval("i", "QNR2")
    assert ctx._envfrom("<bob@example.com>") == Milter.CONTINUE   # the next transaction is clean
    assert ctx._envrcpt("<x@dest.example>") == Milter.CONTINUE
    ctx._header("From", "bob@example.com")
    ctx._msg = email.message_from_string("From: bob@example.com\n\ntext\n")   # as _feedFile sets it
    assert ctx._eom() == Milter.CONTINUE
    assert ctx._msg["X-Outpost-User"] == " webfarm"
    ctx._close()
    lines = [(r.qid, r.getMessage()) for r in caplog.records if r.name == "outpost.message"]
    assert any(q == "QNR1" and "action=tempfail reason=internal_error" in x for q, x in lines)
    assert any(q == "QNR2" and "action=accept reason=ok" in x for q, x in lines)


def test_error_at_one_recipient_fails_the_message(runtime, monkeypatch):
    """An MTA goes on after a recipient refused with 451: the message must
    not then reach end of message unchecked and be accepted."""
    real = runtime.policy.rcpt
    calls = []

    def broken(session, recipient):
        calls.append(recipient)
        if len(calls) == 1:
            raise KeyError("boom")
        return real(session, recipient)

    monkeypatch.setattr(runtime.policy, "rcpt", broken)
    ctx = MilterTestCtx()
    assert ctx._connect(ip="192.0.2.5") == Milter.CONTINUE
    assert ctx._envfrom("<bob@example.com>") == Milter.CONTINUE
    assert ctx._envrcpt("<x@dest.example>") == Milter.TEMPFAIL
    assert ctx._envrcpt("<y@dest.example>") == Milter.CONTINUE
    ctx._header("From", "bob@example.com")
    ctx._reply = None
    assert ctx._eom() == Milter.TEMPFAIL
    assert ctx._reply[:2] == ("451", "4.3.0") and not ctx._headerschanged


def test_one_log_line_per_message(runtime, caplog):
    import logging
    caplog.set_level(logging.INFO, logger="outpost.message")
    ctx, _ = feed(qid="QLOG1")

    def records():
        return [r for r in caplog.records if r.name == "outpost.message"]

    def lines():
        return [r.getMessage() for r in records()]

    assert lines() == []          # written after the reply went out: at the next MAIL FROM or close
    ctx._envfrom("<bob@example.com>")
    assert len(lines()) == 1 and records()[0].qid == "QLOG1"
    ctx._close()                  # the second transaction, never finished, is logged as closed
    assert len(lines()) == 2 and "reason=closed" in lines()[1]
    line = lines()[0]
    # the queue id is the line's "QID: " prefix (outpost.logs), not a field again
    assert line.startswith("ip=192.0.2.5 ") and "QLOG1" not in line
    for part in ("ip=192.0.2.5", "login=-", "user=webfarm", "identity=1001",
                 "from=<bob@example.com>", "rcpts=1", "action=accept", "reason=ok", "ms="):
        assert part in line, part


@pytest.mark.parametrize("no_reply_eoh", [True, False])
def test_header_flood_refused_at_end_of_headers_or_of_message(runtime, no_reply_eoh):
    """Over max_headers: 552 5.3.4 at end of headers when the MTA waits for
    that answer, else at end of message (a no-reply stage must not answer)."""
    ctx = MilterTestCtx()
    assert ctx._connect(ip="192.0.2.5") == Milter.CONTINUE
    milter = ctx.getpriv()
    if no_reply_eoh:
        milter._protocol |= Milter.P_NR_EOH
    else:
        milter._protocol &= ~Milter.P_NR_EOH
    assert ctx._envfrom("<bob@example.com>") == Milter.CONTINUE
    assert ctx._envrcpt("<x@dest.example>") == Milter.CONTINUE
    ctx._header("From", "bob@example.com")
    for i in range(1000):
        assert ctx._header(f"X-H{i}", "v") == Milter.CONTINUE
    assert len(milter.session.message.headers) == 0            # refused: none kept
    ctx._reply = None
    rc = ctx._eoh()
    if no_reply_eoh:
        assert rc == Milter.CONTINUE and ctx._reply is None
        assert ctx.getpriv().body(b"text\r\n") == Milter.CONTINUE
        rc = ctx._eom()
    assert rc == Milter.REJECT
    assert ctx._reply[:2] == ("552", "5.3.4") and not ctx._headerschanged
    ctx._close()
