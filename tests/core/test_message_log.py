"""The per-message log line adds the verdict (class, score, top evidence),
the DKIM signature made (d=, s=) and the SPF result: a real engine, a real
signer, SPF against a real DNS server on loopback; no pymilter."""

from __future__ import annotations

import logging

import pytest

from outpost.config import parse_config
from outpost.core.policy import Policy
from outpost.core.types import Action, Session
from outpost.effects.dkim import Signer
from outpost.effects.resolver import make_resolver
from outpost.effects.spf import SpfChecker
from outpost.logs import Fields
from outpost.spam.from_config import build_engine
from outpost.store.memory import MemoryStore
from tests.corpus import SPAM, corpus_message
from tests.services.dns import DnsServer

from .test_policy_content import config_text, keys, plain, run  # noqa: F401 - keys: the fixture


@pytest.fixture(scope="module")
def dns():
    with DnsServer({"example.com": '@ TXT "v=spf1 ip4:198.51.100.7 -all"'}) as s:
        yield s


@pytest.fixture
def policy(keys, codec, dns):  # noqa: F811 - the fixture imported above
    config = parse_config(config_text(keys, f"relay: {{egress_ips: [198.51.100.7]}}\n"
                                            f"dns: {{nameservers: [127.0.0.1], port: {dns.port}}}\n"))
    store = MemoryStore()
    return Policy(config, store, codec, engine=build_engine(config, store),
                  signer=Signer(config.dkim.settings),
                  spf=SpfChecker(config.spf, make_resolver(config.dns)))


def logged(policy, caplog, raw: bytes, login: str = "alice@example.com") -> dict:
    session = Session()
    caplog.set_level(logging.INFO, logger="outpost.message")
    _, d = run(policy, login, login, raw, session=session)
    policy.log_message(session, d, "Q42")
    [record] = [r for r in caplog.records if r.name == "outpost.message"]
    assert record.qid == "Q42" and isinstance(record.msg, Fields)
    return record.msg.data, record.getMessage(), d, session.message


def test_signed_ham_line_has_dkim_spf_score_and_evidence(policy, caplog):
    data, text, d, _ = logged(policy, caplog, plain("<alice@example.com>"))
    assert d.action is Action.ACCEPT
    assert (data["dkim_d"], data["dkim_s"], data["spf"]) == ("example.com", "s1", "pass")
    assert data["class"] == "ham" and data["score"] == 0.0 and data["evidence"] is None
    assert " class=ham score=0.0 dkim_d=example.com dkim_s=s1 spf=pass ms=" in text


def test_spam_line_has_its_strongest_evidence(policy, caplog):
    data, text, d, msg = logged(policy, caplog, corpus_message("spam", SPAM, "alice@example.com"))
    assert data["class"] == "spam" and data["score"] > 0 and d.action is Action.REJECT
    assert (data["action"], data["reason"]) == ("reject", "spam")
    top = msg.verdict.evidence[0]
    assert data["evidence"][0] == "%s(%.1f)" % (top.name, top.points) and data["score"] == round(
        msg.verdict.score, 2)
    assert 1 <= len(data["evidence"]) <= 3 and all(e.endswith(")") for e in data["evidence"])
    assert f" evidence={','.join(data['evidence'])} " in text and "dkim_d" not in text   # not signed


def test_unsigned_message_has_no_dkim_fields(policy, caplog):
    """other.example's key never signs for alice (not her domain): no d=/s=."""
    data, text, _, _ = logged(policy, caplog, plain("Bob <bob@other.example>"), login="loose@example.com")
    assert data["dkim_d"] is None and "dkim_d=" not in text and data["spf"] == "pass"
