"""A catalogue of hostile messages (reliability.md, "Adversarial inputs a
milter must survive"), shared by ``tests/e2e/test_adversary_inputs.py`` and
``bench/soak.py``.

Every message claims to come from ``alice@example.com`` (envelope and
header) of a customer relaying by IP who may use ``example.com``; each entry
says whether Outpost must accept it (and stamp it) or refuse it at end of
data with ``550``.  Values an attacker forges carry the marker ``forged``
(any case), which must never survive in the headers of an accepted message.
"""

from __future__ import annotations

from dataclasses import dataclass

from outpost.core.headers import STAMPED, is_owned

SENDER = "alice@example.com"
MARK = b"forged"


@dataclass(frozen=True)
class Hostile:
    name: str
    data: bytes
    accepted: bool          # else: 550 at end of data
    hole: str = ""          # a known hole today (the e2e test marks it xfail)


def message(extra: bytes = b"", body: bytes = b"Hello.\r\n", *, top: bytes = b"",
            from_: bytes = b"From: alice@example.com\r\n", subject: bytes = b"Subject: test\r\n") -> bytes:
    """A plain message with ``top`` before the usual headers, ``extra`` after them."""
    return (top + from_ + b"To: x@dest.example\r\n" + subject
            + b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <adv@example.com>\r\n"
            + extra + b"\r\n" + body)


# -- 8-bit and invalid UTF-8 in Subject and From -------------------------------------------

EIGHT_BIT = [
    Hostile("raw Latin-1 Subject", message(subject=b"Subject: caf\xe9 cr\xe8me br\xfbl\xe9e\r\n"), True),
    Hostile("invalid UTF-8 Subject (lone continuation, truncated sequence)",
            message(subject=b"Subject: \x80\xbf ok \xe2\x82\r\n"), True),
    Hostile("invalid UTF-8 display name in From",
            message(from_=b"From: \xff\xfe\xc3 x\xe2\x82 <alice@example.com>\r\n"), True),
    # refused: a non-ASCII local part is outside what the From check reads
    # alike in every parser (#14 item 4)
    Hostile("raw UTF-8 local part in From",
            message(from_=b"From: \xc3\xa9lodie@example.com\r\n"), False),
    Hostile("encoded words holding invalid UTF-8",
            message(from_=b"From: =?utf-8?q?=FF=FE?= <alice@example.com>\r\n",
                    subject=b"Subject: =?utf-8?b?/w==?= =?x-unknown?q?a?= =?utf-8?q?broken\r\n"), True),
    Hostile("encoded display name looking like another address",
            message(from_=b"From: =?utf-8?q?ceo=40bank=2Eexample?= <alice@example.com>\r\n"), False),
    Hostile("raw 8-bit From domain (not ours)",
            message(from_=b"From: alice@ex\xc3\xa4mple.com\r\n"), False),
    Hostile("invalid UTF-8 From domain", message(from_=b"From: alice@ex\xffmple.com\r\n"), False),
    Hostile("display name quoting our address, another domain",
            message(from_=b"From: \"alice@example.com\" <ceo@bank.example>\r\n"), False),
]

# -- several From addresses, hidden ones -------------------------------------------------

MULTI_FROM = [
    Hostile("From twice, second in odd case at the bottom",
            message(b"X-Mailer: x\r\nfROM: mallory@evil.example\r\n"), False),
    Hostile("From twice, same address", message(b"From: alice@example.com\r\n"), False),
    Hostile("From list folded over two lines",
            message(from_=b"From: alice@example.com,\r\n\tmallory@evil.example\r\n"), False),
    Hostile("From group of two",
            message(from_=b"From: team: alice@example.com, mallory@evil.example;\r\n"), False),
    Hostile("From with a bare address and an angle address",
            message(from_=b"From: alice@example.com <mallory@evil.example>\r\n"), False),
    Hostile("From empty", message(from_=b"From:\r\n"), False),
    Hostile("From null address", message(from_=b"From: <>\r\n"), False),
    Hostile("From address only in a comment",
            message(from_=b"From: (alice@example.com) mallory@evil.example\r\n"), False),
    Hostile("From with a comment naming another address",
            message(from_=b"From: (mallory@evil.example) alice@example.com\r\n"), False),
]

# -- broken MIME ----------------------------------------------------------------------------

_MP = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b0\r\n"


def _nested_closed(depth: int) -> bytes:
    opens = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
                     for i in range(depth))
    inner = b"--b%d\r\nContent-Type: text/plain\r\n\r\nhello\r\n" % depth
    closes = b"".join(b"--b%d--\r\n" % i for i in range(depth, -1, -1))
    return message(_MP, opens + inner + closes)


def _nested_rfc822(depth: int) -> bytes:
    part = b"From: inner@example.net\r\nSubject: innermost\r\n\r\nhello\r\n"
    for _ in range(depth):
        part = b"Content-Type: message/rfc822\r\n\r\n" + part
    return message(b"MIME-Version: 1.0\r\n" + part.split(b"\r\n\r\n", 1)[0] + b"\r\n",
                   part.split(b"\r\n\r\n", 1)[1])


BROKEN_MIME = [
    Hostile("multipart without a boundary parameter",
            message(b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n",
                    b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n"), True),
    Hostile("boundary never used, never closed",
            message(_MP, b"just text, no parts at all\r\n"), True),
    Hostile("100-deep nesting, every level closed", _nested_closed(100), True),
    Hostile("100-deep message/rfc822 nesting", _nested_rfc822(100), True),
    Hostile("broken base64 and quoted-printable parts",
            message(_MP, b"--b0\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                         b"!!!not*base64===\x00\r\n--b0\r\nContent-Type: text/html; charset=x-nonsense\r\n"
                         b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=\r\n=\r\n--b0--\r\n"), True),
    Hostile("Content-Type with 2 000 parameters and a 200-character boundary",
            message(b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed;"
                    + b"".join(b"\r\n p%d=v;" % i for i in range(2000))
                    + b"\r\n boundary=\"" + b"b" * 200 + b"\"\r\n",
                    b"--" + b"b" * 200 + b"\r\n\r\nhi\r\n--" + b"b" * 200 + b"--\r\n"), True),
]

# -- incoming copies of the headers Outpost stamps ------------------------------------------

FORGED_NAMES = (b"X-Outpost-User", b"X-Outpost-Domain", b"X-Originating-IP", b"X-Outpost-ID",
                b"X-Report-Abuse-To", b"X-Outpost-Class", b"X-Outpost-Score", b"X-Outpost-Evidence",
                b"X-Outpost-Scan", b"X-Outpost-SPF", b"X-Outpost-Would", b"X-Outpost-Anything")


def _every(fmt: bytes) -> bytes:
    """One forged line per name, ``fmt % name``."""
    return b"".join(fmt % n for n in FORGED_NAMES)


FORGED = [
    Hostile("every stamped header forged, at the bottom", message(_every(b"%s: forged\r\n")), True),
    Hostile("every stamped header forged, at the top", message(top=_every(b"%s: forged\r\n")), True),
    Hostile("at the top and at the bottom",
            message(_every(b"%s: forged-bottom\r\n"), top=_every(b"%s: forged-top\r\n")), True),
    Hostile("lower case", message(_every(b"%s: forged\r\n").lower()), True),
    Hostile("upper case", message(top=_every(b"%s: forged\r\n").upper()), True),
    Hostile("mixed case", message(b"x-OUTPOST-uSeR: forged\r\nX-oRiGiNaTiNg-Ip: [forged]\r\n"
                                  b"x-report-ABUSE-to: forged@evil.example\r\nX-OUTPOST-id: forged\r\n"), True),
    Hostile("folded values", message(_every(b"%s:\r\n\tforged\r\n  forged-again\r\n")), True),
    Hostile("value folded over 50 lines", message(b"X-Outpost-User: forged" + b"\r\n forged" * 50 + b"\r\n"), True),
    Hostile("leading blanks in the value", message(_every(b"%s:  \t  forged\r\n")), True),
    Hostile("blank before the colon", message(_every(b"%s : forged\r\n")), True),
    Hostile("no blank after the colon", message(_every(b"%s:forged\r\n")), True),
    Hostile("empty values", message(_every(b"%s:\r\n")), True),
    Hostile("each duplicated five times", message(_every(b"%s: forged\r\n") * 5), True),
    Hostile("between the other headers",
            message(top=b"X-Outpost-ID: forged-1\r\n", from_=b"From: alice@example.com\r\nX-Outpost-User: forged\r\n",
                    subject=b"X-Originating-IP: [forged]\r\nSubject: test\r\nX-Report-Abuse-To: forged\r\n"), True),
    Hostile("8-bit and invalid UTF-8 values",
            message(_every(b"%s: forged \xff\xfe caf\xc3\xa9\r\n")), True),
    # 984 forged fields: just under max_headers (1 000 fields in all)
    Hostile("984 forged copies", message(_every(b"%s: forged\r\n") * 82), True),
    Hostile("the last line of a message without body or final CRLF",
            b"From: alice@example.com\r\nTo: x@dest.example\r\nSubject: t\r\nX-Outpost-User: forged", True),
    Hostile("with a DKIM signature over them",
            message(b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=x; h=x-outpost-user:from;"
                    b" bh=AAAA; b=AAAA\r\nX-Outpost-User: forged\r\n"), True),
]

#: Catalogue for the soak bench: every entry above.
ALL = EIGHT_BIT + MULTI_FROM + BROKEN_MIME + FORGED


def forge(data: bytes) -> bytes:
    """``data`` with forged Outpost headers added at the top of its header
    section and at the bottom (odd case, folded)."""
    top = b"X-Outpost-User: forged\r\nX-Outpost-ID: forged\r\n"
    bottom = b"x-originating-ip:\r\n [forged]\r\nX-REPORT-ABUSE-TO: forged@evil.example\r\n"
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return top + data + b"\r\n" + bottom
    return top + data[:end + 2] + bottom + data[end + 2:]


def header_block(data: bytes) -> bytes:
    """The header section of a delivered message (up to the first blank line)."""
    data = data.replace(b"\r\n", b"\n")
    return data.split(b"\n\n", 1)[0]


def fields(data: bytes) -> list[tuple[str, bytes]]:
    """(lower-case name, unfolded value) of each header field of a message."""
    out: list[tuple[str, bytes]] = []
    for line in header_block(data).split(b"\n"):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + b" " + line.strip())
        else:
            name, _, value = line.partition(b":")
            out.append((name.strip().decode("latin-1").lower(), value.strip()))
    return out


def stamp_problems(data: bytes) -> list[str]:
    """What is wrong with the Outpost headers of a delivered message: a
    stamped header missing or twice, another Outpost header twice, an Outpost
    header holding a forged value.  Empty when all is well."""
    got = fields(data)
    names = [n for n, _ in got if is_owned(n)]
    problems = [f"{n} {names.count(n)} times" for n in sorted(set(names)) if names.count(n) > 1]
    problems += [f"{n} missing" for n in STAMPED if n.lower() not in names]
    problems += [f"forged value survived in {n}: {v[:60]!r}" for n, v in got
                 if is_owned(n) and MARK in v.lower()]
    return problems
