"""Addresses, domains and the header From.

One strict reading of the From header, linear in its length and bounded
before any regex or ``email`` parser sees it, cross-checked against the
parsers receivers use: when any of them would read another address (or none)
the header is refused.  Domains are IDNA 2008 (the ``idna`` package, no
UTS 46 mapping): nothing is mapped away (``ß`` stays ``ß``, soft hyphens
and joiners are refused), so a domain reads the same to Outpost, DNS and the
reader; a domain that does not encode is refused.
"""

from __future__ import annotations

import email.utils
import functools
import re
from email.errors import ObsoleteHeaderDefect, UndecodableBytesDefect
from email.headerregistry import HeaderRegistry
from typing import Optional

import idna

from . import headers as hdr
from .types import Reply

#: Longest From header value accepted (characters, folded as received).  RFC
#: 5322 allows 998 octets a line; a From of two full lines is still served.
#: Longer is refused before any parser sees it (the ``email`` package's
#: header parser is quadratic on some inputs).
MAX_FROM = 2048
#: Deepest comment nesting accepted in From (the ``email`` parsers recurse).
MAX_COMMENT_DEPTH = 4
#: Most pieces in a From header: runs of blanks and the characters the
#: email parsers split on (``( ) . @ " \\ < > , ; : [ ]``).  Their cost grows
#: with pieces times length; an everyday From has a dozen.
MAX_PIECES = 100

#: The everyday forms only: ``a@b.example`` or ``Plain Name <a@b.example>``
#: (no quotes, comments, groups or specials in the name).  Anything else goes
#: through the full RFC 5322 parser of the email package.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
#: A domain as written: labels of anything but specials, blanks and dots
#: (U-labels allowed; IDNA decides what is a valid label).
_DOMAIN_TEXT = re.compile(r'[^\s"(),.:;<>@\[\\\]]+(?:\.[^\s"(),.:;<>@\[\\\]]+)*')
#: Characters never allowed in a From header or a domain: those ``clean``
#: removes from headers, logs and replies.
_FORBIDDEN = hdr.CONTROL
_PIECE = re.compile(r'[ \t]+|[().@"\\<>,;:\[\]]')
#: Ends an atom (a run of text outside quotes, comments and angle brackets).
_ATOM_END = frozenset(' \t"()<>,;:[]\\')
#: Not allowed inside angle brackets (obsolete routes, quoted local parts,
#: comments, blanks): only a plain ``local@domain`` is read the same by all.
_ANGLE_BAD = re.compile(r'[\s"(),;:<\[\\\]]')
#: Something that reads as an address to a person or a parser.
_ADDRESS_LIKE = re.compile(r"[^\s@]@[^\s@]")
#: Dots that are not U+002E but separate labels for some IDNA implementations.
_OTHER_DOTS = re.compile("[\u3002\uff0e\uff61]")

#: Defects of the email package that do not change which address is read:
#: 8-bit bytes in a display name, and a period in it (``J. Smith``).
_HARMLESS_DEFECTS = (UndecodableBytesDefect,)

_REGISTRY = HeaderRegistry()


def idna_domain(name: str) -> str:
    """A domain name in its ASCII (A-label) form, lower case, without a
    trailing dot.  IDNA 2008 without UTS 46 mapping: characters are never
    mapped or dropped.  Raises ``ValueError`` when the name does not encode.
    The one conversion used by the configuration and the policy."""
    name = name.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError("empty domain name")
    if name.isascii():
        if _FORBIDDEN.search(name) or any(c.isspace() for c in name):
            raise ValueError(f"{name!r} is not a domain name")
        return name                      # IDNA leaves ASCII labels as they are
    if _OTHER_DOTS.search(name) or _FORBIDDEN.search(name):
        raise ValueError(f"{name!r} is not a domain name")
    try:
        return idna.encode(name, uts46=False).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise ValueError(f"{name!r} does not encode as IDNA 2008: {exc}") from None


@functools.lru_cache(maxsize=1024)
def split_address(addr: str) -> tuple[str, str]:
    """(address without <>, lower-case IDNA 2008 domain or '').  A domain that
    does not encode is returned lower-cased as written: it never equals a
    configured domain (those are ASCII), so it is refused by every check.
    Cached: the same senders and recipients come back message after message
    (1 024 entries: at most about 2 MB, as the MTA bounds an address's
    length)."""
    addr = addr.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    if "@" not in addr:
        return addr, ""
    domain = addr.rsplit("@", 1)[1].strip().rstrip(".").lower()
    if domain.startswith("[") or not domain:
        return addr, domain
    try:
        return addr, idna_domain(domain)
    except ValueError:
        return addr, domain


#: One everyday address of a list, as ``email.utils`` reads it: a display
#: name (a quoted string without escapes, or words of atom characters but
#: '.' one blank apart), then ``<local@domain>``; or a bare ``local@domain``
#: (dot-atoms of common characters).  The name is then the quoted text or
#: the words, the address the text between the brackets: what the parser's
#: character-by-character reading gives (tests/core/test_addresses.py
#: compares them).
_PLAIN_SPEC = r"[A-Za-z0-9_+=-]+(?:\.[A-Za-z0-9_+=-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_WORD = r'[^()<>@,:;."\[\]\\\s]+'
_PLAIN_ADDRESS = re.compile(
    rf'(?:"([^"\\\r\n]*)"|({_PLAIN_WORD}(?: {_PLAIN_WORD})*))? ?<({_PLAIN_SPEC})>|({_PLAIN_SPEC})')


def _plain_addresses(value: str) -> Optional[list[tuple[str, str]]]:
    """The (name, address) pairs of a comma-separated list of everyday
    addresses (``_PLAIN_ADDRESS``), None when any item is not one (then
    only the parser can tell).  Equal to ``email.utils.getaddresses``
    there, without its character-by-character Python (the spam engine
    reads four address values a message: 0.062 -> 0.014 ms on the corpus
    mix)."""
    pairs = []
    for item in value.split(","):
        m = _PLAIN_ADDRESS.fullmatch(item.strip(" "))
        if m is None:
            return None
        quoted, words, angle, bare = m.groups()
        pairs.append((quoted or words or "", angle or bare))
    return pairs


def read_addresses(values: list[str]) -> list[tuple[str, str]]:
    """``email.utils.getaddresses`` (compat32) for checks that only weigh
    addresses (the spam engine): [] when the parser cannot read the values
    (comments nested deeper than Python's recursion limit raised
    RecursionError, which answered the message 451).  Everyday values
    are read without the parser (``_plain_addresses``)."""
    plain = _plain_addresses(", ".join(values))
    if plain is not None:
        return plain
    try:
        return email.utils.getaddresses(values)
    except (RecursionError, ValueError, IndexError):
        return []


def read_address(value: str) -> tuple[str, str]:
    """``email.utils.parseaddr``, ('', '') when it cannot read the value.
    One everyday address is read without the parser (``_plain_addresses``)."""
    plain = _plain_addresses(value)
    if plain is not None and len(plain) == 1:
        return plain[0]
    try:
        return email.utils.parseaddr(value)
    except (RecursionError, ValueError, IndexError):
        return "", ""


# -- the header From ----------------------------------------------------------------

NO_FROM = Reply("550", "5.6.0", "Message has no From header")
TWO_FROM = Reply("550", "5.6.0", "Message has more than one From header")
LONG_FROM = Reply("550", "5.6.0", f"The From header is longer than {MAX_FROM} characters")
BAD_FROM = Reply("550", "5.6.0", "The From header must hold exactly one valid address")


class _Refused(Exception):
    """The From header is not one unambiguous address (the reason, for tests)."""


def _lex(value: str) -> list[tuple[str, str]]:
    """Tokens of a From header value in one pass: ('atom' | 'quoted' |
    'comment' | 'angle', text).  Refuses unbalanced quoting, comments nested
    deeper than ``MAX_COMMENT_DEPTH``, specials outside quotes and more than
    ``MAX_PIECES`` pieces."""
    if len(_PIECE.findall(value)) > MAX_PIECES:
        raise _Refused("too many words")
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == " " or c == "\t":
            i += 1
            continue
        if c == '"':
            j, buf = i + 1, []
            while j < n and value[j] != '"':
                if value[j] == "\\":
                    j += 1
                    if j == n:
                        break
                buf.append(value[j])
                j += 1
            if j >= n:
                raise _Refused("unbalanced quotes")
            tokens.append(("quoted", "".join(buf)))
            i = j + 1
        elif c == "(":
            j, depth, buf = i + 1, 1, []
            while j < n:
                ch = value[j]
                if ch == "\\":
                    # A quoted-pair in a comment: the email package honours it,
                    # receivers' simpler readers (e.g. DMARC's) end the comment
                    # at the escaped parenthesis.  Read alike by none: refused.
                    raise _Refused("a backslash in a comment")
                if ch == "(":
                    depth += 1
                    if depth > MAX_COMMENT_DEPTH:
                        raise _Refused("comments nested too deeply")
                elif ch == ")":
                    depth -= 1
                    if depth == 0:
                        break
                buf.append(value[j])
                j += 1
            if depth:
                raise _Refused("unbalanced parentheses")
            tokens.append(("comment", "".join(buf)))
            i = j + 1
        elif c == "<":
            j = value.find(">", i + 1)
            if j < 0:
                raise _Refused("unbalanced angle brackets")
            inner = value[i + 1:j]
            if _ANGLE_BAD.search(inner):
                raise _Refused("not a plain address in angle brackets")
            tokens.append(("angle", inner))
            i = j + 1
        elif c in _ATOM_END:
            raise _Refused(f"{c!r} outside quotes")
        else:
            j = i + 1
            while j < n and value[j] not in _ATOM_END:
                j += 1
            tokens.append(("atom", value[i:j]))
            i = j
    return tokens


def _check_addr_spec(addr: str) -> str:
    local, at, domain = addr.rpartition("@")
    if not at or not _LOCAL.fullmatch(local) or not _DOMAIN_TEXT.fullmatch(domain):
        raise _Refused("not an address")
    try:
        idna_domain(domain)
    except ValueError:
        raise _Refused("domain does not encode as IDNA 2008") from None
    return addr


def _address_like_other(text: str, addr: str) -> bool:
    return bool(_ADDRESS_LIKE.search(text)) and text.strip().strip("<>").lower() != addr.lower()


def _strict(value: str) -> tuple[str, bool]:
    """The address by Outpost's own strict reading, and whether the header
    is one of the plain forms every parser reads alike (atoms only)."""
    tokens = _lex(value)
    angles = [k for k, (kind, _) in enumerate(tokens) if kind == "angle"]
    if len(angles) > 1:
        raise _Refused("more than one angle address")
    if angles:
        at = angles[0]
        if any(kind != "comment" for kind, _ in tokens[at + 1:]):
            raise _Refused("text after the angle address")
        addr = _check_addr_spec(tokens[at][1])
        others = tokens[:at] + tokens[at + 1:]
    else:
        words = [k for k, (kind, _) in enumerate(tokens) if kind != "comment"]
        if len(words) != 1 or tokens[words[0]][0] != "atom":
            raise _Refused("not exactly one address")
        addr = _check_addr_spec(tokens[words[0]][1])
        others = tokens[:words[0]] + tokens[words[0] + 1:]
    for _, text in others:
        if _address_like_other(text, addr):
            raise _Refused("another address in the name or a comment")
        if "<" in text or ">" in text:
            raise _Refused("angle brackets in the name or a comment")
    plain = "=?" not in value and all(kind == "atom" and "." not in text and "@" not in text
                                      for kind, text in others)
    return addr, plain


def _differential(value: str, addr: str) -> None:
    """Refuse unless the email package (default policy and compat32) reads
    exactly ``addr`` too, without defects that change the reading."""
    want = addr.lower()
    try:
        header = _REGISTRY("From", value)
        found = header.addresses  # type: ignore[attr-defined]  # an AddressHeader for From
        defects = header.defects
        pairs = email.utils.getaddresses([value])
        single = email.utils.parseaddr(value)
    except Exception as exc:  # noqa: BLE001 - the email parsers fail in many ways on hostile input
        raise _Refused(f"email parser failed: {type(exc).__name__}") from None
    if len(found) != 1 or found[0].addr_spec.lower() != want:
        raise _Refused("email.headerregistry reads another address")
    for defect in defects:
        if isinstance(defect, _HARMLESS_DEFECTS):
            continue
        if isinstance(defect, ObsoleteHeaderDefect) and "period in 'phrase'" in str(defect):
            continue
        raise _Refused(f"email.headerregistry defect: {defect}")
    if len(pairs) != 1 or pairs[0][1].lower() != want:
        raise _Refused("email.utils.getaddresses reads another address")
    if single[1].lower() != want:
        raise _Refused("email.utils.parseaddr reads another address")
    name = found[0].display_name
    if _FORBIDDEN.search(name) or _address_like_other(name, addr) or "<" in name or ">" in name:
        raise _Refused("the decoded name holds another address or controls")


@functools.lru_cache(maxsize=1024)
def _parse_from(value: str) -> tuple[Optional[str], str]:
    try:
        if _FORBIDDEN.search(value):
            raise _Refused("control characters")
        addr, plain = _strict(value)
        if not plain:
            _differential(value, addr)
    except _Refused as why:
        return None, str(why)
    return addr, ""


def parse_from(value: str) -> tuple[Optional[str], str]:
    """(the address of one From header value, '') or (None, why it is
    refused).  Linear: the length is checked first, then one strict pass;
    the email parsers only see bounded, well-formed values.  Cached (1 024
    values of at most ``MAX_FROM`` characters: a few MB at most)."""
    if len(value) > MAX_FROM:
        return None, "too long"
    return _parse_from(hdr.unfold(value))


def header_from_address(values: list[str]) -> tuple[Optional[str], Optional[Reply]]:
    """The single From address of a message, or a 550 5.6.0 reply saying why not."""
    if not values:
        return None, NO_FROM
    if len(values) > 1:
        return None, TWO_FROM
    if len(values[0]) > MAX_FROM:
        return None, LONG_FROM
    addr, _ = parse_from(values[0])
    return (addr, None) if addr is not None else (None, BAD_FROM)
