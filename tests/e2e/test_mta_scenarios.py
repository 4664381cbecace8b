"""The same scenarios through both real MTAs, Postfix and Sendmail
(parametrised), with real client addresses (127.0.0.X source addresses) and
real SMTP AUTH — no XCLIENT, which Sendmail lacks."""

from __future__ import annotations

import email
import random
import smtplib
import textwrap
import time
from pathlib import Path

import pytest

from outpost.effects.dkim import keygen, zone_txt
from tests.corpus import SPAM, corpus_message
from tests.effects.reports.arfcheck import check as check_arf
from tests.services.dns import DnsServer
from tests.services.opendkim import opendkim_verify
from tests.services.postfix import PostfixInstance
from tests.services.sendmail import SendmailInstance
from tests.services.sink import SmtpSink
from tests.services.smtp import build_message, send

from .outpost_proc import Outpost

CONFIG = textwrap.dedent("""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    connection_limit: 10
    dns: {{nameservers: [127.0.0.1], port: {dns_port}}}
    domains:
      - name: example.com
        dkim: {{selector: s2026, key: {dkim_key}}}
      - example.org
    reports:
      spool_dir: {spool}
      smtp: {{host: 127.0.0.1, port: {report_port}}}
      listener_auth: none
      poll_interval: 0.3
    users:
      - name: webfarm
        type: ip
        ips: [127.0.0.77/32]
        domains: [example.com]
        identity_headers:
          - {{header: X-PHP-Originating-Script, regex: '^(\\d+):', remove: true}}
      - name: alice
        type: login
        logins: [alice@example.com]
        domains: [example.com]
      - name: limited
        type: login
        logins: [bob@example.com]
        domains: [example.com]
        limits: {{messages: ["3/1m"]}}
    """)

MTAS = {"postfix": PostfixInstance, "sendmail": SendmailInstance}


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory):
    """NSD serving example.com's DKIM key; yields (server, key path)."""
    path, txt = keygen("example.com", "s2026", "rsa", 2048, str(tmp_path_factory.mktemp("dkim")))
    extra = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    with DnsServer({"example.com": f"s2026._domainkey IN TXT ( {zone_txt(txt)} )\n"},
                   extra_ip=extra) as server:
        yield server, path


@pytest.fixture(scope="module", params=sorted(MTAS))
def relay(request, dns_server):
    """(mta instance, outpost, destination sink, report sink) for one MTA."""
    dns, dkim_key = dns_server
    sink = SmtpSink().start()
    reports = SmtpSink().start()
    mta = MTAS[request.param](sink_port=sink.port)
    mta.build()
    for login, pw in (("alice@example.com", "alicepw"), ("bob@example.com", "bobpw")):
        mta.add_sasl_user(login, pw)
    spool = Path("/tmp") / f"outpost-spool-{request.param}-{time.time_ns()}"
    outpost = Outpost(mta.milter_socket, CONFIG.format(spool=spool, report_port=reports.port,
                                                       dns_port=dns.port, dkim_key=dkim_key)).start()
    mta.start()
    try:
        yield request.param, mta, outpost, sink, reports
    finally:
        outpost.stop(graceful=False)
        mta.cleanup()
        sink.stop()
        reports.stop()


@pytest.fixture
def env(relay):
    name, mta, outpost, sink, reports = relay
    # The previous test's mail must not arrive in this one's sink: Sendmail
    # may still be delivering it (its queue runner is asynchronous).
    mta.wait_queue_empty(timeout=30)
    sink.clear()
    reports.clear()
    return relay


def by_ip(mta, source="127.0.0.77", **kw):
    return send(mta.relay_port, source_address=source, **kw)


def by_login(mta, login, password, **kw):
    return send(mta.submission_port, login=login, password=password, **kw)


def test_mapping_by_ip_and_stamped_headers(env):
    name, mta, outpost, sink, _ = env
    msg = build_message("web@example.com", "x@dest.example",
                        headers={"X-PHP-Originating-Script": "77:form.php", "X-Outpost-User": "forged"})
    r = by_ip(mta, mail_from="web@example.com", rcpt_tos=["x@dest.example"], message=msg)
    assert r.accepted, r
    [m] = sink.wait_for(1, timeout=20)
    assert m.headers("X-Outpost-User") == ["webfarm"]
    assert b"\r\nX-Outpost-User: webfarm\r\n" in m.data
    assert m.headers("X-Originating-IP") == ["[127.0.0.77]"]
    assert m.headers("X-Outpost-Domain") == ["example.com"]
    assert m.headers("X-PHP-Originating-Script") == []
    assert m.headers("X-Report-Abuse-To") == ["abuse@example.net"]
    assert len(m.headers("X-Outpost-ID")) == 1


def test_mapping_by_auth_login_and_dkim_signature_verifies(env, dns_server):
    name, mta, outpost, sink, _ = env
    msg = build_message("Alice <alice@example.com>", "x@dest.example", subject="Signed  by Outpost",
                        body="Hello,\n\nthis message is signed.\n")
    r = by_login(mta, "alice@example.com", "alicepw", mail_from="alice@example.com",
                 rcpt_tos=["x@dest.example"], message=msg)
    assert r.accepted, r
    [m] = sink.wait_for(1, timeout=20)
    assert m.headers("X-Outpost-User") == ["alice"]
    server, _ = dns_server
    assert len(m.headers("DKIM-Signature")) == 1
    assert opendkim_verify(server.extra_ip, m.data) == [("example.com", "s2026", True)]
    tampered = m.data.replace(b"this message is signed", b"this message was changed")
    assert opendkim_verify(server.extra_ip, tampered) == [("example.com", "s2026", False)]


def test_unknown_client_refused(env):
    name, mta, outpost, sink, _ = env
    r = by_ip(mta, source="127.0.0.99", mail_from="x@example.com", rcpt_tos=["x@dest.example"])
    assert (r.stage, r.code) == ("mail", 550), r
    assert "127.0.0.99 is not an authorized outgoing sender" in r.text


def test_sender_domain_policy(env):
    name, mta, outpost, sink, _ = env
    r = by_login(mta, "alice@example.com", "alicepw", mail_from="alice@example.org",
                 rcpt_tos=["x@dest.example"])
    assert (r.stage, r.code) == ("mail", 550), r
    assert "Sender domain example.org is not allowed for alice" in r.text
    spoof = build_message("ceo@bank.example", "x@dest.example")
    r = by_login(mta, "alice@example.com", "alicepw", mail_from="alice@example.com",
                 rcpt_tos=["x@dest.example"], message=spoof)
    assert (r.stage, r.code) == ("end", 550), r
    assert "Header From domain bank.example is not allowed for alice" in r.text


def test_connection_limit_421(env):
    name, mta, outpost, sink, _ = env
    held = []
    try:
        for _ in range(10):
            c = smtplib.SMTP(timeout=15, source_address=("127.0.0.77", 0))
            c.connect("127.0.0.1", mta.relay_port)
            c.ehlo("client.example")
            held.append(c)
            assert c.docmd("MAIL", "FROM:<web@example.com>")[0] == 250
            c.rset()
        r = by_ip(mta, mail_from="web@example.com", rcpt_tos=["x@dest.example"])
        assert (r.stage, r.code) == ("mail", 421), r
        assert ("4.7.0 Too many concurrent SMTP connections from this IP address; please try again later"
                in r.text)
    finally:
        for c in held:
            c.close()


def test_rate_limit(env):
    name, mta, outpost, sink, _ = env
    results = [by_login(mta, "bob@example.com", "bobpw", mail_from="bob@example.com",
                        rcpt_tos=["x@dest.example"]) for _ in range(4)]
    assert [r.accepted for r in results] == [True, True, True, False], [str(r) for r in results]
    assert results[3].code == 451
    assert "Too many messages from bob@example.com (3/1m); please wait and try again" in results[3].text


def test_spam_rejected_and_reported(env):
    name, mta, outpost, sink, reports = env
    r = by_login(mta, "alice@example.com", "alicepw", mail_from="alice@example.com",
                 rcpt_tos=["victim@dest.example"], message=corpus_message("spam", SPAM, "alice@example.com"))
    assert (r.stage, r.code) == ("end", 550), r
    assert "Message rejected as spam; reference " in r.text
    [rep] = reports.wait_for(1, timeout=30)
    fields = check_arf(rep.data).fields
    assert fields["feedback-type"] == ["abuse"]
    assert [v.strip("<>") for v in fields["original-rcpt-to"]] == ["victim@dest.example"]
    assert email.message_from_bytes(rep.data)["To"] == "abuse@example.net"
    assert sink.messages == []
