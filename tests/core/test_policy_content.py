"""What a message's content may make the core do (issue #14 items 1, 2, 9):
sign only for the mapped user's domains, scan headers and body each within
its own limit, refuse oversized header blocks, hash the DKIM body as it
streams.  Real engine (shipped model and rules), real signer, memory store;
no pymilter."""

from __future__ import annotations

import textwrap

import dkim as dkimpy
import pytest

from outpost.config import parse_config
from outpost.core.policy import Policy
from outpost.core.transaction import Transaction, drive
from outpost.core.types import Action, Session
from outpost.effects.dkim import Signer, keygen
from outpost.spam.from_config import build_engine
from outpost.store.memory import MemoryStore
from tests.corpus import SPAM, corpus_message


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {dom: keygen(dom, "s1", "rsa", 1024, str(d)) for dom in ("example.com", "other.example")}


def config_text(keys, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        report_abuse_to: abuse@example.net
        max_headers: 200
        max_header_bytes: 40000
        domains:
          - name: example.com
            dkim: [{{selector: s1, key: {keys['example.com'][0]}}}]
          - name: other.example
            dkim: [{{selector: s1, key: {keys['other.example'][0]}}}]
          - plain.example
        dkim: {{sign_user_domain: true}}
        spam:
          max_scan_body: 4096
          max_scan_headers: 2048
        users:
          - name: alice
            type: login
            logins: [alice@example.com]
            domains: [example.com]
          - name: loose
            type: login
            logins: [loose@example.com]
            domains: [example.com]
            header_from: "off"
          - name: warned
            type: login
            logins: [warned@example.com]
            domains: [example.com]
            header_from: warn
          - name: watched
            type: login
            logins: [eve@example.com]
            domains: [example.com]
            mode: monitor
          - name: other.example
            type: domain
          - name: holder
            type: login
            logins: [holder@example.com]
            domains: [example.com]
            spam: {{on_spam: quarantine}}
          - name: relaxed
            type: login
            logins: [relaxed@example.com]
            domains: [example.com]
            spam: {{on_unscannable: accept}}
        """) + extra


@pytest.fixture
def policy(keys, codec):
    config = parse_config(config_text(keys))
    store = MemoryStore()
    return Policy(config, store, codec, engine=build_engine(config, store),
                  signer=Signer(config.dkim.settings))


def txt_records(keys):
    return {f"s1._domainkey.{d}.".encode(): txt.encode() for d, (_, txt) in keys.items()}


def run(policy, login, sender, raw: bytes, chunk: int = 1000, session=None):
    """One message through the core as the adapter drives it; returns
    (decision at end of headers, final decision)."""
    out = drive(policy, Transaction.of_message(raw, f"<{sender}>", ["<bob@dest.example>"], login=login,
                                               client_ip="198.51.100.4", queue_id="Q42", chunk=chunk),
                session)
    assert out.stage not in ("mail", "rcpt"), out.decision
    [eoh] = out.at("end of headers")
    return eoh, out.decision


def plain(sender_from: str, body: bytes = b"Hello Bob,\r\n\r\nsee you tomorrow.\r\n", extra: bytes = b"") -> bytes:
    return (f"From: {sender_from}\r\nTo: bob@dest.example\r\nSubject: lunch\r\n"
            f"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n").encode() \
        + extra + b"\r\n" + body


def signed_domains(d) -> list[str]:
    out = []
    for name, value in d.prepend_headers:
        assert name == "DKIM-Signature"
        tags = dict(t.strip().split("=", 1) for t in "".join(value.split()).split(";") if "=" in t)
        out.append(tags["d"])
    return out


def delivered(d, raw: bytes) -> bytes:
    """The message as the MTA sends it on: signatures first, our headers last."""
    head, _, body = raw.partition(b"\r\n\r\n")
    extra = b"".join(f"{n}: {v}\r\n".replace("\n", "\r\n").replace("\r\r\n", "\r\n").encode()
                     for n, v in d.add_headers)
    sigs = b"".join(f"{n}: {v}\r\n".replace("\n", "\r\n").replace("\r\r\n", "\r\n").encode()
                    for n, v in d.prepend_headers)
    return sigs + head + b"\r\n" + extra + b"\r\n" + body


# -- item 1: a signature only for the mapped user's domains ---------------------------------

@pytest.mark.parametrize("login", ["loose@example.com", "warned@example.com", "eve@example.com"])
def test_no_signature_for_another_customers_domain(policy, login):
    """header_from off or warn, or monitor mode: the message goes out (as
    those settings say), but never signed by other.example's key."""
    _, d = run(policy, login, login, plain("Bob <bob@other.example>"))
    assert d.action is Action.ACCEPT, d
    assert signed_domains(d) == []


@pytest.mark.parametrize("login", ["alice@example.com", "loose@example.com", "eve@example.com"])
def test_own_domain_still_signed_and_verifies(policy, keys, login):
    raw = plain(f"<{login}>", body=b"line  one \r\n\r\n\tline two\r\n\r\n\r\n")
    _, d = run(policy, login, login, raw, chunk=7)
    assert signed_domains(d) == ["example.com"]
    records = txt_records(keys)
    assert dkimpy.verify(delivered(d, raw), dnsfunc=lambda name, timeout=5: records.get(name))


def test_signing_failure_tempfails_with_its_own_reason(policy, monkeypatch):
    """A message that should be signed and cannot be is never relayed
    unsigned: 451 4.3.0, reason dkim_error (its own outcome, not the
    store's)."""
    from outpost.core.enforce import SIGNING_FAILED
    from outpost.effects.dkim import DkimSignError

    def broken(*args, **kwargs):
        raise DkimSignError("key unreadable")
    monkeypatch.setattr(policy.signer, "sign", broken)
    _, d = run(policy, "alice@example.com", "alice@example.com", plain("alice@example.com"))
    assert (d.action, d.reason, d.reply) == (Action.TEMPFAIL, "dkim_error", SIGNING_FAILED)
    assert str(d.reply) == "451 4.3.0 Temporary local problem; please try again later"


def test_sign_user_domain_only_for_the_users_own_sender_domain(policy):
    """From an unregistered domain: signed with the envelope sender's
    domain only when that is the user's; a monitor-mode user with another
    customer's envelope sender gets no signature."""
    _, d = run(policy, "loose@example.com", "loose@example.com", plain("news@gmail.example"))
    assert signed_domains(d) == ["example.com"]
    _, d = run(policy, "eve@example.com", "bob@other.example", plain("news@gmail.example"))
    assert d.action is Action.ACCEPT and signed_domains(d) == []


def test_domain_user_signs_its_own_domain(policy):
    _, d = run(policy, "bob@other.example", "bob@other.example", plain("bob@other.example"))
    assert signed_domains(d) == ["other.example"]


# -- item 2: header and body scanned each within its limit -----------------------------------

def padding(total: int) -> bytes:
    line = b"X-Pad: " + b"p" * 990 + b"\r\n"
    return line * (total // len(line))


def test_padded_headers_do_not_hide_a_spam_body(policy):
    spam = corpus_message("spam", SPAM, "alice@example.com")
    head, _, body = spam.partition(b"\r\n\r\n")
    padded = padding(30_000) + head + b"\r\n\r\n" + body       # padding first: Subject etc. last
    _, d = run(policy, "alice@example.com", "alice@example.com", padded)
    assert d.action is Action.REJECT and d.reason == "spam", d
    assert d.reply.text.startswith("Message rejected as spam")


def test_padding_is_evidence(policy):
    _, d = run(policy, "alice@example.com", "alice@example.com", plain("alice@example.com", extra=padding(10_000)))
    assert "header_padding(3.0)" in dict(d.add_headers)["X-Outpost-Evidence"], d
    _, d = run(policy, "alice@example.com", "alice@example.com", plain("alice@example.com"))
    assert "header_padding" not in dict(d.add_headers).get("X-Outpost-Evidence", "")


def blank_padded(text: bytes) -> bytes:
    return plain("{}", body=b"\r\n" * 3000 + b" \t \r\n" * 1000 + text)


UNSEEN = b"Buy cheap pills now!!! Click http://pills.example/buy now, limited offer, 100% FREE\r\n" * 20


@pytest.mark.parametrize("login, action, reason", [
    ("alice@example.com", Action.TEMPFAIL, "unscannable"),     # on_spam: reject -> tempfail
    ("holder@example.com", Action.ACCEPT, "quarantine"),       # on_spam: quarantine -> quarantine
    ("relaxed@example.com", Action.ACCEPT, "ok"),              # on_unscannable: accept
])
def test_body_padding_makes_the_message_unscannable_never_ham(policy, login, action, reason):
    raw = blank_padded(UNSEEN).replace(b"{}", login.encode(), 1)
    _, d = run(policy, login, login, raw)
    assert (d.action, d.reason) == (action, reason), d
    if action is Action.TEMPFAIL:
        assert (d.reply.code, d.reply.xcode) == ("451", "4.7.1")
        assert d.reply.text.startswith("Message content could not be scanned; reference ")
    else:
        assert dict(d.add_headers)["X-Outpost-Class"] == "unscannable"


def test_monitor_mode_says_it_would_tempfail_unscannable(policy):
    raw = blank_padded(UNSEEN).replace(b"{}", b"eve@example.com", 1)
    _, d = run(policy, "eve@example.com", "eve@example.com", raw)
    h = dict(d.add_headers)
    assert d.action is Action.ACCEPT and h["X-Outpost-Class"] == "unscannable"
    assert "tempfail (unscannable: 451 4.7.1 Message content could not be scanned" in " ".join(
        h["X-Outpost-Would"].split())


def test_long_text_cut_at_the_window_is_classified_not_unscannable(policy):
    raw = plain("alice@example.com", body=b"Meeting notes, all fine.\r\n" * 1000)
    _, d = run(policy, "alice@example.com", "alice@example.com", raw)
    h = dict(d.add_headers)
    assert d.action is Action.ACCEPT and h["X-Outpost-Class"] != "unscannable"
    size = len(b"Meeting notes, all fine.\r\n") * 1000
    assert h["X-Outpost-Scan"] == f"partial (first 4096 of {size} body bytes scanned)"


# -- item 9: header limits --------------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    b"".join(b"X-H%d: v\r\n" % i for i in range(300)),          # 300 fields > max_headers 200
    b"X-Big: " + b"a" * 50_000 + b"\r\n",                      # 50 KB > max_header_bytes 40 000
])
def test_too_many_or_too_large_headers_refused(policy, extra):
    session = Session()
    eoh, d = run(policy, "eve@example.com", "eve@example.com", plain("eve@example.com", extra=extra),
                 session=session)
    for decision in (eoh, d):                # in monitor mode too: a resource limit
        assert decision.action is Action.REJECT
        assert (decision.reply.code, decision.reply.xcode) == ("552", "5.3.4")
        assert decision.reason == "header_limit"


def test_headers_kept_are_bounded(policy):
    session = Session()
    policy.connect(session, "198.51.100.4")
    policy.mail_from(session, "<alice@example.com>", "alice@example.com")
    for _ in range(100_000):
        policy.header(session, "X-H", "v")
    assert len(session.message.headers) <= 200 and session.message.header_fields == 100_000
    policy.body(session, b"x" * 100_000)
    assert session.message.body_size == 0 and not session.message.body_head   # not even counted
    assert policy.end_of_message(session, "Q1").reply.code == "552"


def test_body_is_not_kept_for_signing(policy, keys):
    """A signed message keeps only the scan window of its body: the peak of
    Python allocations while an 8 MB body streams in and the message is
    scanned and signed stays far below the body's size."""
    import tracemalloc
    session = Session()
    raw = plain("alice@example.com", body=b"0123456789 abcdef  \r\n" * 400_000)     # 8.4 MB
    head, _, body = raw.partition(b"\r\n\r\n")
    tracemalloc.start()
    policy.connect(session, "198.51.100.4")
    policy.mail_from(session, "<alice@example.com>", "alice@example.com")
    policy.rcpt(session, "<bob@dest.example>")
    for line in head.split(b"\r\n"):
        name, _, value = line.decode().partition(":")
        policy.header(session, name, value)
    policy.end_of_headers(session)
    for i in range(0, len(body), 65536):
        policy.body(session, body[i:i + 65536])
    msg = session.message
    assert len(msg.body_head) == 4096 and msg.sign_domain == "example.com"
    assert not any(isinstance(v, (bytes, bytearray)) and len(v) > 4096 for v in vars(msg).values())
    d = policy.end_of_message(session, "Q2")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2_000_000, peak
    records = txt_records(keys)
    assert dkimpy.verify(delivered(d, raw), dnsfunc=lambda name, timeout=5: records.get(name))


def test_config_keys(keys):
    from outpost.config.source import ConfigError
    c = parse_config(config_text(keys))
    assert (c.max_headers, c.max_header_bytes) == (200, 40000)
    assert (c.spam.max_scan, c.spam.max_scan_headers) == (4096, 2048)
    users = {u.name: u for u in c.users}
    assert users["alice"].policy.spam.unscannable_action == "tempfail"
    assert users["holder"].policy.spam.unscannable_action == "quarantine"
    assert users["relaxed"].policy.spam.unscannable_action == "accept"
    old = parse_config(config_text(keys).replace("max_scan_body", "max_scan"))
    assert old.spam.max_scan == 4096                          # the old name still means the body
    with pytest.raises(ConfigError, match="max_scan_body"):
        parse_config(config_text(keys).replace("max_scan_body: 4096", "max_scan_body: 4096\n  max_scan: 4096"))
    with pytest.raises(ConfigError):
        parse_config(config_text(keys).replace("on_unscannable: accept", "on_unscannable: ham"))


def multipart(*parts: bytes) -> bytes:
    return (b"From: alice@example.com\r\nTo: bob@dest.example\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
            + b"".join(b"--b1\r\n" + p for p in parts) + b"--b1--\r\n")


PDF = (b"Content-Type: application/pdf; name=\"scan.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
       + b"JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K\r\n" * 200)   # 13 KB


def test_text_after_a_large_attachment_is_unscannable(policy):
    raw = multipart(PDF, b"Content-Type: text/plain\r\n\r\n" + UNSEEN)
    _, d = run(policy, "alice@example.com", "alice@example.com", raw)
    assert (d.action, d.reason) == (Action.TEMPFAIL, "unscannable"), d


def test_large_attachment_after_the_text_is_classified(policy):
    raw = multipart(b"Content-Type: text/plain\r\n\r\nThe scan you asked for.\r\n", PDF)
    _, d = run(policy, "alice@example.com", "alice@example.com", raw)
    h = dict(d.add_headers)
    assert d.action is Action.ACCEPT and h["X-Outpost-Class"] in ("ham", "unsure"), d
    assert h["X-Outpost-Scan"].startswith("partial (first 4096 of ")


def test_scanned_header_block_keeps_what_the_checks_read(policy):
    """Over max_scan_headers (2 048 here): From, Subject, Content-Type… are
    kept whatever padding comes first, the rest in order while room is left."""
    session = Session()
    policy.connect(session, "198.51.100.4")
    policy.mail_from(session, "<alice@example.com>", "alice@example.com")
    for i in range(30):
        policy.header(session, f"X-Pad{i}", " " + "p" * 300)
    for name, value in (("From", " alice@example.com"), ("Subject", " hello"),
                        ("Content-Type", " text/plain;\r\n\tcharset=utf-8"),
                        ("Content-Transfer-Encoding", " base64")):
        policy.header(session, name, value)
    block = policy.header_block(session.message)
    assert len(block) <= 2048
    names = [ln.split(b":")[0] for ln in block.split(b"\r\n") if ln[:1] not in (b" ", b"\t")]
    assert names[-4:] == [b"From", b"Subject", b"Content-Type", b"Content-Transfer-Encoding"]
    assert names[:-4] == [b"X-Pad%d" % i for i in range(len(names) - 4)] and len(names) > 4
    assert b"Content-Type: text/plain;\r\n\tcharset=utf-8" in block
