"""Mail without an SMTP client (Postfix's non_smtpd_milters: sendmail(1),
pickup) maps to the ``local`` user, never through a network: Postfix hands
the milter 127.0.0.1 with port 0 for it."""

import textwrap

import pytest

from outpost.config import parse_config
from outpost.core.idtoken import TokenCodec
from outpost.core.policy import Policy
from outpost.core.transaction import Transaction, drive
from outpost.core.types import Action, Session
from outpost.store.memory import MemoryStore

from .conftest import SECRET

BASE = textwrap.dedent("""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    reports: {enabled: false}
    spam: {enabled: false}
    domains: [example.com, example.org]
    users:
      - name: loopback
        type: ip
        ips: [127.0.0.0/8]
        domains: [example.com, example.org]
      - name: alice
        type: login
        logins: [alice@example.com]
        domains: [example.com]
    """)

LOCAL = BASE + (
    "  - name: scripts\n"
    "    type: local\n"
    "    domains: [example.com]\n"
    "    limits: {messages: [\"2/1h\"]}\n"
    "    identity_headers:\n"
    "      - {header: X-PHP-Originating-Script, regex: '^(\\d+):', remove: true}\n")


def make_policy(text):
    config = parse_config(text)
    codec = TokenCodec(SECRET)
    return Policy(config, MemoryStore(), codec), codec


def run(policy, port, sender="<www@example.com>", login=None, headers=(), addr="127.0.0.1"):
    out = drive(policy, Transaction(sender=sender, recipients=["<victim@dest.example>"],
                                    headers=[("From", " www@example.com"), ("Subject", " hi"), *headers],
                                    body=b"hello\r\n", login=login, client_ip=addr, hostname="localhost",
                                    client_port=port, queue_id="QLOCAL"))
    return out.session, out.decision


@pytest.mark.parametrize("port", [0, "0"])
def test_port_zero_on_loopback_maps_to_the_local_user(port):
    policy, codec = make_policy(LOCAL)
    session, d = run(policy, port, headers=[("X-PHP-Originating-Script", " 1001:hack.php")])
    assert session.local and d.action is Action.ACCEPT
    stamps = dict(d.add_headers)
    assert stamps["X-Outpost-User"] == "scripts"
    origin = codec.open(stamps["X-Outpost-ID"])
    assert (origin.user, origin.identity) == ("scripts", "1001")
    assert ("X-PHP-Originating-Script", 1) in d.remove_headers


def test_local_identity_defaults_to_the_envelope_sender_and_limits_apply():
    policy, codec = make_policy(LOCAL)
    for _ in range(2):
        _, d = run(policy, 0, sender="<Shop@Example.com>")
        assert d.action is Action.ACCEPT
        assert codec.open(dict(d.add_headers)["X-Outpost-ID"]).identity == "shop@example.com"
    _, d = run(policy, 0, sender="<shop@example.com>")
    assert d.action is Action.TEMPFAIL and d.reason == "rate_limit"
    assert "shop@example.com" in d.reply.text


def test_local_mail_never_maps_through_a_network():
    """Without a local user, mail from sendmail(1) is refused even though
    an ip user covers 127.0.0.0/8 (before: it passed as that user)."""
    policy, _ = make_policy(BASE)
    session, d = run(policy, 0)
    assert d.action is Action.REJECT and d.reason == "unknown_sender"
    assert d.reply.text == "Local submission (sendmail) is not an authorized outgoing sender"


def test_local_sender_domain_is_checked():
    policy, _ = make_policy(LOCAL)
    _, d = run(policy, 0, sender="<spoof@example.org>")
    assert d.action is Action.REJECT and d.reason == "sender_domain"
    assert "not allowed for scripts" in d.reply.text


@pytest.mark.parametrize("port,addr,user", [
    (25000, "127.0.0.1", "loopback"),          # an SMTP client on loopback: its network
    (None, "127.0.0.1", "loopback"),           # port unknown: as before
    (0, "192.0.2.9", None),                    # port 0 off loopback is no local submission
])
def test_only_port_zero_on_loopback_is_local(port, addr, user):
    policy, _ = make_policy(LOCAL)
    session, d = run(policy, port, addr=addr)
    assert not session.local
    if user is None:
        assert d.action is Action.REJECT and d.reason == "unknown_sender"
    else:
        assert dict(d.add_headers)["X-Outpost-User"] == user


def test_a_login_still_maps_first():
    """Re-injected mail (postsuper -r) keeps its SASL login."""
    policy, _ = make_policy(LOCAL)
    _, d = run(policy, 0, sender="<alice@example.com>", login="alice@example.com")
    assert dict(d.add_headers)["X-Outpost-User"] == "alice"


def test_local_recipients_are_never_refused_at_rcpt_but_the_message_is():
    """Postfix: a non_smtpd milter must not refuse a recipient.  A locked
    identity and too many recipients are refused at end of message."""
    text = LOCAL.replace('    limits: {messages: ["2/1h"]}\n', '    limits: {max_recipients: 2}\n')
    policy, _ = make_policy(text)
    session = Session()
    policy.connect(session, "127.0.0.1", "localhost", 0)
    assert not policy.mail_from(session, "<www@example.com>", None).blocks
    for n in range(3):
        assert policy.rcpt(session, f"<v{n}@dest.example>").action is Action.CONTINUE
    policy.header(session, "From", " www@example.com")
    d = policy.end_of_message(session, "Q1")
    assert d.action is Action.REJECT and d.reply.code == "550" and d.reason == "max_recipients"

    policy.store.set_lock("scripts/www@example.com", "test", 3600)
    session = Session()
    policy.connect(session, "127.0.0.1", "localhost", 0)
    policy.mail_from(session, "<www@example.com>", None)
    assert policy.rcpt(session, "<v@dest.example>").action is Action.CONTINUE
    policy.header(session, "From", " www@example.com")
    d = policy.end_of_message(session, "Q2")
    assert d.action is Action.TEMPFAIL and d.reason == "locked"
