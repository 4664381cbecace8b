"""Abuse events: a block (spam, rate limit, lock) handed to the abuse-report
spool as a :class:`~outpost.effects.reports.BlockEvent`, never for one of
our own reports."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Optional

from ..config.model import Config, User
from .content import raw_head
from .types import Message

if TYPE_CHECKING:
    from ..effects.reports import BlockEvent

log = logging.getLogger("outpost.policy")


class AbuseReports:
    """Builds the abuse events of one configuration and hands them to
    ``reporter`` (the spool's ``put``; None: no reports)."""

    def __init__(self, config: Config, reporter: Optional[Callable[["BlockEvent"], object]],
                 max_scan_headers: int) -> None:
        self.config = config
        self.reporter = reporter
        self.max_scan_headers = max_scan_headers

    def own_report(self, msg: Message) -> bool:
        """True if ``msg`` is one of our own abuse reports, decided by where
        it came from, never by what it says about itself: our report sender's
        envelope sender on a session authenticated with the report sender's
        own login (``reports.smtp.username``).  Reports normally go through
        the MTA's unfiltered report listener and never get here; without a
        report login nothing on the filtered path is one of our reports."""
        reports = self.config.reports
        return (reports is not None and reports.smtp.username is not None
                and msg.login == reports.smtp.username
                and msg.sender.lower() == reports.from_addr.lower())

    def report(self, kind: str, action: str, msg: Message, user: User, *, remedy: str = "",
               reason: str = "", lock_until: Optional[float] = None,
               identity: Optional[str] = None) -> None:
        """Hand a block to the abuse-report spool (never raises: a report
        that cannot be spooled is logged, the decision stands).  Never for
        one of our own reports (decided by origin: :meth:`own_report`).
        ``identity`` '' reports about the user as a whole."""
        if self.reporter is None or self.own_report(msg):
            return
        from ..effects.reports import BlockEvent
        verdict = msg.verdict
        try:
            original = raw_head(msg, self.max_scan_headers) if msg.headers else None
            if original is not None and msg.body_size > len(msg.body_head):
                original = original.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"   # body cut: headers only
            self.reporter(BlockEvent(
                kind=kind, action=action, user=user.name,
                identity=msg.identity if identity is None else identity, login=msg.login,
                client_ip=msg.client_ip, sender=msg.sender, recipients=tuple(msg.recipients),
                queue_id=msg.queue_id or None, outpost_id=msg.token or None,
                verdict_class=msg.spam_class, verdict_score=getattr(verdict, "score", None),
                evidence=tuple(getattr(verdict, "evidence", ())), reason=reason or kind,
                lock_until=lock_until, reported_domain=msg.sender_domain, original=original,
                remedy=remedy, report_to=user.policy.abuse_contact))
        except Exception:  # a report must never turn into a mail failure
            log.exception("could not spool the abuse report (%s %s for %s)", kind, action,
                          msg.identity_key)
