"""Spam verdicts in the decision core, with the real built-in engine (the
shipped model and rules) and a memory store; no pymilter."""

import textwrap

import pytest

from outpost.config import parse_config
from outpost.core.policy import Policy
from outpost.core.transaction import Transaction, drive
from outpost.core.types import Action
from outpost.spam.from_config import build_engine
from outpost.store.memory import MemoryStore
from tests.corpus import HAM, SPAM, corpus_message

CONFIG = textwrap.dedent("""\
    report_abuse_to: abuse@example.net
    domains: [example.com]
    defaults:
      lock: {after_spam: 3, window: 10m, duration: 1h}
    spam:
      max_scan: 4096
    users:
      - name: alice
        type: login
        logins: [alice@example.com]
        domains: [example.com]
      - name: holder
        type: login
        logins: [holder@example.com]
        domains: [example.com]
        spam: {on_spam: quarantine}
      - name: watched
        type: login
        logins: [eve@example.com]
        domains: [example.com]
        mode: monitor
    """)


@pytest.fixture
def policy(codec):
    config = parse_config(CONFIG)
    store = MemoryStore()
    return Policy(config, store, codec, engine=build_engine(config, store))


def run(policy, login, raw: bytes, rcpts=("bob@dest.example",)):
    out = drive(policy, Transaction.of_message(raw, f"<{login}>", [f"<{r}>" for r in rcpts], login=login,
                                               client_ip="198.51.100.4", queue_id="Q42", chunk=1000),
                stop_at_refused_rcpt=True)
    assert out.stage != "mail", out.decision
    return out.decision

def test_spam_is_rejected_with_a_reference(policy):
    d = run(policy, "alice@example.com", corpus_message("spam", SPAM, "alice@example.com"))
    assert d.action is Action.REJECT
    assert d.reply.code == "550" and d.reply.xcode == "5.7.1"
    assert d.reply.text.startswith("Message rejected as spam; reference ")
    origin = policy.codec.open(d.reply.text.rsplit(" ", 1)[1])
    assert (origin.user, origin.identity, origin.queue_id) == ("alice", "alice@example.com", "Q42")


def test_ham_is_accepted_with_verdict_headers(policy):
    d = run(policy, "alice@example.com", corpus_message("ham", HAM, "alice@example.com"))
    assert d.action is Action.ACCEPT and d.quarantine is None
    h = dict(d.add_headers)
    assert h["X-Outpost-Class"] == "ham"
    assert float(h["X-Outpost-Score"]) < 3.0
    assert "bayes_ham(" in h["X-Outpost-Evidence"]


def test_quarantine_action_holds_and_stamps(policy):
    d = run(policy, "holder@example.com", corpus_message("spam", SPAM, "holder@example.com"))
    assert d.action is Action.ACCEPT
    assert d.quarantine and d.quarantine.startswith("Outpost: spam (score ")
    assert dict(d.add_headers)["X-Outpost-Class"] == "spam"


def test_spam_verdicts_lock_the_identity(policy):
    spam = corpus_message("spam", SPAM, "alice@example.com")
    for _ in range(3):
        assert run(policy, "alice@example.com", spam).action is Action.REJECT
    lock = policy.store.get_lock("alice/alice@example.com")
    assert lock is not None and lock.reason.startswith("3 spam verdicts in 600s")
    d = run(policy, "alice@example.com", corpus_message("ham", HAM, "alice@example.com"))
    assert d.action is Action.TEMPFAIL and "is suspended because of suspected abuse" in d.reply.text


def test_monitor_mode_only_says_it_would_reject(policy):
    d = run(policy, "eve@example.com", corpus_message("spam", SPAM, "eve@example.com"))
    assert d.action is Action.ACCEPT
    h = dict(d.add_headers)
    assert h["X-Outpost-Class"] == "spam"
    assert " ".join(h["X-Outpost-Would"].split()).startswith(
        "reject (spam: 550 5.7.1 Message rejected as spam; reference ")
    assert policy.store.get_lock("watched/eve@example.com") is None


def test_large_message_scanned_partially_and_says_so(policy):
    raw = corpus_message("ham", HAM, "alice@example.com") + b"x" * 20000 + b"\r\n"
    d = run(policy, "alice@example.com", raw)
    h = dict(d.add_headers)
    assert h["X-Outpost-Scan"].startswith("partial (first 4096 of ")
    session_bytes = int(h["X-Outpost-Scan"].split(" of ")[1].split()[0])
    assert session_bytes > 20000
