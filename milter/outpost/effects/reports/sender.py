"""The one report sender per host: turns spooled events into reports
(rate-limited per identity, per user and in all, and aggregated) and
delivers them over SMTP with per-item exponential back-off.  All state is in
the spool directory.

Back-off (bounded by ``retry_max``, each delay shortened by up to
:data:`JITTER` at random, so that senders and reports that failed together
do not retry together): a report that was not accepted waits
``retry_initial * 2**(attempts-1)``; when the relay itself is unavailable
(no session, a 421 reply, the connection lost) the sender stops the pass and
waits as a whole, the delay doubling with each failure, and keeps that wait
in ``spool_dir/.relay-backoff`` so that a sender restarted meanwhile (a
reload, a crash) waits too; ``outpost reports retry`` ends it.  Reports stay
in the spool all the while."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import smtplib
import ssl
import threading
import time
from dataclasses import dataclass
from email.errors import MessageError
from typing import Any, Callable, Optional, Sequence

from .arf import RenderedReport, render_report
from .errors import DeliveryError, ReportError, SenderLocked, SpoolError, SpoolItemNotFound
from .event import BlockEvent
from .settings import ReportSettings
from .spool import OVERFLOW, RETRY_MARK, Spool, fsync_dir, key_hash, new_id, rate_keys, user_rate_keys

log = logging.getLogger("outpost.reports")

#: tmp/ files older than this are left-overs of a crashed writer
STALE_TMP = 3600.0
#: Each back-off delay is shortened by up to this share, at random.
JITTER = 0.25
#: The relay back-off kept across restarts of the sender.
RELAY_STATE = ".relay-backoff"


@dataclass
class SendStats:
    """What one :meth:`ReportSender.run_once` pass did."""

    recovered: int = 0      # reports found in sending/ after a crash (re-queued)
    ingested: int = 0       # events taken from new/
    reported: int = 0       # single-incident reports queued
    held: int = 0           # events held over a report limit
    aggregated: int = 0     # aggregated reports queued
    folded: int = 0         # events folded into aggregated reports
    overflow: int = 0       # reports queued for blocks counted while the spool was full
    corrupt: int = 0        # unreadable events moved to failed/
    sent: int = 0           # reports accepted by the relay
    deferred: int = 0       # attempts that failed and were rescheduled
    failed: int = 0         # reports given up (moved to failed/)


class _Connection:
    """A lazily opened SMTP session to the relay."""

    def __init__(self, settings: ReportSettings) -> None:
        self.settings = settings
        self.smtp: Optional[smtplib.SMTP] = None

    def open(self) -> smtplib.SMTP:
        if self.smtp is not None:
            return self.smtp
        s = self.settings.smtp
        try:
            smtp = smtplib.SMTP(s.host, s.port, local_hostname=self.settings.hostname,
                                timeout=s.timeout)
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"connect {s.host}:{s.port}: {exc}", relay=True) from exc
        try:
            smtp.ehlo()
            if s.starttls:
                smtp.starttls(context=ssl.create_default_context(cafile=s.tls_ca_file))
                smtp.ehlo()
            if s.username is not None:
                smtp.login(s.username, s.password() or "")
        except (OSError, smtplib.SMTPException) as exc:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                smtp.close()
            raise DeliveryError(f"session setup with {s.host}:{s.port}: {exc}", relay=True) from exc
        self.smtp = smtp
        return smtp

    def send(self, sender: str, to: str, data: bytes, eightbit: bool) -> None:
        """Send one message.  Raises DeliveryError (and drops the session)
        on any failure."""
        smtp = self.open()
        opts = ["BODY=8BITMIME"] if eightbit and smtp.has_extn("8bitmime") else []
        try:
            refused = smtp.sendmail(sender, [to], data, mail_options=opts)
        except smtplib.SMTPRecipientsRefused as exc:
            self.close()
            code, msg = next(iter(exc.recipients.values()))
            raise DeliveryError(f"RCPT TO <{to}>: {code} {msg!r}", permanent=code >= 500,
                                relay=code == 421) from exc
        except smtplib.SMTPResponseException as exc:
            self.close()
            raise DeliveryError(f"{exc.smtp_code} {exc.smtp_error!r}",
                                permanent=exc.smtp_code >= 500, relay=exc.smtp_code == 421) from exc
        except (OSError, smtplib.SMTPException) as exc:      # disconnected, timed out
            self.close()
            raise DeliveryError(f"transaction: {exc}", relay=True) from exc
        if refused:   # one recipient: cannot happen without an exception
            raise DeliveryError(f"refused: {refused!r}")

    def close(self) -> None:
        if self.smtp is None:
            return
        smtp, self.smtp = self.smtp, None
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            with contextlib.suppress(OSError):
                smtp.close()


class ReportSender:
    """Renders, rate-limits, aggregates and delivers spooled reports.

    Run exactly one per spool: :meth:`run_forever` (or :meth:`run_once`)
    takes an exclusive ``flock`` on ``spool_dir/.sender.lock``; a second
    sender waits (run_forever) or gets :class:`SenderLocked` (run_once).
    """

    def __init__(self, spool: Spool, settings: ReportSettings) -> None:
        self.spool = spool
        self.settings = settings
        self._lock_fd: Optional[int] = None
        self._relay_retry_at = 0.0
        self._relay_failures = 0
        self._forever = False          # run_forever keeps the lock between passes
        self._needs_recovery = True
        self._retry_mark = 0.0         # mtime of .retry seen last
        self._relay_loaded = False     # the relay back-off read from RELAY_STATE
        self._pruned_at = 0.0

    # -- the sender lock ------------------------------------------------
    def _acquire(self) -> bool:
        """Take .sender.lock (non-blocking); True if newly taken."""
        if self._lock_fd is not None:
            return False
        fd = os.open(self.spool.dir(".sender.lock"), os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise SenderLocked(f"another sender holds {self.spool.dir('.sender.lock')}") from exc
        self._lock_fd = fd
        return True

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- public ----------------------------------------------------------
    def run_once(self, now: Optional[float] = None) -> SendStats:
        """One pass: recover (first pass after taking the lock), ingest new
        events, fold held ones whose identity has room again, send what is
        due.  Raises SenderLocked if another sender runs."""
        stats = SendStats()
        took = self._acquire()
        try:
            if took or self._needs_recovery:
                self._recover(stats, time.time() if now is None else now)
                self._needs_recovery = False
            self._pass(stats, now)
        finally:
            if took and not self._forever:
                self._needs_recovery = True
                self._release()
        return stats

    def run_forever(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set, one pass every ``poll_interval``
        seconds.  While another sender holds the lock this one waits as a
        stand-by.  Errors of one pass are logged and the loop goes on."""
        self._forever = True
        failed_passes = 0
        try:
            while not stop.is_set():
                try:
                    stats = self.run_once()
                except SenderLocked:
                    stop.wait(self.settings.poll_interval)
                    continue
                except (ReportError, OSError):
                    failed_passes += 1
                    wait = min(self.settings.retry_max,
                               self.settings.poll_interval * 2 ** min(failed_passes, 30))
                    log.exception("report sender pass failed (%d in a row); next pass in %.1f s",
                                  failed_passes, wait)
                    stop.wait(wait * (1 - JITTER * random.random()))
                    continue
                failed_passes = 0
                if stats.sent or stats.failed or stats.deferred or stats.corrupt:
                    log.info("reports: %s", stats)
                stop.wait(self.settings.poll_interval)
        finally:
            self._forever = False
            self._needs_recovery = True
            self._release()

    # -- the pass ------------------------------------------------------------
    def _pass(self, stats: SendStats, now: Optional[float]) -> None:
        self._ingest(stats, time.time() if now is None else now)
        self._fold(stats, time.time() if now is None else now)
        self._load_relay()
        self._check_retry_mark()
        self._send(stats, now)
        self._prune_rate(time.time() if now is None else now)

    def _check_retry_mark(self) -> None:
        """``outpost reports retry`` touches ``.retry``: forget the relay
        back-off so the retried reports go out on this pass."""
        try:
            mark = os.stat(self.spool.dir(RETRY_MARK)).st_mtime
        except FileNotFoundError:
            return
        if mark != self._retry_mark:
            self._retry_mark = mark
            self._relay_retry_at = 0.0
            self._relay_failures = 0
            self._save_relay()

    def _load_relay(self) -> None:
        """The relay back-off a previous sender left (once per sender)."""
        if self._relay_loaded:
            return
        self._relay_loaded = True
        try:
            with open(self.spool.dir(RELAY_STATE), encoding="ascii") as fh:
                state = json.load(fh)
            self._relay_failures = max(0, int(state["failures"]))
            self._relay_retry_at = float(state["retry_at"])
            self._retry_mark = float(state.get("retry_mark", 0.0))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s unreadable (%s); no relay back-off", self.spool.dir(RELAY_STATE), exc)

    def _save_relay(self) -> None:
        path = self.spool.dir(RELAY_STATE)
        if not self._relay_failures:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        data = json.dumps({"failures": self._relay_failures, "retry_at": self._relay_retry_at,
                           "retry_mark": self._retry_mark})
        self.spool.write_atomic(path, [data.encode("ascii")])

    def _prune_rate(self, now: float) -> None:
        """Drop rate files of identities without a report in the window
        (at most once a minute)."""
        if abs(now - self._pruned_at) < 60:
            return
        self._pruned_at = now
        for path in self.spool.files("rate", ext=".json"):
            if not self._rate(os.path.basename(path)[:-5], now):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def _recover(self, stats: SendStats, now: float) -> None:
        """After (re)start: a report left in sending/ was in an SMTP
        transaction when the last sender died; it may or may not have been
        accepted, so it is queued again (at-least-once) under the same
        Message-ID.  Stale tmp/ files are removed."""
        sp = self.spool
        with sp.locked():
            for path in sp.files("sending", ext=".rpt"):
                rid = os.path.basename(path)[:-4]
                meta, data = sp.read_report(path)
                meta["next_attempt"] = now
                meta["possible_duplicate"] = True
                sp.write_report("queue", rid, meta, data)
                os.unlink(path)
                fsync_dir(sp.dir("sending"))
                stats.recovered += 1
                log.warning("report %s (%s) was being sent when the sender stopped; "
                            "sending it again (may duplicate)", rid, meta.get("message_id"))
        for name in os.listdir(sp.dir("tmp")):
            path = sp.dir("tmp", name)
            with contextlib.suppress(FileNotFoundError):
                if now - os.stat(path).st_mtime > STALE_TMP:
                    os.unlink(path)

    # -- rate state per identity ------------------------------------------
    def _rate(self, kh: str, now: float) -> list[float]:
        path = self.spool.dir("rate", f"{kh}.json")
        try:
            with open(path, encoding="ascii") as fh:
                times = json.load(fh)["times"]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("rate file %s unreadable (%s); starting it afresh", path, exc)
            return []
        return [float(t) for t in times if now - float(t) < self.settings.window]

    def _count(self, kh: str, key: str, times: list[float], now: float) -> None:
        data = json.dumps({"key": key, "times": times + [now]}, ensure_ascii=True)
        self.spool.write_atomic(self.spool.dir("rate", f"{kh}.json"), [data.encode("ascii")])

    # -- ingest / fold ---------------------------------------------------------
    def _queue(self, item_id: str, event: BlockEvent, report: RenderedReport,
               now: float) -> None:
        meta: dict[str, Any] = {
            "id": item_id, "identity": event.key, "kind": event.kind, "created": now,
            "since": now, "attempts": 0, "next_attempt": now, "last_error": "",
            "message_id": report.message_id, "to": report.to,
            "from": self.settings.from_addr, "eightbit": report.eightbit,
            "incidents": report.incidents, "subject": report.subject,
        }
        self.spool.write_report("queue", item_id, meta, report.data)

    def _move_corrupt(self, path: str, exc: Exception, stats: SendStats) -> None:
        log.error("unreadable report event %s: %s; moved to failed/", path, exc)
        stats.corrupt += 1
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, self.spool.dir("failed", os.path.basename(path)))

    def _limits(self, event: BlockEvent, now: float) -> list[tuple[str, str, list[float], int]]:
        """(hash, key, recent report times, limit) per identity, per user and in all."""
        s = self.settings
        return [(key_hash(key), key, self._rate(key_hash(key), now), limit)
                for key, limit in zip(rate_keys(event),
                                      (s.max_per_hour, s.max_per_user, s.max_total))]

    def _count_all(self, event: BlockEvent, now: float,
                   limits: Optional[list[tuple[str, str, list[float], int]]] = None) -> None:
        for kh, key, times, _ in limits if limits is not None else self._limits(event, now):
            self._count(kh, key, times, now)

    def _ingest(self, stats: SendStats, now: float) -> None:
        sp = self.spool
        for path in sp.files("new", ext=".evt"):
            item_id = os.path.basename(path)[:-4]
            stats.ingested += 1
            if sp.has_report(item_id):      # crashed after queueing it last time
                os.unlink(path)
                continue
            try:
                event, trimmed = sp.read_event(path)
            except SpoolItemNotFound:
                continue
            except SpoolError as exc:
                self._move_corrupt(path, exc, stats)
                continue
            kh = key_hash(event.key)
            limits = self._limits(event, now)
            full = any(len(times) >= limit for _, _, times, limit in limits)
            if full or os.path.isdir(sp.dir("held", kh)):
                os.makedirs(sp.dir("held", kh), mode=0o750, exist_ok=True)
                os.rename(path, sp.dir("held", kh, os.path.basename(path)))
                fsync_dir(sp.dir("held", kh))
                stats.held += 1
                continue
            try:
                report = self._render(event, trimmed, now)
            except ReportError as exc:
                self._move_corrupt(path, exc, stats)
                continue
            self._count_all(event, now, limits)
            self._queue(item_id, event, report, now)
            stats.reported += 1
            os.unlink(path)
            fsync_dir(sp.dir("new"))

    def _render(self, event: BlockEvent, trimmed: str, now: float,
                folded: Sequence[BlockEvent] = (), uncounted: int = 0,
                notes: Sequence[str] = ()) -> RenderedReport:
        notes = list(notes) + ([f"Only the message header is attached: {trimmed}."] if trimmed else [])
        try:
            return render_report(event, self.settings, folded=folded, now=now, notes=notes,
                                 uncounted=uncounted)
        except (ValueError, TypeError, LookupError, MessageError) as exc:
            # a bug meeting odd input must not block the queue behind it
            raise ReportError(f"cannot render report: {exc!r}") from exc

    def _has_room(self, event: BlockEvent, now: float) -> bool:
        """Room for one more report about ``event``'s identity, user and in all."""
        return all(len(times) < limit for _, _, times, limit in self._limits(event, now))

    def _user_has_room(self, user: str, now: float) -> bool:
        """Room for one more report about ``user`` and in all."""
        s = self.settings
        return all(len(self._rate(key_hash(key), now)) < limit
                   for key, limit in zip(user_rate_keys(user),
                                         (s.max_per_user, s.max_total)))

    def _group_event(self, kh: str) -> Optional[BlockEvent]:
        """An event of held/<kh>/ (its identity and user), or None."""
        for path in self.spool.files("held", kh, ext=".evt"):
            try:
                return self.spool.read_event(path, with_original=False)[0]
            except (SpoolItemNotFound, SpoolError):
                continue
        return None

    def _fold(self, stats: SendStats, now: float) -> None:
        """Held events go out as one aggregated report per user when the
        user and the total limit have room again: every held identity of
        the user that has room itself is folded into it."""
        sp = self.spool
        for batch in sp.groups("folding"):     # left by a crash
            self._fold_batch(batch, stats, now)
        self._fold_overflow(stats, now)
        by_user: dict[str, list[str]] = {}
        for kh in sp.groups("held"):
            event = self._group_event(kh)
            if event is None:                  # emptied meanwhile, or only unreadable files
                if not sp.files("held", kh, ext=".evt"):
                    with contextlib.suppress(OSError):
                        os.rmdir(sp.dir("held", kh))
                    continue
                by_user.setdefault("", []).append(kh)   # folded alone: moves them aside
                continue
            if self._has_room(event, now):
                by_user.setdefault(event.user, []).append(kh)
        for user, groups in by_user.items():
            if user and not self._user_has_room(user, now):
                continue
            batch = new_id()
            bdir = sp.dir("folding", batch)
            with sp.locked():
                os.makedirs(bdir, mode=0o750, exist_ok=True)
                for kh in groups:
                    for path in sp.files("held", kh, ext=".evt"):
                        with contextlib.suppress(FileNotFoundError):   # purged meanwhile
                            os.rename(path, os.path.join(bdir, os.path.basename(path)))
                    with contextlib.suppress(OSError):
                        os.rmdir(sp.dir("held", kh))
                fsync_dir(bdir)
                fsync_dir(sp.dir("held"))
                fsync_dir(sp.dir("folding"))
            self._fold_batch(batch, stats, now)

    def _fold_batch(self, batch: str, stats: SendStats, now: float) -> None:
        """Turn the events in folding/<batch>/ into one report with
        ``Incidents: N`` (the latest event's details and original)."""
        sp = self.spool
        bdir = sp.dir("folding", batch)
        if sp.has_report(batch):
            sp.remove_tree(bdir)
            return
        events: list[BlockEvent] = []
        paths: list[str] = []
        for path in sp.files("folding", batch, ext=".evt"):
            try:
                events.append(sp.read_event(path, with_original=False)[0])
                paths.append(path)
            except SpoolError as exc:
                self._move_corrupt(path, exc, stats)
        if events:
            try:
                primary, trimmed = sp.read_event(paths[-1])
                report = self._render(primary, trimmed, now, events)
            except ReportError as exc:
                for path in paths:
                    self._move_corrupt(path, exc, stats)
                sp.remove_tree(bdir)
                return
            self._count_all(primary, now)
            self._queue(batch, primary, report, now)
            stats.aggregated += 1
            stats.folded += len(events)
        sp.remove_tree(bdir)

    def _fold_overflow(self, stats: SendStats, now: float) -> None:
        """Blocks counted while the spool was full become one report per
        user (``Incidents``: the count), when the user and the total limit
        have room."""
        sp = self.spool
        if not os.path.exists(sp.dir(OVERFLOW)):
            return
        with sp.locked():
            data = sp.read_overflow()
            if not data:
                return
            for user in list(data):
                rec = data[user]
                try:
                    event = BlockEvent.from_json(rec["event"])
                    count = int(rec["count"])
                    first = float(rec.get("first", event.arrival_time))
                except (KeyError, TypeError, ValueError) as exc:
                    log.error("overflow count of %r unreadable (%s); dropped", user, exc)
                    del data[user]
                    continue
                if not self._user_has_room(event.user, now):
                    continue
                since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(first))
                note = (f"{count} block(s) of this user since {since} were counted but not "
                        f"spooled because the report spool was full (max_spool: "
                        f"{self.settings.max_spool.files} files, "
                        f"{self.settings.max_spool.bytes} bytes); the details shown are "
                        "those of the latest, without the message.")
                try:
                    report = self._render(event, "", now, uncounted=count - 1, notes=[note])
                except ReportError as exc:
                    log.error("overflow count of %r: %s; dropped", user, exc)
                    del data[user]
                    continue
                self._count_all(event, now)
                self._queue(new_id(), event, report, now)
                stats.overflow += 1
                del data[user]
            sp.write_overflow(data)

    # -- delivery ----------------------------------------------------------------
    def _backoff(self, attempts: int) -> float:
        """``retry_initial * 2**(attempts-1)``, at most ``retry_max``, shortened
        by up to :data:`JITTER` at random."""
        s = self.settings
        delay = min(s.retry_max, s.retry_initial * (2 ** min(max(attempts - 1, 0), 30)))
        return delay * (1 - JITTER * random.random())

    def _send(self, stats: SendStats, now_arg: Optional[float]) -> None:
        sp = self.spool
        clock: Callable[[], float] = ((lambda: now_arg) if now_arg is not None
                                      else time.time)
        if clock() < self._relay_retry_at:
            if self._relay_failures:
                self._expire(stats, clock())
            return
        due: list[str] = []
        for path in sp.files("queue", ext=".rpt"):
            try:
                meta, _ = sp.read_report(path, with_data=False)
            except SpoolItemNotFound:
                continue
            if float(meta.get("next_attempt", 0)) <= clock():
                due.append(path)
        self._deliver(due, stats, clock)

    def _expire(self, stats: SendStats, now: float) -> None:
        """While the relay is unreachable, move every queued report older
        than ``give_up_after`` to failed/ (not one per relay retry)."""
        sp = self.spool
        for path in sp.files("queue", ext=".rpt"):
            try:
                meta, _ = sp.read_report(path, with_data=False)
            except SpoolItemNotFound:
                continue
            since = float(meta.get("since", meta.get("created", now)))
            if now - since < self.settings.give_up_after:
                continue
            with sp.locked():
                try:
                    meta, data = sp.read_report(path)
                except SpoolItemNotFound:
                    continue
                meta["last_error"] = meta.get("last_error") or "relay unreachable"
                sp.write_report("failed", os.path.basename(path)[:-4], meta, data)
                os.unlink(path)
                fsync_dir(sp.dir("queue"))
            stats.failed += 1
            log.error("report %s given up: relay unreachable for too long", path)

    def _deliver(self, due: list[str], stats: SendStats, clock: Callable[[], float]) -> None:
        sp = self.spool
        conn = _Connection(self.settings)
        try:
            for path in due:
                rid = os.path.basename(path)[:-4]
                sending = sp.dir("sending", f"{rid}.rpt")
                with sp.locked():
                    try:
                        os.rename(path, sending)
                    except FileNotFoundError:       # purged meanwhile
                        continue
                meta, data = sp.read_report(sending)
                try:
                    conn.open()
                    conn.send(str(meta["from"]), str(meta["to"]), data, bool(meta.get("eightbit")))
                except DeliveryError as exc:
                    self._reschedule(rid, sending, meta, data, exc, clock(), stats)
                    if exc.relay:
                        self._relay_down(exc, stats, clock)
                        return
                    continue
                if self._relay_failures:
                    self._relay_failures = 0
                    self._save_relay()
                with sp.locked():
                    os.unlink(sending)
                    fsync_dir(sp.dir("sending"))
                stats.sent += 1
                log.info("report %s sent to %s: %s (Message-ID %s)", rid, meta.get("to"),
                         meta.get("subject"), meta.get("message_id"))
        finally:
            conn.close()

    def _relay_down(self, exc: DeliveryError, stats: SendStats, clock: Callable[[], float]) -> None:
        """The relay is unavailable: no more reports this pass, and none
        until the relay back-off has passed (kept across restarts)."""
        self._relay_failures += 1
        self._relay_retry_at = clock() + self._backoff(self._relay_failures)
        self._save_relay()
        log.warning("report relay unavailable (%s); next try in %.0f s",
                    exc, self._relay_retry_at - clock())
        self._expire(stats, clock())

    def _reschedule(self, rid: str, sending: str, meta: dict[str, Any], data: bytes,
                    exc: DeliveryError, now: float, stats: SendStats) -> None:
        sp = self.spool
        meta["attempts"] = int(meta.get("attempts", 0)) + 1
        meta["last_error"] = str(exc)[:500]
        meta["last_attempt"] = now
        # A 5xx would be answered again on every retry: give up at once.
        give_up = exc.permanent or (now - float(meta.get("since", meta.get("created", now)))
                                    >= self.settings.give_up_after)
        with sp.locked():
            if give_up:
                sp.write_report("failed", rid, meta, data)
                stats.failed += 1
                log.error("report %s given up after %d attempts%s: %s", rid, meta["attempts"],
                          " (refused permanently)" if exc.permanent else "", exc)
            else:
                meta["next_attempt"] = now + self._backoff(meta["attempts"])
                sp.write_report("queue", rid, meta, data)
                stats.deferred += 1
                log.warning("report %s not delivered (%s); attempt %d, next in %.0f s", rid,
                            exc, meta["attempts"], meta["next_attempt"] - now)
            os.unlink(sending)
            fsync_dir(sp.dir("sending"))
