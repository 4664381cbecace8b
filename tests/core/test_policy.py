"""The decision core, driven with typed events (no pymilter)."""

import textwrap

import pytest

from outpost.core.idtoken import TokenCodec
from outpost.core.limits import buckets
from outpost.core.transaction import Transaction, drive
from outpost.core.types import Action, Session
from outpost.store.base import StoreError

from .conftest import SECRET


def transaction(policy, ip="192.0.2.5", login=None, sender="<bob@example.com>",
                rcpts=("<x@dest.example>",), headers=None, qid="Q1"):
    """Run one message on a new connection (closed at the end); return
    (session, [decisions by stage], final decision)."""
    if headers is None:
        headers = [("From", " Bob <bob@example.com>"), ("To", " x@dest.example"), ("Subject", " hi")]
    out = drive(policy, Transaction(sender=sender, recipients=rcpts, headers=headers, body=b"x" * 100,
                                    login=login, client_ip=ip, hostname="client.example", queue_id=qid))
    return out.session, out.decisions, out.decision


def stamps(decision):
    return dict(decision.add_headers)


def test_ip_user_accepted_with_stamps(policy, codec):
    session, _, d = transaction(policy)
    assert d.action is Action.ACCEPT
    h = stamps(d)
    assert h["X-Outpost-User"] == "webfarm"
    assert h["X-Outpost-Domain"] == "example.com"
    assert h["X-Originating-IP"] == "[192.0.2.5]"
    assert h["X-Report-Abuse-To"] == "abuse@example.net"
    origin = codec.open(h["X-Outpost-ID"])
    assert (origin.user, origin.identity, origin.client_ip, origin.queue_id, origin.time) == (
        "webfarm", "bob@example.com", "192.0.2.5", "Q1", 1_700_000_000)
    with pytest.raises(ValueError):
        TokenCodec(SECRET[::-1]).open(h["X-Outpost-ID"])


def test_unknown_ip_refused_with_550(policy):
    _, _, d = transaction(policy, ip="198.51.100.9")
    assert d.action is Action.REJECT
    assert str(d.reply) == "550 5.7.1 198.51.100.9 is not an authorized outgoing sender"


def test_unmapped_login_refused_naming_the_login(policy):
    _, _, d = transaction(policy, ip="198.51.100.9", login="mallory@evil.example")
    assert str(d.reply) == "550 5.7.1 Login mallory@evil.example is not an authorized outgoing sender"


def test_login_and_domain_users(policy):
    _, _, d = transaction(policy, ip="198.51.100.9", login="alice@example.com", sender="<alice@example.com>",
                          headers=[("From", " alice@example.com")])
    assert stamps(d)["X-Outpost-User"] == "alice"
    _, _, d = transaction(policy, ip="198.51.100.9", login="carol@example.org", sender="<carol@example.org>",
                          headers=[("From", " carol@example.org")])
    assert stamps(d)["X-Outpost-User"] == "example.org"
    assert policy.codec.open(stamps(d)["X-Outpost-ID"]).identity == "carol@example.org"


def test_sender_domain_policy(policy):
    _, _, d = transaction(policy, sender="<bob@example.org>")
    assert str(d.reply) == "550 5.7.1 Sender domain example.org is not allowed for webfarm"
    _, _, d = transaction(policy, sender="<bob@unregistered.example>")
    assert d.action is Action.REJECT
    # a domain user may only use its own domain
    _, _, d = transaction(policy, ip=None, login="carol@example.org", sender="<carol@example.com>")
    assert str(d.reply) == "550 5.7.1 Sender domain example.com is not allowed for example.org"


def test_null_sender_only_for_ip_users(policy):
    _, _, d = transaction(policy, sender="<>")
    assert d.action is Action.ACCEPT
    _, _, d = transaction(policy, ip=None, login="alice@example.com", sender="<>",
                          headers=[("From", " alice@example.com")])
    assert str(d.reply) == "550 5.7.1 Null sender is not allowed for alice"


@pytest.mark.parametrize("headers,text", [
    ([("Subject", " x")], "550 5.6.0 Message has no From header"),
    ([("From", " a@example.com"), ("FROM", " b@example.com")], "550 5.6.0 Message has more than one From header"),
    ([("From", " a@example.com, b@example.com")], "550 5.6.0 The From header must hold exactly one valid address"),
    ([("From", " Bank <ceo@paypal.example>")],
     "550 5.7.1 Header From domain paypal.example is not allowed for webfarm"),
])
def test_header_from_enforced(policy, headers, text):
    _, _, d = transaction(policy, headers=headers)
    assert str(d.reply) == text


def test_forged_headers_and_removed_identity_header(policy):
    headers = [("From", " bob@example.com"), ("X-Outpost-ID", " forged"), ("x-outpost-user", " evil"),
               ("X-PHP-Originating-Script", " 1001:mailer.php"), ("X-OUTPOST-ID", " forged2"),
               ("X-Originating-IP", " [10.0.0.1]"), ("X-Report-Abuse-To", " me@evil.example"),
               ("X-Outpost-Class", " ham")]
    _, _, d = transaction(policy, headers=headers)
    assert d.action is Action.ACCEPT
    assert d.remove_headers == (("X-Outpost-Class", 1), ("X-Report-Abuse-To", 1), ("X-Originating-IP", 1),
                                ("X-OUTPOST-ID", 2), ("X-PHP-Originating-Script", 1),
                                ("x-outpost-user", 1), ("X-Outpost-ID", 1))
    assert policy.codec.open(stamps(d)["X-Outpost-ID"]).identity == "1001"


def test_identity_header_order_and_fallbacks(policy):
    _, _, d = transaction(policy, headers=[("From", " bob@example.com"), ("X-AuthUser", " Dave@Example.com"),
                                           ("X-PHP-Originating-Script", " 1001:x.php")])
    assert policy.codec.open(stamps(d)["X-Outpost-ID"]).identity == "dave@example.com"
    _, _, d = transaction(policy, headers=[("From", " bob@example.com"), ("X-PHP-Originating-Script", " nomatch")])
    assert policy.codec.open(stamps(d)["X-Outpost-ID"]).identity == "bob@example.com"


def test_header_values_are_sanitised(policy):
    _, _, d = transaction(policy, ip=None, login="alice@example.com\r\nX-Evil: 1", sender="<alice@example.com>",
                          headers=[("From", " alice@example.com")])
    # the login with CR/LF maps to nobody — and never reaches a header
    assert d.action is Action.REJECT and "\n" not in d.reply.text


def over_limit(policy, ip):
    """Connect and try MAIL FROM: the reply that connection gets."""
    s = Session()
    assert policy.connect(s, ip).action is Action.CONTINUE
    d = policy.mail_from(s, "<bob@shop.example>", None)
    return s, d


TOO_MANY = "421 4.7.0 Too many concurrent SMTP connections from this IP address; please try again later"


def test_connection_limit_and_release(policy, store):
    sessions = []
    for _ in range(3):
        s = Session()
        assert policy.connect(s, "198.51.100.7").action is Action.CONTINUE
        sessions.append(s)
    s4, d = over_limit(policy, "198.51.100.7")
    assert str(d.reply) == TOO_MANY and s4.conn_slot is None      # refused at MAIL FROM, holds no slot
    policy.close(sessions[0])
    s5 = Session()
    policy.connect(s5, "198.51.100.7")
    assert s5.conn_slot is not None
    assert store.conn_count("198.51.100.7") == 3


def test_connection_limit_user_override(policy):
    held = [Session() for _ in range(5)]
    for s in held:                                           # bigfarm: 5
        policy.connect(s, "192.0.2.77")
        assert s.conn_slot is not None
    _, d = over_limit(policy, "192.0.2.77")
    assert str(d.reply) == TOO_MANY


def test_ipv6_clients_of_one_64_share_the_connection_limit(policy, store):
    """A client holding a /64 cannot take a fresh address per connection to
    escape the limit (connection_prefix_v6, default 64)."""
    held = []
    for i in range(3):
        s = Session()
        policy.connect(s, f"IPv6:2001:db8::{i + 1:x}")
        assert s.conn_slot is not None and s.conn_key == "2001:db8::/64"
        held.append(s)
    s4, d = over_limit(policy, "2001:db8::ffff:9")
    assert str(d.reply) == TOO_MANY and s4.conn_slot is None
    s5 = Session()
    policy.connect(s5, "2001:db8:0:1::1")                    # another /64: its own count
    assert s5.conn_slot is not None
    for s in held:
        policy.close(s)
    assert store.conn_count("2001:db8::/64") == 0
    s6, d = over_limit(policy, "2001:db8::42")
    assert s6.conn_slot is not None and d.reason != "connection_limit"


def test_connection_prefix_v6_is_configurable(config, store, codec):
    from dataclasses import replace

    from outpost.core.policy import Policy
    per_address = Policy(replace(config, connection_prefix_v6=128), store, codec)
    for i in range(4):                                       # each /128 has its own 3
        s = Session()
        per_address.connect(s, f"2001:db8:5:6::{i + 1:x}")
        assert s.conn_key == f"2001:db8:5:6::{i + 1:x}"
    assert parse_config_prefix("connection_prefix_v6: 56\n") == 56
    with pytest.raises(Exception, match="connection_prefix_v6: 8 is below the minimum 16"):
        parse_config_prefix("connection_prefix_v6: 8\n")


def parse_config_prefix(head):
    from outpost.config import parse_config

    from .conftest import CONFIG
    return parse_config(head + CONFIG, "t.yaml").connection_prefix_v6


def test_ipv4_mapped_client(policy):
    session, _, d = transaction(policy, ip="::ffff:192.0.2.5")
    assert session.client_ip == "192.0.2.5" and stamps(d)["X-Outpost-User"] == "webfarm"


def test_rate_limit_counts_only_accepted_and_names_window(policy, store):
    for i in range(5):
        _, _, d = transaction(policy, ip=None, login="alice@example.com", sender="<alice@example.com>",
                              headers=[("From", " alice@example.com")])
        assert d.action is Action.ACCEPT, i
    _, _, d = transaction(policy, ip=None, login="alice@example.com", sender="<alice@example.com>",
                          headers=[("From", " alice@example.com")])
    assert str(d.reply) == "451 4.7.1 Too many messages from alice@example.com (5/1m); please wait and try again"
    state = store.peek(buckets(policy.index.by_name["alice"], "alice@example.com", 1))
    assert state[0].used == 5


def test_rejected_messages_do_not_count(policy, store):
    for _ in range(8):
        _, _, d = transaction(policy, headers=[("From", " x@paypal.example")])
        assert d.action is Action.REJECT
    _, _, d = transaction(policy)
    assert d.action is Action.ACCEPT


def test_max_recipients_at_rcpt(policy):
    session, decisions, d = transaction(policy, rcpts=[f"<r{i}@dest.example>" for i in range(6)])
    rcpt_replies = [str(x.reply) if x.blocks else "ok" for stage, x in decisions if stage == "rcpt"]
    assert rcpt_replies == ["ok"] * 4 + ["452 4.5.3 Too many recipients"] * 2
    assert d.action is Action.ACCEPT


def test_identities_are_limited_separately(policy):
    for who in ("u1", "u2"):
        for _ in range(5):
            _, _, d = transaction(policy, headers=[("From", " bob@example.com"), ("X-AuthUser", f" {who}")])
            assert d.action is Action.ACCEPT
    _, _, d = transaction(policy, headers=[("From", " bob@example.com"), ("X-AuthUser", " u1")])
    assert d.action is Action.TEMPFAIL and "u1" in d.reply.text


def test_lock_after_limit_hits_then_abuse_contact_still_allowed(policy, store):
    login = dict(ip=None, login="alice@example.com", sender="<alice@example.com>",
                 headers=[("From", " alice@example.com")])
    for _ in range(5):
        transaction(policy, **login)
    for _ in range(2):                                   # two limit hits → lock
        _, _, d = transaction(policy, **login)
        assert d.reply.text.startswith("Too many messages")
    lock = store.get_lock("alice/alice@example.com")
    assert lock is not None and lock.until is not None
    _, decisions, d = transaction(policy, rcpts=("<x@dest.example>", "<abuse@example.net>"), **login)
    rcpt = [x for stage, x in decisions if stage == "rcpt"]
    assert str(rcpt[0].reply) == ("451 4.7.1 Sending from alice@example.com is suspended because of "
                                  "suspected abuse; contact abuse@example.net")
    assert not rcpt[1].blocks                             # the abuse desk is reachable


def test_monitor_mode_blocks_nothing_but_says_what_it_would(policy):
    args = dict(ip=None, login="eve@example.com", sender="<eve@example.com>")
    _, _, d = transaction(policy, headers=[("From", " eve@paypal.example")], **args)
    assert d.action is Action.ACCEPT
    assert stamps(d)["X-Outpost-Would"].startswith("reject (header_from: 550 5.7.1 Header From domain")


class FailingStore:
    def __getattr__(self, name):
        def fail(*a, **k):
            raise StoreError("down")
        return fail


def test_store_down_tempfails_under_tempfail_policy(config, codec):
    from dataclasses import replace

    from outpost.core.policy import Policy
    policy = Policy(replace(config, on_store_error="tempfail"), FailingStore(), codec)
    session = Session()
    assert policy.connect(session, "192.0.2.5").action is Action.CONTINUE   # never refuses at connect
    d = policy.mail_from(session, "<bob@example.com>", None)                  # ... but at MAIL FROM
    assert str(d.reply) == "451 4.3.0 Temporary local problem; please try again later"
    assert d.action is Action.TEMPFAIL and d.reason == "store_error"
    accept = Policy(replace(config, on_store_error="accept"), FailingStore(), codec)
    _, _, d = transaction(accept)
    assert d.action is Action.ACCEPT


def test_lock_reply_names_the_users_own_abuse_contact(codec):
    from outpost.config import parse_config
    from outpost.core.policy import Policy
    from outpost.store.memory import MemoryStore
    config = parse_config(textwrap.dedent("""\
        report_abuse_to: abuse@example.net
        domains: [example.com]
        users:
          - {name: shop, type: login, logins: [s@example.com], domains: [example.com],
             abuse_contact: abuse@shop.example}
        """))
    store = MemoryStore()
    policy = Policy(config, store, codec)
    store.set_lock("shop/s@example.com", "test", 600)
    s = Session()
    policy.mail_from(s, "<s@example.com>", "s@example.com")
    d = policy.rcpt(s, "<x@dest.example>")
    assert d.reply.text.endswith("contact abuse@shop.example")
    assert not policy.rcpt(s, "<abuse@shop.example>").blocks


@pytest.mark.parametrize("value,expected", [
    (" alice@example.com", "alice@example.com"),
    (" Alice Smith <alice@example.com>", "alice@example.com"),
    (' "Smith, Alice" <alice@example.com>', "alice@example.com"),
    (" =?utf-8?q?Caf=C3=A9?= <cafe@example.com>", "cafe@example.com"),
    (" Alice (work) <alice@example.com>", "alice@example.com"),
    (' "x <y@evil.example>" <alice@example.com>', None),  # another address in the name
    (" alice@example.com <ceo@bank.example>", None),      # parsers disagree: refused
    (" <a@example.com> <b@example.com>", None),
    (" a@example.com, b@example.com", None),
    (" undisclosed-recipients:;", None),
    (" nobody", None),
])
def test_header_from_address_forms(value, expected):
    from outpost.core.addresses import header_from_address
    addr, problem = header_from_address([value])
    assert addr == expected
    assert (problem is None) == (expected is not None)
