"""#14.6 and #14.7 in the decision core (real engine, real spool directory,
memory store; no pymilter): spam dressed as an abuse report is reported and
counted; a script rotating identities gets its whole user locked; the
user-level lock and the operator commands for it."""

import re
import textwrap

import pytest

from outpost import state_commands
from outpost.config import ConfigError, parse_config
from outpost.core.policy import Policy
from outpost.core.transaction import Transaction, drive
from outpost.core.types import Action
from outpost.effects.reports import Spool, list_items
from outpost.spam.from_config import build_engine
from outpost.store.memory import MemoryStore
from tests.corpus import HAM, SPAM, corpus_message

CONFIG = textwrap.dedent("""\
    report_abuse_to: abuse@example.net
    domains: [example.com, shop.example, relay.example.net]
    reports:
      spool_dir: {spool}
      from_addr: outpost-reports@relay.example.net
      smtp: {{host: 127.0.0.1, port: 10587, username: reporter@relay.example.net,
              password_file: /nonexistent}}
    defaults:
      lock: {{after_spam: 3, user_after_spam: 5, window: 10m, duration: 1h}}
      user_limits: {{messages: ["4/1h"]}}
    users:
      - name: webfarm
        type: ip
        ips: [198.51.100.0/24]
        domains: [example.com]
        abuse_contact: abuse@webfarm.example
        identity_headers:
          - {{header: X-AuthUser}}
      - name: limited
        type: ip
        ips: [203.0.113.0/24]
        domains: [shop.example]
        lock: {{user_after_limit_hits: 3}}
        identity_headers:
          - {{header: X-AuthUser}}
      - name: alice
        type: login
        logins: [alice@example.com]
        domains: [example.com]
      - name: reporter
        type: login
        logins: [reporter@relay.example.net, mallory@relay.example.net]
        domains: [relay.example.net]
      - name: watched
        type: login
        logins: [eve@example.com]
        domains: [example.com]
        mode: monitor
        identity_headers:
          - {{header: X-AuthUser}}
    """)


@pytest.fixture
def spool(tmp_path):
    return tmp_path / "spool"


@pytest.fixture
def config(spool):
    return parse_config(CONFIG.format(spool=spool))


@pytest.fixture
def policy(config, codec):
    store = MemoryStore()
    reporter = Spool.from_settings(config.reports).put
    return Policy(config, store, codec, engine=build_engine(config, store), reporter=reporter)


def run(policy, raw: bytes, *, ip="198.51.100.7", login=None, sender="www@example.com",
        rcpts=("bob@dest.example",)):
    """One message through the core; the decision that ended it."""
    out = drive(policy, Transaction.of_message(raw, f"<{sender}>", [f"<{r}>" for r in rcpts], login=login,
                                               client_ip=ip, queue_id="Q42"), stop_at_refused_rcpt=True)
    assert out.stage != "mail", out.decision
    return out.decision


def with_header(raw: bytes, line: str) -> bytes:
    return line.encode() + b"\r\n" + raw


def dressed_as_report(raw: bytes) -> bytes:
    """The spam inside a ``multipart/report; report-type=feedback-report``."""
    head, _, body = raw.partition(b"\r\n\r\n")
    kept = [ln for ln in re.split(rb"\r\n(?![ \t])", head)
            if not re.match(rb"(?i)(content-[a-z-]+|mime-version):", ln)]
    kept += [b"MIME-Version: 1.0",
             b"Content-Type: multipart/report; report-type=feedback-report; boundary=\"b1\""]
    return (b"\r\n".join(kept) + b"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n" + body
            + b"\r\n--b1--\r\n")


def reports(spool):
    out = []
    for item in list_items(Spool(str(spool))):
        event, _ = Spool(str(spool)).read_event(item.path, with_original=False)
        out.append(event)
    return out


# -- 14.6: what a message says about itself does not make it our report ---------

def test_spam_dressed_as_a_feedback_report_is_reported_and_counted(policy, spool):
    spam = dressed_as_report(corpus_message("spam", SPAM, "www@example.com"))
    for n in range(3):
        d = run(policy, with_header(spam, "X-AuthUser: joe"))
        assert d.action is Action.REJECT, (n, d)
    assert [e.kind for e in reports(spool)] == ["spam", "spam", "spam", "lock"]
    assert policy.store.get_lock("webfarm/joe") is not None


def test_our_own_report_is_recognised_by_origin_only(policy, spool):
    """Only the report sender's envelope sender on a session authenticated
    with the report sender's own login is "one of our reports" (never
    reported, never counted); the same envelope sender from another login,
    or the same content from a customer, is reported."""
    spam = dressed_as_report(corpus_message("spam", SPAM, "outpost-reports@relay.example.net"))
    own = dict(ip="192.0.2.1", login="reporter@relay.example.net",
               sender="outpost-reports@relay.example.net")
    for _ in range(4):
        assert run(policy, spam, **own).action is Action.REJECT
    assert reports(spool) == []
    assert policy.store.get_lock("reporter/reporter@relay.example.net") is None
    forged = dict(own, login="mallory@relay.example.net")
    assert run(policy, spam, **forged).action is Action.REJECT
    assert [e.identity for e in reports(spool)] == ["mallory@relay.example.net"]


# -- 14.7: user-level aggregates ------------------------------------------------------

def test_rotating_identities_lock_the_whole_user(policy, spool):
    spam = corpus_message("spam", SPAM, "www@example.com")
    ham = corpus_message("ham", HAM, "www@example.com")
    for n in range(5):                          # a new identity for every message
        d = run(policy, with_header(spam, f"X-AuthUser: bot{n}"))
        assert d.action is Action.REJECT, (n, d)
    assert not any(policy.store.get_lock(f"webfarm/bot{n}") for n in range(5))
    lock = policy.store.get_lock("user:webfarm")
    assert lock is not None and lock.reason == "5 spam verdicts of all its identities in 600s"
    # any identity of the user, even a fresh one, is refused at RCPT
    d = run(policy, with_header(ham, "X-AuthUser: fresh"))
    assert d.action is Action.TEMPFAIL and d.reason == "user_locked"
    assert d.reply.text == ("Sending from webfarm is suspended because of suspected abuse; "
                            "contact abuse@webfarm.example")
    # mail to the abuse contacts still passes; other users are untouched
    for contact in ("abuse@webfarm.example", "abuse@example.net"):
        d = run(policy, with_header(ham, "X-AuthUser: fresh"), rcpts=(contact,))
        assert d.action is Action.ACCEPT, (contact, d)
    d = run(policy, with_header(ham, "X-AuthUser: fresh"), rcpts=("abuse@webfarm.example", "x@dest.example"))
    assert d.action is Action.TEMPFAIL           # the non-contact recipient is refused
    d = run(policy, ham, ip="192.0.2.9", login="alice@example.com", sender="alice@example.com")
    assert d.action is Action.ACCEPT
    # the lock is reported, about the user as a whole, with the command that lifts it
    [locked] = [e for e in reports(spool) if e.kind == "lock"]
    assert (locked.user, locked.identity, locked.key) == ("webfarm", "", "webfarm")
    assert locked.remedy == "outpost unlock webfarm"


def test_limit_hits_of_all_identities_lock_the_user(policy):
    ham = corpus_message("ham", HAM, "www@shop.example")
    got = [run(policy, with_header(ham, f"X-AuthUser: id{n}"), ip="203.0.113.5",
               sender="www@shop.example").reason for n in range(7)]
    assert got == ["ok"] * 4 + ["rate_limit"] * 3
    assert policy.store.get_lock("user:limited").reason.startswith("3 rate-limit hits of all its identities")
    d = run(policy, with_header(ham, "X-AuthUser: other"), ip="203.0.113.5", sender="www@shop.example")
    assert d.reason == "user_locked"


def test_monitor_mode_counts_but_does_not_lock_the_user(policy):
    spam = corpus_message("spam", SPAM, "eve@example.com")
    for n in range(6):
        d = run(policy, with_header(spam, f"X-AuthUser: m{n}"), ip="192.0.2.9",
                login="eve@example.com", sender="eve@example.com")
        assert d.action is Action.ACCEPT
    assert policy.store.get_lock("user:watched") is None


def test_operator_locks_and_unlocks_the_whole_user(policy, config):
    store = policy.store
    ham = corpus_message("ham", HAM, "www@example.com")
    assert state_commands.lock(config, store, "webfarm", None, "case 42").startswith("locked user:webfarm until")
    assert "user:webfarm" in state_commands.list_locks(store)
    assert run(policy, with_header(ham, "X-AuthUser: a")).reason == "user_locked"
    store.record_event("uspam:webfarm/", 600)
    store.record_event("uspam:webfarm2/", 600)
    assert state_commands.unlock(config, store, "webfarm") == ("unlocked user:webfarm", 0)
    assert store.record_event("uspam:webfarm/", 600) == 1          # the user's history is cleared
    assert store.record_event("uspam:webfarm2/", 600) == 2         # and no other's
    assert state_commands.unlock(config, store, "webfarm") == ("user:webfarm was not locked", 1)
    store.record_event("uhits:webfarm/", 600)
    assert state_commands.reset(config, store, "webfarm") == "reset 2 counters of user webfarm"
    assert store.record_event("uhits:webfarm/", 600) == 1
    assert run(policy, with_header(ham, "X-AuthUser: a")).action is Action.ACCEPT
    with pytest.raises(state_commands.TargetError):
        state_commands.lock(config, store, "nosuchuser", None, "x")


def test_user_names_with_a_slash_are_refused(spool):
    bad = CONFIG.format(spool=spool).replace("name: alice", "name: ali/ce")
    with pytest.raises(ConfigError, match="must not contain '/'"):
        parse_config(bad)


def test_lock_settings_defaults_and_overrides(config):
    by = {u.name: u.policy.lock for u in config.users}
    assert by["webfarm"].user_after_spam == 5 and by["webfarm"].user_after_limit_hits is None
    assert by["limited"].user_after_limit_hits == 3
    plain = parse_config("report_abuse_to: a@example.net\ndomains: [example.com]\n"
                         "users: [{name: a, type: login, logins: [a@example.com], domains: [example.com]}]\n")
    assert plain.defaults.lock.user_after_spam == 10
    assert plain.defaults.lock.user_after_limit_hits is None
