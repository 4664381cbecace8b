"""Prove the real-Postfix harness: shipped fragments, macros, XCLIENT, SASL,
tempfail when the milter is down, hold queue, unfiltered reports listener."""

from __future__ import annotations

import sys
import textwrap
from typing import Iterator

import pytest

from tests.services import smtp
from tests.services.milter import MilterProcess
from tests.services.postfix import PostfixInstance, parse_main_cf, parse_master_cf
from tests.services.sink import SmtpSink

# A tiny pymilter: stamps the macros it saw, quarantines "hold" subjects.
TEST_MILTER = textwrap.dedent('''
    import sys
    import Milter

    class Stamp(Milter.Base):
        def __init__(self):
            self.seen = {}
            self.subject = ""

        def connect(self, hostname, family, hostaddr):
            for macro in ("{client_addr}", "{daemon_name}"):
                self.seen[macro] = self.getsymval(macro)
            return Milter.CONTINUE

        def envfrom(self, mailfrom, *params):
            for macro in ("{auth_authen}", "{auth_type}"):
                self.seen[macro] = self.getsymval(macro)
            return Milter.CONTINUE

        def header(self, name, value):
            if name.lower() == "subject":
                self.subject = value
            return Milter.CONTINUE

        def eom(self):
            for macro, value in self.seen.items():
                self.addheader("X-Test-" + macro.strip("{}"), value or "-")
            if "hold" in self.subject:
                self.quarantine("held by test milter")
            return Milter.CONTINUE

    Milter.set_flags(Milter.ADDHDRS | Milter.QUARANTINE)
    Milter.factory = Stamp
    Milter.runmilter("stamp", sys.argv[1], 30)
''')


@pytest.fixture(scope="module")
def stamp_milter(postfix: PostfixInstance) -> Iterator[MilterProcess]:
    script = postfix.base_dir / "stamp_milter.py"
    script.write_text(TEST_MILTER)
    proc = MilterProcess([sys.executable, str(script), "{socket}"], postfix.milter_socket)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def sink(smtp_sink: SmtpSink, stamp_milter: MilterProcess, postfix: PostfixInstance) -> SmtpSink:
    """The module's sink, emptied once earlier messages are no longer in
    flight, with the stamp milter running."""
    stamp_milter.start()
    postfix.drain()
    smtp_sink.clear()
    return smtp_sink


def test_fragments_are_the_shipped_ones(postfix: PostfixInstance) -> None:
    main = parse_main_cf((postfix.config_dir / "main.cf").read_text())
    assert main["smtpd_milters"] == f"unix:{postfix.milter_socket}"
    assert main["milter_default_action"] == "tempfail"
    assert "{client_addr}" in main["milter_connect_macros"].split()
    assert {"{auth_authen}", "{auth_type}"} <= set(main["milter_mail_macros"].split())
    master = {s.name: s for s in parse_master_cf((postfix.config_dir / "master.cf").read_text())}
    reports = master[f"127.0.0.1:{postfix.reports_port}"]
    assert reports.option("smtpd_milters") == ""
    assert master[f"127.0.0.1:{postfix.submission_port}"].option("smtpd_sasl_auth_enable") == "yes"


def test_xclient_login_and_addr_reach_the_milter(postfix: PostfixInstance, sink: SmtpSink) -> None:
    result = smtp.send(postfix.submission_port,
                       xclient={"LOGIN": "carol", "ADDR": "203.0.113.7"})
    assert result.accepted, result
    (msg,) = sink.wait_for(1)
    assert msg.headers("X-Test-client_addr") == ["203.0.113.7"]
    assert msg.headers("X-Test-auth_authen") == ["carol"]
    assert msg.headers("X-Test-daemon_name") == ["outpost-submission"]
    assert msg.rcpt_tos == ("rcpt@example.net",)


def test_sasl_auth_login_reaches_the_milter(postfix: PostfixInstance, sink: SmtpSink) -> None:
    postfix.add_sasl_user("alice", "s3cret")
    bad = smtp.send(postfix.submission_port, login="alice", password="wrong")
    assert (bad.stage, bad.code) == ("auth", 535)
    result = smtp.send(postfix.submission_port, login="alice", password="s3cret")
    assert result.accepted, result
    (msg,) = sink.wait_for(1)
    assert msg.headers("X-Test-auth_authen") == ["alice"]
    assert msg.headers("X-Test-auth_type") == ["PLAIN"]
    assert msg.headers("X-Test-client_addr") == ["127.0.0.1"]


def test_submission_refuses_unauthenticated(postfix: PostfixInstance, sink: SmtpSink) -> None:
    result = smtp.send(postfix.submission_port)
    assert (result.stage, result.code) == ("rcpt", 554)


def test_ip_relay_listener_by_client_address(postfix: PostfixInstance, sink: SmtpSink) -> None:
    allowed = smtp.send(postfix.relay_port, xclient={"ADDR": "198.51.100.20"})
    assert allowed.accepted, allowed
    refused = smtp.send(postfix.relay_port, xclient={"ADDR": "100.64.0.1"})
    assert (refused.stage, refused.code) == ("rcpt", 554)
    (msg,) = sink.wait_for(1)
    assert msg.headers("X-Test-client_addr") == ["198.51.100.20"]
    assert msg.headers("X-Test-auth_authen") == ["-"]
    assert msg.headers("X-Test-daemon_name") == ["outpost-iprelay"]


def test_reports_listener_bypasses_the_milter(postfix: PostfixInstance, sink: SmtpSink) -> None:
    result = smtp.send(postfix.reports_port, mail_from="abuse@outpost.example",
                       login=postfix.report_login, password=postfix.report_password)
    assert result.accepted, result
    (msg,) = sink.wait_for(1)
    assert msg.mail_from == "abuse@outpost.example"
    assert msg.headers("X-Test-client_addr") == []


def test_milter_down_tempfails(postfix: PostfixInstance, sink: SmtpSink,
                               stamp_milter: MilterProcess) -> None:
    stamp_milter.stop()
    try:
        result = smtp.send(postfix.submission_port, xclient={"LOGIN": "carol"})
        assert result.code == 451, result
        assert result.stage in ("mail", "rcpt", "data", "end"), result
    finally:
        stamp_milter.start()
    assert smtp.send(postfix.submission_port, xclient={"LOGIN": "carol"}).accepted
    assert len(sink.wait_for(1)) == 1


def test_quarantine_lands_in_hold_queue(postfix: PostfixInstance, sink: SmtpSink) -> None:
    message = smtp.build_message(subject="please hold this")
    result = smtp.send(postfix.submission_port, xclient={"LOGIN": "carol"}, message=message)
    assert result.accepted, result
    assert result.queue_id in postfix.hold_queue()
    assert "please hold this" in postfix.postcat(result.queue_id, "-h")
    assert sink.messages == []
    postfix.postsuper("-H", result.queue_id)
    (msg,) = sink.wait_for(1)
    assert msg.headers("Subject") == ["please hold this"]
    assert result.queue_id not in postfix.hold_queue()


def test_sink_outage_defers_then_delivers(postfix: PostfixInstance, sink: SmtpSink) -> None:
    sink.down()
    try:
        result = smtp.send(postfix.relay_port)
        assert result.accepted, result
        postfix.wait_for_log(rf"{result.queue_id}: .*status=deferred")
    finally:
        sink.up()
    postfix.flush()
    assert len(sink.wait_for(1, timeout=15)) == 1


def test_set_main_swaps_the_milter(postfix: PostfixInstance, sink: SmtpSink) -> None:
    original = postfix.milter
    postfix.set_main(milter="")
    try:
        assert smtp.send(postfix.relay_port).accepted
        (msg,) = sink.wait_for(1)
        assert msg.headers("X-Test-client_addr") == []
    finally:
        postfix.set_main(milter=original)
    sink.clear()
    assert smtp.send(postfix.relay_port).accepted
    (msg,) = sink.wait_for(1)
    assert msg.headers("X-Test-client_addr") == ["127.0.0.1"]


def test_shipped_submission_requires_starttls(smtp_sink: SmtpSink) -> None:
    with PostfixInstance(sink_port=smtp_sink.port, milter="", require_tls=True) as strict:
        strict.add_sasl_user("alice", "s3cret")
        plain = smtp.send(strict.submission_port, login="alice", password="s3cret")
        assert plain.stage == "auth" and plain.code >= 500, plain
        tls = smtp.send(strict.submission_port, login="alice", password="s3cret", tls="starttls")
        assert tls.accepted, tls
        implicit = smtp.send(strict.smtps_port, login="alice", password="s3cret", tls="implicit")
        assert implicit.accepted, implicit
