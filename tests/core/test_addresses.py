"""The From header, addresses and domains (core/addresses.py): one reading
that every common parser shares, linear and bounded; IDNA 2008 domains;
controls never reach a header, a log line or a reply."""

from __future__ import annotations

import base64
import email.utils
import re
import textwrap
from email.headerregistry import HeaderRegistry

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from outpost.config import ConfigError, parse_config
from outpost.core import addresses
from outpost.core.addresses import (
    BAD_FROM,
    LONG_FROM,
    MAX_FROM,
    header_from_address,
    idna_domain,
    parse_from,
    split_address,
)
from outpost.core.headers import CONTROL, clean, safe_value
from outpost.core.types import Reply

REGISTRY = HeaderRegistry()


# -- ambiguous and malformed From headers ----------------------------------------------

AMBIGUOUS = [
    "Bob <bob@example.com> ceo@evil.example",
    "bob@example.com; ceo@evil.example",
    "bob@example.com, ceo@evil.example",
    "bob@example.com ceo@evil.example",
    "bob@example.com <ceo@evil.example>",
    "Bob <bob@example.com>, ceo@evil.example",
    "Bob <bob@example.com>; <ceo@evil.example>",
    "<bob@example.com> <ceo@evil.example>",
    '"ceo@evil.example" <bob@example.com>',
    '"x <ceo@evil.example>" <bob@example.com>',
    '"<ceo>" <bob@example.com>',
    "bob@example.com (ceo@evil.example)",
    "=?utf-8?q?ceo=40evil.example?= <bob@example.com>",
    "Bob <bob@example.com> (",
    '"Bob <bob@example.com>',
    'Bob" <bob@example.com>',
    "Bob (x <bob@example.com>",
    "Bob) <bob@example.com>",
    "Bob <bob@example.com",
    "Bob> <bob@example.com>",
    "Bob\\ <bob@example.com>",
    "bob@example.com(\\(c)",                     # a quoted-pair in a comment
    "Bob (a\\) <ceo@evil.example>) <bob@example.com>",
    "<@route.example:bob@example.com>",
    "Bob <bob@example.com (c)>",
    '"bob"@example.com',
    '<"bob"@example.com>',
    "bob@[192.0.2.1]",
    "group: bob@example.com;",
    "undisclosed-recipients:;",
    "bob@example.com.",
    "bob@exa mple.com",
    "bob..x@example.com",
    "=?utf-8?q?Al=C3=A9?=<bob@example.com>",     # email parser defect
    "nobody",
    "",
]


@pytest.mark.parametrize("value", AMBIGUOUS)
def test_ambiguous_or_malformed_from_refused(value):
    assert header_from_address([" " + value]) == (None, BAD_FROM)


@pytest.mark.parametrize("value,expected", [
    ("alice@example.com", "alice@example.com"),
    ("Alice Smith <alice@example.com>", "alice@example.com"),
    ("<alice@example.com>", "alice@example.com"),
    ('"Smith, Alice" <alice@example.com>', "alice@example.com"),
    ("J. R. Smith <j@example.com>", "j@example.com"),
    ("=?utf-8?q?Caf=C3=A9?= <cafe@example.com>", "cafe@example.com"),
    ("Alice (work) <alice@example.com>", "alice@example.com"),
    ("alice@example.com (Alice)", "alice@example.com"),
    ('"alice@example.com" <alice@example.com>', "alice@example.com"),
    ('"Sales @ ACME" <s@example.com>', "s@example.com"),
    ("\udcff\udcfe Al\udce9 <alice@example.com>", "alice@example.com"),   # 8-bit name
    ("Alé <alice@example.com>", "alice@example.com"),
    ("x@bücher.de", "x@bücher.de"),
    ("Alice\r\n <alice@example.com>", "alice@example.com"),               # folded
])
def test_everyday_from_forms(value, expected):
    assert header_from_address([" " + value]) == (expected, None)


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x7f", "\x85", "\x9b", "\u2028", "\u2029",
                                  "\u202e", "\u2066"])
def test_controls_in_from_refused(char):
    assert header_from_address([f" Bob{char} <bob@example.com>"]) == (None, BAD_FROM)
    encoded = base64.b64encode(("Bob" + char).encode()).decode()
    assert header_from_address([f" =?utf-8?b?{encoded}?= <bob@example.com>"]) == (None, BAD_FROM)


def test_none_or_two_from_headers():
    assert header_from_address([])[1].text == "Message has no From header"
    assert header_from_address(["a@example.com", "a@example.com"])[1].text == \
        "Message has more than one From header"


def test_from_length_limit_just_under_and_over():
    addr = " <alice@example.com>"
    under = '"' + "a" * (MAX_FROM - len(addr) - 2) + '"' + addr
    assert len(under) == MAX_FROM
    assert header_from_address([under]) == ("alice@example.com", None)
    over = '"' + "a" * (MAX_FROM - len(addr) - 1) + '"' + addr
    assert header_from_address([over]) == (None, LONG_FROM)
    assert LONG_FROM.code == "550" and LONG_FROM.xcode == "5.6.0"


@pytest.mark.parametrize("value", [
    "\\" * 100_000,
    " " * 100_000 + "<",
    "Bob" + " " * 100_000 + "<bob@example.com>",
    '"' * 100_000,
    "a" + "." * 100_000,
])
def test_huge_from_refused_as_too_long(value):
    assert header_from_address([value]) == (None, LONG_FROM)


@pytest.mark.parametrize("value", [
    "(" * 1000 + ")" * 1000 + "alice@example.com",     # RecursionError in the email parsers
    "(" * 400 + "alice@example.com",
    "((((( x ))))) alice@example.com",                 # one deeper than allowed
])
def test_deeply_nested_comments_refused_not_crashing(value):
    assert header_from_address([value]) == (None, BAD_FROM)


def test_read_addresses_survives_nested_comments():
    deep = "(" * 3000 + ")" * 3000 + "x@dest.example"
    assert addresses.read_addresses([deep]) == []
    assert addresses.read_address(deep) == ("", "")
    assert addresses.read_addresses(["a@example.com, B <b@example.com>"]) == [("", "a@example.com"),
                                                                             ("B", "b@example.com")]


def _email_getaddresses(values: list[str]) -> list[tuple[str, str]]:
    try:
        return email.utils.getaddresses(values)
    except (RecursionError, ValueError, IndexError):
        return []


def _email_parseaddr(value: str) -> tuple[str, str]:
    try:
        return email.utils.parseaddr(value)
    except (RecursionError, ValueError, IndexError):
        return "", ""


# address lists of everyday items (read without the parser) and near misses
# that must go to it: dots, quotes with escapes, comments, groups, routes,
# blanks other than one space, empty items, domain literals, controls
_NAME_PIECES = st.sampled_from(["Ann", "Lee", "O'Neil", "Jos\u00e9", "x\u00a0y", "b.c", " ", "  ", "\t",
                                '"', "\\", "(", ")", ",", ":", ";", "[", "]", "@", "<", ">", "\x00",
                                "\r\n ", "-", "\u2028"])
_NAMES = st.lists(_NAME_PIECES, max_size=5).map("".join)
_SPECS = st.sampled_from(["a@b.example", "first.last@ex-ample.org", "A+tag=x@B.EXAMPLE", "a..b@c.example",
                          "a@[1.2.3.4]", "a@b@c.example", ".a@b.example", "a@b.example.",
                          "@route:a@b.example", "a b@c.example", "a@b .example", "(c)a@b.example"])
_ITEMS = st.one_of(
    _SPECS,
    st.tuples(st.one_of(_NAMES, _NAMES.map(lambda n: f'"{n}"')), st.sampled_from(["", " ", "  ", "\t"]),
              _SPECS).map(lambda t: f"{t[0]}{t[1]}<{t[2]}>"),
    st.lists(_NAME_PIECES, max_size=4).map("".join))
_LISTS = st.tuples(st.lists(_ITEMS, min_size=1, max_size=3),
                   st.sampled_from([", ", ",", " , ", ",,", "; "])).map(lambda t: t[1].join(t[0]))


@settings(max_examples=3000, deadline=None)
@given(st.lists(_LISTS, min_size=1, max_size=2))
@example(['"Ann\\" <a@b.example>'])
@example(["Ann\tLee <a@b.example>"])
@example(["A.B <a@b.example>"])
@example(["Ann  Lee <a@b.example>"])
@example(["x\u00a0y <a@b.example>"])
@example(['"A (b)" <a@b.example>'])
@example(["a@b.example ,, c@d.example"])
def test_read_addresses_equal_the_email_package(values: list[str]) -> None:
    """Everyday addresses read without the parser give what the email
    package gives; and so does every value (the rest goes to it)."""
    joined = ", ".join(values)
    plain = addresses._plain_addresses(joined)
    if plain is not None:
        assert plain == _email_getaddresses([joined])
    assert addresses.read_addresses(values) == _email_getaddresses(values)
    for value in values:
        assert addresses.read_address(value) == _email_parseaddr(value)


def test_plain_addresses_read_the_everyday_forms() -> None:
    assert addresses._plain_addresses('Ann Lee <ann@x.example>, "B. Ray" <b@y.example>, c@z.example') == [
        ("Ann Lee", "ann@x.example"), ("B. Ray", "b@y.example"), ("", "c@z.example")]
    for odd in ("A. Lee <a@x.example>", "a@x.example,", '"a\\"b" <a@x.example>', "(c) a@x.example",
                "A  B <a@x.example>", "<a@[1.2.3.4]>", ""):
        assert addresses._plain_addresses(odd) is None, odd


def test_nested_comments_within_the_limit_accepted():
    assert header_from_address(["(((( x )))) alice@example.com"]) == ("alice@example.com", None)


def test_too_many_pieces_refused():
    assert header_from_address([" ".join(["a"] * 120) + " <alice@example.com>"]) == (None, BAD_FROM)
    assert header_from_address([" ".join(["a"] * 40) + " <alice@example.com>"]) == ("alice@example.com", None)


# -- IDNA 2008 ------------------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("strasse.de", "strasse.de"),
    ("Example.COM.", "example.com"),
    ("straße.de", "xn--strae-oqa.de"),          # IDNA 2003 made this strasse.de
    ("bücher.de", "xn--bcher-kva.de"),
    ("BÜCHER.de", "xn--bcher-kva.de"),
])
def test_idna_2008(name, expected):
    assert idna_domain(name) == expected


@pytest.mark.parametrize("name", [
    "stra\u00adsse.de",          # soft hyphen: IDNA 2003 drops it
    "stras\u200dse.de",          # zero-width joiner
    "stras\u200cse.de",          # zero-width non-joiner
    "strasse\u3002de",           # ideographic full stop as a dot
    "ｅxample.com",              # full-width letter (UTS 46 would map it)
    "exa\u0085mple.com",
    "exa\u2028mple.com",
    "e\u0301xample.com",         # not NFC
    "",
    "exa mple.com",
])
def test_domains_that_do_not_encode_are_refused(name):
    with pytest.raises(ValueError):
        idna_domain(name)


def test_split_address_idna_2008_and_refusal():
    assert split_address("<x@straße.de>") == ("x@straße.de", "xn--strae-oqa.de")
    assert split_address("<x@STRASSE.de>") == ("x@STRASSE.de", "strasse.de")
    # a domain that does not encode never equals a configured (ASCII) one
    _, domain = split_address("<x@stra\u00adsse.de>")
    assert domain != "strasse.de" and not domain.isascii()


def test_look_alike_from_domain_refused():
    assert header_from_address(["x@stra\u00adsse.de"]) == (None, BAD_FROM)
    assert header_from_address(["x@strasse\u200d.de"]) == (None, BAD_FROM)


CONFIG = textwrap.dedent("""\
    report_abuse_to: abuse@example.net
    domains: [{domains}]
    users:
      - {{name: strasse, type: login, logins: [s@strasse.de], domains: [{domains}]}}
    """)


def test_config_uses_the_same_idna():
    config = parse_config(CONFIG.format(domains="strasse.de, bücher.de"))
    assert config.domain_names == frozenset({"strasse.de", "xn--bcher-kva.de"})
    with pytest.raises(ConfigError):
        parse_config(CONFIG.format(domains="stra\u00adsse.de"))


def test_straße_is_not_the_customer_of_strasse(codec):
    from outpost.core.policy import Policy
    from outpost.core.types import Action, Session
    from outpost.store.memory import MemoryStore
    policy = Policy(parse_config(CONFIG.format(domains="strasse.de")), MemoryStore(), codec)
    s = Session()
    d = policy.mail_from(s, "<x@straße.de>", "s@strasse.de")
    assert d.action == Action.REJECT and d.reply.xcode == "5.7.1", d
    assert "xn--strae-oqa.de" in d.reply.text
    s = Session()
    assert not policy.mail_from(s, "<x@strasse.de>", "s@strasse.de").blocks
    policy.rcpt(s, "<r@dest.example>")
    policy.header(s, "From", " x@straße.de")
    d = policy.end_of_message(s, "Q1")
    assert d.action == Action.REJECT and d.reply.xcode == "5.7.1" and "xn--strae-oqa.de" in d.reply.text


# -- controls in replies, headers, logs -----------------------------------------------------

BAD_CHARS = "\r\n\x00\x01\x1b\x7f\x85\x9f\u2028\u2029\u202e"


def test_clean_removes_c0_c1_and_separators():
    value = clean("a" + BAD_CHARS.join("bcdefghijklm") + "z")
    assert not CONTROL.search(value) and value.isprintable()
    assert safe_value("x\u2028X-Evil: 1\x85y") == "x X-Evil: 1 y"


def test_reply_text_is_one_printable_ascii_line():
    r = Reply("550", "5.7.1", "Sender domain exa\r\nmple\x85.com\u2028 or ß is not allowed")
    assert r.text == "Sender domain exa mple .com or \\xdf is not allowed"
    assert len(Reply("550", "5.7.1", "x" * 5000).text) <= 400


def test_mail_from_controls_never_reach_the_reply(codec):
    from outpost.core.policy import Policy
    from outpost.store.memory import MemoryStore
    policy = Policy(parse_config(CONFIG.format(domains="strasse.de")), MemoryStore(), codec)
    from outpost.core.types import Session
    d = policy.mail_from(Session(), "<x@evil\r\n250 ok\u2028\x85.example>", "s@strasse.de")
    assert d.blocks and d.reply.text.isascii() and d.reply.text.isprintable(), d.reply
    d = policy.mail_from(Session(), "<x@strasse.de>", "nobody\r\n\x85\u2029x")
    assert d.blocks and d.reply.text.isascii() and d.reply.text.isprintable(), d.reply


# -- property-based: whatever is accepted, every parser reads alike ---------------------

def receivers_reading(value: str) -> str:
    """What a receiver (DMARC) takes: the address in angle brackets, else the
    header without comments."""
    angled = re.findall(r"<([^<>]*)>", value)
    if angled:
        return angled[-1].strip() if len(set(angled)) == 1 else "<several>"
    while re.search(r"\([^()]*\)", value):
        value = re.sub(r"\([^()]*\)", " ", value)
    return value.strip()


def assert_read_alike(value: str) -> None:
    addr, why = parse_from(value)
    if addr is None:
        assert why
        return
    unfolded = value.replace("\r\n", "").replace("\n", "").strip()
    want = addr.lower()
    found = REGISTRY("From", unfolded).addresses
    assert [a.addr_spec.lower() for a in found] == [want]
    assert [a.lower() for _, a in email.utils.getaddresses([unfolded])] == [want]
    assert email.utils.parseaddr(unfolded)[1].lower() == want
    assert receivers_reading(unfolded).lower() == want
    assert not CONTROL.search(addr) and not CONTROL.search(found[0].display_name)
    assert not any(c.isspace() for c in addr)
    idna_domain(addr.rpartition("@")[2])                 # encodes
    # the plain fast path reads exactly what the full cross-check reads
    addresses._differential(unfolded, addr)


ALPHABET = st.sampled_from(list('abcAB.@<>"()\\,;:[] \t=?') + ["\r\n ", "ß", "é", "\udcff", "\x85",
                                                               "\u2028", "\x00", "\u00ad", "\u200d"])
PIECES = st.sampled_from([
    "bob@example.com", "ceo@evil.example", "<bob@example.com>", "<ceo@evil.example>", "Bob", "J.",
    '"Smith, J"', '"a\\"b"', "(c)", "((c))", "(bob@example.com)", "=?utf-8?q?Al=C3=A9?=",
    "=?utf-8?q?x=40evil.example?=", ",", ";", ":", "\\", '"', "(", ")", "<", ">", " ", "\t", "\r\n ",
    "x@straße.de", "x@stra\u00adsse.de", "<x@bücher.de>", "\x85", "\u2028", "@", ".", "..", "[1.2.3.4]",
    "\udcff", "<@r.example:bob@example.com>", '"bob"@example.com'])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ALPHABET, max_size=40))
def test_property_random_text_accepted_only_when_read_alike(chars):
    text = "".join(chars)
    for value in (text, text + " <bob@example.com>", text + "<bob@example.com>", "bob@example.com " + text):
        assert_read_alike(value)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PIECES, max_size=8))
def test_property_pieces_accepted_only_when_read_alike(pieces):
    assert_read_alike(" ".join(pieces))
    assert_read_alike("".join(pieces))


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"[A-Za-z0-9 .,'-]{0,30}", fullmatch=True),
       st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,2}@[a-z0-9]{1,10}\.(com|de|example)", fullmatch=True))
def test_property_named_addresses(name, addr):
    for value in (f"{name} <{addr}>", f'"{name}" <{addr}>', f"{addr} ({name})"):
        assert_read_alike(value)
    assume("," not in name and "." not in name)
    assert parse_from(f'"{name}" <{addr}>')[0] == addr


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_property_cleaned_values_carry_no_controls(value):
    for out in (clean(value), clean(value, 20), Reply("550", "5.7.1", value).text):
        assert not CONTROL.search(out) and "\r" not in out and "\n" not in out
    text = Reply("550", "5.7.1", value).text
    assert text.isascii() and len(text) <= 400
