"""The local door with Sendmail (issue #22, docs/sendmail.rst "Local submission and
reports with Sendmail"): ``sendmail(1)`` for an ordinary user is the MSP
(``submit.cf``), which relays over SMTP to the MTA on 127.0.0.1 -- so it goes
through Outpost, mapped by address (an ``ip`` user for 127.0.0.1); the
report daemon of ``contrib/sendmail/outpost.mc`` has no filter and admits
only the ``outpost-reports`` login.

The MSP tests pin behaviour the contrib .mc already had (every SMTP daemon
runs the filter); the report-daemon tests fail on the old .mc, which had no
such daemon.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from outpost.core.idtoken import TokenCodec, read_secret
from tests.corpus import SPAM, corpus_message
from tests.services.local_submit import msp_sendmail
from tests.services.poll import wait_until
from tests.services.sendmail import SendmailInstance
from tests.services.sink import SmtpSink
from tests.services.smtp import build_message, send

from .outpost_proc import Outpost


def config(reports_smtp: str, spool: Path) -> str:
    return textwrap.dedent(f"""\
        hostname: relay.example.net
        report_abuse_to: abuse@example.net
        domains: [example.com]
        reports:
          spool_dir: {spool}
          smtp: {reports_smtp}
          poll_interval: 0.3
        defaults:
          lock: {{after_spam: 1000}}
        users:
          - name: scripts              # Sendmail: local mail is SMTP from 127.0.0.1 (the MSP)
            type: ip
            ips: [127.0.0.1/32]
            domains: [example.com]
            identity_headers:
              - {{header: X-PHP-Originating-Script, regex: '^(\\d+):', remove: true}}
        """)


@pytest.fixture(scope="module")
def relay():
    """(Sendmail, Outpost, sink) -- reports too reach the sink, through
    Sendmail's report daemon."""
    sink = SmtpSink().start()
    sm = SendmailInstance(sink_port=sink.port)
    sm.build()
    spool = Path("/tmp") / f"outpost-spool-sm-local-{time.time_ns()}"
    outpost = Outpost(sm.milter_socket, config(sm.reports_yaml(), spool)).start()
    outpost.codec = TokenCodec(read_secret(str(outpost.secret_file)))
    sm.start()
    try:
        yield sm, outpost, sink
    finally:
        outpost.stop(graceful=False)
        sm.cleanup()
        sink.stop()


def to(sink, rcpt):
    return [m for m in sink.messages if rcpt in m.rcpt_tos]


def test_sendmail_msp_mail_goes_through_outpost(relay):
    sm, outpost, sink = relay
    msg = build_message("www@example.com", "friend@dest.example",
                        headers={"X-PHP-Originating-Script": "1001:contact.php"})
    out = msp_sendmail(sm, msg, "-f", "www@example.com", "friend@dest.example")
    assert out.returncode == 0, out.stderr
    [got] = wait_until(lambda: to(sink, "friend@dest.example"), what="delivery")
    assert got.headers("X-Outpost-User") == ["scripts"]
    assert got.headers("X-PHP-Originating-Script") == []
    origin = outpost.codec.open(got.headers("X-Outpost-ID")[0])
    assert (origin.identity, origin.client_ip) == ("1001", "127.0.0.1")
    # The MSP's own trace line reached Outpost as an ordinary header.
    assert any("Submit" in v for v in got.headers("Received"))


def test_spam_through_the_msp_is_refused_and_reported(relay):
    sm, outpost, sink = relay
    out = msp_sendmail(sm, corpus_message("spam", SPAM, "www@example.com"),
                       "-f", "www@example.com", "victim@dest.example")
    # The MSP delivers interactively: the refusal reaches the submitting
    # process as sendmail's exit status (69, EX_UNAVAILABLE).
    assert out.returncode == 69, (out.returncode, out.stderr)
    sm.wait_for_log(r"Milter: data, reject=550 5\.7\.1 Message rejected as spam")
    # The MSP also bounces to the envelope sender -- through the MTA, so
    # through Outpost again (from 127.0.0.1, quoting the spam): refused too.
    sm.wait_for_log(r"DSN: Service unavailable")
    [report] = wait_until(lambda: to(sink, "abuse@example.net"), what="abuse report")
    assert b"scripts/www@example.com" in report.data
    assert report.headers("X-Outpost-User") == []          # the report daemon has no filter
    sm.wait_for_log(r"daemon=OutpostReports")
    assert to(sink, "victim@dest.example") == [] and to(sink, "www@example.com") == []


def test_report_daemon_admits_only_the_report_login(relay):
    """No filter on the report daemon, so no other local process may use it:
    without AUTH it refuses MAIL, a customer's valid login is refused at
    RCPT; Outpost's login relays, unfiltered."""
    sm, outpost, sink = relay
    sm.add_sasl_user("alice@example.com", "alicepw")
    r = send(sm.reports_port, mail_from="www@example.com", rcpt_tos=["spam@dest.example"])
    assert (r.stage, r.code) == ("mail", 530), r
    r = send(sm.reports_port, mail_from="alice@example.com", rcpt_tos=["spam@dest.example"],
             login="alice@example.com", password="alicepw")
    assert (r.stage, r.code) == ("rcpt", 550) and "Access denied" in r.text, r
    r = send(sm.reports_port, mail_from="outpost@relay.example.net", rcpt_tos=["desk@dest.example"],
             login=sm.report_login, password=sm.report_password)
    assert r.accepted, r
    [msg] = wait_until(lambda: to(sink, "desk@dest.example"), what="delivery")
    assert msg.headers("X-Outpost-User") == []
    assert to(sink, "spam@dest.example") == []
