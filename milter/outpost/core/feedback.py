"""Receivers' complaints (``outpost feedback``): read an ARF report
(RFC 5965), find the reported message's ``X-Outpost-ID``, and count the
complaint against the identity and the user it names, locking past
``lock.after_complaints`` within ``lock.complaint_window``.

Parsing is bounded before Python's :mod:`email` sees the input: at most
``max_size`` bytes, at most ``max_parts`` ``Content-Type`` fields (each
MIME part and each nesting level needs one) and a bounded number of
boundary lines, so a hostile report costs time linear in its (capped) size.
Tokens are looked for, in this order: the header of the attached message
(``message/rfc822``), the attached header block (``text/rfc822-headers``),
then any ``X-Outpost-ID: TOKEN`` quoted in a text part or elsewhere in the
report's body (never in the report's own header).  A token is only ever
believed after the codec opened it (it is authenticated)."""

from __future__ import annotations

import email
import email.parser
import logging
import re
from dataclasses import dataclass
from email import policy as email_policy
from email.message import Message
from typing import Any, Callable, MutableMapping, Optional

from ..config.model import Config, User
from ..store.base import Lock, Store
from . import headers as hdr
from .autolock import lock_past_threshold
from .idtoken import Origin, TokenCodec, TokenError
from .keys import Target

log = logging.getLogger("outpost.feedback")

#: a token quoted anywhere: ``X-Outpost-ID:`` then one (possibly folded) word
TOKEN_RE = re.compile(rb"X-Outpost-ID:[ \t]*(?:\r?\n[ \t]+)?([A-Za-z0-9_-]{40,400})", re.I)
# a line starts after LF or a bare CR (the email package ends lines at both)
_CONTENT_TYPE_RE = re.compile(rb"(?:\A|[\r\n])content-type[ \t]*:", re.I)
_BOUNDARY_LINE_RE = re.compile(rb"(?:\A|[\r\n])--")
_HEADER_END_RE = re.compile(rb"\r?\n\r?\n")
_UNSAFE = re.compile(f"(?:\t|{hdr.CONTROL.pattern})+")      # the project's control set, and tabs
MAX_TOKENS = 8            # candidate tokens tried per report
MAX_FIELD = 200           # characters kept of a reported field


class ReportError(ValueError):
    """The input cannot be read as a report (too large, too many parts, …)."""


def clean(text: object, limit: int = MAX_FIELD) -> str:
    """A field value made safe for a log line or a listing: no controls,
    no line separators, bounded."""
    return _UNSAFE.sub(" ", str(text)).strip()[:limit]


@dataclass(frozen=True)
class Report:
    """What a complaint says (fields cleaned; '' when absent)."""

    arf: bool                     # a multipart/report; report-type=feedback-report
    feedback_type: str            # abuse, fraud, virus, other, … ('' when not ARF)
    user_agent: str
    source_ip: str
    original_mail_from: str
    original_rcpt_to: str
    arrival_date: str
    reported_domain: str
    subject: str                  # of the complaint itself
    sender: str                   # From of the complaint (the feedback loop)
    tokens: tuple[str, ...]       # candidate X-Outpost-ID values, most trusted first
    #: the attached messages (``message/rfc822`` with a body) that carry an
    #: X-Outpost-ID in their own header: (their tokens, the message), at most
    #: MAX_TOKENS; serialised only when one is learned from
    attached: tuple[tuple[tuple[str, ...], Message], ...] = ()

    @property
    def full(self) -> bool:
        """Whether a reported message with our token is attached in full."""
        return bool(self.attached)


def check_bounds(raw: bytes, max_size: int, max_parts: int) -> None:
    """Raise :class:`ReportError` unless ``raw`` is within the caps (a
    linear scan, before any parser runs)."""
    if len(raw) > max_size:
        raise ReportError(f"larger than feedback.max_size ({max_size} bytes)")
    if len(_CONTENT_TYPE_RE.findall(raw)) > max_parts:
        raise ReportError(f"more than feedback.max_parts ({max_parts}) MIME parts")
    if len(_BOUNDARY_LINE_RE.findall(raw)) > 4 * max_parts:
        raise ReportError(f"more than {4 * max_parts} MIME boundary lines")


def _text(part: Message, limit: int) -> bytes:
    payload = part.get_payload(decode=True)
    return payload[:limit] if isinstance(payload, bytes) else b""


def _header_tokens(msg: Message) -> list[str]:
    return [clean(v, 1000) for v in msg.get_all("X-Outpost-ID") or []]


def _fields(part: Message) -> Message:
    """The ``name: value`` fields of a message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):        # the parser read it as a nested message
        return payload[0] if payload and isinstance(payload[0], Message) else Message()
    text = payload if isinstance(payload, str) else ""
    return email.parser.HeaderParser(policy=email_policy.compat32).parsestr(text)


def parse_report(raw: bytes, max_size: int = 2_000_000, max_parts: int = 64) -> Report:
    """Read one complaint (checked by :func:`check_bounds` first)."""
    check_bounds(raw, max_size, max_parts)
    msg = email.message_from_bytes(raw, policy=email_policy.compat32)
    parts = list(msg.walk())
    if len(parts) > 4 * max_parts:            # check_bounds makes this unreachable; a guard
        raise ReportError("too many MIME parts")
    arf = (msg.get_content_type() == "multipart/report"
           and str(msg.get_param("report-type", "")).lower() == "feedback-report")
    fields = Message()
    tokens: list[str] = []
    attached: list[tuple[tuple[str, ...], Message]] = []
    quoted: list[bytes] = []
    for part in parts:
        ctype = part.get_content_type()
        if ctype == "message/feedback-report" and not fields.keys():
            fields = _fields(part)
        elif ctype == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                own = _header_tokens(inner[0])
                tokens += own
                body = inner[0].get_payload()
                if (own and len(attached) < MAX_TOKENS and body
                        and (not isinstance(body, str) or body.strip())):
                    attached.append((tuple(own[:MAX_TOKENS]), inner[0]))
        elif ctype == "text/rfc822-headers":
            head = _text(part, max_size).decode("utf-8", "surrogateescape")
            tokens += _header_tokens(email.parser.HeaderParser(
                policy=email_policy.compat32).parsestr(head, headersonly=True))
        elif part.get_content_maintype() == "text":
            quoted.append(_text(part, max_size))
    for text in quoted:
        tokens += [m.decode("ascii") for m in TOKEN_RE.findall(text)]
    end = _HEADER_END_RE.search(raw)            # anywhere in the body, never the report's header
    tokens += [m.decode("ascii") for m in TOKEN_RE.findall(raw[end.end():] if end else b"")]
    seen = list(dict.fromkeys(t for t in (t.strip() for t in tokens) if t))   # in order, linear
    return Report(
        arf=arf,
        feedback_type=clean(fields.get("Feedback-Type", "")).lower() if arf else "",
        user_agent=clean(fields.get("User-Agent", "")),
        source_ip=clean(fields.get("Source-IP", "")),
        original_mail_from=clean(fields.get("Original-Mail-From", "")),
        original_rcpt_to=clean(fields.get("Original-Rcpt-To", "")),
        arrival_date=clean(fields.get("Arrival-Date", fields.get("Received-Date", ""))),
        reported_domain=clean(fields.get("Reported-Domain", "")),
        subject=clean(msg.get("Subject", "")),
        sender=clean(msg.get("From", "")),
        tokens=tuple(seen[:MAX_TOKENS]),
        attached=tuple(attached),
    )


def attribute(report: Report, codec: TokenCodec) -> tuple[Optional[Origin], str]:
    """The origin of the first candidate token the codec opens, or (None,
    why not)."""
    if not report.tokens:
        return None, "no X-Outpost-ID in the report"
    why = ""
    for token in report.tokens:
        try:
            return codec.open(token), ""
        except TokenError as exc:
            why = f"X-Outpost-ID not valid: {exc}"
    return None, why


def verified_original(report: Report, codec: TokenCodec, origin: Origin) -> Optional[bytes]:
    """The attached reported message whose own ``X-Outpost-ID`` the codec
    opens to ``origin`` (the attribution), as bytes; None when no attached
    message is verified so (a message attached beside a token found
    elsewhere, or with a forged or another message's token, is never
    learned from)."""
    for tokens, message in report.attached:
        for token in tokens:
            try:
                if codec.open(token) == origin:
                    return message.as_bytes(policy=email_policy.compat32)
            except TokenError:
                continue
    return None


@dataclass(frozen=True)
class Counted:
    """A complaint counted against an identity and its user."""

    target: Target
    identity_count: int           # complaints of the identity within the window
    user_count: int               # of the user, all identities together
    locked: tuple[str, ...]       # lock keys this complaint set
    locks: tuple[Lock, ...] = ()  # the locks this complaint set (this run: for the abuse report)


def find_user(config: Config, name: str) -> Optional[User]:
    for user in config.users:
        if user.name == name:
            return user
    return None


def count_complaint(config: Config, store: Store, origin: Origin,
                    progress: Optional[MutableMapping[str, Any]] = None,
                    checkpoint: Callable[[], None] = lambda: None) -> Counted:
    """Count the complaint for the identity and for the user as a whole (in
    ``lock.complaint_window``), and lock one or the other past its
    threshold (``lock.after_complaints``, ``lock.user_after_complaints``),
    as the automatic lock does (``by`` = ``complaints``), unless the user is
    in monitor mode or already locked.  A :class:`~outpost.store.base.StoreError`
    propagates (the caller answers "try again later").

    ``progress`` holds what an earlier, interrupted run of this same
    complaint did (``identity_count``, ``user_count``, ``locked``); a step
    found there is not done again, each step done is added to it and
    ``checkpoint()`` called (the caller saves it), so a retry after a store
    error part way never counts the complaint twice."""
    done: MutableMapping[str, Any] = {} if progress is None else progress
    user = find_user(config, origin.user)
    lock = (user.policy if user is not None else config.defaults).lock
    identity = Target(origin.user, origin.identity)
    whole = Target(origin.user)
    steps = (("identity_count", lock.after_complaints, identity),
             ("user_count", lock.user_after_complaints, whole))
    for name, _, target in steps:
        if name not in done:
            done[name] = store.record_event(target.event_key("complaint"), lock.complaint_window)
            checkpoint()
    locks: list[Lock] = []
    for name, threshold, target in steps:
        if target.lock_key in done.setdefault("locked", []):
            continue
        got = lock_past_threshold(store, target, int(done[name]), threshold, "complaints",
                                  lock.complaint_window, lock, by="complaints",
                                  monitoring=user is None or user.policy.mode == "monitor")
        if got is not None:
            done["locked"].append(got.key)
            checkpoint()
            locks.append(got)
    return Counted(identity, int(done["identity_count"]), int(done["user_count"]),
                   tuple(done["locked"]), tuple(locks))
