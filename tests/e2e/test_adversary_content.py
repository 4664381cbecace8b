"""The compromised customer's content tricks (issue #14 items 1, 2, 9)
through a real MTA: signing as another customer, hiding the body from the
scanner (header padding, blank padding), header floods.  Postfix for all;
Sendmail too where the MTA matters (what it passes on, how a refusal
decided at the end of the headers is answered)."""

from __future__ import annotations

import textwrap

import dkim as dkimpy
import pytest

from outpost.effects.dkim import keygen
from tests.corpus import HAM, SPAM, corpus_message
from tests.services.postfix import PostfixInstance
from tests.services.sendmail import SendmailInstance
from tests.services.sink import SmtpSink
from tests.services.smtp import build_message, send

from .outpost_proc import Outpost

LOGINS = {"alice@example.com": "alicepw", "loose@example.com": "loosepw",
          "warned@example.com": "warnedpw", "eve@example.com": "evepw", "bob@other.example": "bobpw"}

CONFIG = textwrap.dedent("""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    domains:
      - name: example.com
        dkim: [{{selector: s1, key: {key_com}}}]
      - name: other.example
        dkim: [{{selector: s1, key: {key_other}}}]
    dkim: {{sign_user_domain: true}}
    spam:
      max_scan: 65536
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
    """)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("dkim")
    return {dom: keygen(dom, "s1", "rsa", 2048, str(d)) for dom in ("example.com", "other.example")}


def _relay(cls, keys, **kw):
    sink = SmtpSink().start()
    mta = cls(sink_port=sink.port, **kw)
    mta.build()
    for login, pw in LOGINS.items():
        mta.add_sasl_user(login, pw)
    op = Outpost(mta.milter_socket, CONFIG.format(key_com=keys["example.com"][0],
                                                  key_other=keys["other.example"][0])).start()
    mta.start()
    return mta, op, sink


@pytest.fixture(scope="module")
def postfix_relay(keys):
    mta, op, sink = _relay(PostfixInstance, keys, main_overrides={
        # let the big header blocks reach Outpost (Postfix's own limits are lower)
        "message_size_limit": "80000000", "header_size_limit": "2000000"})
    try:
        yield mta, op, sink
    finally:
        op.stop(graceful=False)
        mta.cleanup()
        sink.stop()


@pytest.fixture(scope="module")
def sendmail_relay(keys):
    mta, op, sink = _relay(SendmailInstance, keys)
    try:
        yield mta, op, sink
    finally:
        op.stop(graceful=False)
        mta.cleanup()
        sink.stop()


@pytest.fixture(params=["postfix", "sendmail"])
def any_relay(request):
    mta, op, sink = request.getfixturevalue(f"{request.param}_relay")
    mta.wait_queue_empty(timeout=30)
    sink.clear()
    return mta, op, sink


@pytest.fixture
def relay(postfix_relay):
    mta, op, sink = postfix_relay
    mta.wait_queue_empty(timeout=30)
    sink.clear()
    return postfix_relay


def submit(mta, login, message, mail_from=None, timeout=60):
    return send(mta.submission_port, login=login, password=LOGINS[login], mail_from=mail_from or login,
                rcpt_tos=["x@dest.example"], message=message, timeout=timeout)


def signing_domains(m) -> list[str]:
    out = []
    for sig in m.headers("DKIM-Signature"):
        tags = dict(t.split("=", 1) for t in "".join(sig.split()).split(";") if "=" in t)
        out.append(tags["d"])
    return out


def verify(keys, data: bytes) -> bool:
    records = {f"s1._domainkey.{d}.".encode(): txt.encode() for d, (_, txt) in keys.items()}
    return dkimpy.verify(data, dnsfunc=lambda name, timeout=5: records.get(name))


def still_serving(mta, sink):
    mta.wait_queue_empty(timeout=30)
    sink.clear()
    r = submit(mta, "alice@example.com", build_message("alice@example.com", "x@dest.example", subject="after"))
    assert r.accepted, r
    [m] = sink.wait_for(1, timeout=30)
    assert m.headers("X-Outpost-User") == ["alice"]


# -- item 1 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("login", ["loose@example.com", "warned@example.com", "eve@example.com"])
def test_no_signature_for_another_customers_domain(any_relay, keys, login):
    """header_from off / warn, monitor mode: the mail goes out as those
    settings allow, but never with other.example's signature."""
    mta, op, sink = any_relay
    msg = build_message("Bob <bob@other.example>", "x@dest.example", subject="Invoice",
                        body="Please pay the attached invoice.\n")
    r = submit(mta, login, msg)
    assert r.accepted, r
    [m] = sink.wait_for(1, timeout=30)
    assert "other.example" not in signing_domains(m)
    assert m.headers("DKIM-Signature") == []


def test_monitor_mode_envelope_of_another_customer_not_signed_by_sign_user_domain(relay, keys):
    mta, op, sink = relay
    msg = build_message("news@unregistered.example", "x@dest.example", subject="News")
    r = submit(mta, "eve@example.com", msg, mail_from="bob@other.example")
    assert r.accepted, r
    [m] = sink.wait_for(1, timeout=30)
    assert "other.example" not in signing_domains(m)


def test_own_domain_signed_and_a_large_streamed_body_verifies(any_relay, keys):
    """The body hash made chunk by chunk as the MTA streams a 3 MB body
    (runs of blanks, trailing blank lines) verifies."""
    mta, op, sink = any_relay
    body = ("Report  line with\tblanks  \n" * 110_000) + "\n \n\t\n\n"
    msg = build_message("Loose <loose@example.com>", "x@dest.example", subject="Big", body=body)
    r = submit(mta, "loose@example.com", msg, timeout=120)
    assert r.accepted, r
    [m] = sink.wait_for(1, timeout=60)
    assert signing_domains(m) == ["example.com"]
    assert verify(keys, m.data)


# -- item 2 ------------------------------------------------------------------------------------

def padding(size: int) -> bytes:
    line = b"X-Pad: " + b"p" * 990 + b"\r\n"
    return line * (size // len(line))


def test_header_padding_does_not_hide_a_spam_body(relay):
    """150 KB of padding headers before the real ones: the old single
    window (first max_scan bytes of headers + body) held no body at all."""
    mta, op, sink = relay
    spam = corpus_message("spam", SPAM, "alice@example.com")
    r = submit(mta, "alice@example.com", padding(150_000) + spam)
    assert (r.stage, r.code) == ("end", 550) and r.text.startswith("5.7.1 Message rejected as spam"), r
    still_serving(mta, sink)


def test_header_padding_is_evidence(relay):
    mta, op, sink = relay
    ham = corpus_message("ham", HAM, "alice@example.com")
    r = submit(mta, "alice@example.com", padding(150_000) + ham)
    assert r.accepted, r
    [m] = sink.wait_for(1, timeout=30)
    assert "header_padding(3.0)" in m.headers("X-Outpost-Evidence")[0]


def test_blank_padded_body_is_unscannable_not_ham(relay):
    """70 KB of blank lines, then the spam text: the scan window (64 KB of
    body) holds nothing to classify.  alice rejects spam, so the message
    is deferred (spam.on_unscannable's default), never passed as ham."""
    mta, op, sink = relay
    _, _, body = corpus_message("spam", SPAM, "alice@example.com").partition(b"\r\n\r\n")
    head = build_message("alice@example.com", "x@dest.example", subject="Hello").partition(b"\r\n\r\n")[0]
    r = submit(mta, "alice@example.com", head + b"\r\n\r\n" + body)
    assert (r.stage, r.code) == ("end", 550), r                # the text is spam
    r = submit(mta, "alice@example.com", head + b"\r\n\r\n" + b"\r\n" * 35_000 + body)
    assert (r.stage, r.code) == ("end", 451), r
    assert r.text.startswith("4.7.1 Message content could not be scanned; reference "), r
    still_serving(mta, sink)


def test_text_after_a_large_attachment_is_unscannable_not_ham(relay):
    """A 100 KB attachment first, the spam text after it: the body window
    (64 KB) sees only the attachment."""
    mta, op, sink = relay
    _, _, spam = corpus_message("spam", SPAM, "alice@example.com").partition(b"\r\n\r\n")
    head = build_message("alice@example.com", "x@dest.example", subject="Files").partition(b"\r\n\r\n")[0]
    head = b"\r\n".join(ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"content-"))
    blob = b"JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K\r\n" * 1600
    body = (b"--b1\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + blob +
            b"--b1\r\nContent-Type: text/plain\r\n\r\n" + spam + b"\r\n--b1--\r\n")
    r = submit(mta, "alice@example.com", head + b"\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n" + body)
    assert (r.stage, r.code) == ("end", 451), r
    assert r.text.startswith("4.7.1 Message content could not be scanned; reference "), r
    still_serving(mta, sink)


# -- item 9 ------------------------------------------------------------------------------------

def test_too_many_headers_refused(any_relay):
    mta, op, sink = any_relay
    flood = b"".join(b"X-H%d: v\r\n" % i for i in range(1001))
    r = submit(mta, "alice@example.com", flood + build_message("alice@example.com", "x@dest.example"))
    assert (r.stage, r.code) == ("end", 552) and r.text.startswith("5.3.4 Message header too large"), r
    still_serving(mta, sink)


def test_too_large_header_block_refused(relay):
    mta, op, sink = relay
    r = submit(mta, "alice@example.com", padding(300_000) + build_message("alice@example.com", "x@dest.example"))
    assert (r.stage, r.code) == ("end", 552) and r.text.startswith("5.3.4 Message header too large"), r
    still_serving(mta, sink)
