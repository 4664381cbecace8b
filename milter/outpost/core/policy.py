"""The decision core: typed SMTP events in, :class:`Decision` out.

Imports no pymilter.  One :class:`Policy` is built per configuration (per
worker process); per-connection state lives in :class:`Session` objects that
the MTA adapter owns and passes back in.  Cross-message state (connection
slots, rate-limit windows, locks) lives in the store.

This module is the sequence of SMTP stages; each stage runs its checks in
order until one blocks.  The checks live by concern: :mod:`.limits` (rate
limits, locks, the automatic lock), :mod:`.content` (the content verdict
and the spam action), :mod:`.volume` (volume anomalies per identity),
:mod:`.sender_auth` (DKIM, SPF), :mod:`.stamps`
(header removals and the headers added), :mod:`.abuse` (abuse reports).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Callable, Optional

from ..config.model import Config, User
from ..logs import Fields
from ..store.base import Store, StoreError
from . import headers as hdr
from . import sender_auth, stamps
from .abuse import AbuseReports
from .addresses import header_from_address, split_address
from .content import ContentCheck, header_block
from .enforce import SIGNING_FAILED, TOO_MANY_CONNECTIONS, Check, Enforcer, StoreUnavailable, first_block, store_down
from .idtoken import Origin, TokenCodec
from .limits import Limits
from .mapping import UserIndex, connection_key, parse_client_ip
from .types import CONTINUE, Action, Decision, Message, Session, reject
from .volume import VolumeCheck

if TYPE_CHECKING:
    from ..effects.dkim import Signer
    from ..effects.reports import BlockEvent
    from ..effects.spf import SpfChecker
    from ..spam.engine import Engine

log = logging.getLogger("outpost.policy")
msglog = logging.getLogger("outpost.message")


class Policy:
    """Decisions for one configuration."""

    def __init__(self, config: Config, store: Store, codec: TokenCodec,
                 clock: Callable[[], float] = time.time, engine: Optional["Engine"] = None,
                 reporter: Optional[Callable[["BlockEvent"], object]] = None,
                 signer: Optional["Signer"] = None, spf: Optional["SpfChecker"] = None) -> None:
        self.config = config
        self.store = store
        self.codec = codec
        self.clock = clock
        self.engine = engine
        self.signer = signer
        self.spf = spf
        self.max_scan = engine.settings.max_scan if engine is not None else 0
        self.max_scan_headers = (engine.settings.max_scan_headers if engine is not None
                                 else config.spam.max_scan_headers)
        self.index = UserIndex(config.users)
        self.host = socket.gethostname()
        self._conn_slots = itertools.count(1)
        self._contacts = {config.report_abuse_to.lower()} | {
            u.policy.abuse_contact.lower() for u in config.users if u.policy.abuse_contact}
        self.enforce = Enforcer(config)
        self.reports = AbuseReports(config, reporter, self.max_scan_headers)
        self.limits = Limits(config, store, self.enforce, self.reports)
        self.content = (ContentCheck(engine, self.enforce, self.reports, self.limits.record_event)
                        if engine is not None else None)
        self.volume = (VolumeCheck(config.volume, store, self.enforce, self.reports, self.limits)
                       if config.volume is not None else None)
        # The checks of each stage, in order; the first that blocks answers.
        self.mail_checks: tuple[Check, ...] = (self._user_connection_limit, self._sender_domain)
        self.rcpt_checks: tuple[Check, ...] = (self._early_lock_and_limit, self._max_recipients)
        self.contact_rcpt_checks: tuple[Check, ...] = (self._max_recipients,)   # never locked out
        self.end_checks: tuple[Check, ...] = (
            self._local_recipients, self._late_lock, self._header_from, self._seal, self._spf,
            self._volume, self._content, self._volume_hold, self._rate_limits)

    def user_of(self, msg: Message) -> Optional[User]:
        return self.index.by_name.get(msg.user_name) if msg.user_name else None

    def header_block(self, msg: Message) -> bytes:
        """The header block the spam engine sees (:func:`.content.header_block`)."""
        return header_block(msg.headers, self.max_scan_headers)

    def _to_contacts_only(self, msg: Message) -> bool:
        return all(r.lower() in self._contacts for r in msg.recipients)

    # -- connection -----------------------------------------------------------------
    def connect(self, session: Session, client_addr: Optional[str], hostname: str = "",
                client_port: Optional[str] = None) -> Decision:
        """Take the connection's slot.  Never refuses here: the MTA is not
        kept waiting for this stage (no reply), and a refusal (too many
        connections, store down) is kept in ``session.refusal`` and answered
        at the first MAIL FROM, where the client sees our text.

        Port 0 on loopback is Postfix's stand-in client for mail that came
        with no SMTP client at all (``non_smtpd_milters``: sendmail(1),
        ``sendmail -bs``): no TCP connection has port 0.  Such a session is
        *local*: it maps to the ``local`` user only, and is never refused
        at RCPT TO (see :meth:`rcpt`)."""
        addr = parse_client_ip(client_addr)
        session.client_ip = str(addr) if addr is not None else None
        session.hostname = hostname or ""
        if addr is None:
            return CONTINUE                    # unix-socket client: no per-IP limit
        if str(client_port).strip() == "0" and addr.is_loopback:
            session.local = True
            return CONTINUE                    # no client: no per-IP limit
        ip_user = self.index.by_ip(addr)
        session.ip_user = ip_user.name if ip_user else None
        limit = (ip_user.policy.connection_limit if ip_user else None) or self.config.connection_limit
        slot = f"{self.host}:{os.getpid()}:{next(self._conn_slots)}"
        key = connection_key(addr, self.config.connection_prefix_v6)
        try:
            got = self.enforce.store_call(self.store.conn_acquire, key, limit, slot)
        except StoreUnavailable:
            session.refusal = store_down()
            return CONTINUE
        if got is None:                        # store down, policy accept
            return CONTINUE
        acquired, count = got
        if acquired:
            session.conn_slot, session.conn_key = slot, key
            return CONTINUE
        log.info("connection limit: %s holds %d of %d", key, count, limit)
        if self.enforce.monitoring(ip_user):
            session.would.append(f"tempfail (connection_limit: {TOO_MANY_CONNECTIONS})")
            return CONTINUE
        # Refused at the first MAIL FROM: Postfix replaces a milter's text at
        # connect time by a generic 421, and clients should see ours.
        session.refusal = Decision(Action.TEMPFAIL, TOO_MANY_CONNECTIONS, "connection_limit")
        return CONTINUE

    def close(self, session: Session) -> None:
        if session.conn_slot and session.conn_key:
            try:
                self.store.conn_release(session.conn_key, session.conn_slot)
            except StoreError as exc:
                log.warning("could not release connection slot %s: %s", session.conn_slot, exc)
        session.conn_slot = session.conn_key = None

    # -- MAIL FROM ------------------------------------------------------------------
    def mail_from(self, session: Session, sender: str, login: Optional[str],
                  client_addr: Optional[str] = None) -> Decision:
        if session.client_ip is None and client_addr:
            ip = parse_client_ip(client_addr)
            session.client_ip = str(ip) if ip is not None else None
        addr, domain = split_address(sender)
        login = hdr.clean(login, 320) if login else None
        msg = Message(sender=addr, sender_domain=domain, login=login or None, client_ip=session.client_ip,
                      started=time.monotonic(), would=list(session.would))
        session.message = msg
        session.messages += 1
        if session.refusal is not None:
            return session.refusal
        user, how = self.index.resolve(login, parse_client_ip(session.client_ip), local=session.local)
        if user is None:
            who = (f"Login {login}" if login else "Local submission (sendmail)" if session.local
                   else (session.client_ip or "unknown client"))
            return self.enforce.block(msg, None, reject(
                "550", "5.7.1", f"{who} is not an authorized outgoing sender", "unknown_sender"))
        msg.user_name, msg.mapped_by = user.name, how
        log.debug("mapped %s/%s to %s by %s", session.client_ip, login, user.name, how)
        d = first_block(self.mail_checks, session, msg, user)
        if d is not None:
            return d
        if not user.identity_headers:
            msg.identity = self._default_identity(msg)
        return CONTINUE

    def _user_connection_limit(self, session: Session, msg: Message, user: User) -> Optional[Decision]:
        """A user mapped by login or domain has its own connection limit."""
        if msg.mapped_by == "ip" or not user.policy.connection_limit or not (session.conn_key and session.conn_slot):
            return None
        try:
            count = self.enforce.store_call(self.store.conn_count, session.conn_key)
        except StoreUnavailable:
            return store_down()
        if count is not None and count > user.policy.connection_limit:
            return self.enforce.block(msg, user, Decision(Action.TEMPFAIL, TOO_MANY_CONNECTIONS,
                                                          "connection_limit"))
        return None

    def _sender_domain(self, session: Session, msg: Message, user: User) -> Optional[Decision]:
        if not msg.sender:
            if user.allows_null_sender:
                return None
            return self.enforce.block(msg, user, reject(
                "550", "5.7.1", f"Null sender is not allowed for {user.name}", "sender_domain"))
        domain = msg.sender_domain
        if domain in user.domains and domain in self.config.domain_names:
            return None
        return self.enforce.block(msg, user, reject(
            "550", "5.7.1", f"Sender domain {domain or '(none)'} is not allowed for {user.name}",
            "sender_domain"))

    @staticmethod
    def _default_identity(msg: Message) -> str:
        return (msg.login or msg.sender or "<>").lower()

    # -- RCPT TO ---------------------------------------------------------------------
    def rcpt(self, session: Session, recipient: str) -> Decision:
        msg = session.message
        if msg is None or msg.user_name is None:
            return CONTINUE
        user = self.user_of(msg)
        addr, _ = split_address(recipient)
        if session.local:
            # Postfix: a non_smtpd milter must not refuse a recipient (the
            # message would stick in the queue as a configuration error).
            # Locks and limits are decided at the end of the message.
            msg.recipients.append(addr)
            return CONTINUE
        if user is not None:
            checks = self.contact_rcpt_checks if addr.lower() in self._contacts else self.rcpt_checks
            d = first_block(checks, session, msg, user)
            if d is not None:
                return d
        msg.recipients.append(addr)
        return CONTINUE

    def _early_lock_and_limit(self, session: Session, msg: Message, user: User) -> Optional[Decision]:
        """The user's lock, and the identity's once known; its rate limits
        looked at (not counted): refused at RCPT rather than after DATA.
        (Not for the abuse contacts: they are always reachable.)"""
        d = self.limits.lock_decision(msg, user)
        if d is not None or not msg.identity:
            return d
        if msg.early_limit is None:
            msg.early_limit = self.limits.check(msg, user, dry_run=True)
        return msg.early_limit

    def _max_recipients(self, session: Session, msg: Message, user: User) -> Optional[Decision]:
        limit = user.policy.limits.max_recipients
        if limit is None or len(msg.recipients) < limit:
            return None
        return self.enforce.block(msg, user, reject("452", "4.5.3", "Too many recipients", "max_recipients"))

    # -- headers -----------------------------------------------------------------------
    def header(self, session: Session, name: str, value: str) -> None:
        """Keep a header field, within ``max_headers`` fields and
        ``max_header_bytes`` bytes; past either the message is refused
        (552 5.3.4, answered at end of headers or of message) and no more
        are kept.  A resource limit: it holds in monitor mode too."""
        msg = session.message
        if msg is None:
            return
        msg.header_fields += 1
        msg.header_bytes += len(name) + len(value) + 4
        if msg.refusal is not None:
            return
        if msg.header_fields > self.config.max_headers or msg.header_bytes > self.config.max_header_bytes:
            msg.refusal = reject(
                "552", "5.3.4", f"Message header too large (at most {self.config.max_headers} fields "
                                f"and {self.config.max_header_bytes} bytes)", "header_limit")
            msg.headers = []                       # not needed any more: the message is refused
            return
        msg.headers.append((name, value))

    def end_of_headers(self, session: Session) -> Decision:
        """The header block is complete: refuse it when over the limits, or
        decide the signing domain, so that the DKIM body hash can be made as
        the body streams in (nothing of the body is kept for it)."""
        msg = session.message
        if msg is None:
            return CONTINUE
        if not msg.headers_done:
            msg.headers_done = True
            if msg.refusal is None and self.signer is not None and msg.user_name is not None:
                user = self.user_of(msg)
                if user is not None:
                    msg.sign_domain = sender_auth.signing_domain(self.config, self.signer, msg, user)
                    if msg.sign_domain is not None:
                        msg.body_hash = self.signer.body_hasher()
        return msg.refusal if msg.refusal is not None else CONTINUE

    def body(self, session: Session, chunk: bytes) -> None:
        """A piece of the body: counted, its start kept for the content
        verdict (up to ``max_scan``), fed to the DKIM body hash; never kept whole."""
        msg = session.message
        if msg is None or msg.refusal is not None:
            return
        if not msg.headers_done:
            self.end_of_headers(session)
        msg.body_size += len(chunk)
        if self.content is not None:
            self.content.feed(msg, chunk)
        if msg.body_hash is not None:
            msg.body_hash.update(chunk)

    # -- end of message -------------------------------------------------------------------
    def end_of_message(self, session: Session, queue_id: str = "") -> Decision:
        msg = session.message
        if msg is not None:
            if not msg.headers_done:
                self.end_of_headers(session)
            if msg.refusal is not None:
                return msg.refusal
        if msg is None or msg.user_name is None:
            # Unmapped sender let through by monitor mode: stamp only the verdict.
            return Decision(Action.ACCEPT, reason="monitor",
                            remove_headers=stamps.removals(msg, None) if msg else (),
                            add_headers=stamps.would_header(msg))
        user = self.user_of(msg)
        assert user is not None
        msg.queue_id = queue_id or ""
        d = first_block(self.end_checks, session, msg, user)
        if d is not None:
            return d
        return self._accept(session, msg, user)

    def _local_recipients(self, session: Session, msg: Message, user: User) -> Optional[Decision]:
        """What RCPT TO could not refuse for local mail (see :meth:`rcpt`).
        Permanent: a tempfailed local message stays in the maildrop queue
        and comes back every minute."""
        limit = user.policy.limits.max_recipients
        if not session.local or limit is None or len(msg.recipients) <= limit:
            return None
        return self.enforce.block(msg, user, reject(
            "550", "5.5.3", f"Too many recipients ({len(msg.recipients)}, at most {limit} "
            "per message)", "max_recipients"))

    def _late_lock(self, session: Session, msg: Message, user: User) -> Optional[Decision]:
        """The identity known only now (from a header, or local mail): its lock."""
        if msg.identity and not session.local:
            return None
        msg.identity = msg.identity or self._identity(msg, user)
        if self._to_contacts_only(msg):
            return None
        return self.limits.lock_decision(msg, user)

    def _header_from(self, session: Session, msg: Message, user: User) -> Optional[Decision]:
        if user.policy.header_from == "off":
            return None
        values = [v for n, v in msg.headers if n.lower() == "from"]
        addr, problem = header_from_address(values)
        if problem is not None:
            return self.enforce.block(msg, user, Decision(Action.REJECT, problem, "header_from"))
        _, domain = split_address(addr or "")
        if domain in user.domains and domain in self.config.domain_names:
            return None
        d = reject("550", "5.7.1", f"Header From domain {domain} is not allowed for {user.name}",
                   "header_from")
        if user.policy.header_from == "warn":
            log.warning("header From %s not allowed for %s (warn only)", addr, user.name)
            msg.would.append(f"reject (header_from: {d.reply})")
            return None
        return self.enforce.block(msg, user, d)

    def _seal(self, session: Session, msg: Message, user: User) -> None:
        """Make the message's X-Outpost-ID (its reference in replies too):
        a step among the checks that never blocks."""
        msg.token = self.codec.seal(Origin(user=user.name, identity=msg.identity,
                                           client_ip=session.client_ip or "", queue_id=msg.queue_id,
                                           time=int(self.clock())))

    def _spf(self, session: Session, msg: Message, user: User) -> Optional[Decision]:
        if self.spf is None:
            return None
        return sender_auth.check_spf(self.spf, self.enforce, msg, user)

    def _volume(self, session: Session, msg: Message, user: User) -> Optional[Decision]:
        """Count the message in its identity's volume (not one only to the
        abuse contacts): a spike is evidence for :meth:`_content`; an
        extreme one is held, deferred or locks the identity (:mod:`.volume`)."""
        if self.volume is None or self._to_contacts_only(msg):
            return None
        return self.volume.check(msg, user)

    def _content(self, session: Session, msg: Message, user: User) -> Optional[Decision]:
        if self.content is None:
            return None
        verdict = self.content.content_verdict(session, msg, user, msg.queue_id)
        d, msg.quarantine = self.content.spam_action(msg, user, verdict, msg.token)
        return d

    def _volume_hold(self, session: Session, msg: Message, user: User) -> None:
        """Hold what :meth:`_volume` found extreme (``volume.action: hold``)
        and the content verdict let through."""
        if self.volume is not None:
            self.volume.hold(msg, user)

    def _rate_limits(self, session: Session, msg: Message, user: User) -> Optional[Decision]:
        """Count the message (not a quarantined one, not one only to the
        abuse contacts) in its rate-limit windows."""
        if msg.quarantine is not None or self._to_contacts_only(msg):
            return None
        return self.limits.check(msg, user, dry_run=False)

    def _accept(self, session: Session, msg: Message, user: User) -> Decision:
        """The accepted message's header edits and DKIM signature."""
        removals = stamps.removals(msg, user)
        verdict_headers: stamps.Fields = ()
        if msg.verdict is not None:
            assert self.engine is not None
            verdict_headers = stamps.verdict_headers(msg, msg.verdict, self.engine.settings.max_evidence_len,
                                                     self.max_scan)
        added = (stamps.stamped(session, msg, user, msg.token, self.config.report_abuse_to)
                 + msg.spf_header + verdict_headers + stamps.would_header(msg))
        try:
            signatures = sender_auth.sign(self.signer, msg, removals, added) if self.signer else ()
        except Exception as exc:  # noqa: BLE001 - never relay unsigned what should be signed
            log.error("DKIM signing failed: %s", exc)   # the QID: prefix names the message
            return Decision(Action.TEMPFAIL, SIGNING_FAILED, "dkim_error")
        return Decision(Action.ACCEPT, reason="quarantine" if msg.quarantine else "ok",
                        remove_headers=removals, quarantine=msg.quarantine,
                        add_headers=added, prepend_headers=signatures)

    def _identity(self, msg: Message, user: User) -> str:
        for rule in user.identity_headers:
            lname = rule.header.lower()
            for name, value in msg.headers:
                if name.lower() == lname:
                    found = rule.extract(hdr.clean(hdr.unfold(value), 320))
                    if found:
                        return str(found).lower()
        return self._default_identity(msg)

    # -- the log line -------------------------------------------------------------------
    def log_message(self, session: Session, decision: Decision, queue_id: str = "",
                    msg: Optional[Message] = None) -> None:
        """The one log line per message (``msg``, or the session's current
        one): its fields as one dict (:class:`~outpost.logs.Fields`), written
        as ``key=value`` text or as JSON keys by the configured format.  The
        queue id is the record's (``extra``): the line's ``QID:`` prefix, the
        JSON ``qid`` key, the journal's ``QUEUE_ID``; not a field again."""
        msg = msg if msg is not None else session.message
        if msg is None or not msglog.isEnabledFor(logging.INFO):
            return
        verdict = msg.verdict
        evidence = verdict.evidence if verdict is not None else ()
        msglog.info(Fields({
            "ip": session.client_ip or "",
            "login": hdr.clean(msg.login, 200) if msg.login else "",
            "user": hdr.clean(msg.user_name, 200) if msg.user_name else "",
            "identity": hdr.clean(msg.identity, 200) if msg.identity else "",
            "from": hdr.clean(msg.sender, 320),
            "rcpts": len(msg.recipients),
            "size": msg.header_bytes + msg.body_size,
            "action": decision.action.value,
            "reason": decision.reason,
            "would": hdr.clean("; ".join(msg.would), 300) if msg.would else None,
            "class": msg.spam_class,
            "score": round(verdict.score, 2) if verdict is not None else None,
            "evidence": [f"{e.name}({e.points:.1f})" for e in evidence[:3]] or None,
            "dkim_d": msg.dkim_d or None,
            "dkim_s": msg.dkim_s or None,
            "spf": msg.spf or None,
            "ms": round(msg.spent * 1000.0, 1),
        }), extra={"qid": queue_id})
