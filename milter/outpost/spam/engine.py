"""The scoring engine: runs the checks, adds their points and classifies."""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

from .base import Check, CheckError, Evidence, MessageView, ScanContext
from .message import ParsedBody, TextAfterWindow, header_fields, mime_fields, parse_body, parse_message, split_head

if TYPE_CHECKING:
    from .bayes import BayesCheckSettings, Model
    from .rules import RulesSettings

FAILURE_POLICIES = ("ignore", "tempfail")
CLASSES = ("ham", "unsure", "spam")
#: Evidence of a header block larger than ``max_scan_headers``: padding that
#: would push the rest of the message out of a scanner's view is suspect in
#: itself (its weight can be changed under ``spam.weights``).
HEADER_PADDING = "header_padding"
HEADER_PADDING_POINTS = 3.0

#: The content cache (:class:`ContentCache`): entries kept, seconds an entry
#: is used, and the size of the entries in all, each counted as twice its
#: body's bytes (for its urls and attachments) plus its text and html
#: characters: a worker keeps about that much more memory at most.
CACHE_ENTRIES = 256
CACHE_TTL = 60.0
CACHE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ScoringSettings:
    """Thresholds and per-check overrides.

    ``weights`` multiplies the points of a check (keyed by check name, or
    by evidence name, which wins); checks named in ``disabled`` are not
    run; ``failure_policy`` maps a check name to ``ignore`` (default: the
    check gives no evidence) or ``tempfail`` (the verdict asks for a
    temporary failure).  Thresholds were chosen by cross-validation on the
    SpamAssassin 2002 corpus (see docs/configuration.rst, "Spam verdicts")."""

    unsure: float = 3.0
    spam: float = 5.0
    weights: Mapping[str, float] = field(default_factory=dict)
    disabled: frozenset[str] = frozenset()
    failure_policy: Mapping[str, str] = field(default_factory=dict)
    max_evidence_len: int = 200
    max_scan: int = 1_000_000          # bytes of the body scanned
    max_scan_headers: int = 65_536     # bytes of the header block scanned

    def __post_init__(self) -> None:
        for name in ("unsure", "spam"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError("%s threshold must be a finite number, got %r" % (name, v))
        if self.unsure > self.spam:
            raise ValueError("unsure threshold (%s) must not exceed spam threshold (%s)"
                             % (self.unsure, self.spam))
        for k, w in self.weights.items():
            if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ValueError("weight of %r must be a finite number >= 0, got %r" % (k, w))
        for k, p in self.failure_policy.items():
            if p not in FAILURE_POLICIES:
                raise ValueError("failure policy of %r must be one of %s, got %r"
                                 % (k, ", ".join(FAILURE_POLICIES), p))
        if self.max_evidence_len < 16:
            raise ValueError("max_evidence_len must be >= 16")
        if self.max_scan < 1024:
            raise ValueError("max_scan must be >= 1024 bytes")
        if self.max_scan_headers < 1024:
            raise ValueError("max_scan_headers must be >= 1024 bytes")
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        object.__setattr__(self, "failure_policy", MappingProxyType(dict(self.failure_policy)))
        object.__setattr__(self, "disabled", frozenset(self.disabled))


@dataclass(frozen=True)
class CheckFailure:
    """A check that raised :class:`CheckError`."""

    check: str
    error: str
    policy: str


@dataclass(frozen=True)
class Verdict:
    score: float
    cls: str                                  # 'ham' | 'unsure' | 'spam'
    evidence: tuple[Evidence, ...]            # strongest first
    partial: bool = False
    errors: tuple[CheckFailure, ...] = ()
    tempfail: bool = False


class _Entry:
    """One cached message content: its parsed body and, once a scan has run,
    the evidence of each content-only check (by check name)."""

    __slots__ = ("body", "evidence", "expires", "cost")

    def __init__(self, body: ParsedBody, expires: float, cost: int) -> None:
        self.body = body
        self.evidence: Optional[dict[str, tuple[Evidence, ...]]] = None
        self.expires = expires
        self.cost = cost


class ContentCache:
    """The work an engine did on a message content, for the next message
    with the same content (a mailing sends one body in many messages): an
    LRU of at most ``entries`` entries and ``max_bytes`` of content, each
    used for ``ttl`` seconds, behind one lock (libmilter calls from many
    threads).  ``hits`` and ``misses`` count lookups."""

    def __init__(self, entries: int = CACHE_ENTRIES, ttl: float = CACHE_TTL,
                 max_bytes: int = CACHE_BYTES, clock=time.monotonic) -> None:
        self.entries = entries
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.clock = clock
        self.hits = 0
        self.misses = 0
        self._bytes = 0
        self._map: OrderedDict[bytes, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._map)

    def get(self, key: bytes) -> Optional[_Entry]:
        with self._lock:
            entry = self._map.get(key)
            if entry is not None and entry.expires <= self.clock():
                self._drop(key)
                entry = None
            if entry is None:
                self.misses += 1
                return None
            self._map.move_to_end(key)
            self.hits += 1
            return entry

    def peek(self, key: bytes) -> Optional[_Entry]:
        """The entry of ``key`` if it is still kept (not counted: the scan
        of a view that :meth:`get` gave)."""
        with self._lock:
            return self._map.get(key)

    def put(self, key: bytes, body: ParsedBody, cost: int) -> _Entry:
        entry = _Entry(body, self.clock() + self.ttl, cost)
        if cost > self.max_bytes:
            return entry                        # not kept
        with self._lock:
            if key in self._map:
                self._drop(key)
            self._map[key] = entry
            self._bytes += cost
            while len(self._map) > self.entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._map)))
        return entry

    def _drop(self, key: bytes) -> None:
        self._bytes -= self._map.pop(key).cost

    def clear(self) -> None:
        with self._lock:
            self._map.clear()
            self._bytes = 0


class Engine:
    """Runs ``checks`` on a message and classifies the sum of points.

    ``cache``: a :class:`ContentCache` (None: no cache) for the parsing
    and the content-only checks (:attr:`Check.content_only`) of a message
    content seen shortly before; the checks that read the envelope, the
    sender or a store (bulk counts, block lists, DNS lists, external
    scanners) run for every message.  The cache belongs to the engine: a
    configuration reload or a retrained model builds a new engine, so a
    new, empty cache."""

    def __init__(self, checks: Sequence[Check], settings: Optional[ScoringSettings] = None,
                 cache: Optional[ContentCache] = None) -> None:
        self.settings = settings if settings is not None else ScoringSettings()
        names = [c.name for c in checks]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError("duplicate check names: %s" % ", ".join(sorted(dup)))
        if any(not n for n in names):
            raise ValueError("every check needs a name")
        self.checks = [c for c in checks if c.name not in self.settings.disabled]
        self.cache = cache
        self._cached = frozenset(c.name for c in self.checks if c.content_only)
        self._reads = frozenset().union(*(c.reads_headers for c in self.checks if c.content_only))

    def parse(self, raw: bytes, total_size: Optional[int] = None) -> MessageView:
        """Parse a message within the configured scan limit."""
        return parse_message(raw, total_size, self.settings.max_scan)

    def parse_parts(self, head: bytes, body: bytes, body_size: int) -> MessageView:
        """Parse a message given as its header block (``head``, without the
        blank line, already cut to ``max_scan_headers``) and the first bytes
        of its body (``body``, at most ``max_scan``, of ``body_size`` in
        all): each part is bounded by its own limit, so no size of one
        pushes the other out of the view.  ``partial`` tells that the body
        was longer than what was scanned."""
        head = head[:self.settings.max_scan_headers]
        body = body[:self.settings.max_scan]
        raw = head + b"\r\n\r\n" + body
        size = len(head) + 4 + max(body_size, len(body))
        if self.cache is None:
            return parse_message(raw, size, max_scan=len(raw))
        # parse_message(raw, size, max_scan=len(raw)), its body part reused
        msg, rest = split_head(raw)
        headers = header_fields(msg)
        key = self.content_key(mime_fields(msg), rest, headers)
        entry = self.cache.get(key)
        if entry is None:
            parsed = parse_body(msg, rest, len(raw), len(raw))
            if parsed.fits:
                entry = self.cache.put(key, parsed, 2 * len(rest) + len(parsed.text) + len(parsed.html))
        else:
            parsed = entry.body
        return MessageView(headers=headers, text=parsed.text, html=parsed.html, urls=parsed.urls,
                           attachments=parsed.attachments, size=size, partial=size > len(raw),
                           raw=raw, content_key=key if entry is not None else b"")

    def content_key(self, mime: bytes, body: bytes, headers: tuple[tuple[str, str], ...]) -> bytes:
        """The digest of everything the parse of the body and the
        content-only checks read, so two messages with the same key get the
        same parsed body and the same evidence from those checks:

        - ``body``, the bytes after the header block as the parser splits
          them (within ``max_scan``: the same window for every message of
          this engine), and ``mime``, the top-level Content-* fields the
          MIME walk reads (:func:`~outpost.spam.message.mime_fields`); the
          scan limits do not count once the body ``fits``
          (:class:`~outpost.spam.message.ParsedBody`);
        - of the header fields (as the view holds them, decoded): every
          name in order and whether its value is empty (what the checks
          test the presence of), and the values of the fields a
          content-only check declares it reads (``Check.reads_headers``:
          From, Subject, Content-Type…, not Message-ID, Date or To);
        - nothing of the model or the settings: the cache belongs to one
          engine (:class:`Engine`).

        Size and ``partial`` are not in it: the view gets them from each
        message, and no content-only check reads them.  SHA-256 (hashlib's
        fastest collision-resistant digest here, twice BLAKE2b's speed) over
        bytes the engine already holds: a sender varying every body pays the
        digest (about 1.5 µs a KB) and a few µs for the fields."""
        reads = self._reads
        # a name holds no colon or line end; a value read is preceded by its length
        fields = "\n".join([f"{n}:{len(v)}:{v}" if n.lower() in reads else f"{n}:{'+' if v else '-'}"
                            for n, v in headers])
        enc = fields.encode("utf-8", "surrogatepass")
        h = hashlib.sha256(b"%d:%d:" % (len(mime), len(enc)) + mime + enc)   # then the body: the rest
        h.update(body)
        return h.digest()

    def watch_beyond_window(self, head: bytes, window: bytes) -> TextAfterWindow:
        """A watch, fed the body beyond the scanned window, that tells when
        a text part begins there (see :class:`TextAfterWindow`)."""
        return TextAfterWindow(head, window)

    def header_padding(self, header_bytes: int) -> tuple[Evidence, ...]:
        """The evidence of a header block over ``max_scan_headers`` (else ())."""
        over = header_bytes - self.settings.max_scan_headers
        if over <= 0:
            return ()
        return (Evidence(HEADER_PADDING, HEADER_PADDING_POINTS,
                         f"header block {header_bytes} bytes, {over} over the scanned "
                         f"{self.settings.max_scan_headers}"),)

    def _weight(self, check: str, evidence: str) -> float:
        w = self.settings.weights
        if evidence in w:
            return w[evidence]
        return w.get(check, 1.0)

    def classify(self, score: float) -> str:
        if score >= self.settings.spam:
            return "spam"
        if score >= self.settings.unsure:
            return "unsure"
        return "ham"

    def scan(self, view: MessageView, ctx: ScanContext, extra: Sequence[Evidence] = ()) -> Verdict:
        """Run every enabled check.  A check raising :class:`CheckError`
        is recorded in ``errors`` and handled by its failure policy; any
        other exception is a bug and propagates.  ``extra``: evidence found
        outside the view (e.g. :meth:`header_padding`), weighted like the
        checks' own."""
        evidence: list[Evidence] = []
        errors: list[CheckFailure] = []
        for ev in extra:
            pts = round(ev.points * self._weight(ev.name, ev.name), 1)
            if pts:
                evidence.append(Evidence(ev.name, pts, ev.detail))
        entry = self.cache.peek(view.content_key) if self.cache and view.content_key else None
        reuse = entry.evidence if entry is not None else None
        fresh: dict[str, tuple[Evidence, ...]] = {}
        for check in self.checks:
            if reuse is not None and check.name in reuse:
                found: Sequence[Evidence] = reuse[check.name]
            else:
                try:
                    found = check.check(view, ctx)
                except CheckError as e:
                    policy = self.settings.failure_policy.get(check.name, "ignore")
                    errors.append(CheckFailure(check.name, str(e) or type(e).__name__, policy))
                    continue
                if check.name in self._cached:
                    fresh[check.name] = tuple(found)
            for ev in found:
                w = self._weight(check.name, ev.name)
                pts = round(ev.points * w, 1)
                if pts:
                    evidence.append(Evidence(ev.name, pts, ev.detail))
        if entry is not None and reuse is None and len(fresh) == len(self._cached):
            entry.evidence = fresh
        evidence.sort(key=lambda e: (-abs(e.points), e.name))
        score = round(sum(e.points for e in evidence), 1) + 0.0
        return Verdict(
            score=score,
            cls=self.classify(score),
            evidence=tuple(evidence),
            partial=view.partial,
            errors=tuple(errors),
            tempfail=any(f.policy == "tempfail" for f in errors),
        )

    def close(self) -> None:
        for c in self.checks:
            c.close()


def evidence_header(verdict: Verdict, max_len: int = 200, ellipsis: str = "…") -> str:
    """``bulk_same_body(6.0) url_listed(5.0) …``: the evidence, strongest
    first, cut at a token boundary so that the result (with ``ellipsis``)
    is at most ``max_len`` characters."""
    tokens = ["%s(%.1f)" % (e.name, e.points) for e in verdict.evidence]
    full = " ".join(tokens)
    if len(full) <= max_len:
        return full
    out = ""
    for tok in tokens:
        cand = tok if not out else out + " " + tok
        if len(cand) + 1 + len(ellipsis) > max_len:
            break
        out = cand
    return (out + " " + ellipsis) if out else ellipsis[:max_len]


def default_checks(model: "Optional[Model]" = None,
                   bayes_settings: "Optional[BayesCheckSettings]" = None,
                   rules_settings: "Optional[RulesSettings]" = None) -> list[Check]:
    """Outpost's built-in content checks: the Bayes classifier (the shipped
    default model unless ``model`` is given) and the hand-written rules."""
    from .bayes import BayesCheck, BayesCheckSettings, load_default_model
    from .rules import default_rules
    checks: list[Check] = [BayesCheck(model if model is not None else load_default_model(),
                                      bayes_settings if bayes_settings is not None
                                      else BayesCheckSettings())]
    checks.extend(default_rules(rules_settings))
    return checks
