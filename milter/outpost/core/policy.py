"""The decision core: typed SMTP events in, :class:`Decision` out.

Imports no pymilter.  One :class:`Policy` is built per configuration (per
worker process); per-connection state lives in :class:`Session` objects that
the MTA adapter owns and passes back in.  Cross-message state (connection
slots, rate-limit buckets, locks) lives in the store.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Callable, Optional

from ..config.model import Config, RateLimit, User
from ..logs import Fields
from ..store.base import Bucket, Store, StoreError
from . import headers as hdr
from . import keys
from .addresses import header_from_address, split_address
from .idtoken import Origin, TokenCodec
from .mapping import UserIndex, connection_key, parse_client_ip
from .types import (
    CONTINUE, Action, Decision, Message, Reply, Session, reject,
)

if TYPE_CHECKING:
    from ..effects.dkim import Signer
    from ..effects.reports import BlockEvent
    from ..effects.spf import SpfChecker
    from ..spam.engine import Engine

log = logging.getLogger("outpost.policy")
msglog = logging.getLogger("outpost.message")


class StoreUnavailable(Exception):
    """The store failed and the policy says tempfail."""


TOO_MANY_CONNECTIONS = Reply(
    "421", "4.7.0", "Too many concurrent SMTP connections from this IP address; please try again later")
STORE_DOWN = Reply("451", "4.3.0", "Temporary local problem; please try again later")


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
        self.reporter = reporter
        self.signer = signer
        self.spf = spf
        self.max_scan = engine.settings.max_scan if engine is not None else 0
        self.max_scan_headers = (engine.settings.max_scan_headers if engine is not None
                                 else config.spam.max_scan_headers)
        self.index = UserIndex(config.users)
        self.host = socket.gethostname()
        self._slots = itertools.count(1)
        self._contacts = {config.report_abuse_to.lower()} | {
            u.policy.abuse_contact.lower() for u in config.users if u.policy.abuse_contact}

    # -- helpers ------------------------------------------------------------------
    def _mode(self, user: Optional[User]) -> str:
        return user.policy.mode if user is not None else self.config.defaults.mode

    def _block(self, msg: Optional[Message], user: Optional[User], decision: Decision) -> Decision:
        """Enforce a blocking decision, or in monitor mode note it and go on."""
        if self._mode(user) == "monitor":
            if msg is not None:
                msg.would.append(f"{decision.action.value} ({decision.reason}: {decision.reply})")
            log.info("monitor: would %s (%s)", decision.action.value, decision.reason)
            return CONTINUE
        return decision

    def _store_call(self, fn: Callable, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StoreError as exc:
            log.error("store error (%s): %s", self.config.on_store_error, exc)
            if self.config.on_store_error == "accept":
                return None
            raise StoreUnavailable(str(exc)) from exc

    def user_of(self, msg: Message) -> Optional[User]:
        return self.index.by_name.get(msg.user_name) if msg.user_name else None

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
        slot = f"{self.host}:{os.getpid()}:{next(self._slots)}"
        key = connection_key(addr, self.config.connection_prefix_v6)
        try:
            got = self._store_call(self.store.conn_acquire, key, limit, slot)
        except StoreUnavailable:
            session.refusal = Decision(Action.TEMPFAIL, STORE_DOWN, "store_error")
            return CONTINUE
        if got is None:                        # store down, policy accept
            return CONTINUE
        acquired, count = got
        if acquired:
            session.slot, session.slot_key = slot, key
            return CONTINUE
        log.info("connection limit: %s holds %d of %d", key, count, limit)
        if self._mode(ip_user) == "monitor":
            session.would.append(f"tempfail (connection_limit: {TOO_MANY_CONNECTIONS})")
            return CONTINUE
        # Refused at the first MAIL FROM: Postfix replaces a milter's text at
        # connect time by a generic 421, and clients should see ours.
        session.refusal = Decision(Action.TEMPFAIL, TOO_MANY_CONNECTIONS, "connection_limit")
        return CONTINUE

    def close(self, session: Session) -> None:
        if session.slot and session.slot_key:
            try:
                self.store.conn_release(session.slot_key, session.slot)
            except StoreError as exc:
                log.warning("could not release connection slot %s: %s", session.slot, exc)
        session.slot = session.slot_key = None

    # -- MAIL FROM ------------------------------------------------------------------
    def mail_from(self, session: Session, sender: str, login: Optional[str],
                  client_addr: Optional[str] = None) -> Decision:
        if session.client_ip is None and client_addr:
            addr = parse_client_ip(client_addr)
            session.client_ip = str(addr) if addr is not None else None
        addr, domain = split_address(sender)
        login = hdr.clean(login, 320) if login else None
        msg = Message(sender=addr, sender_domain=domain, login=login or None, client_ip=session.client_ip,
                      started=time.monotonic(), would=list(session.would))
        session.message = msg
        session.messages += 1
        if session.refusal is not None:
            return session.refusal
        ip = parse_client_ip(session.client_ip)
        user, how = self.index.resolve(login, ip, local=session.local)
        if user is None:
            who = (f"Login {login}" if login else "Local submission (sendmail)" if session.local
                   else (session.client_ip or "unknown client"))
            return self._block(msg, None, reject(
                "550", "5.7.1", f"{who} is not an authorized outgoing sender", "unknown_sender"))
        msg.user_name, msg.mapped_by = user.name, how
        log.debug("mapped %s/%s to %s by %s", session.client_ip, login, user.name, how)

        if how != "ip" and user.policy.connection_limit and session.slot_key and session.slot:
            try:
                count = self._store_call(self.store.conn_count, session.slot_key)
            except StoreUnavailable:
                return Decision(Action.TEMPFAIL, STORE_DOWN, "store_error")
            if count is not None and count > user.policy.connection_limit:
                d = self._block(msg, user, Decision(Action.TEMPFAIL, TOO_MANY_CONNECTIONS, "connection_limit"))
                if d.blocks:
                    return d

        if not addr:
            if not user.allows_null_sender:
                d = self._block(msg, user, reject(
                    "550", "5.7.1", f"Null sender is not allowed for {user.name}", "sender_domain"))
                if d.blocks:
                    return d
        elif domain not in user.domains or domain not in self.config.domain_names:
            d = self._block(msg, user, reject(
                "550", "5.7.1", f"Sender domain {domain or '(none)'} is not allowed for {user.name}",
                "sender_domain"))
            if d.blocks:
                return d

        if not user.identity_headers:
            msg.identity = self._default_identity(msg)
        return CONTINUE

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
        if user is not None and addr.lower() not in self._contacts:
            d = self._lock_decision(msg, user)   # the user's lock; the identity's once known
            if d is not None:
                return d
            if msg.identity:
                if msg.early_limit is None:      # refuse early rather than after DATA
                    msg.early_limit = self._check_limits(msg, user, dry_run=True)
                if msg.early_limit.blocks:
                    return msg.early_limit
        limit = user.policy.limits.max_recipients if user else None
        if limit is not None and len(msg.recipients) >= limit:
            d = self._block(msg, user, reject("452", "4.5.3", "Too many recipients", "max_recipients"))
            if d.blocks:
                return d
        msg.recipients.append(addr)
        return CONTINUE

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
                    msg.sign_domain = self._signing_domain(msg, user)
                    if msg.sign_domain is not None:
                        msg.body_hash = self.signer.body_hasher()
        return msg.refusal if msg.refusal is not None else CONTINUE

    def body(self, session: Session, chunk: bytes) -> None:
        """A piece of the body: counted, its start kept for the scan (up to
        ``max_scan``), fed to the DKIM body hash; never kept whole."""
        msg = session.message
        if msg is None or msg.refusal is not None:
            return
        if not msg.headers_done:
            self.end_of_headers(session)
        msg.body_size += len(chunk)
        room = self.max_scan - len(msg.body_head)
        if room > 0:
            msg.body_head += chunk[:room]
        if room < len(chunk) and self.engine is not None:      # beyond the scan window
            if msg.text_watch is None:
                msg.text_watch = self.engine.watch_beyond_window(self.header_block(msg), bytes(msg.body_head))
            msg.text_watch.feed(chunk[max(room, 0):])
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
                            remove_headers=self._removals(msg, None) if msg else (),
                            add_headers=self._would_header(msg))
        user = self.user_of(msg)
        assert user is not None
        if session.local:                     # what RCPT TO could not refuse (see rcpt)
            limit = user.policy.limits.max_recipients
            if limit is not None and len(msg.recipients) > limit:
                # Permanent: a tempfailed local message stays in the maildrop
                # queue and comes back every minute.
                d = self._block(msg, user, reject(
                    "550", "5.5.3", f"Too many recipients ({len(msg.recipients)}, at most {limit} "
                    "per message)", "max_recipients"))
                if d.blocks:
                    return d
        if not msg.identity or session.local:
            msg.identity = msg.identity or self._identity(msg, user)
            if not all(r.lower() in self._contacts for r in msg.recipients):
                d = self._lock_decision(msg, user)
                if d is not None:
                    return d

        if user.policy.header_from != "off":
            d = self._check_header_from(msg, user)
            if d is not None and d.blocks:
                return d

        msg.queue_id = queue_id or ""
        token = msg.token = self.codec.seal(Origin(user=user.name, identity=msg.identity,
                                                   client_ip=session.client_ip or "", queue_id=queue_id or "",
                                                   time=int(self.clock())))
        spf_headers: tuple[tuple[str, str], ...] = ()
        if self.spf is not None:
            d, spf_headers = self._check_spf(msg, user)
            if d.blocks:
                return d
        verdict_headers: tuple[tuple[str, str], ...] = ()
        quarantine = None
        if self.engine is not None:
            verdict = self.scan(session, msg, user, queue_id)
            d, quarantine = self._spam_decision(msg, user, verdict, token)
            if d.blocks:
                return d
            verdict_headers = self._verdict_headers(msg, verdict)

        if quarantine is None and not all(r.lower() in self._contacts for r in msg.recipients):
            d = self._check_limits(msg, user, dry_run=False)
            if d.blocks:
                return d

        removals = self._removals(msg, user)
        added = self._stamps(session, msg, user, token) + spf_headers + verdict_headers + self._would_header(msg)
        try:
            signatures = self._sign(msg, user, removals, added)
        except Exception as exc:  # noqa: BLE001 - never relay unsigned what should be signed
            log.error("DKIM signing failed (qid=%s): %s", queue_id or "-", exc)
            return Decision(Action.TEMPFAIL, STORE_DOWN, "dkim_error")
        return Decision(Action.ACCEPT, reason="quarantine" if quarantine else "ok",
                        remove_headers=removals, quarantine=quarantine,
                        add_headers=added, prepend_headers=signatures)

    # -- SPF and DKIM ------------------------------------------------------------------------
    def _from_domain(self, msg: Message) -> str:
        if msg.from_domain is None:
            addr, _ = header_from_address([v for n, v in msg.headers if n.lower() == "from"])
            msg.from_domain = split_address(addr or "")[1]
        return msg.from_domain

    def _signing_domain(self, msg: Message, user: User) -> Optional[str]:
        """The domain whose key signs this message.  A signature says the
        domain's owner sent the mail: it is only ever made for a domain the
        mapped user may use (its ``domains``; a domain user's own), whatever
        the From policy (enforce, warn, off) and the mode (monitor too).
        The header From domain when it is the user's and has a key; else,
        with ``dkim.sign_user_domain``, the envelope sender's domain when it
        is the user's and has a key and the From domain is not registered."""
        assert self.signer is not None
        domain = self._from_domain(msg)
        if domain and domain in user.domains and self.signer.has_key(domain):
            return domain
        sender = msg.sender_domain
        if (self.config.dkim.sign_user_domain and domain not in self.config.domain_names
                and sender and sender in user.domains and self.signer.has_key(sender)):
            return sender
        return None

    def _sign(self, msg: Message, user: User, removals, added) -> tuple[tuple[str, str], ...]:
        """DKIM-Signature header(s) over the message exactly as the MTA will
        send it: the headers received, minus the ones removed, plus ours."""
        if self.signer is None:
            return ()
        domain = msg.sign_domain                     # decided at end of headers
        if domain is None:
            return ()
        gone: dict[str, set[int]] = {}
        for name, idx in removals:
            gone.setdefault(name.lower(), set()).add(idx)
        final: list[tuple[str, str]] = []
        seen: dict[str, int] = {}
        for name, value in msg.headers:
            lname = name.lower()
            seen[lname] = seen.get(lname, 0) + 1
            if seen[lname] not in gone.get(lname, ()):
                final.append((name, value))
        if self.signer.already_signed(final, domain):
            return ()
        final.extend((name, " " + value) for name, value in added)
        body = msg.body_hash if msg.body_hash is not None else self.signer.body_hasher()
        signatures = self.signer.sign(final, body, domain)
        if signatures:                               # for the message's log line
            msg.dkim_d, msg.dkim_s = domain, ",".join(self.signer.selectors(domain))
        # the adapter supplies the blank after the colon: strip the signer's
        return tuple((n, v[1:] if v.startswith(" ") else v) for n, v in signatures)

    def _check_spf(self, msg: Message, user: User) -> tuple[Decision, tuple[tuple[str, str], ...]]:
        assert self.spf is not None
        domain = msg.sender_domain or self._from_domain(msg)
        if not domain:
            return CONTINUE, ()
        result = self.spf.check(domain, msg.sender)
        msg.spf = result.result
        decision = self.spf.decide(result)
        header = ((decision.header[0], hdr.safe_value(decision.header[1])),)
        if decision.smtp is None:
            return CONTINUE, header
        code, xcode, text = decision.smtp
        return self._block(msg, user, reject(code, xcode, text, f"spf_{result.result}")), header

    def log_message(self, session: Session, decision: Decision, queue_id: str = "",
                    msg: Optional[Message] = None) -> None:
        """The one log line per message (``msg``, or the session's current
        one): its fields as one dict (:class:`~outpost.logs.Fields`), written
        as ``key=value`` text or as JSON keys by the configured format."""
        msg = msg if msg is not None else session.message
        if msg is None or not msglog.isEnabledFor(logging.INFO):
            return
        verdict = msg.verdict
        evidence = getattr(verdict, "evidence", ())
        msglog.info(Fields({
            "qid": queue_id,
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

    # -- pieces -------------------------------------------------------------------------
    def _identity(self, msg: Message, user: User) -> str:
        for rule in user.identity_headers:
            lname = rule.header.lower()
            for name, value in msg.headers:
                if name.lower() == lname:
                    found = rule.extract(hdr.clean(hdr.unfold(value), 320))
                    if found:
                        return found.lower()
        return self._default_identity(msg)

    def identity_key(self, msg: Message) -> str:
        return keys.identity_key(msg.user_name or "", msg.identity)

    def _lock_decision(self, msg: Message, user: User) -> Optional[Decision]:
        """The refusal for a locked user (as a whole) or a locked identity
        (once the identity is known), each checked once per message; or None."""
        contact = user.policy.abuse_contact or self.config.report_abuse_to
        if msg.user_lock_decision is None:
            try:
                lock = self._store_call(self.store.get_lock, keys.user_lock_key(user.name))
            except StoreUnavailable:
                return Decision(Action.TEMPFAIL, STORE_DOWN, "store_error")
            msg.user_lock_decision = CONTINUE if lock is None else self._block(msg, user, reject(
                "451", "4.7.1", f"Sending from {user.name} is suspended because of suspected "
                                f"abuse; contact {contact}", "user_locked"))
        if msg.user_lock_decision.blocks:
            return msg.user_lock_decision
        if msg.lock_decision is None and msg.identity:
            try:
                lock = self._store_call(self.store.get_lock, self.identity_key(msg))
            except StoreUnavailable:
                return Decision(Action.TEMPFAIL, STORE_DOWN, "store_error")
            msg.lock_decision = CONTINUE if lock is None else self._block(msg, user, reject(
                "451", "4.7.1", f"Sending from {msg.identity} is suspended because of suspected "
                                f"abuse; contact {contact}", "locked"))
        return msg.lock_decision if msg.lock_decision is not None and msg.lock_decision.blocks else None

    def _check_header_from(self, msg: Message, user: User) -> Optional[Decision]:
        values = [v for n, v in msg.headers if n.lower() == "from"]
        addr, problem = header_from_address(values)
        if problem is not None:
            return self._block(msg, user, Decision(Action.REJECT, problem, "header_from"))
        _, domain = split_address(addr or "")
        if domain in user.domains and domain in self.config.domain_names:
            return None
        d = reject("550", "5.7.1", f"Header From domain {domain} is not allowed for {user.name}",
                   "header_from")
        if user.policy.header_from == "warn":
            log.warning("header From %s not allowed for %s (warn only)", addr, user.name)
            msg.would.append(f"reject (header_from: {d.reply})")
            return None
        return self._block(msg, user, d)

    def buckets(self, msg: Message, user: User, cost_rcpts: int) -> list[Bucket]:
        """Rate-limit buckets a message from ``msg.identity`` fills."""
        out: list[Bucket] = []
        idkey = self.identity_key(msg)

        def add(prefix: str, kind: str, rates: tuple[RateLimit, ...], cost: int) -> None:
            for r in rates:
                out.append(Bucket(key=f"rl:{prefix}:{kind}:{int(r.window)}", limit=r.limit,
                                  window=r.window, cost=cost, label=r.label))

        lim, ulim = user.policy.limits, user.policy.user_limits
        add(f"id:{idkey}", "msg", lim.messages, 1)
        add(f"id:{idkey}", "rcpt", lim.recipients, cost_rcpts)
        add(f"user:{user.name}", "msg", ulim.messages, 1)
        add(f"user:{user.name}", "rcpt", ulim.recipients, cost_rcpts)
        return out

    def _check_limits(self, msg: Message, user: User, dry_run: bool) -> Decision:
        lim, ulim = user.policy.limits, user.policy.user_limits
        if not (lim.messages or lim.recipients or ulim.messages or ulim.recipients):
            return CONTINUE
        buckets = self.buckets(msg, user, max(1, len(msg.recipients)) if not dry_run else 1)
        if not buckets:
            return CONTINUE
        try:
            result = self._store_call(self.store.hit, buckets, dry_run=dry_run)
        except StoreUnavailable:
            return Decision(Action.TEMPFAIL, STORE_DOWN, "store_error")
        if result is None or result.allowed:
            return CONTINUE
        bucket = buckets[result.blocked if result.blocked is not None else 0]
        what = "recipients" if ":rcpt:" in bucket.key else "messages"
        whom = user.name if bucket.key.startswith("rl:user:") else msg.identity
        d = reject("451", "4.7.1",
                   f"Too many {what} from {whom} ({bucket.label}); please wait and try again",
                   "rate_limit")
        self._limit_hit(msg, user, d.reply)
        return self._block(msg, user, d)

    def _limit_hit(self, msg: Message, user: User, reply: Optional[Reply] = None) -> None:
        if self._mode(user) != "monitor":
            self._report("limit", "tempfail", msg, user, reason=str(reply) if reply else "rate limit",
                         remedy=f"outpost usage {self.identity_key(msg)}   (outpost reset "
                                f"{self.identity_key(msg)} to clear the counters)")
        self._abuse_event("limit", msg, user)

    def _own_report(self, msg: Message) -> bool:
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

    def _abuse_event(self, kind: str, msg: Message, user: User) -> None:
        """Count a rate-limit hit or a spam verdict, for the identity and for
        the user as a whole (all its identities together: changing identity
        does not evade the user's count).  Lock the identity, or the whole
        user, when its threshold of them fall within the lock window."""
        if self._own_report(msg):
            return
        lock = user.policy.lock
        limit = kind == "limit"
        label = "rate-limit hits" if limit else "spam verdicts"
        counts = (
            (lock.after_limit_hits if limit else lock.after_spam,
             keys.event_key(kind, user.name, msg.identity), self.identity_key(msg), msg.identity),
            (lock.user_after_limit_hits if limit else lock.user_after_spam,
             keys.user_event_key(kind, user.name), keys.user_lock_key(user.name), ""),
        )
        for threshold, event_key, lock_key, identity in counts:
            if not threshold:
                continue
            try:
                count = self.store.record_event(event_key, lock.window)
                if count < threshold or self._mode(user) == "monitor":
                    continue
                if self.store.get_lock(lock_key) is not None:
                    continue                    # already locked (e.g. by an operator): keep that lock
                whose = "" if identity else " of all its identities"
                got = self.store.set_lock(lock_key, f"{count} {label}{whose} in {int(lock.window)}s",
                                          lock.duration, max_auto_unlocks=lock.max_auto_unlocks)
            except StoreError as exc:
                log.error("could not record the %s event of %s: %s", kind, lock_key, exc)
                continue
            log.warning("locked %s: %s (until %s)", lock_key, got.reason, got.until or "operator unlock")
            self._report("lock", "lock", msg, user, reason=got.reason, lock_until=got.until,
                         remedy=f"outpost unlock {self.identity_key(msg) if identity else user.name}",
                         identity=identity)

    def _removals(self, msg: Optional[Message], user: Optional[User]) -> tuple[tuple[str, int], ...]:
        """Forged copies of our headers, and identity headers marked remove.

        Occurrences are counted case-insensitively per name (as Postfix and
        Sendmail do) and removed last-first so indexes stay valid."""
        if msg is None:
            return ()
        drop = {h.header.lower() for h in (user.identity_headers if user else ()) if h.remove}
        seen: dict[str, int] = {}
        out: list[tuple[str, int]] = []
        for name, _ in msg.headers:
            lname = name.lower()
            seen[lname] = seen.get(lname, 0) + 1
            if hdr.is_owned(name) or lname in drop:
                out.append((name, seen[lname]))
        out.reverse()
        return tuple(out)

    def _would_header(self, msg: Optional[Message]) -> tuple[tuple[str, str], ...]:
        if msg is None or not msg.would:
            return ()
        return (("X-Outpost-Would", hdr.safe_value("; ".join(msg.would))),)

    def _stamps(self, session: Session, msg: Message, user: User, token: str) -> tuple[tuple[str, str], ...]:
        domain = msg.sender_domain
        if not domain:
            addr, _ = header_from_address([v for n, v in msg.headers if n.lower() == "from"])
            domain = split_address(addr or "")[1]
        return (
            ("X-Outpost-User", hdr.safe_value(user.name)),
            ("X-Outpost-Domain", hdr.safe_value(domain or "")),
            ("X-Originating-IP", hdr.safe_value(f"[{session.client_ip}]" if session.client_ip else "unknown")),
            ("X-Outpost-ID", token),
            ("X-Report-Abuse-To", hdr.safe_value(user.policy.abuse_contact or self.config.report_abuse_to)),
        )

    # -- spam verdicts ----------------------------------------------------------------------
    #: Header fields kept first in the scanned header block when it is over
    #: ``max_scan_headers`` (what the checks and the MIME parser read).
    SCAN_FIRST = frozenset({
        "from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id", "mime-version",
        "content-type", "content-transfer-encoding", "content-disposition", "list-unsubscribe",
        "x-mailer", "user-agent"})

    def header_block(self, msg: Message) -> bytes:
        """The header block as received (CRLF line ends, no blank line after
        it), cut to ``max_scan_headers`` bytes of whole fields.  When it is
        larger, the fields the checks and the MIME parser need (From,
        Subject, Content-Type…) are kept first, then the others in order
        while room is left; the kept ones stay in message order.  So no
        padding pushes Content-Type or Subject out of the scanner's view."""
        parts = [f"{n}:{v if v[:1] in (' ', chr(9)) else ' ' + v}".encode("utf-8", "surrogateescape")
                 .replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for n, v in msg.headers]
        limit = self.max_scan_headers
        if sum(len(p) + 2 for p in parts) <= limit:
            return b"\r\n".join(parts)
        keep = [False] * len(parts)
        room = limit
        for first in (True, False):
            for i, (name, _) in enumerate(msg.headers):
                if not keep[i] and (name.lower() in self.SCAN_FIRST) == first and len(parts[i]) + 2 <= room:
                    keep[i] = True
                    room -= len(parts[i]) + 2
        return b"\r\n".join(p for p, k in zip(parts, keep) if k)

    def raw_head(self, msg: Message) -> bytes:
        """The message as the checks see it: the header block (at most
        ``max_scan_headers``, :meth:`header_block`), then the first bytes of
        the body (at most ``max_scan``): each part within its own limit."""
        return self.header_block(msg) + b"\r\n\r\n" + bytes(msg.body_head)

    def scan(self, session: Session, msg: Message, user: User, queue_id: str = ""):
        """The engine's verdict on the message (score, evidence).  A header
        block over ``max_scan_headers`` is evidence (``header_padding``); a
        message whose content the scan could not see (:meth:`_unscannable`)
        is classed ``unscannable``, never ham (:meth:`_unscannable_decision`)."""
        assert self.engine is not None
        from ..spam.base import ScanContext
        view = self.engine.parse_parts(self.header_block(msg), bytes(msg.body_head), msg.body_size)
        ctx = ScanContext(user=user.name, identity=msg.identity, sender=msg.sender,
                          recipients=tuple(msg.recipients), client_ip=session.client_ip,
                          login=msg.login, queue_id=queue_id or None)
        verdict = self.engine.scan(view, ctx, self.engine.header_padding(msg.header_bytes))
        msg.verdict = verdict
        msg.spam_class = user.policy.spam.classify(verdict.score)
        msg.unscannable = self._unscannable(msg, view)
        if msg.spam_class != "spam" and msg.unscannable:
            msg.spam_class = "unscannable"
        for failure in verdict.errors:
            log.warning("check %s failed (%s): %s", failure.check, failure.policy, failure.error)
        return verdict

    def _spam_decision(self, msg: Message, user: User, verdict, token: str) -> tuple[Decision, Optional[str]]:
        """(decision, quarantine reason) for a verdict under the user's policy."""
        if verdict.tempfail:
            failed = ", ".join(f.check for f in verdict.errors if f.policy == "tempfail")
            return self._block(msg, user, reject(
                "451", "4.3.0", "Message could not be scanned; please try again later",
                f"scan_error:{failed}")), None
        cls = msg.spam_class
        if cls == "unscannable":
            return self._unscannable_decision(msg, user, verdict, token)
        action = user.policy.spam.action(cls)
        if action == "accept":
            return CONTINUE, None
        if action == "quarantine":
            if self._mode(user) == "monitor":
                msg.would.append(f"quarantine ({cls} {verdict.score})")
                return CONTINUE, None
            self._report("spam", "quarantine", msg, user,
                         remedy=f"outpost quarantine release {msg.queue_id or 'QUEUE-ID'}   "
                                f"(or: outpost quarantine delete {msg.queue_id or 'QUEUE-ID'})")
            self._abuse_event("spam", msg, user)
            return CONTINUE, f"Outpost: {cls} (score {verdict.score}) from {self.identity_key(msg)}"
        if action == "reject":
            d = reject("550", "5.7.1", f"Message rejected as spam; reference {token}", cls)
        else:
            d = reject("451", "4.7.1", f"Message deferred as suspected spam; reference {token}", cls)
        d = self._block(msg, user, d)
        if d.blocks:
            self._report("spam", d.action.value, msg, user,
                         remedy=f"outpost lock {self.identity_key(msg)}   (to suspend this sender)")
            self._abuse_event("spam", msg, user)
        return d, None

    def _unscannable(self, msg: Message, view) -> str:
        """Why the scan could not see the message's content ('' when it
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

    def _unscannable_decision(self, msg: Message, user: User, verdict, token: str
                              ) -> tuple[Decision, Optional[str]]:
        """``spam.on_unscannable`` for a message the scan could not see into
        (not counted as a spam verdict towards a lock: it proves nothing)."""
        action = user.policy.spam.unscannable_action
        what = msg.unscannable
        log.warning("unscannable message from %s (%s): %s", self.identity_key(msg), what, action)
        if action == "accept":
            return CONTINUE, None
        if action == "quarantine":
            if self._mode(user) == "monitor":
                msg.would.append(f"quarantine (unscannable: {what})")
                return CONTINUE, None
            return CONTINUE, f"Outpost: unscannable ({what}) from {self.identity_key(msg)}"
        if action == "reject":
            d = reject("550", "5.7.1", f"Message content could not be scanned; reference {token}",
                       "unscannable")
        else:
            d = reject("451", "4.7.1", f"Message content could not be scanned; reference {token}",
                       "unscannable")
        return self._block(msg, user, d), None

    # -- abuse reports ----------------------------------------------------------------------
    def _report(self, kind: str, action: str, msg: Message, user: User, *, remedy: str = "",
                reason: str = "", lock_until: Optional[float] = None,
                identity: Optional[str] = None) -> None:
        """Hand a block to the abuse-report spool (never raises: a report
        that cannot be spooled is logged, the decision stands).  Never for
        one of our own reports (decided by origin: :meth:`_own_report`).
        ``identity`` '' reports about the user as a whole."""
        if self.reporter is None or self._own_report(msg):
            return
        from ..effects.reports import BlockEvent
        verdict = msg.verdict
        try:
            original = self.raw_head(msg) if msg.headers else None
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
        except Exception:  # noqa: BLE001 - a report must never turn into a mail failure
            log.exception("could not spool the abuse report (%s %s for %s)", kind, action,
                          self.identity_key(msg))

    def _verdict_headers(self, msg: Message, verdict) -> tuple[tuple[str, str], ...]:
        from ..spam.engine import evidence_header
        assert self.engine is not None
        out = [("X-Outpost-Class", msg.spam_class or verdict.cls),
               ("X-Outpost-Score", f"{verdict.score:.1f}")]
        evidence = evidence_header(verdict, self.engine.settings.max_evidence_len, ellipsis="...")
        if evidence:
            out.append(("X-Outpost-Evidence", hdr.safe_value(evidence)))
        if verdict.partial:
            out.append(("X-Outpost-Scan", f"partial (first {self.max_scan} of "
                                          f"{msg.body_size} body bytes scanned)"))
        return tuple(out)
