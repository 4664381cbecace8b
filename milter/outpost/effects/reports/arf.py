"""Render a :class:`BlockEvent` as an RFC 5965 abuse report (ARF).

The report is ``multipart/report; report-type=feedback-report`` with a
human-readable ``text/plain`` part, a ``message/feedback-report`` part and the
original message (``message/rfc822``) or its header (``text/rfc822-headers``).
Built with the stdlib :mod:`email` package and serialised with
``BytesGenerator`` under ``policy=SMTP`` (CRLF line ends, 8-bit kept); the
original bytes are carried verbatim (line ends normalised to CRLF).
"""

from __future__ import annotations

import binascii
import ipaddress
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.charset import QP, Charset
from email.generator import BytesGenerator
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from io import BytesIO
from typing import Optional, Sequence, TypeVar

from outpost import __version__

from .errors import ReportError
from .event import BlockEvent, clean
from .settings import ReportSettings

USER_AGENT = f"Outpost/{__version__}"
_PAST = {"reject": "rejected", "tempfail": "tempfailed", "quarantine": "quarantined",
         "discard": "discarded", "lock": "locked"}
_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_QUOTED = re.compile(r'^"([\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"$')
_DOMAIN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                     r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_MAX_LINE = 998


class _Generator(BytesGenerator):
    """BytesGenerator that writes a raw (surrogate-escaped) message/rfc822
    payload back as the exact original bytes; the stdlib's ``_encode`` is
    strict ASCII there and would fail on 8-bit originals."""

    def _encode(self, s: str) -> bytes:
        return s.encode("ascii", "surrogateescape")


@dataclass(frozen=True)
class RenderedReport:
    """A report ready for SMTP: ``data`` is the whole message (CRLF)."""

    message_id: str
    to: str
    subject: str
    data: bytes
    eightbit: bool        # needs BODY=8BITMIME
    incidents: int
    original_part: str    # 'message/rfc822', 'text/rfc822-headers' or 'none'


def header_value(value: object, limit: int = 256) -> str:
    """:func:`clean` text that is also safe from RFC 2047 decoding: the
    ``email`` header parser (policy=SMTP) decodes ``=?charset?q?...?=``
    words in values set by the application, so an encoded CR/LF in a user
    name could add header fields when the message is generated (seen on
    Python 3.11.7).  ``=?`` is therefore broken up as ``=_?``."""
    return clean(value, limit).replace("=?", "=_?")


def _field_names(block: bytes) -> list[str]:
    """Names of the header fields in a generated header block."""
    return [line.split(b":", 1)[0].decode("ascii", "replace").lower()
            for line in block.split(b"\r\n") if line and line[:1] not in (b" ", b"\t")]


def smtp_path(addr: str) -> Optional[str]:
    """``<local@domain>`` in RFC 5321 Path syntax (``<>`` for the null
    sender), the local part quoted when needed; None when the address cannot
    be written in that syntax (non-ASCII, bad domain, control characters)."""
    addr = addr.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    if addr == "":
        return "<>"
    if "@" not in addr or not addr.isascii() or len(addr) > 320 or "=?" in addr:
        return None
    local, domain = addr.rsplit("@", 1)
    if not _DOMAIN.match(domain) or not local or any(ord(c) < 32 or ord(c) == 127 for c in local):
        return None
    if not _DOT_ATOM.match(local) and not _QUOTED.match(local):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"<{local}@{domain}>"


def source_ip(value: Optional[str]) -> Optional[str]:
    """The client address as written in ``Source-IP`` (IPv4-mapped IPv6
    becomes IPv4); None for ``unknown``, unix sockets and junk."""
    if not value:
        return None
    try:
        ip = ipaddress.ip_address(value.strip().strip("[]").removeprefix("IPv6:"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _is_lock(event: BlockEvent) -> bool:
    return event.action == "lock" or event.kind == "lock"


def _date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, timezone.utc))


def _human_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def split_original(original: bytes) -> tuple[bytes, Optional[bytes]]:
    """Normalise line ends to CRLF and split into (header block ending in
    CRLF, body) -- body is None when the message is headers only."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", original)
    if data.startswith(b"\r\n"):
        return b"", data[2:]
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return (data if data.endswith(b"\r\n") else data + b"\r\n"), None
    return head + b"\r\n", body


def _fits_8bit(data: bytes) -> bool:
    """True if ``data`` can travel as 7bit/8bit MIME: no NUL and no line
    longer than 998 octets."""
    return b"\0" not in data and all(len(line) <= _MAX_LINE for line in data.split(b"\r\n"))


def _bound_head(head: bytes, limit: int) -> tuple[bytes, bool]:
    if len(head) <= limit:
        return head, False
    cut = head.rfind(b"\r\n", 0, limit)
    return (head[: cut + 2] if cut > 0 else head[:limit] + b"\r\n"), True


def _original_part(event: BlockEvent, settings: ReportSettings,
                   notes: list[str]) -> tuple[Optional[Message], bool, str]:
    """The third MIME part, whether it holds 8-bit data, and its type."""
    if not event.original:
        notes.append("The original message is not available.")
        head = b""
        body = None
    else:
        head, body = split_original(event.original)
    if body is not None:
        whole = head + b"\r\n" + body
        reason = None
        if not settings.include_body:
            reason = "the configuration includes headers only (include_body: false)"
        elif len(whole) > settings.max_body_size:
            reason = (f"the message ({len(whole)} bytes) is larger than max_body_size "
                      f"({settings.max_body_size} bytes)")
        elif not _fits_8bit(whole):
            reason = "the message has NUL bytes or lines longer than 998 octets"
        if reason is None:
            part = MIMEBase("message", "rfc822", policy=SMTP)
            del part["MIME-Version"]
            eightbit = not whole.isascii()
            part["Content-Transfer-Encoding"] = "8bit" if eightbit else "7bit"
            part.set_payload(whole.decode("ascii", "surrogateescape"))
            return part, eightbit, "message/rfc822"
        notes.append(f"Only the message header is attached: {reason}.")
    if not head:
        head = b"X-Outpost-Note: original message not available\r\n"
    head, cut = _bound_head(head, settings.max_body_size)
    if cut:
        notes.append("The attached header was truncated to max_body_size.")
    part = MIMEBase("text", "rfc822-headers", policy=SMTP)
    del part["MIME-Version"]
    if _fits_8bit(head):
        eightbit = not head.isascii()
        part["Content-Transfer-Encoding"] = "8bit" if eightbit else "7bit"
        part.set_payload(head.decode("ascii", "surrogateescape"))
    else:
        eightbit = False
        part["Content-Transfer-Encoding"] = "quoted-printable"
        part.set_payload(binascii.b2a_qp(head, quotetabs=False, istext=True).decode("ascii"))
    return part, eightbit, "text/rfc822-headers"


def _subject(event: BlockEvent, incidents: int) -> str:
    who = clean(event.key, 120)
    if _is_lock(event):
        until = ("permanently" if event.lock_until is None
                 else f"until {_human_time(event.lock_until)}")
        text = (f"identity {who}" if event.identity else f"user {who} (all identities)") + f" locked {until}"
    else:
        text = f"{clean(event.kind, 32)} {_PAST.get(event.action, event.action)} from {who}"
        if event.verdict_score is not None:
            text += f" ({event.verdict_score:.1f})"
    if incidents > 1:
        text = f"{incidents} incidents: {text}"
    return f"[Outpost] {text}"


_T = TypeVar("_T")


def _bounded(items: Sequence[_T], limit: int) -> tuple[list[_T], int]:
    return list(items[:limit]), max(0, len(items) - limit)


def _text(event: BlockEvent, settings: ReportSettings, folded: Sequence[BlockEvent],
          notes: list[str], incidents: int) -> str:
    n = settings.max_list
    lines: list[str] = []
    who = clean(event.key, 200)
    if _is_lock(event):
        until = ("permanently" if event.lock_until is None
                 else f"until {_human_time(event.lock_until)}")
        lines.append((f"Identity {who}" if event.identity else
                      f"User {who} as a whole (every identity)") + f" locked {until} because "
                     f"{clean(event.reason or 'of repeated blocks', 500)}.")
    else:
        lines.append(f"Outpost {_PAST.get(event.action, event.action)} a message from "
                     f"{who} ({clean(event.kind, 32)}).")
    if incidents > 1:
        lines.append("")
        lines.append(f"{incidents} incidents are folded into this report: more than "
                     f"{settings.max_per_hour} reports per identity, "
                     f"{settings.max_per_user} per user or "
                     f"{settings.max_total} in all per {int(settings.window)} s "
                     "would have been sent. The details below are those of the latest "
                     "incident.")
    lines += ["", "Who", f"  User:          {clean(event.user, 200)}",
              f"  Identity:      {clean(event.identity or '-', 200)}",
              f"  Login:         {clean(event.login or '-', 200)}",
              f"  Client IP:     {clean(event.client_ip or '-', 64)}",
              f"  Sender:        <{clean(event.sender, 320)}>"]
    rcpts, more = _bounded(event.recipients, n)
    for i, rcpt in enumerate(rcpts):
        lines.append(f"  {'Recipients:' if i == 0 else '':<14} <{clean(rcpt, 320)}>")
    if more:
        lines.append(f"  {'':<14} ... and {more} more")
    lines += ["", "What", f"  Block:         {clean(event.kind, 32)}",
              f"  Action taken:  {_PAST.get(event.action, event.action)}"]
    if event.verdict_class or event.verdict_score is not None:
        score = "" if event.verdict_score is None else f" (score {event.verdict_score:.2f})"
        lines.append(f"  Verdict:       {clean(event.verdict_class or '-', 32)}{score}")
    evidence, more = _bounded(event.evidence, n)
    for i, line in enumerate(evidence):
        lines.append(f"  {'Evidence:' if i == 0 else '':<14} {clean(line, 300)}")
    if more:
        lines.append(f"  {'':<14} ... and {more} more")
    if event.reason:
        lines.append(f"  Reason:        {clean(event.reason, 500)}")
    if _is_lock(event):
        lines.append("  Locked until:  " + ("permanently" if event.lock_until is None
                                             else _human_time(event.lock_until)))
    lines += [f"  Queue ID:      {clean(event.queue_id or '-', 64)}",
              f"  X-Outpost-ID:  {clean(event.outpost_id or '-', 128)}",
              f"  Time:          {_human_time(event.arrival_time)}"]
    if len(folded) > 1:
        lines += ["", f"Incidents ({len(folded)})"]
        shown, more = _bounded(folded, n)
        for ev in shown:
            score = "" if ev.verdict_score is None else f" {ev.verdict_score:.1f}"
            lines.append(f"  {_human_time(ev.arrival_time)}  {clean(ev.queue_id or '-', 64)}  "
                         f"{clean(ev.identity or '-', 64)}  "
                         f"{clean(ev.kind, 32)} {_PAST.get(ev.action, ev.action)}{score}")
        if more:
            lines.append(f"  ... and {more} more")
    lines += ["", "What to do"]
    lines.append("  Check the sender's account for abuse or a compromise.")
    if event.remedy:
        lines += ["  When it is fixed (or if the block was wrong), run on the relay:", "",
                  f"    {clean(event.remedy, 300)}"]
    if notes:
        lines += ["", "Notes"] + [f"  {note}" for note in notes]
    lines += ["", f"-- {USER_AGENT} on {settings.hostname}", ""]
    return "\n".join(lines)


def _feedback_fields(event: BlockEvent, settings: ReportSettings,
                     incidents: int) -> list[tuple[str, str]]:
    fields = [("Feedback-Type", "other" if _is_lock(event) else "abuse"),
              ("User-Agent", USER_AGENT), ("Version", "1")]
    mail_from = smtp_path(event.sender)
    if mail_from is not None:
        fields.append(("Original-Mail-From", mail_from))
    for rcpt in event.recipients[: settings.max_list]:
        path = smtp_path(rcpt)
        if path is not None and path != "<>":
            fields.append(("Original-Rcpt-To", path))
    fields.append(("Arrival-Date", _date(event.arrival_time)))
    ip = source_ip(event.client_ip)
    if ip is not None:
        fields.append(("Source-IP", ip))
    domain = event.reported_domain.strip().rstrip(".")
    if domain and domain.isascii() and _DOMAIN.match(domain):
        fields.append(("Reported-Domain", domain.lower()))
    fields.append(("Reporting-MTA", f"dns; {settings.hostname}"))
    if incidents > 1:
        fields.append(("Incidents", str(incidents)))
    return fields


def render_report(event: BlockEvent, settings: ReportSettings, *,
                  folded: Sequence[BlockEvent] = (), now: Optional[float] = None,
                  message_id: Optional[str] = None,
                  notes: Sequence[str] = (), uncounted: int = 0) -> RenderedReport:
    """Build the ARF report for ``event``.

    ``folded``: all incidents of an aggregated report (``event`` is the one
    whose details and original are shown, normally the latest); ``Incidents``
    is ``len(folded)`` when that is more than one, plus ``uncounted``
    (incidents known only as a count: the spool was full).  ``notes`` are
    added to the text part (e.g. why only the header is attached).

    What the original says about itself (a ``multipart/report`` Content-Type,
    say) does not matter here: whether a message is one of our own reports
    is decided by where it came from (see :meth:`Policy._own_report`), and
    our reports never reach the filtered listener.
    """
    incidents = max(1, len(folded)) + max(0, uncounted)
    notes = list(notes)
    original, eightbit, original_type = _original_part(event, settings, notes)
    to = event.report_to or settings.to
    subject = header_value(_subject(event, incidents), 200)
    msgid = message_id or make_msgid(idstring="arf", domain=settings.hostname)

    text = _text(event, settings, folded, notes, incidents)
    if text.isascii():
        text_part = MIMEText(text, "plain", "us-ascii", policy=SMTP)
    else:
        charset = Charset("utf-8")
        charset.body_encoding = QP
        text_part = MIMEText(text, "plain", charset, policy=SMTP)  # type: ignore[arg-type]
    del text_part["MIME-Version"]

    fb = Message(policy=SMTP)
    fb_fields = _feedback_fields(event, settings, incidents)
    for name, value in fb_fields:
        fb[name] = header_value(value, 400)
    fb_part = MIMEMessage(fb, "feedback-report", policy=SMTP)
    del fb_part["MIME-Version"]

    msg = MIMEMultipart("report", policy=SMTP, report_type="feedback-report")
    msg["From"] = settings.from_addr
    msg["To"] = to
    msg["Subject"] = header_value(subject, 200)
    msg["Date"] = _date(time.time() if now is None else now)
    msg["Message-ID"] = msgid
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Outpost-Report"] = header_value(f"{event.kind}; {event.key}", 200)
    msg.attach(text_part)
    msg.attach(fb_part)
    if original is not None:
        msg.attach(original)

    buf = BytesIO()
    _Generator(buf, policy=SMTP).flatten(msg)
    data = buf.getvalue()
    # defence in depth: the generated header blocks hold exactly our fields
    top = ["content-type", "mime-version", "from", "to", "subject", "date", "message-id",
           "auto-submitted", "x-outpost-report"]
    # (the text part before it cannot hold this line: each of its lines has a fixed start)
    fb_block = data.split(b"\r\nContent-Type: message/feedback-report\r\n\r\n", 1)[1]
    if (_field_names(data.split(b"\r\n\r\n", 1)[0]) != top
            or _field_names(fb_block.split(b"\r\n\r\n", 1)[0])
            != [name.lower() for name, _ in fb_fields]):
        raise ReportError("generated report has unexpected header fields (header injection?)")
    return RenderedReport(message_id=msgid, to=to, subject=subject, data=data,
                          eightbit=eightbit or not data.isascii(), incidents=incidents,
                          original_part=original_type)
