"""Bounded, robust parsing of a raw message into a :class:`MessageView`.

The parser never looks at more than ``max_scan`` bytes, tolerates broken
MIME (missing boundaries, absurd nesting, bad encodings, 8-bit headers) and
bounds every output (header count and length, text length, URL count,
attachment count) so that checks run in predictable time.
"""

from __future__ import annotations

import codecs
import email
import email.errors
import email.header
import email.parser
import email.utils
import functools
import hashlib
import heapq
import io
import itertools
import re
import zipfile
from email import policy
from email.message import Message
from html import unescape as html_unescape
from html.parser import HTMLParser
from typing import Iterator, NamedTuple, Optional
from urllib.parse import urlsplit

import idna

from .base import Attachment, MessageView, Url

MAX_HEADERS = 1000          # header fields kept in the view
MAX_HEADER_LEN = 8192       # characters kept of one decoded header value
MAX_DEPTH = 20              # MIME nesting levels walked
MAX_PARTS = 200             # MIME leaves looked at
MAX_MULTIPARTS = 32         # multipart boundaries the parser honours (later ones: text)
MAX_DELIMITERS = 2 * (MAX_PARTS + MAX_MULTIPARTS)   # lines starting with a boundary looked at
MAX_PART_HEADER = 16384     # bytes of a part's header block parsed (later lines: its body)
MAX_URLS = 500              # URLs kept
MAX_URL_CANDIDATES = 2000   # URL-like strings of a text looked at
MAX_HREF_LEN = 2048         # characters kept of one URL
MAX_IDNA_CHARS = 2000       # characters of non-ASCII URL hosts converted per message (ScanBudget)
MAX_ATTACHMENTS = 50        # attachments kept
MAX_ZIP_MEMBERS = 100       # member names listed per zip attachment
MAX_HTML_LEN = 500_000      # characters of raw HTML kept in the view
MAX_HTML_TAGS = 1000        # tags ('<': start, end, comment) parsed as HTML; the rest loses its tags
                            # (2 000 before: same spam_quality figures, 7 ms less on 500 links)
MAX_HTML_PARSED = 32_768    # characters of a message parsed as HTML at most, all its parts
                            # together (the tag bound counts tags, not what is in them:
                            # html.parser spends about 1 µs an attribute, and one tag can
                            # hold 500 000 of them in 1 MB); see ScanBudget
MAX_HTML_REST = 200_000     # characters of a message's HTML past the parsed part made text
                            # (tags, comments, scripts and styles dropped in linear passes);
                            # its links: the URLs written in all of it.  With the parsed
                            # part, about 230 KB of HTML are read (Gmail shows ~102 KB)
MAX_HTML_REST_UNESCAPE = 20_000   # of which characters whose character references are
                                  # decoded (html.unescape: about 1 µs each, 1 MB of '&a'
                                  # was 0.5 s); the others are read as written

# A URL in plain text: a scheme, or a bare www. host.
_URL_RE = re.compile(
    r"""(?:(?:https?|ftp)://|www\.)[^\s<>"'`{}|\\^\[\]]{1,%d}""" % MAX_HREF_LEN,
    re.IGNORECASE,
)
_WWW_RE = re.compile(r"[wW][wW][wW]\.")
_TRAILING_PUNCT = ".,;:!?)]}>'\""
_SPACES_RE = re.compile("  +")
_NL_RE = re.compile(r"\n\s*\n+")
_TAG_RE = re.compile(r"<[^<>]{0,4096}>")                      # bounded: linear
_SKIPPED_OPEN_RE = re.compile(r"<(script|style)\b[^<>]{0,4096}>|<(!--)", re.IGNORECASE)
_SKIPPED_CLOSE_RE = {"script": re.compile(r"</script\s*>", re.IGNORECASE),
                     "style": re.compile(r"</style\s*>", re.IGNORECASE),
                     "!--": re.compile(r"-->")}
_HOST_OK_RE = re.compile(r"^[a-z0-9._-]+$|^\[[0-9a-f:.]+\]$")
# An address in text: a local part of at most 64 characters (RFC 5321) and
# a dotted domain.  Found from each '@' (see address_spans): a pattern that
# starts with the local part tries every position of a long word (64 steps
# each: 13 ms for smtp-source's 20 KB of filler, against 0.1 ms).
MAX_LOCAL_PART = 64
MAX_ADDRESSES = 1000        # addresses whose domains a check reads
_AT_DOMAIN_RE = re.compile(r"@([\w-]+(?:\.[\w-]+)+)")
_LOCAL_RUN_RE = re.compile(r"[\w.+-]*")


def decode_bytes(data: bytes, charset: Optional[str]) -> str:
    """Decode with the declared charset, falling back to UTF-8 then
    cp1252; never raises."""
    if charset:
        try:
            codecs.lookup(charset)
        except LookupError:
            charset = None
    if charset:
        return data.decode(charset, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _raw_header_text(value: str) -> str:
    """Undo the parser's surrogate escape of 8-bit header bytes."""
    try:
        raw = value.encode("ascii", errors="surrogateescape")
    except UnicodeEncodeError:
        return value
    return decode_bytes(raw, None)


def decode_header_value(value: object) -> str:
    """Decode an RFC 2047 header value into text (bounded, never raises)."""
    if not isinstance(value, str):          # email.header.Header objects
        value = str(value)
    value = value[: MAX_HEADER_LEN * 4]
    if "=?" not in value:
        text = _raw_header_text(value)
    else:
        try:
            chunks = email.header.decode_header(value)
        except (email.errors.HeaderParseError, ValueError, IndexError, AssertionError):
            chunks = [(value, None)]
        out = []
        for chunk, cs in chunks:
            if isinstance(chunk, bytes):
                out.append(decode_bytes(chunk, cs))
            else:
                out.append(_raw_header_text(chunk))
        # decode_header drops the whitespace between encoded and plain words
        text = "".join(out) if len(chunks) > 1 else (out[0] if out else "")
    text = " ".join(text.split())
    return text[:MAX_HEADER_LEN]


def address_spans(text: str) -> Iterator[tuple[int, int, str]]:
    """``(start, end, domain)`` of each address in ``text``, in order and
    not overlapping: what ``re.finditer`` gives for
    ``[\\w.+-]{1,64}@([\\w-]+(?:\\.[\\w-]+)+)``, in time linear in the
    text (each '@' looks back at most 64 characters)."""
    if "@" not in text:
        return
    prev_end = 0
    for m in _AT_DOMAIN_RE.finditer(text):
        at = m.start()
        lo = max(prev_end, at - MAX_LOCAL_PART)
        run = _LOCAL_RUN_RE.match(text[lo:at][::-1]).end()   # type: ignore[union-attr]
        if not run:                     # no local part (or it was the previous domain)
            continue
        prev_end = m.end()
        yield at - run, prev_end, m.group(1)


def address_domains(text: str, limit: int = MAX_ADDRESSES) -> list[str]:
    """The domains of the first ``limit`` addresses in ``text`` (see
    :func:`address_spans`)."""
    return [dom for _, (_, _, dom) in zip(range(limit), address_spans(text))]


class ScanBudget:
    """What one message may still spend on its costliest steps, all its
    parts together:

    * ``idna_chars``: characters of non-ASCII hosts converted to ASCII,
      ``MAX_IDNA_CHARS`` (the ``idna`` package and the punycode codec are
      pure Python, about 3 µs a character: 500 URLs with 60-letter IDN hosts
      cost 260 ms).  Past it, a non-ASCII host is not converted:
      :func:`idna_host` gives '';
    * ``html_chars``: characters parsed as HTML, ``MAX_HTML_PARSED``
      (``html.parser`` spends about 6 µs a tag and 1 µs an attribute: 30
      parts of 999 short tags cost 200 ms).  Past it, HTML is read by
      linear passes (:func:`_rest_text`);
    * ``html_rest``: characters of HTML read that way, ``MAX_HTML_REST``
      (about 25 ns each: 29 parts of 32 KB took 25 ms)."""

    __slots__ = ("idna_chars", "html_chars", "html_rest")

    def __init__(self) -> None:
        self.idna_chars = MAX_IDNA_CHARS
        self.html_chars = MAX_HTML_PARSED
        self.html_rest = MAX_HTML_REST


@functools.lru_cache(maxsize=1024)
def _idna2008(host: str) -> Optional[str]:
    """``host`` in A-labels by IDNA 2008 with UTS 46 mapping (the ``idna``
    package), None when it refuses the name.  Cached: the same few hosts
    come back message after message (1 024 hosts of at most 253
    characters: under 1 MB)."""
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None


def _raw_labels(host: str) -> str:
    """The fallback of :func:`idna_host`: the host as written, its
    non-ASCII labels punycoded (no mapping, no checks: linear in the
    host), '' when a label does not encode."""
    labels = []
    for label in host.split("."):
        if label.isascii():
            labels.append(label)
            continue
        try:
            labels.append("xn--" + label.encode("punycode").decode("ascii"))
        except UnicodeError:
            return ""
    return ".".join(labels)


def idna_host(host: str, budget: Optional[ScanBudget] = None) -> str:
    """A lower-case non-ASCII host name in its ASCII form: IDNA 2008 with
    UTS 46 mapping, as browsers resolve it (``faß.de`` is
    ``xn--fa-hia.de``, not IDNA 2003's ``fass.de``).  A host the ``idna``
    package refuses is taken as written instead: its labels, the non-ASCII
    ones punycoded.  '' for a host longer than a DNS name (253), one past
    ``budget`` (see :class:`ScanBudget`), or one whose labels do not
    encode.  The one conversion of the URL hosts of messages and of
    blocklist entries."""
    if len(host) > 253:
        return ""
    if budget is not None:
        if budget.idna_chars < len(host):
            budget.idna_chars = 0           # spent: later IDN URLs are not even split
            return ""
        budget.idna_chars -= len(host)
    encoded = _idna2008(host)
    return encoded if encoded is not None else _raw_labels(host)


def normalise_host(host: str, budget: Optional[ScanBudget] = None) -> str:
    """Lower-case a host name, strip a trailing dot and convert IDNs to
    their ASCII form (:func:`idna_host`).  Returns '' for hosts that are
    not names or IP literals."""
    host = host.strip().rstrip(".").lower()
    if not host:
        return ""
    if not host.isascii():
        host = idna_host(host, budget)
    return host if _HOST_OK_RE.match(host) else ""


_SCHEMES = ("http", "https", "ftp")


def _netloc(candidate: str) -> Optional[str]:
    """``urlsplit(candidate).netloc`` when ``candidate`` has a scheme of
    ours and ``//``, '' when it has not (no usable host either way); None
    when only ``urlsplit`` can tell (characters it removes or checks: C0
    controls, line ends, tabs, brackets, non-ASCII).  The common case
    without the 6 µs of ``urlsplit``."""
    if not candidate.isprintable():
        return None
    colon = candidate.find(":")
    scheme = candidate[:colon] if colon > 0 else ""
    if not (scheme.isascii() and scheme.lower() in _SCHEMES):
        return ""
    if candidate[colon + 1:colon + 3] != "//":
        return ""
    start, end = colon + 3, len(candidate)
    for delim in "/?#":
        pos = candidate.find(delim, start, end)
        if pos >= 0:
            end = pos
    netloc = candidate[start:end]
    if not netloc.isascii() or "[" in netloc or "]" in netloc:
        return None
    return netloc


def make_url(href: str, text: str = "", budget: Optional[ScanBudget] = None) -> Optional[Url]:
    """Build a :class:`Url` from an href as written; None if it has no
    usable host (mailto:, relative links, javascript:, …).  ``budget``:
    see :func:`normalise_host`."""
    href = href.strip()[:MAX_HREF_LEN]
    if not href:
        return None
    candidate = href
    if candidate.lower().startswith("www."):
        candidate = "http://" + candidate
    elif candidate.startswith("//"):
        candidate = "http:" + candidate
    netloc = _netloc(candidate)
    if netloc is None:
        if budget is not None and budget.idna_chars <= 0 and not candidate.isascii():
            return None             # past the budget: no IDN host (nor urlsplit's NFKC check)
        try:
            parts = urlsplit(candidate)
        except ValueError:
            return None
        if parts.scheme.lower() not in _SCHEMES:
            return None
        netloc = parts.netloc
    netloc = netloc.rsplit("@", 1)[-1]
    if netloc.startswith("["):
        host = netloc.split("]", 1)[0] + "]"
    else:
        host = netloc.split(":", 1)[0]
    host = normalise_host(host, budget)
    if not host:
        return None
    return Url(href=href, host=host, text=" ".join(text.split())[:200])


def _url_matches(text: str) -> Iterator["re.Match[str]"]:
    """What ``_URL_RE.finditer(text)`` yields, found from the literals a
    match starts with: ``://`` (its scheme starts 3 to 5 characters
    before) and ``www.`` in any case.  The pattern alone tries every
    position (35 ns a character: 11 ms for a MB of text with one URL)."""
    def after_scheme() -> Iterator[int]:
        pos = text.find("://")
        while pos >= 0:
            yield from (pos - 5, pos - 4, pos - 3)
            pos = text.find("://", pos + 3)

    def www() -> Iterator[int]:
        if text.isascii():                   # lower() keeps the positions
            low = text.lower()
            pos = low.find("www.")
            while pos >= 0:
                yield pos
                pos = low.find("www.", pos + 1)
        else:
            yield from (m.start() for m in _WWW_RE.finditer(text))

    end = 0
    for start in heapq.merge(after_scheme(), www()):
        if start < end or start < 0:
            continue
        m = _URL_RE.match(text, start)
        if m is not None:
            end = m.end()
            yield m


def urls_in_text(text: str, limit: int = MAX_URLS) -> list[Url]:
    """URLs written in plain text (the first ``limit``, out of at most
    ``MAX_URL_CANDIDATES`` things that look like one: each costs a
    ``urlsplit``, and 100 000 unusable ones took 0.25 s)."""
    return list(itertools.islice(_text_urls(text), limit))


def _text_urls(text: str, budget: Optional[ScanBudget] = None) -> Iterator[Url]:
    """:func:`urls_in_text`, made as they are read."""
    for m in itertools.islice(_url_matches(text), MAX_URL_CANDIDATES):
        u = make_url(m.group(0).rstrip(_TRAILING_PUNCT), budget=budget)
        if u is not None:
            yield u


class _UrlSet:
    """The URLs of a message in the order found, without repeats (same href
    and anchor text), at most ``MAX_URLS``: once full, the rest of every
    source is not read (each URL costs a ``urlsplit``: the 500 links of an
    HTML part were 10 ms, and as many more were made only to be dropped)."""

    def __init__(self) -> None:
        self.found: dict[tuple[str, str], Url] = {}

    def take(self, urls: Iterator[Url]) -> list[Url]:
        """Add ``urls``, read only while there is room; return those read."""
        read = []
        for u in urls:
            read.append(u)
            self.found.setdefault((u.href, u.text), u)
            if self.full:
                break
        return read

    @property
    def full(self) -> bool:
        return len(self.found) >= MAX_URLS


class _HtmlToText(HTMLParser):
    """HTML to text, collecting links with their anchor text."""

    _BLOCK = frozenset("p br div tr li h1 h2 h3 h4 h5 h6 table blockquote pre hr title".split())
    _SKIP = frozenset(("script", "style"))
    #: What a browser keeps in <head>: any other tag, or text outside the
    #: title, ends the head (as if </head> had been written) and shows.
    _HEAD = frozenset("head title base link meta style script noscript template".split())

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.links: list[tuple[str, list[str]]] = []
        self._skip = 0
        self._skipped = ""       # the script or style element being skipped
        self._head = False       # in <head>: its title and meta are not text
        self._title = False
        self._anchor: Optional[list[str]] = None

    def updatepos(self, i: int, j: int) -> int:
        """Skip the line and column bookkeeping (``getpos``, not read
        here): html.parser counts the newlines of every tag and text run.
        An override of ``_markupbase.ParserBase.updatepos`` (not public
        API), kept for its figure: the 50 000 HTML links worst case
        (``bench/worst_case.py``, three alternating runs, load 1.5) took
        36.2 / 35.8 / 44.0 ms with it and 49.3 / 47.7 / 37.5 ms without;
        the parser's output is the same (tests/spam)."""
        return j

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        if tag == "head":
            self._head = True
            return
        if self._head:
            if tag not in self._HEAD:
                self._head = self._title = False
            elif tag == "title":
                self._title = True
        if tag in self._SKIP:
            self._skip += 1
            self._skipped = tag
            return
        if tag in self._BLOCK:
            self.parts.append("\n")
        if tag in ("a", "area"):
            href = next((v for k, v in attrs if k == "href" and v), None)
            if href is not None and len(self.links) < MAX_URLS:
                self._anchor = []
                self.links.append((href, self._anchor))
            if tag == "area":
                self._anchor = None
        elif tag == "img":
            alt = next((v for k, v in attrs if k == "alt" and v), None)
            if alt:
                self.parts.append(" " + alt + " ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._title = False
        if tag == "head":
            self._head = self._title = False
        elif tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "a":
            self._anchor = None
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def parse_marked_section(self, i: int, report: bool = True) -> int:
        """``<![name[ ... ]]>``: a name ``_markupbase`` does not know made
        it raise, and the rest of the document was lost; read it as a
        browser does, as a bogus comment up to the next ``>``.  An
        override of internals (``_markupbase.ParserBase``), for hostile
        input: nothing after such a section may be hidden from the checks."""
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            return self.parse_bogus_comment(i, report)

    @property
    def open_skipped(self) -> str:
        """``<script>`` or ``<style>`` when the text fed so far ends inside
        one (its content still to come), else ''."""
        return f"<{self._skipped}>" if self._skip else ""

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._head:
            if self._title or data.isspace():
                return
            self._head = False
        self.parts.append(data)
        if self._anchor is not None:
            self._anchor.append(data)


def html_to_text(html: str) -> tuple[str, list[Url]]:
    """Convert HTML to text (script/style dropped) and extract its links
    (href with anchor text).  ``html.parser`` costs about 6 µs a tag and
    1 µs an attribute: after ``MAX_HTML_TAGS`` tags or ``MAX_HTML_PARSED``
    characters the rest is converted by dropping its tags (and its links
    are the URLs written in it), so 1 MB of links costs 20 ms, not 200, and
    one 1 MB tag of 500 000 attributes about 15 ms (10 s fed in pieces)."""
    text, links = _html_to_text(html, ScanBudget())
    return text, list(links)


def _html_to_text(html: str, budget: ScanBudget) -> tuple[str, Iterator[Url]]:
    """:func:`html_to_text`, its links made as they are read: the first
    ``MAX_URLS`` links parsed, then (past ``MAX_HTML_TAGS`` tags or
    ``MAX_HTML_PARSED`` characters) at most ``MAX_URLS`` URLs written in
    the rest.

    What the parser is given it gets at once, and it is never closed (fed
    in pieces, a tag or comment longer than a piece was searched again from
    its start with every piece: one tag of 160 000 attributes took 4.3 s;
    closing re-read every unclosed start tag to the end: 1 000 of them, 3 s).
    What it has not finished, and the rest, are read by linear passes
    (:func:`_rest_text`).  If it gives up, the whole part is read that way."""
    parser = _HtmlToText()
    window = html[:budget.html_chars]
    cut = _nth(window, "<", MAX_HTML_TAGS)
    if cut == len(window) < len(html):
        cut = max(window.rfind("<"), 0)             # at a tag: no word cut in two
    budget.html_chars -= cut
    try:
        parser.feed(html[:cut])
    except (AssertionError, ValueError):
        # html.parser is lenient, but when it does give up nothing is hidden
        parser, rest = _HtmlToText(), html
    else:
        rest = parser.open_skipped + parser.rawdata + html[cut:]
    text = _squash("".join(parser.parts))
    links = (make_url(href, "".join(anchor), budget) for href, anchor in parser.links)
    urls: Iterator[Url] = (u for u in links if u is not None)
    if rest:
        urls = itertools.chain(urls, itertools.islice(_text_urls(rest, budget), MAX_URLS))
        more = _rest_text(rest[:budget.html_rest])
        budget.html_rest -= min(budget.html_rest, len(rest))
        text = f"{text}\n{more}" if text and more else text or more
    return text, urls


def _rest_text(html: str) -> str:
    """The text of HTML not parsed as such: comments, scripts and styles
    dropped, tags made blanks, character references decoded in the first
    ``MAX_HTML_REST_UNESCAPE`` characters; linear passes."""
    text = _TAG_RE.sub(" ", _drop_skipped(html))
    return _squash(html_unescape(text[:MAX_HTML_REST_UNESCAPE]) + text[MAX_HTML_REST_UNESCAPE:])


def _nth(text: str, char: str, n: int) -> int:
    """Where the ``n + 1``-th ``char`` of ``text`` is (``len(text)`` if
    there are not that many): the HTML parser gets the text before it, so
    the tag bound is exact (counted after each 16 KB piece, it let 2 200
    short tags through, 13 ms more)."""
    pos = -1
    for _ in range(n + 1):
        pos = text.find(char, pos + 1)
        if pos < 0:
            return len(text)
    return pos


def _drop_skipped(html: str) -> str:
    """``html`` without its ``<script>`` and ``<style>`` elements and its
    comments, in one pass: each opening is followed by one search for its end;
    once a kind has no closing tag left, its later openings are kept as
    text (a regex with a lazy body rescanned the rest from every unclosed
    ``<script>``: 15 s for 195 KB)."""
    out: list[str] = []
    pos = 0
    unclosed: set[str] = set()
    for m in _SKIPPED_OPEN_RE.finditer(html):
        kind = (m.group(1) or m.group(2)).lower()
        if m.start() < pos or kind in unclosed:
            continue
        end = _SKIPPED_CLOSE_RE[kind].search(html, m.end())
        if end is None:
            unclosed.add(kind)
            continue
        out += [html[pos:m.start()], " "]
        pos = end.end()
    out.append(html[pos:])
    return "".join(out)


def _squash(text: str) -> str:
    """Blanks made one space, lines stripped, blank lines made one.  The
    other blanks are made spaces by ``str.replace`` and runs of spaces
    found from a literal: a pattern of any blank tried every character (30
    ns each: 29 HTML parts of 32 KB past the parsed part cost 30 ms), and
    once a line, not on the whole text (4 500 lines of HTML links: 4 ms)."""
    if "\t" in text or "\r" in text or "\f" in text or "\v" in text:
        text = text.replace("\t", " ").replace("\r", " ").replace("\f", " ").replace("\v", " ")
    lines = _SPACES_RE.sub(" ", text).split("\n")
    return _NL_RE.sub("\n\n", "\n".join([ln.strip() for ln in lines])).strip()


_GUESS_BOUNDARY_RE = re.compile(rb"^--([^\s]{1,70})[ \t]*\r?$", re.MULTILINE)
# The lines of a header block as the email package reads them (its
# ``headerRE``): a field, a continuation or a ``From `` line, each ended by
# CRLF, CR or LF (or the end of the data).  Linear: the name class excludes
# ':', so a line is tried once.
_HEAD_LINES_RE = re.compile(
    rb"(?:(?:From |[\x21-\x39\x3b-\x7e]*:|[ \t])[^\r\n]*(?:\r\n|\r|\n|\Z))*")
_LINE_END_RE = re.compile(rb"\r\n|\r|\n")
_DELIM_TAIL_RE = re.compile(rb"(--)?[ \t]*(?:\r\n|\r|\n|\Z)")
_HEADER_PARSER = email.parser.BytesHeaderParser(policy=policy.compat32)


class _Budget:
    """What one message's MIME walk may still spend (see :func:`_walk`)."""

    __slots__ = ("multiparts", "delimiters", "guess", "refused")

    def __init__(self, size: int) -> None:
        self.multiparts = MAX_MULTIPARTS    # multipart bodies split at their boundary
        self.delimiters = MAX_DELIMITERS    # lines starting with a boundary looked at
        self.guess = size                   # bytes searched again for a guessed boundary
        self.refused = False                # a guess was not made: over ``guess``


def _split_head(data: bytes, default_type: str = "",
                max_head: Optional[int] = None) -> tuple[Message, bytes]:
    """A part as the email package reads it: its header fields (parsed by
    the package, compat32) and its body, the bytes after the blank line
    (or from the first line that is not a header line).  Header lines past
    ``max_head`` bytes are left in the body (read as text)."""
    end = _HEAD_LINES_RE.match(data, 0, max_head or len(data)).end()    # type: ignore[union-attr]
    if max_head and end >= max_head:
        end = max(data.rfind(b"\n", 0, end), data.rfind(b"\r", 0, end)) + 1
    msg = _HEADER_PARSER.parsebytes(data[:end]) if end else Message()
    if default_type:
        msg.set_default_type(default_type)
    blank = _LINE_END_RE.match(data, end)
    body = data[blank.end() if blank else end:]
    pushed_back = msg.get_payload()             # a last "From " line starts the body
    if isinstance(pushed_back, str) and pushed_back:
        msg.set_payload("")
        return msg, pushed_back.encode("ascii", "surrogateescape") + body
    return msg, body


def _delimiter_lines(body: bytes, boundary: bytes, budget: _Budget) -> Iterator[tuple[int, int, bool]]:
    """``(start, end, close)`` of each delimiter line of ``boundary`` in
    ``body``, in order: a line ``--boundary``, or ``--boundary--`` when
    ``close``, then blanks (the email package's ``boundaryre``); ``end`` is
    the next line's start.  Lines are found with ``bytes.find`` of the
    boundary after a line end, so other lines cost no Python; each line that
    starts with the boundary spends one of ``budget.delimiters`` (past it,
    the multipart ends there)."""
    marker = b"--" + boundary
    starts = heapq.merge(_find_all(body, b"\n" + marker, 1), _find_all(body, b"\r" + marker, 1),
                         [0] if body.startswith(marker) else [])
    for start in starts:
        if budget.delimiters <= 0:
            yield start, len(body), True
            return
        budget.delimiters -= 1
        m = _DELIM_TAIL_RE.match(body, start + len(marker))
        if m is not None:
            yield start, m.end(), bool(m.group(1))


def _find_all(data: bytes, needle: bytes, shift: int) -> Iterator[int]:
    pos = data.find(needle)
    while pos >= 0:
        yield pos + shift
        pos = data.find(needle, pos + 1)


def _before_line_end(body: bytes, start: int) -> int:
    """Where the text before the line starting at ``start`` ends: the line
    end before a delimiter belongs to the delimiter (RFC 2046)."""
    if body.endswith(b"\r\n", 0, start):
        return start - 2
    if start and body[start - 1] in b"\r\n":
        return start - 1
    return start


def _split_multipart(body: bytes, boundary: bytes,
                     budget: _Budget) -> tuple[Optional[Iterator[tuple[bytes, int]]], bytes]:
    """The parts of a multipart body, as the email package splits them
    (preamble and epilogue dropped, repeated delimiter lines make no empty
    part, no closing delimiter: the last part runs to the end), found
    lazily, each with the length of its last line end (it belongs to the
    delimiter, RFC 2046, but the package keeps it in a multipart or
    message part); or, when no opening delimiter precedes the first closing one,
    None and what the package then reads as text (the body up to that
    closing line)."""
    lines = _delimiter_lines(body, boundary, budget)
    first = next(lines, None)
    if first is None:
        return None, body
    if first[2]:
        return None, body[:first[0]]

    def parts(pos: int) -> Iterator[tuple[bytes, int]]:
        for start, end, close in lines:
            if start > pos:
                yield body[pos:start], start - _before_line_end(body, start)
                if close:
                    return
            pos = end                   # a delimiter line right after another: no part
        yield body[pos:], len(body) - _before_line_end(body, len(body))    # no closing line
    return parts(first[1]), b""


def _walk(msg: Message, body: bytes, budget: _Budget, depth: int = 0,
          eol: int = 0) -> Iterator[tuple[Message, bytes]]:
    """The leaves of the MIME tree of ``msg`` (its header fields) and
    ``body``, each with its body (still transfer-encoded), split lazily: the walk stops when its reader does (the first
    ``MAX_PARTS`` leaves are read), so later parts cost nothing.  Parts
    nested deeper than ``MAX_DEPTH`` are ignored, except a ``message/*``
    chain, whose rest is read as text there (as is a delivery status); after ``MAX_MULTIPARTS``
    multiparts, further ones are read as text; a multipart whose boundary
    is missing or wrong is split at the boundary of its first ``--``
    line if it has one (``budget.guess``: bytes searched so, at most the
    data once in all).  Depth is bounded, so no ``RecursionError``.
    ``eol``: the length of the line end that ends ``body`` and belongs to
    the next delimiter: a leaf (or the leaf a ``message/*`` part holds)
    drops it, a multipart keeps it, as the email package does."""
    maintype = msg.get_content_maintype()
    if maintype == "multipart":
        if depth >= MAX_DEPTH:
            return
        if budget.multiparts <= 0:
            yield msg, body
            return
        budget.multiparts -= 1
        declared = msg.get_boundary()
        bnd = declared.encode("utf-8", "surrogateescape") if declared else b""
        parts, text = _split_multipart(body, bnd, budget) if bnd else (None, body)
        if parts is None and len(text) <= budget.guess:
            budget.guess -= len(text)
            m = _GUESS_BOUNDARY_RE.search(text)
            if m and m.group(1) != bnd:
                parts, _ = _split_multipart(text, m.group(1), budget)
        elif parts is None:
            budget.refused = True
        if parts is None:
            yield msg, text
            return
        digest = msg.get_content_type() == "multipart/digest"
        for part, eol in parts:
            sub, sub_body = _split_head(part, "message/rfc822" if digest else "", MAX_PART_HEADER)
            yield from _walk(sub, sub_body, budget, depth + 1, eol)
    elif maintype == "message":
        if depth >= MAX_DEPTH or msg.get_content_type() == "message/delivery-status":
            yield msg, body[:len(body) - eol]
            return
        sub, sub_body = _split_head(body, "", MAX_PART_HEADER)
        yield from _walk(sub, sub_body, budget, depth + 1, eol)
    else:
        yield msg, body[:len(body) - eol]


def _filename(part: Message) -> str:
    """The part's file name: the ``filename`` parameter of
    Content-Disposition, else the ``name`` one of Content-Type, decoded;
    '' if none.  A part without Content-Disposition and without ``name``
    in its Content-Type has none: its parameters are not parsed (the
    email package parses a field's parameters in full for each one asked
    for; corpus mix: parse 0.22 -> 0.20 ms a message, median)."""
    try:
        named = "content-disposition" in part or "name" in str(part.get("content-type", "")).lower()
    except (ValueError, LookupError, TypeError):     # str() of an odd value: as before
        named = True
    if not named:
        return ""
    name: Optional[str]
    try:
        name = part.get_filename()
    except (ValueError, LookupError, TypeError):
        name = None
    if name is None:
        try:
            param = part.get_param("name")
        except (ValueError, LookupError, TypeError):
            param = None
        if isinstance(param, tuple):        # RFC 2231 triple
            name = email.utils.collapse_rfc2231_value(param)
        else:
            name = param
    return decode_header_value(name)[:255] if name else ""


def _zip_members(data: bytes) -> tuple[str, ...]:
    if not data.startswith(b"PK\x03\x04"):
        return ()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError):
        return ()
    return tuple(n[:255] for n in names[:MAX_ZIP_MEMBERS])


_ENCODED = ("quoted-printable", "base64", "x-uuencode", "uuencode", "uue", "x-uue")


def _payload(part: Message, body: bytes) -> bytes:
    """The decoded ``body`` of a leaf, as ``get_payload(decode=True)``
    gives it; a body without a transfer encoding is given as it is (the
    package would decode it to text and encode it back: three passes)."""
    if str(part.get("content-transfer-encoding", "")).lower() not in _ENCODED:
        return body
    part.set_payload(body.decode("ascii", "surrogateescape"))
    try:
        data = part.get_payload(decode=True)
    except (ValueError, TypeError, LookupError, AssertionError):
        data = None
    return data if isinstance(data, bytes) else body


def _boundary_params(data: bytes) -> Iterator["re.Match[bytes]"]:
    """``_BOUNDARY_RE.finditer(data)``, from each ``boundary`` found by
    ``bytes.find`` in the lower-cased data (the case-blind pattern alone
    tries every byte: 23 ms a MB)."""
    lower = data.lower()
    pos = lower.find(b"boundary")
    while pos >= 0:
        m = _BOUNDARY_RE.match(data, pos)
        if m is not None:
            yield m
            pos = m.end()
        else:
            pos += 8
        pos = lower.find(b"boundary", pos)


def parse_message(raw: bytes, total_size: Optional[int] = None,
                  max_scan: int = 1_000_000) -> MessageView:
    """Parse at most ``max_scan`` bytes of ``raw`` into a bounded view.

    ``total_size`` is the full message size when ``raw`` is already a
    prefix (the milter may only buffer the first bytes); otherwise
    ``len(raw)``.  Never raises on malformed input.
    """
    if max_scan <= 0:
        raise ValueError("max_scan must be positive")
    size = len(raw) if total_size is None else max(total_size, len(raw))
    partial = size > max_scan
    data = raw[:max_scan]
    msg, body = _split_head(data)
    parsed = parse_body(msg, body, max_scan, len(data))
    return MessageView(
        headers=header_fields(msg),
        text=parsed.text,
        html=parsed.html,
        urls=parsed.urls,
        attachments=parsed.attachments,
        size=size,
        partial=partial,
        raw=data,
    )


def split_head(data: bytes) -> tuple[Message, bytes]:
    """The top-level header fields of a message (the email package's
    :class:`Message`, compat32) and its body, as :func:`parse_message` splits them."""
    return _split_head(data)


def header_fields(msg: Message) -> tuple[tuple[str, str], ...]:
    """The view's header fields: (name, decoded value), at most ``MAX_HEADERS``."""
    return tuple(
        (str(k)[:200], decode_header_value(v))
        for k, v in msg.items()[:MAX_HEADERS]
    )


class ParsedBody(NamedTuple):
    """What :func:`parse_body` reads from a body: the view's text, html,
    urls and attachments.  ``fits``: the result is the same under any scan
    limit over the body's length (no text was cut to the limit, no
    boundary guess was refused or went over it), so it depends only on the
    body and the top-level header fields it reads (see :func:`mime_fields`)."""

    text: str
    html: str
    urls: tuple[Url, ...]
    attachments: tuple[Attachment, ...]
    fits: bool


def mime_fields(msg: Message) -> bytes:
    """The top-level fields :func:`parse_body` reads besides the body: every
    ``Content-*`` field, raw, in order (the MIME walk reads Content-Type,
    Content-Transfer-Encoding and Content-Disposition of the top level; the
    parts' own fields are in the body), as unambiguous bytes: a field name
    holds no colon or line end, the value's length comes first."""
    return "\n".join([f"{k}:{len(v)}:{v}" for k, v in msg.raw_items()
                      if k[:8].lower() == "content-"]).encode("utf-8", "surrogatepass")


def parse_body(msg: Message, body: bytes, max_scan: int, size: int) -> ParsedBody:
    """The text, html, urls and attachments of the MIME tree of ``msg``
    (its top-level header fields) and ``body``: at most ``max_scan``
    characters of text; ``size``: the bytes a boundary guess may search
    (:class:`_Budget`)."""
    texts: list[str] = []
    htmls: list[str] = []
    urls = _UrlSet()
    hosts = ScanBudget()
    attachments: list[Attachment] = []
    text_budget = max_scan
    budget = _Budget(size)
    for n, (part, raw_body) in enumerate(_walk(msg, body, budget)):
        if n >= MAX_PARTS:
            break
        ctype = part.get_content_type().lower()
        if ctype.startswith(("multipart/", "message/")):
            ctype = "text/plain"                # unparseable multipart or message: read as text
        filename = _filename(part)
        disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
        is_text = ctype in ("text/plain", "text/html") and not filename \
            and disposition != "attachment"
        body_ = _payload(part, raw_body)
        if is_text and text_budget > 0:
            decoded = decode_bytes(body_, part.get_content_charset())[:text_budget]
            if ctype == "text/html":
                htmls.append(decoded)
                text, links = _html_to_text(decoded, hosts)
                hrefs = {u.href for u in urls.take(links)}
                if not urls.full:
                    urls.take(itertools.islice(
                        (u for u in _text_urls(text, hosts) if u.href not in hrefs), MAX_URLS))
            else:
                text = decoded
                urls.take(itertools.islice(_text_urls(text, hosts), MAX_URLS))
            texts.append(text)
            text_budget -= len(decoded)
        elif not is_text and (filename or ctype.split("/")[0] not in ("text", "message")):
            if len(attachments) < MAX_ATTACHMENTS:
                attachments.append(Attachment(
                    filename=filename,
                    content_type=ctype,
                    size=len(body_),
                    sha256=hashlib.sha256(body_).hexdigest(),
                    members=_zip_members(body_),
                ))
    # the limits only mattered if they were reached: text of at most the
    # body's length left text_budget > 0 for every part under any limit over it
    fits = (max_scan - text_budget <= len(body) < max_scan and not budget.refused
            and size - budget.guess <= len(body))
    return ParsedBody(
        text="\n\n".join(t for t in texts if t),
        html="\n".join(htmls)[:MAX_HTML_LEN],
        urls=tuple(urls.found.values()),
        attachments=tuple(attachments),
        fits=fits,
    )


_BOUNDARY_RE = re.compile(rb"""(?i)\bboundary\s*=\s*(?:"([^"\r\n]{1,70})"|([^\s;"]{1,70}))""")


def _is_inline_text(part: Message) -> bool:
    """What :func:`parse_message` scans as text: a text/plain or text/html
    part that is not an attachment (no file name, not ``attachment``)."""
    ctype = part.get_content_type().lower()
    disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
    return ctype in ("text/plain", "text/html") and not _filename(part) and disposition != "attachment"


class TextAfterWindow:
    """Watches the body beyond the scan window for the start of a MIME part
    that a reader sees as text (inline text/plain or text/html, what
    :func:`parse_message` scans), so that a large leading attachment cannot
    hide the message's text from the scanner: ``found`` is then true.

    It knows the boundaries declared in the scanned part (the header block
    and the body window) and in the part headers it reads beyond (nested
    multiparts).  Boundary lines are found with ``bytes.find`` of each
    known boundary (at most ``MAX_BOUNDARIES``), so other lines cost no
    Python.  It keeps at most one partial line (``MAX_LINE``) and one part
    header (``MAX_PART_HEADER``).  What it cannot tell within its bounds
    counts as text: a longer part header, more than ``MAX_PARTS`` parts or
    ``MAX_BOUNDARY_LINES`` lines starting with a boundary.  Linear in the
    body, constant memory."""

    MAX_LINE = 1024
    MAX_PART_HEADER = 16384
    MAX_BOUNDARIES = 16
    MAX_PARTS = 200
    MAX_BOUNDARY_LINES = 10_000

    def __init__(self, header_block: bytes, window: bytes) -> None:
        self.found = False
        self._markers: set[bytes] = set()
        self._parts = 0             # part headers read
        self._lines = 0             # lines starting with a boundary met
        self._add_boundaries(header_block)
        self._add_boundaries(window)
        self._carry = b""           # the current line so far, when it started at a line start
        self._mid = False           # inside a line that cannot be a boundary line
        self._part: Optional[bytearray] = None    # a part header being read
        # The window's last lines again, for a boundary line at its very end
        # whose part header lies beyond it (parts that begin and end their
        # header inside the window were scanned and do not count).
        self._seeding, self._stopped = True, False
        tail = window[-4096:]
        if len(window) > 4096:
            cut = tail.find(b"\n")
            tail = tail[cut + 1:] if cut >= 0 else b""
            self._mid = cut < 0
        self.feed(tail)
        if self._stopped:            # bounds hit in the window's end: start afresh after it
            self._stopped, self._carry, self._part, self._mid = False, b"", None, False
        self._seeding = False
        self._lines = self._parts = 0

    @property
    def active(self) -> bool:
        return bool(self._markers) and not self.found and not self._stopped

    def _add_boundaries(self, data: bytes) -> None:
        for m in _boundary_params(data):
            if len(self._markers) >= self.MAX_BOUNDARIES:
                break
            b = (m.group(1) or m.group(2)).rstrip()
            if b:
                self._markers.add(b"--" + b)

    def feed(self, chunk: bytes) -> None:
        """The next piece of the body."""
        if not self.active or not chunk:
            return
        if self._part is not None:
            pos = self._read_part_header(chunk, 0)
            if pos >= 0:
                self._scan(chunk, pos)
        elif self._mid:
            nl = chunk.find(b"\n")
            if nl >= 0:
                self._mid = False
                self._scan(chunk, nl + 1)
        else:
            data, self._carry = self._carry + chunk, b""
            self._scan(data, 0)

    def _scan(self, data: bytes, pos: int) -> None:
        """Look for boundary lines in ``data`` from ``pos`` (a line start).
        Every boundary line starts with '-': a piece without one (base64)
        is passed over with one ``memchr`` (0.1 ms a MB; the boundary
        searches: 0.7 ms a MB)."""
        nexts: dict[bytes, int] = {}             # next line start with that boundary (-1: none)
        while self.active and data.find(b"-", pos) >= 0:
            best = -1
            for marker in self._markers:
                hit = nexts.get(marker, -2)
                if hit != -1 and hit < pos:          # not searched yet, or behind us
                    hit = data.find(marker, pos)
                    while hit > pos and data[hit - 1] != 10:     # not at a line start
                        self._lines += 1
                        if self._lines > self.MAX_BOUNDARY_LINES:
                            self._give_up()
                            return
                        hit = data.find(marker, hit + 1)
                    nexts[marker] = hit
                if hit >= 0 and (best < 0 or hit < best):
                    best = hit
            if best < 0:
                break
            end = data.find(b"\n", best)
            if end < 0:                              # the line goes on in the next piece
                pos = best
                break
            pos = end + 1
            self._lines += 1
            if self._lines > self.MAX_BOUNDARY_LINES:
                self._give_up()
                return
            if data[best:end].rstrip(b" \t\r") in self._markers:   # a part starts ("--b--" ends)
                self._parts += 1
                if self._parts > self.MAX_PARTS:
                    self._give_up()
                    return
                self._part = bytearray()
                pos = self._read_part_header(data, pos)
                if pos < 0:
                    return
                nexts = {}                           # the part may have declared a boundary
        if self.found:
            return
        last = data.rfind(b"\n", pos)
        rest = data[last + 1:] if last >= 0 else data[pos:]
        if len(rest) <= self.MAX_LINE:
            self._carry = rest
        else:
            self._mid = True

    def _give_up(self) -> None:
        """Past a bound: what follows cannot be told, so it counts as text
        (while re-reading the window's end, that re-reading just stops)."""
        if self._seeding:
            self._stopped = True
        else:
            self.found = True

    def _read_part_header(self, data: bytes, pos: int) -> int:
        """Read part-header lines from ``pos`` up to the blank line; return
        where the part's body starts, or -1 when it goes on in the next piece."""
        part = self._part
        assert part is not None
        while True:
            end = data.find(b"\n", pos)
            piece = data[pos:] if end < 0 else data[pos:end + 1]
            part += piece
            if len(part) > self.MAX_PART_HEADER:
                self._part = None
                self._give_up()
                return -1
            if end < 0:
                return -1
            pos = end + 1
            if (len(part) <= 2 and bytes(part) in (b"\n", b"\r\n")) or part.endswith((b"\n\n", b"\n\r\n")):
                self._part = None
                header = bytes(part)
                msg = email.message_from_bytes(header, policy=policy.compat32)
                if msg.get_content_maintype().lower() == "multipart":
                    self._add_boundaries(header)
                elif _is_inline_text(msg) and not self._seeding:
                    self.found = True
                return pos
