"""Bayes classifier: outbound view, tokenizer, training, scoring, serialisation."""

from __future__ import annotations

import gzip
import json

import pytest

from outpost.spam.bayes import (
    BayesCheck,
    BayesCheckSettings,
    BayesSettings,
    Model,
    ModelError,
    is_transport_header,
    outbound_view,
    strip_transport_headers,
    tokenize,
    train_from_dirs,
)
from outpost.spam.message import parse_message
from tests.spam.helpers import CTX, build, view

SPAMMY = ["Make money fast with our amazing offer, click now to claim your prize",
          "Cheap meds online, no prescription, lowest prices guaranteed, order now",
          "You have won a free vacation, claim your prize today, limited offer",
          "Lose weight fast with this amazing pill, order now and save money"]
HAMMY = ["The build failed again on the test server, can you look at the patch",
         "Meeting moved to Thursday, please review the design document before",
         "I pushed a fix for the parser bug, the regression test passes now",
         "Lunch tomorrow? We could also discuss the release schedule and tests"]


def trained() -> Model:
    # four messages a class: with the default s = 2.0 such a toy model's
    # clues stay near 0.5, so it keeps SpamBayes' 0.45
    m = Model(settings=BayesSettings(unknown_word_strength=0.45))
    return m.train([view(subject="Offer!", text=t) for t in SPAMMY],
                   [view(subject="Re: project", text=t) for t in HAMMY])


def test_strip_transport_headers_keeps_sender_headers():
    raw = (b"Return-Path: <a@x>\r\nReceived: from a\r\n  by b\r\nDelivered-To: me@x\r\n"
           b"X-Spam-Status: No\r\nList-Id: <l.x>\r\nFrom: a@x\r\nSubject: hi\r\n"
           b"Message-ID: <1@x>\r\nDate: Mon, 1 Jan 2001 00:00:00 +0000\r\n\r\nbody\r\n"
           b"_______________________________________________\r\nFoo mailing list\r\n"
           b"Foo@lists.x\r\nhttps://lists.x/mailman/listinfo/foo\r\n")
    out = strip_transport_headers(raw)
    assert out.startswith(b"From: a@x\r\nSubject: hi\r\nMessage-ID: <1@x>\r\nDate:")
    for gone in (b"Received", b"by b", b"Return-Path", b"Delivered-To", b"X-Spam", b"List-Id",
                 b"mailing list", b"listinfo"):
        assert gone not in out
    assert b"\r\n\r\nbody" in out
    # footers stay when no list server was involved
    assert b"mailing list" in strip_transport_headers(raw.replace(b"List-Id: <l.x>\r\n", b""))


def test_redact_corpus_owner():
    raw = b"To: zzzz@spamassassin.taint.org\r\n\r\nsent to zzzz@example.com by jm@jmason.org\r\n"
    out = strip_transport_headers(raw, redact_corpus_owner=True)
    assert b"zzzz" not in out and b"jmason" not in out and b"taint" not in out


def test_is_transport_header():
    assert is_transport_header("Received") and is_transport_header("x-spam-level")
    assert is_transport_header("X-Mailman-Version")
    assert not is_transport_header("Subject") and not is_transport_header("Message-ID")


def test_tokenize_ignores_transport_headers_and_finds_urls():
    raw = build(subject="Cheap watches", text="visit http://Shop.Example.com/x now",
                headers={"X-Mailer": "BulkMailer 3", "Received": "from relay.corp.example"})
    toks = tokenize(parse_message(raw))
    assert "su:cheap" in toks and "su:watches" in toks
    assert "url:shop.example.com" in toks and "url:example.com" in toks
    assert "visit" in toks and "x-:bulkmailer" in toks
    assert "h:received" not in toks and not any("relay" in t for t in toks)
    assert "h:x-mailer" in toks


def test_train_score_separates():
    m = trained()
    assert (m.nspam, m.nham) == (4, 4)
    spam_p = m.score(view(subject="Offer!", text="Claim your free prize now, amazing offer"))
    ham_p = m.score(view(subject="Re: project", text="the patch fixes the test regression"))
    assert spam_p > 0.9 and ham_p < 0.1
    assert m.score(view(subject="zzqx", text="qwxz vvkk")) == 0.5   # no known tokens


def test_serialisation_round_trip_and_errors():
    m = trained()
    data = m.to_bytes()
    assert data[:2] == b"\x1f\x8b"
    m2 = Model.from_bytes(data, m.settings)
    assert m2.counts == m.counts and (m2.nspam, m2.nham) == (m.nspam, m.nham)
    v = view(text=SPAMMY[0])
    assert m2.score(v) == m.score(v)
    assert m.to_bytes() == data                      # deterministic
    with pytest.raises(ModelError):
        Model.from_bytes(b"not gzip")
    with pytest.raises(ModelError, match="format"):
        Model.from_bytes(gzip.compress(json.dumps({"format": "other"}).encode()))
    with pytest.raises(ModelError, match="corrupt"):
        Model.from_bytes(gzip.compress(json.dumps({"format": "outpost-bayes-1", "nspam": 1}).encode()))


def test_merge_and_prune():
    a = Model().train([view(text=SPAMMY[0])], [])
    b = Model().train([], [view(text=HAMMY[0])])
    c = a.merge(b)
    assert (c.nspam, c.nham) == (1, 1)
    assert c.counts["money"] == [1, 0] and c.counts["build"] == [0, 1]
    assert a.nham == 0 and "build" not in a.counts      # inputs untouched
    p = trained().pruned(min_count=2)
    assert all(s + h >= 2 for s, h in p.counts.values())
    assert "now" in p.counts and "meds" not in p.counts
    top = trained().pruned(min_count=1, max_tokens=5)
    assert len(top) == 5


def test_settings_validation():
    with pytest.raises(ValueError):
        BayesSettings(unknown_word_prob=1.5)
    with pytest.raises(ValueError):
        BayesCheckSettings(spam_from=0.5, ham_below=0.6)
    with pytest.raises(ValueError):
        BayesCheckSettings(ham_points=1.0)


def test_bayes_check_points():
    m = trained()
    chk = BayesCheck(m, BayesCheckSettings(spam_from=0.5, spam_points=5.0, ham_below=0.05,
                                           ham_points=-0.5))
    ev = chk.check(view(subject="Offer!", text="amazing offer, claim your prize now"), CTX)
    assert len(ev) == 1 and ev[0].name == "bayes_spam" and 4.0 <= ev[0].points <= 5.0
    assert ev[0].detail.startswith("p=")
    ev = chk.check(view(subject="Re: project", text="the patch for the test regression"), CTX)
    assert [(e.name, e.points) for e in ev] == [("bayes_ham", -0.5)]
    assert chk.check(view(subject="zzqx", text="qwxz"), CTX) == []


def test_train_from_dirs(tmp_path):
    sd, hd = tmp_path / "spam", tmp_path / "ham"
    sd.mkdir()
    hd.mkdir()
    for i, t in enumerate(SPAMMY):
        (sd / ("%d.eml" % i)).write_bytes(b"Received: from x\r\n" + build(subject="Offer", text=t))
    for i, t in enumerate(HAMMY):
        (hd / ("%d.eml" % i)).write_bytes(build(subject="Re: project", text=t))
    m = train_from_dirs(sd, hd, min_count=1, max_tokens=None)
    assert (m.nspam, m.nham) == (4, 4)
    assert not any(t.startswith("h:received") for t in m.counts)
    assert m.score(outbound_view(build(text="claim your amazing prize now"))) > 0.85
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="at least one"):
        train_from_dirs(sd, empty, min_count=1)
    with pytest.raises(NotADirectoryError):
        train_from_dirs(tmp_path / "nope", hd)


def test_bayes_points_scaled_down_when_few_clues():
    """A verdict from a handful of tokens (a subject and an attachment's
    MIME headers) is not full evidence: below ``min_clues`` clues the spam
    points shrink in proportion."""
    m = trained()
    msg = view(subject="Offer!", text="claim prize")
    n = len(m.clues(tokenize(msg)))
    assert 1 <= n < 10
    full = BayesCheck(m, BayesCheckSettings(min_clues=1)).check(msg, CTX)
    few = BayesCheck(m, BayesCheckSettings(min_clues=10)).check(msg, CTX)
    assert full[0].name == few[0].name == "bayes_spam"
    assert few[0].points == round(full[0].points * n / 10, 1) < full[0].points
    with pytest.raises(ValueError):
        BayesCheckSettings(min_clues=0)
