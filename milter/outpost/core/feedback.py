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
from typing import Optional

from ..config.model import Config, User
from ..store.base import Store
from . import headers as hdr
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
    original: Optional[bytes]     # the reported message in full, when attached with a body


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
    original: Optional[bytes] = None
    quoted: list[bytes] = []
    for part in parts:
        ctype = part.get_content_type()
        if ctype == "message/feedback-report" and not fields.keys():
            fields = _fields(part)
        elif ctype == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                tokens += _header_tokens(inner[0])
                body = inner[0].get_payload()
                if original is None and body and (not isinstance(body, str) or body.strip()):
                    original = inner[0].as_bytes(policy=email_policy.compat32)
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
        original=original,
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


@dataclass(frozen=True)
class Counted:
    """A complaint counted against an identity and its user."""

    target: Target
    identity_count: int           # complaints of the identity within the window
    user_count: int               # of the user, all identities together
    locked: tuple[str, ...]       # lock keys this complaint set


def find_user(config: Config, name: str) -> Optional[User]:
    for user in config.users:
        if user.name == name:
            return user
    return None


def count_complaint(config: Config, store: Store, origin: Origin) -> Counted:
    """Count the complaint for the identity and for the user as a whole (in
    ``lock.complaint_window``), and lock one or the other past its
    threshold (``lock.after_complaints``, ``lock.user_after_complaints``),
    as the automatic lock does (``by`` = ``complaints``), unless the user is
    in monitor mode or already locked.  A :class:`~outpost.store.base.StoreError`
    propagates (the caller answers "try again later")."""
    user = find_user(config, origin.user)
    lock = (user.policy if user is not None else config.defaults).lock
    identity = Target(origin.user, origin.identity)
    whole = Target(origin.user)
    counts = []
    locked: list[str] = []
    for threshold, target in ((lock.after_complaints, identity), (lock.user_after_complaints, whole)):
        count = store.record_event(target.event_key("complaint"), lock.complaint_window)
        counts.append(count)
        if user is None or not threshold or count < threshold or user.policy.mode == "monitor":
            continue
        if store.get_lock(target.lock_key) is not None:
            continue                     # already locked (e.g. by an operator): keep that lock
        whose = " of all its identities" if target.whole_user else ""
        got = store.set_lock(target.lock_key,
                             f"{count} complaints{whose} in {int(lock.complaint_window)}s",
                             lock.duration, by="complaints", max_auto_unlocks=lock.max_auto_unlocks)
        log.warning("locked %s: %s (until %s)", got.key, got.reason, got.until or "operator unlock")
        locked.append(got.key)
    return Counted(identity, counts[0], counts[1], tuple(locked))
