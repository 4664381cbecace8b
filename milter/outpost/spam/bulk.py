"""Bulk detection: the same content sent to many recipients.

Each message is reduced to a few content fingerprints that survive the
per-recipient variations of a mass mailing, and every fingerprint is
counted in the shared store (``Store.fingerprint_add_message``) over a
sliding window, for everybody and for the sending identity:

``t``
    the normalised text (exact, after normalisation);
``m0`` … ``m3``
    bands of a one-permutation MinHash of word 3-shingles of the normalised
    text: two texts that differ in a few words still share most bands;
``u``
    the set of linked URLs (host + path), without links to the sender's own
    domains and links in the signature or quoted part;
``a``
    the set of attachment SHA-256 sums (small images, i.e. logos, left out).

Normalisation: the subject and text are lower-cased; quoted lines
(``> …``) and the signature (after the ``--`` separator line) are dropped; the
recipients' addresses, their local-part words and the display names of
To/Cc, the name after a greeting (``Hi John,``) and every e-mail address are
removed; URLs become ``host/path`` (query, fragment and long tokens
dropped); long random-looking words (coupon codes, tracking ids: 12
characters or more with a digit, or 25 or more) are dropped; digit runs
become ``0``; punctuation and whitespace collapse.

Evidence:

``bulk_same_body``
    one identity sent the same content in at least ``same_body_messages``
    messages to more than ``same_body_recipients`` recipients within
    ``window`` seconds;
``bulk_many_identities``
    at least ``many_identities`` distinct identities sent it within the
    window.

A very short text (under ``min_text_chars`` after normalisation) gets no
text fingerprints, so "thanks!" never collides; such a message is only
fingerprinted by its links or attachments, if any.  A single message to
many recipients (a newsletter sent once) does not fire: it is one message.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Iterable, Optional
from urllib.parse import urlsplit

from ..core.addresses import read_addresses as getaddresses  # survives nested comments
from ..store.base import FingerprintStats, Store, StoreError
from .base import Check, CheckError, Evidence, MessageView, ScanContext
from .message import _netloc, address_spans

ON_ERROR = ("ignore", "tempfail")
#: Version tag in every stored fingerprint: bump when normalisation changes.
FP_VERSION = "b1"
SHINGLE_WORDS = 3
MINHASH_BINS = 16
_BIN_BITS = 4                     # MINHASH_BINS == 1 << _BIN_BITS
#: Only the first words feed the MinHash (enough to recognise a campaign).
MAX_SHINGLE_WORDS = 1000
#: URLs of the text made words of the normalised text (later ones are dropped).
MAX_TEXT_URLS = 200
_MASK64 = (1 << 64) - 1
_M1, _M2, _M3, _M4 = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                      0xBF58476D1CE4E5B9)

_QUOTE_RE = re.compile(r"^[^\S\n]*>.*$", re.MULTILINE)      # blanks of one line only: linear
_SIG_RE = re.compile(r"^-- ?$", re.MULTILINE)
_ON_WROTE_RE = re.compile(r"^[^\n]{0,200}\bwrote:\s*$", re.MULTILINE | re.IGNORECASE)
_URL_RE = re.compile(r"(?:https?://|www\.)[^\s<>\"')\]]+", re.IGNORECASE)
_GREETING_RE = re.compile(
    r"\b(dear|hi|hello|hey|hallo|hola|bonjour|good\s+(?:morning|afternoon|evening))"
    r"[ \t]+[^\n,!:;.]{1,40}?(?=[,!:;.\n]|$)")           # applied to lower-case text
_DIGITS_RE = re.compile(r"\d+")
_WORD_RE = re.compile(r"\w+")
_HAS_DIGIT_RE = re.compile(r"\d")
_PATH_TOKEN_RE = re.compile(r"[0-9a-f]{8,}|\w*\d\w*\d\w*|\w{25,}", re.IGNORECASE)
#: What a greeting (_GREETING_RE) starts with, one of them present in any match
#: (the blank after it a space; a tab is looked for on its own).
_GREETING_LITERALS = ("dear ", "hi ", "hello ", "hey ", "hallo ", "hola ", "bonjour ", "good")
#: str.translate table: every ASCII character that is not a word character (\w) → blank.
_ASCII_NON_WORD = {c: " " for c in range(128) if not (chr(c).isalnum() or c == ord("_"))}
_SUBJECT_PREFIX_RE = re.compile(r"^\s*((re|fwd?|aw|wg|tr)\s*:\s*)+", re.IGNORECASE)


@dataclass(frozen=True)
class BulkSettings:
    """Thresholds and points of the bulk check (see module docstring)."""

    window: float = 3600.0
    same_body_recipients: int = 50
    same_body_messages: int = 3
    same_body_points: float = 3.0
    many_identities: int = 5
    many_identities_points: float = 4.0
    min_text_chars: int = 40
    max_text_chars: int = 20_000
    url_set: bool = True
    attachments: bool = True
    min_image_size: int = 16 * 1024
    on_error: str = "ignore"

    def __post_init__(self) -> None:
        if not isinstance(self.window, (int, float)) or not 0 < self.window <= 30 * 86400:
            raise ValueError(f"bulk.window must be > 0 and <= 30 days (seconds), "
                             f"got {self.window!r}")
        for name in ("same_body_recipients", "same_body_messages", "many_identities",
                     "min_text_chars"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"bulk.{name} must be an integer >= 1, got {v!r}")
        if self.many_identities < 2:
            raise ValueError("bulk.many_identities must be >= 2")
        if not isinstance(self.max_text_chars, int) or self.max_text_chars < self.min_text_chars:
            raise ValueError("bulk.max_text_chars must be an integer >= min_text_chars")
        if not isinstance(self.min_image_size, int) or self.min_image_size < 0:
            raise ValueError("bulk.min_image_size must be an integer >= 0")
        for name in ("same_body_points", "many_identities_points"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"bulk.{name} must be a finite number >= 0, got {v!r}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"bulk.on_error must be one of {', '.join(ON_ERROR)}, "
                             f"got {self.on_error!r}")


def _h(data: str) -> str:
    return hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def _hides(word: str) -> bool:
    """Whether a word of 12 or more characters is hidden (a code, an id):
    one with a digit or of 25 characters or more."""
    return len(word) >= 25 or _HAS_DIGIT_RE.search(word) is not None


def _drop_addresses(text: str) -> str:
    """``text`` with every e-mail address replaced by a blank."""
    out, pos = [], 0
    for start, end, _dom in address_spans(text):
        out += [text[pos:start], " "]
        pos = end
    return "".join(out) + text[pos:] if out else text


def _split_personal(text: str) -> tuple[str, str]:
    """(body, tail): the tail is the signature and quoted part."""
    cut = len(text)
    # each pattern only where its literal occurs (the searches cost 1 ms on 20 KB)
    for rx, literal in ((_SIG_RE, "--"), (_ON_WROTE_RE, "wrote:")):
        m = rx.search(text) if literal in text or literal in text.lower() else None
        if m:
            cut = min(cut, m.start())
    body, tail = text[:cut], text[cut:]
    if ">" not in body:
        return body, tail + "\n"
    quoted = "\n".join(m.group(0) for m in _QUOTE_RE.finditer(body))
    return _QUOTE_RE.sub("", body), tail + "\n" + quoted


def _url_key(url: str) -> str:
    """``host/path`` of a URL, lower-case, without query, fragment or
    long tokens in the path: ``urlsplit``'s hostname and path, found
    without it where ``message._netloc`` can tell the netloc (a printable
    ASCII URL of ours: 500 links cost 4 ms of ``urlsplit``)."""
    candidate = url if "://" in url else "http://" + url
    netloc = _netloc(candidate)
    if netloc:
        rest = candidate[candidate.find(":") + 3 + len(netloc):]
        for delim in "?#":                  # urlsplit: the path ends at the query or fragment
            rest = rest.split(delim, 1)[0]
        hostname = netloc.rpartition("@")[2].partition(":")[0]
    else:
        try:
            parts = urlsplit(candidate)
        except ValueError:
            return ""
        hostname, rest = parts.hostname or "", parts.path
    host = hostname.rstrip(".").lower()
    path = _PATH_TOKEN_RE.sub("#", rest.lower()).rstrip("/")
    return f"{host}{path}" if host else ""


def personal_words(msg: MessageView, ctx: ScanContext) -> set[str]:
    """Words that personalise a message for its recipients: their
    addresses' local-part words and the display names in To/Cc."""
    words: set[str] = set()
    for rcpt in ctx.recipients:
        local = rcpt.rsplit("@", 1)[0].lower()
        words.update(w for w in re.split(r"[._+\-]+", local) if len(w) >= 3)
    for name, _addr in getaddresses(msg.header_all("To") + msg.header_all("Cc")):
        words.update(w.lower() for w in _WORD_RE.findall(name) if len(w) >= 2)
    return words


def normalise_text(text: str, subject: str = "", personal: Iterable[str] = (),
                   max_chars: int = 20_000) -> str:
    """The normalised form of ``subject`` + ``text`` (see module docstring)."""
    body, _tail = _split_personal(text[: max_chars * 2])
    return _normalise_body(body, subject, personal, max_chars)


def _normalise_body(body: str, subject: str, personal: Iterable[str], max_chars: int) -> str:
    """:func:`normalise_text` of a text whose signature and quoted part
    :func:`_split_personal` took off: ``body``."""
    subject = _SUBJECT_PREFIX_RE.sub("", subject)
    s = (subject + "\n" + body).lower()
    if "://" in s or "www." in s:
        # URLs become host and path words; past MAX_TEXT_URLS they are dropped
        # (urlsplit costs 15 µs a URL: 1 500 URLs in the text were 22 ms)
        seen = iter(range(MAX_TEXT_URLS))
        s = _URL_RE.sub(lambda m: " " + _url_key(m.group(0)).replace("/", " ") + " "
                        if next(seen, None) is not None else " ", s)
    if "@" in s:
        s = _drop_addresses(s)
    # each pass only where what it changes can occur (a literal, a digit): the
    # passes over 40 000 characters of short words were 9 ms, about half of it
    # spent finding nothing
    if "\t" in s or any(g in s for g in _GREETING_LITERALS):
        s = _GREETING_RE.sub(lambda m: m.group(1), s)
    # the words (\w+): of ASCII text, the runs of [A-Za-z0-9_], found by split
    words = s.translate(_ASCII_NON_WORD).split() if s.isascii() else _WORD_RE.findall(s)
    # long random-looking words dropped (tests/spam/test_bulk.py: they became ' # '), then
    # digit runs made '0' (they lie inside words): on the words, not on the
    # whole text (the two patterns tried every position: 0.1 ms a corpus message)
    joined = " ".join([w for w in words if len(w) < 12 or not _hides(w)])
    if not joined.isascii() or any(d in joined for d in "0123456789"):
        joined = _DIGITS_RE.sub("0", joined)
    skip = {w for w in (p.lower() for p in personal) if w in joined}
    if skip:
        joined = " ".join([w for w in joined.split(" ") if w not in skip])
    # keep words up to and including the one that reaches max_chars (counting
    # one blank after each word): cut at the first blank from max_chars - 1 on
    cut = joined.find(" ", max_chars - 1)
    return joined if cut < 0 else joined[:cut]


@functools.lru_cache(maxsize=8192)
def _word_terms(word: str) -> tuple[int, int, int]:
    """A word's 64-bit hash (BLAKE2b) times each of the shingle mixing
    constants: the word as the first, second and third word of a
    shingle.  Cached: the same words come back message after message
    (8 192 words of at most 24 characters, as normalisation hides longer
    ones: 3 MB at most)."""
    h = int.from_bytes(hashlib.blake2b(word.encode("utf-8", "surrogatepass"),
                                       digest_size=8).digest(), "big")
    return h * _M1, h * _M2, h * _M3


def minhash_bands(words: list[str], bands: int = 4) -> list[str]:
    """Band hashes of a one-permutation MinHash over word 3-shingles.

    Only the first ``MAX_SHINGLE_WORDS`` words count.  Each shingle gets
    one stable 64-bit hash (mixed from per-word BLAKE2b
    hashes); it falls in one of 16 bins, each bin keeps its minimum;
    consecutive bins form ``bands`` bands.  Texts that share most shingles
    share most bins and hence whole bands."""
    terms = [_word_terms(w) for w in words[:MAX_SHINGLE_WORDS]]
    empty = 1 << 64                     # above every kept value (< 2**60): a bin with none
    mins = [empty] * MINHASH_BINS
    for (a, _, _), (_, b, _), (_, _, c) in zip(terms, terms[1:], terms[2:]):
        v = (a + b + c) & _MASK64
        v ^= v >> 29
        v = (v * _M4) & _MASK64
        v ^= v >> 32
        i, v = v & (MINHASH_BINS - 1), v >> _BIN_BITS       # v % 16, v // 16
        if v < mins[i]:
            mins[i] = v
    per = MINHASH_BINS // bands
    return [_h(",".join("-" if x == empty else str(x) for x in mins[i * per:(i + 1) * per]))
            for i in range(bands)]


def _domain_of(addr: str) -> str:
    return addr.rsplit("@", 1)[-1].strip().strip(">").rstrip(".").lower() if "@" in addr else ""


def _own_domains(msg: MessageView, ctx: ScanContext) -> set[str]:
    doms = {_domain_of(ctx.sender)}
    for _name, addr in getaddresses(msg.header_all("From")):
        doms.add(_domain_of(addr))
    doms.discard("")
    return doms


def _is_own(host: str, own: set[str]) -> bool:
    return any(host == d or host.endswith("." + d) for d in own)


def fingerprints(msg: MessageView, ctx: ScanContext, settings: BulkSettings) -> dict[str, str]:
    """The content fingerprints of a message, keyed by kind
    (``t``, ``m0``…``m3``, ``u``, ``a``); empty when it has none."""
    fps: dict[str, str] = {}
    text = msg.text[: settings.max_text_chars * 2]
    # split once for the text and the URL set (normalise_text would split it again)
    body, tail = _split_personal(text)
    norm = _normalise_body(body, msg.header("Subject") or "", personal_words(msg, ctx),
                           settings.max_text_chars)
    if len(norm) >= settings.min_text_chars:
        fps["t"] = _h(norm)
        words = norm.split()
        if len(words) >= SHINGLE_WORDS + 5:
            for i, band in enumerate(minhash_bands(words)):
                fps[f"m{i}"] = band
    if settings.url_set and msg.urls:
        own = _own_domains(msg, ctx)
        keys = {
            _url_key(u.href) for u in msg.urls
            if u.host and not _is_own(u.host, own) and u.href not in tail
        }
        keys.discard("")
        if keys:
            fps["u"] = _h("\n".join(sorted(keys)))
    if settings.attachments and msg.attachments:
        sums = {
            a.sha256.lower() for a in msg.attachments
            if a.sha256 and not (a.content_type.lower().startswith("image/")
                                 and a.size < settings.min_image_size)
        }
        if sums:
            fps["a"] = _h("\n".join(sorted(sums)))
    return fps


class BulkCheck(Check):
    """Counts content fingerprints in the store; see module docstring."""

    name = "bulk"

    def __init__(self, store: Store, settings: Optional[BulkSettings] = None) -> None:
        self.store = store
        self.settings = settings if settings is not None else BulkSettings()
        self.on_error = self.settings.on_error

    @staticmethod
    def identity_key(ctx: ScanContext) -> str:
        """The member counted in the store: ``user/identity``."""
        return f"{ctx.user}/{ctx.identity}"

    def check(self, msg: MessageView, ctx: ScanContext) -> list[Evidence]:
        s = self.settings
        fps = fingerprints(msg, ctx, s)
        if not fps:
            return []
        member = self.identity_key(ctx)
        rcpts = max(1, len(ctx.recipients))
        same: Optional[tuple[str, FingerprintStats]] = None
        many: Optional[tuple[str, FingerprintStats]] = None
        try:       # one store round trip (one transaction on sqlite) for all fingerprints
            stats = self.store.fingerprint_add_message(
                [f"{FP_VERSION}:{kind}:{value}" for kind, value in fps.items()],
                member, rcpts, self.settings.window)
        except StoreError as exc:
            raise CheckError(f"bulk: store failed: {exc}") from exc
        for kind, (overall, mine) in zip(fps, stats):
            if (mine.messages >= s.same_body_messages
                    and mine.recipients > s.same_body_recipients
                    and (same is None or mine.recipients > same[1].recipients)):
                same = (kind, mine)
            if (overall.members >= s.many_identities
                    and (many is None or overall.members > many[1].members)):
                many = (kind, overall)
        window = f"{s.window:g}s"
        out: list[Evidence] = []
        if same is not None and s.same_body_points:
            kind, st = same
            out.append(Evidence("bulk_same_body", s.same_body_points,
                                f"{kind}: {st.messages} msgs to {st.recipients} rcpts "
                                f"from {member} in {window}"))
        if many is not None and s.many_identities_points:
            kind, st = many
            out.append(Evidence("bulk_many_identities", s.many_identities_points,
                                f"{kind}: {st.members} identities, {st.messages} msgs, "
                                f"{st.recipients} rcpts in {window}"))
        return out
