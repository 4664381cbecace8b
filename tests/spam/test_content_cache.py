"""The engine's content cache: a hit gives what a fresh parse and scan
give; any input the parse or a content-only check reads misses; the
envelope-dependent checks (bulk counts) run for every message; bounds."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost.config import parse_config
from outpost.spam.base import ScanContext
from outpost.spam.bulk import BulkSettings
from outpost.spam.engine import ContentCache, Engine
from outpost.spam.from_config import build_engine
from outpost.spam.message import mime_fields, parse_body, parse_message, split_head
from outpost.store.memory import MemoryStore
from tests.spam.helpers import CTX, build

CONFIG = """
report_abuse_to: abuse@example.net
domains: [example.com, example.org]
users:
  - {name: u1, type: ip, ips: [127.0.0.0/8], domains: [example.org]}
"""

HTML = ('<p>Your <b>account</b> is locked. <a href="http://evil.example/login">'
        'www.paypal.com</a> <form><input type="password"></form></p>')
MESSAGES = {
    "plain": build(text="Hello Bob,\n\nthe report is attached to the wiki page. " * 20),
    "html": build(subject="URGENT: verify your account!!", from_="PayPal <x@evil.example>",
                  text="verify now http://bit.ly/abc", html=HTML,
                  headers={"Reply-To": "helpdesk@gmail.com", "X-Mailer": "Mass 1.0"}),
    "attachment": build(text="see the invoice", date=False, msgid=False,
                        attachments=(("invoice.pdf.exe", b"MZ" * 400, "application/octet-stream"),)),
}


def engine(cache: bool = True, store=None) -> Engine:
    e = build_engine(parse_config(CONFIG), store if store is not None else MemoryStore())
    assert e is not None
    if not cache:
        e.cache = None
    return e


def split(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").partition(b"\r\n\r\n")
    return head, body


def scan(e: Engine, raw: bytes, ctx: ScanContext = CTX):
    head, body = split(raw)
    view = e.parse_parts(head, body, len(body))
    return view, e.scan(view, ctx, e.header_padding(len(head)))


def with_header(raw: bytes, name: str, value: str) -> bytes:
    """``raw`` with the first ``name`` field's value replaced (or the field added)."""
    head, body = split(raw)
    lines = head.split(b"\r\n")
    for i, line in enumerate(lines):
        if line.lower().startswith(name.lower().encode() + b":"):
            lines[i] = f"{name}: {value}".encode()
            break
    else:
        lines.append(f"{name}: {value}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_a_hit_gives_the_fresh_view_and_verdict(name):
    raw = MESSAGES[name]
    fresh_view, fresh = scan(engine(cache=False), raw)
    e = engine()
    first_view, first = scan(e, raw)
    again_view, again = scan(e, raw)
    assert e.cache is not None and e.cache.hits == 1 and e.cache.misses == 1
    assert first_view.content_key and again_view.content_key == first_view.content_key
    assert first_view == fresh_view == again_view
    assert first == fresh == again
    assert fresh.evidence or name == "plain"


def test_the_cached_parse_is_parse_message():
    """parse_parts with the cache is parse_message on the joined message."""
    e = engine()
    for raw in MESSAGES.values():
        head, body = split(raw)
        for _ in range(2):
            view = e.parse_parts(head, body, len(body) + 10)
            joined = head + b"\r\n\r\n" + body
            assert view == parse_message(joined, len(joined) + 10, max_scan=len(joined))
            assert view.partial


@pytest.mark.parametrize("name, value", [
    ("From", "Mallory <mallory@example.org>"),       # read by rules and Bayes
    ("Subject", "Hello again"),                      # Bayes
    ("Reply-To", "x@gmail.com"),                     # a field added (names are in the key)
    ("X-Mailer", "Other 2.0"),                       # Bayes
    ("Content-Type", 'text/plain; charset="latin-1"'),  # the MIME walk
    ("Content-Transfer-Encoding", "base64"),         # the MIME walk
    ("Date", ""),                                    # presence (missing_date)
])
def test_changing_a_header_the_checks_read_misses(name, value):
    raw = MESSAGES["plain"]
    e = engine()
    scan(e, raw)
    changed = with_header(raw, name, value)
    view, verdict = scan(e, changed)
    assert e.cache is not None and e.cache.hits == 0 and e.cache.misses == 2
    assert verdict == scan(engine(cache=False), changed)[1]


@pytest.mark.parametrize("name, value", [
    ("Message-ID", "<2@example.org>"), ("Date", "Sat, 28 Nov 2026 11:00:00 +0000"),
    ("To", "carol@example.net"),
])
def test_headers_the_checks_do_not_read_hit(name, value):
    """A mailing's per-message fields (Message-ID, Date, To) do not count."""
    raw = MESSAGES["html"]
    e = engine()
    scan(e, raw)
    changed = with_header(raw, name, value)
    _, verdict = scan(e, changed)
    assert e.cache is not None and e.cache.hits == 1
    assert verdict == scan(engine(cache=False), changed)[1]


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_changing_one_body_byte_misses(name):
    raw = MESSAGES[name]
    head, body = split(raw)
    e = engine()
    scan(e, raw)
    for pos in (0, len(body) // 2, len(body) - 3):
        changed = bytearray(body)
        changed[pos] = changed[pos] ^ 0x01
        view = e.parse_parts(head, bytes(changed), len(changed))
        assert view == parse_message(head + b"\r\n\r\n" + bytes(changed))
    assert e.cache is not None and e.cache.hits == 0 and e.cache.misses == 4


FIELDS = ["From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "X-Mailer",
          "User-Agent", "Organization", "X-Priority", "Importance", "Sender", "X-Campaign"]
VALUES = st.sampled_from([
    "PayPal Service <service@paypal.com.evil.example>", "bob@example.net", "x@gmail.com",
    "FREE MONEY NOW!!!", "Apple <noreply@apple.com>", "a@b.example, c@d.example",
    "Mon, 1 Jan 2024 00:00:00 +0000", "<id@x>", "hello world", "1 (Highest)", "=?utf-8?q?caf=C3=A9?="])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=8),
       name=st.sampled_from(FIELDS), value=VALUES, kind=st.sampled_from(sorted(MESSAGES)))
def test_content_checks_read_no_other_header_value(base, name, value, kind):
    """What makes the key complete for the headers: a content-only check
    gives the same evidence when a field it does not declare in
    ``reads_headers`` changes to another non-empty value."""
    raw = MESSAGES[kind]
    for k, v in base.items():
        raw = with_header(raw, k, v)
    e = engine(cache=False)
    before = parse_message(raw)
    after = parse_message(with_header(raw, name, value))
    if [n.lower() for n, _ in before.headers] != [n.lower() for n, _ in after.headers]:
        return                                   # a field added: the names differ, a miss
    for check in e.checks:
        if check.content_only and name.lower() not in check.reads_headers:
            assert check.check(before, CTX) == check.check(after, CTX), check.name


def test_bulk_counts_every_message():
    """The bulk check runs for every message, cached content or not."""
    cfg = BulkSettings(same_body_messages=3, same_body_recipients=2)
    raw = MESSAGES["plain"]
    ctx = ScanContext(user="u1", identity="alice@example.org", sender="alice@example.org",
                      recipients=("a@example.net", "b@example.net"))

    def run(cache: bool) -> list[list[str]]:
        e = engine(cache=cache, store=MemoryStore())
        from outpost.spam.bulk import BulkCheck
        for c in e.checks:
            if isinstance(c, BulkCheck):
                c.settings = cfg
        out = [[ev.name for ev in scan(e, raw, ctx)[1].evidence] for _ in range(4)]
        assert e.cache is None or e.cache.hits == 3
        return out

    cached, fresh = run(True), run(False)
    assert cached == fresh
    assert "bulk_same_body" not in cached[1] and "bulk_same_body" in cached[2]


def test_a_reload_starts_an_empty_cache():
    """The cache belongs to the engine a configuration builds."""
    a, b = engine(), engine()
    scan(a, MESSAGES["plain"])
    scan(b, MESSAGES["plain"])
    assert a.cache is not b.cache and b.cache is not None and b.cache.hits == 0


def test_entries_ttl_and_bytes_are_bounded():
    now = [0.0]
    cache = ContentCache(entries=3, ttl=60.0, max_bytes=10_000, clock=lambda: now[0])
    body = parse_body(*split_head(b"Subject: x\r\n\r\nhello"), 100, 100)
    for i in range(5):
        cache.put(b"k%d" % i, body, 100)
    assert len(cache) == 3 and cache.get(b"k0") is None and cache.get(b"k4") is not None
    assert cache.get(b"k2") is not None                      # k2 now most recent
    cache.put(b"k5", body, 100)
    assert cache.get(b"k3") is None and cache.get(b"k2") is not None
    now[0] = 60.0
    assert cache.get(b"k2") is None                          # expired
    cache.put(b"big", body, 10_001)                          # larger than the whole cache
    assert cache.get(b"big") is None
    for i in range(4):
        cache.put(b"b%d" % i, body, 4000)
    assert len(cache) == 2                                   # 8 000 of 10 000 bytes


def test_a_body_cut_by_the_limit_is_not_cached():
    msg, body = split_head(b"Subject: x\r\n\r\n" + b"word " * 100)
    assert parse_body(msg, body, len(body) + 1, len(body) + 20).fits
    msg, body = split_head(b"Subject: x\r\n\r\n" + b"word " * 100)
    assert not parse_body(msg, body, len(body) - 1, len(body) + 20).fits


def test_mime_fields_are_the_content_fields():
    msg, _ = split_head(b"Content-Type: text/html\r\nSubject: x\r\ncontent-disposition: inline\r\n\r\n")
    assert mime_fields(msg) == b"Content-Type:9:text/html\ncontent-disposition:6:inline"


def test_threads_share_the_cache():
    def content(verdict) -> tuple:
        return tuple(ev for ev in verdict.evidence if not ev.name.startswith("bulk_"))

    e = engine()
    expected = {k: content(scan(engine(cache=False), raw)[1]) for k, raw in MESSAGES.items()}
    errors: list[str] = []

    def work() -> None:
        for _ in range(20):
            for k, raw in MESSAGES.items():
                if content(scan(e, raw)[1]) != expected[k]:
                    errors.append(k)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert e.cache is not None and e.cache.hits >= 4 * 20 * 3 - 4 * 3
