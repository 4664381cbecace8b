"""The content verdict and the spam action: what the spam engine sees of a
message (the header block and the body window), its verdict under the
user's ``spam`` policy (accept, quarantine, tempfail, reject), and messages
whose content it could not see (``unscannable``, never ham)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Optional

from ..config.model import User
from .enforce import Enforcer
from .keys import EventKind
from .types import CONTINUE, Decision, Message, Session, reject

if TYPE_CHECKING:
    from ..spam.base import MessageView
    from ..spam.engine import Engine, Verdict
    from .abuse import AbuseReports

log = logging.getLogger("outpost.policy")

#: Header fields kept first in the scanned header block when it is over
#: ``max_scan_headers`` (what the checks and the MIME parser read).
SCAN_FIRST = frozenset({
    "from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id", "mime-version",
    "content-type", "content-transfer-encoding", "content-disposition", "list-unsubscribe",
    "x-mailer", "user-agent"})

#: (decision, quarantine reason or None)
SpamAction = tuple[Decision, Optional[str]]


def header_block(headers: list[tuple[str, str]], limit: int) -> bytes:
    """The header block as received (CRLF line ends, no blank line after
    it), cut to ``limit`` (``max_scan_headers``) bytes of whole fields.
    When it is larger, the fields the checks and the MIME parser need
    (From, Subject, Content-Type…) are kept first, then the others in order
    while room is left; the kept ones stay in message order.  So no padding
    pushes Content-Type or Subject out of the scanner's view."""
    parts = [f"{n}:{v if v[:1] in (' ', chr(9)) else ' ' + v}".encode("utf-8", "surrogateescape")
             .replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for n, v in headers]
    if sum(len(p) + 2 for p in parts) <= limit:
        return b"\r\n".join(parts)
    keep = [False] * len(parts)
    room = limit
    for first in (True, False):
        for i, (name, _) in enumerate(headers):
            if not keep[i] and (name.lower() in SCAN_FIRST) == first and len(parts[i]) + 2 <= room:
                keep[i] = True
                room -= len(parts[i]) + 2
    return b"\r\n".join(p for p, k in zip(parts, keep) if k)


def raw_head(msg: Message, max_scan_headers: int) -> bytes:
    """The message as the checks see it: the header block (at most
    ``max_scan_headers``, :func:`header_block`), then the first bytes of
    the body (at most ``max_scan``): each part within its own limit."""
    return header_block(msg.headers, max_scan_headers) + b"\r\n\r\n" + bytes(msg.body_head)


class ContentCheck:
    """The spam engine's verdict on a message and the action it calls for."""

    def __init__(self, engine: "Engine", enforce: Enforcer, reports: "AbuseReports",
                 record_event: Callable[[EventKind, Message, User], None]) -> None:
        self.engine = engine
        self.enforce = enforce
        self.reports = reports
        self.record_event = record_event
        self.max_scan = engine.settings.max_scan
        self.max_scan_headers = engine.settings.max_scan_headers

    def feed(self, msg: Message, chunk: bytes) -> None:
        """A piece of the body: its start kept for the verdict (up to
        ``max_scan``), the rest watched for a text part beyond the window."""
        room = self.max_scan - len(msg.body_head)
        if room > 0:
            msg.body_head += chunk[:room]
        if room < len(chunk):                                  # beyond the window
            if msg.text_watch is None:
                msg.text_watch = self.engine.watch_beyond_window(
                    header_block(msg.headers, self.max_scan_headers), bytes(msg.body_head))
            msg.text_watch.feed(chunk[max(room, 0):])

    def content_verdict(self, session: Session, msg: Message, user: User,
                        queue_id: str = "") -> "Verdict":
        """The engine's verdict on the message (score, evidence).  A header
        block over ``max_scan_headers`` is evidence (``header_padding``), and
        so is a volume spike of its identity (``volume_spike``, :mod:`.volume`); a
        message whose content could not be seen (:meth:`unscannable`)
        is classed ``unscannable``, never ham (:meth:`unscannable_action`)."""
        from ..spam.base import ScanContext
        view = self.engine.parse_parts(header_block(msg.headers, self.max_scan_headers),
                                       bytes(msg.body_head), msg.body_size)
        ctx = ScanContext(user=user.name, identity=msg.identity, sender=msg.sender,
                          recipients=tuple(msg.recipients), client_ip=session.client_ip,
                          login=msg.login, queue_id=queue_id or None)
        verdict = self.engine.scan(view, ctx, self.engine.header_padding(msg.header_bytes)
                                   + msg.volume_evidence)
        msg.verdict = verdict
        msg.spam_class = user.policy.spam.classify(verdict.score)
        msg.unscannable = self.unscannable(msg, view)
        if msg.spam_class != "spam" and msg.unscannable:
            msg.spam_class = "unscannable"
        for failure in verdict.errors:
            log.warning("check %s failed (%s): %s", failure.check, failure.policy, failure.error)
        return verdict

    def spam_action(self, msg: Message, user: User, verdict: "Verdict", token: str) -> SpamAction:
        """(decision, quarantine reason) for a verdict under the user's policy."""
        if verdict.tempfail:
            failed = ", ".join(f.check for f in verdict.errors if f.policy == "tempfail")
            return self.enforce.block(msg, user, reject(
                "451", "4.3.0", "Message could not be scanned; please try again later",
                f"scan_error:{failed}")), None
        cls = msg.spam_class or verdict.cls
        if cls == "unscannable":
            return self.unscannable_action(msg, user, token)
        action = user.policy.spam.action(cls)
        if action == "accept":
            return CONTINUE, None
        if action == "quarantine":
            if self.enforce.monitoring(user):
                msg.would.append(f"quarantine ({cls} {verdict.score})")
                return CONTINUE, None
            self.reports.report("spam", "quarantine", msg, user,
                                remedy=f"outpost quarantine release {msg.queue_id or 'QUEUE-ID'}   "
                                       f"(or: outpost quarantine delete {msg.queue_id or 'QUEUE-ID'})")
            self.record_event("spam", msg, user)
            return CONTINUE, f"Outpost: {cls} (score {verdict.score}) from {msg.identity_key}"
        if action == "reject":
            d = reject("550", "5.7.1", f"Message rejected as spam; reference {token}", cls)
        else:
            d = reject("451", "4.7.1", f"Message deferred as suspected spam; reference {token}", cls)
        d = self.enforce.block(msg, user, d)
        if d.blocks:
            self.reports.report("spam", d.action.value, msg, user,
                                remedy=f"outpost lock {msg.identity_key}   (to suspend this sender)")
            self.record_event("spam", msg, user)
        return d, None

    def unscannable(self, msg: Message, view: "MessageView") -> str:
        """Why the engine could not see the message's content ('' when it
        could): a text part begins beyond the body window (after a large
        attachment), or the window held nothing to classify (no text, no
        attachment: blank or comment padding, a long preamble) while the
        body went on."""
        watch = msg.text_watch
        if watch is not None and watch.found:
            return f"a text part begins after the first {self.max_scan} bytes of the body"
        if view.partial and not view.text.strip() and not view.attachments:
            return f"nothing to classify in the first {self.max_scan} of {msg.body_size} body bytes"
        return ""

    def unscannable_action(self, msg: Message, user: User, token: str) -> SpamAction:
        """``spam.on_unscannable`` for a message the engine could not see
        into (not counted as a spam verdict towards a lock: it proves nothing)."""
        action = user.policy.spam.unscannable_action
        what = msg.unscannable
        log.warning("unscannable message from %s (%s): %s", msg.identity_key, what, action)
        if action == "accept":
            return CONTINUE, None
        if action == "quarantine":
            if self.enforce.monitoring(user):
                msg.would.append(f"quarantine (unscannable: {what})")
                return CONTINUE, None
            return CONTINUE, f"Outpost: unscannable ({what}) from {msg.identity_key}"
        if action == "reject":
            d = reject("550", "5.7.1", f"Message content could not be scanned; reference {token}",
                       "unscannable")
        else:
            d = reject("451", "4.7.1", f"Message content could not be scanned; reference {token}",
                       "unscannable")
        return self.enforce.block(msg, user, d), None
