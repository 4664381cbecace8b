"""``outpost feedback``: take receivers' complaints (ARF) from standard input
(a Postfix or Sendmail alias piping to the command) or from a Maildir,
count each attributable one against its identity (:mod:`outpost.core.feedback`),
keep the others in a bounded spool, and list both (``outpost feedback list``).

Exit codes, for a pipe transport: 0 when the complaint was counted or kept
(also when it could not be read: it is kept, never bounced back to the
receiver), 75 (EX_TEMPFAIL) when the store, the spool, the configuration or
the secret cannot be used now, so the MTA keeps the message and retries."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator, Optional

from .config.model import Config, FeedbackSettings
from .core.feedback import (
    Counted,
    Report,
    ReportError,
    attribute,
    clean,
    count_complaint,
    find_user,
    parse_report,
    verified_original,
)
from .core.idtoken import Origin, TokenCodec
from .core.keys import Target, complaint_claim_key
from .store.base import Bucket, Store, StoreError
from .store.filelock import held

if TYPE_CHECKING:
    from .effects.reports import BlockEvent

log = logging.getLogger("outpost.feedback")

EX_OK = 0
EX_TEMPFAIL = 75                  # sysexits.h: the MTA keeps the message and retries
KEPT = "unattributed"             # spool subdirectories
COUNTED = "counted"
_CHUNK = 1 << 16


class SpoolError(OSError):
    """The spool directory cannot be written."""


@dataclass(frozen=True)
class Outcome:
    """What became of one complaint."""

    code: int                     # exit code
    text: str                     # one line for the operator / the MTA's log


def read_bounded(stream: IO[bytes], max_size: int) -> tuple[bytes, bool]:
    """At most ``max_size`` bytes of ``stream`` and whether there was more
    (the rest is read and dropped, so a pipe writer never sees EPIPE)."""
    data = stream.read(max_size + 1)
    if len(data) <= max_size:
        return data, False
    while stream.read(_CHUNK):
        pass
    return data[:max_size], True


class Spool:
    """``feedback.spool_dir``: ``unattributed/`` (each kept report: ID.eml
    and ID.json) and ``counted/`` (one ID.json per counted complaint: what
    ``feedback list`` shows, and what makes a repeated complaint about the
    same message count once).  Each keeps at most ``max_kept``, oldest go."""

    def __init__(self, settings: FeedbackSettings) -> None:
        self.root = Path(settings.spool_dir)
        self.max_kept = settings.max_kept

    def _dir(self, kind: str) -> Path:
        path = self.root / kind
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as exc:
            raise SpoolError(f"feedback spool {path}: {exc.strerror}") from None
        return path

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @staticmethod
    def _mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:            # pruned by another run meanwhile
            return 0.0

    def _prune(self, where: Path) -> None:
        metas = sorted(where.glob("*.json"), key=lambda p: (self._mtime(p), p.name))
        for meta in metas[:max(0, len(metas) - self.max_kept)]:
            meta.with_suffix(".eml").unlink(missing_ok=True)
            meta.unlink(missing_ok=True)

    def keep(self, raw: bytes, meta: dict[str, Any]) -> str:
        """Keep an unattributed report (its id: a digest of its bytes, so the
        same report kept twice is one item)."""
        where = self._dir(KEPT)
        ident = hashlib.sha256(raw).hexdigest()[:24]
        try:
            self._write(where / f"{ident}.eml", raw)
            self._write(where / f"{ident}.json", json.dumps({"id": ident, **meta}).encode())
            self._prune(where)
        except OSError as exc:
            raise SpoolError(f"feedback spool {where}: {exc.strerror}") from None
        return ident

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        """Hold the spool's counting lock (``counted/.lock``): one complaint
        is counted at a time on this host, so two reports of one message
        never both find it uncounted."""
        where = self._dir(COUNTED)
        lock = contextlib.ExitStack()
        try:
            lock.enter_context(held(where / ".lock"))
        except OSError as exc:
            raise SpoolError(f"feedback spool {where}: {exc.strerror}") from None
        with lock:
            yield

    def record_path(self, digest: str) -> Path:
        return self._dir(COUNTED) / f"{digest}.json"

    @staticmethod
    def load(path: Path) -> Optional[dict[str, Any]]:
        """The record of a complaint about one message: None when there is
        none; a damaged one reads as counted (never counted twice)."""
        try:
            item = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"state": "counted"}
        return item if isinstance(item, dict) else {"state": "counted"}

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        """Write a record (atomically: the old one or the new one, whole)."""
        try:
            self._write(path, json.dumps({"id": path.stem, **meta}).encode())
        except OSError as exc:
            raise SpoolError(f"feedback spool {path.parent}: {exc.strerror}") from None

    def finish(self, path: Path, meta: dict[str, Any]) -> None:
        self.save(path, meta)
        try:
            self._prune(path.parent)
        except OSError as exc:
            raise SpoolError(f"feedback spool {path.parent}: {exc.strerror}") from None

    @staticmethod
    def drop(path: Path) -> None:
        path.unlink(missing_ok=True)

    def unkeep(self, raw: bytes) -> None:
        """Forget a kept copy of ``raw`` (kept by an earlier run that failed,
        now counted)."""
        where = self.root / KEPT
        ident = hashlib.sha256(raw).hexdigest()[:24]
        for suffix in (".eml", ".json"):
            (where / f"{ident}{suffix}").unlink(missing_ok=True)

    def items(self, kind: str) -> list[dict[str, Any]]:
        where = self.root / kind
        out = []
        for meta in sorted(where.glob("*.json")) if where.is_dir() else []:
            try:
                item = json.loads(meta.read_text())
            except (OSError, ValueError):
                continue                  # a record being written, or damaged
            if isinstance(item, dict) and item:
                out.append(item)
        out.sort(key=lambda i: (i.get("received", 0), i.get("id", "")))
        return out


def _summary(report: Optional[Report]) -> dict[str, Any]:
    if report is None:
        return {}
    return {"feedback_type": report.feedback_type or None, "arf": report.arf,
            "from": report.sender or None, "subject": report.subject or None,
            "user_agent": report.user_agent or None, "source_ip": report.source_ip or None,
            "original_rcpt_to": report.original_rcpt_to or None}


def learn_spam(store: Store, original: bytes) -> None:
    """Add a reported message to the operator's Bayes model (the blob
    ``outpost train`` writes) as spam; the milter uses it after a reload."""
    from .spam.bayes import ModelError
    from .training import learn
    try:
        learn(store, [(original, True)])
    except ModelError as exc:
        log.error("not learning from the complaint: the trained model is unreadable (%s)", exc)


#: ARF feedback types that are no complaint about the mail: a receiver's
#: "this is not spam" (RFC 6650) and authentication-failure reports (RFC 6591,
#: DMARC), which carry the original headers too.  Kept, never counted.
NOT_COMPLAINTS = frozenset({"not-spam", "auth-failure"})


def handle(config: Config, store: Store, codec: TokenCodec, spool: Spool, raw: bytes,
           truncated: bool = False,
           reporter: Optional[Callable[["BlockEvent"], object]] = None) -> Outcome:
    """Attribute and count one complaint, or keep it."""
    fb = config.feedback
    now = time.time()
    report: Optional[Report] = None
    try:
        report = parse_report(raw, fb.max_size, fb.max_parts)
        origin, why = attribute(report, codec)
    except ReportError as exc:
        origin, why = None, f"unreadable: {exc}"
    except Exception as exc:  # noqa: BLE001 - a parser fault on hostile input: keep it, never bounce it
        log.error("complaint parser failed: %s: %s", type(exc).__name__, exc)
        report, origin, why = None, None, f"unreadable: {type(exc).__name__}"
    if truncated:
        why = why and f"{why} (report larger than feedback.max_size, kept truncated)"
    if origin is not None and report is not None and report.feedback_type in NOT_COMPLAINTS:
        origin, why = None, f"feedback type {report.feedback_type}: not a complaint, not counted"
    if origin is None:
        ident = spool.keep(raw, {"received": now, "reason": why, "size": len(raw),
                                 **_summary(report)})
        log.warning("kept unattributed complaint %s: %s", ident, why)
        return Outcome(EX_OK, f"kept unattributed complaint {ident}: {why}")
    assert report is not None
    try:
        return _count(config, store, codec, spool, raw, report, origin, truncated, now, reporter)
    except (StoreError, SpoolError):
        raise
    except Exception as exc:     # a fault of ours: keep the complaint, the MTA retries
        log.exception("internal error while counting the complaint about %s/%s",
                      origin.user, origin.identity)
        why = f"internal error while counting it: {type(exc).__name__}: {clean(exc)}"
        ident = spool.keep(raw, {"received": now, "reason": why, "size": len(raw), **_summary(report)})
        return Outcome(EX_TEMPFAIL, f"complaint about {origin.user}/{origin.identity} not counted: "
                                    f"{why}; kept as {ident}, the MTA retries")


def message_digest(origin: Origin) -> str:
    """What names a reported message (in ``counted/`` and in the store's
    claim): its user, identity, queue id and sending time, hashed."""
    return hashlib.sha256("\0".join((origin.user, origin.identity, origin.queue_id, str(origin.time)))
                          .encode("utf-8", "surrogateescape")).hexdigest()[:24]


def claim(store: Store, digest: str, window: float) -> bool:
    """Claim the reported message in the store (atomically, for every relay
    sharing it): True the first time within ``window``, False after."""
    return store.hit([Bucket(key=complaint_claim_key(digest), limit=1, window=window)]).allowed


def _count(config: Config, store: Store, codec: TokenCodec, spool: Spool, raw: bytes,
           report: Report, origin: Origin, truncated: bool, now: float,
           reporter: Optional[Callable[["BlockEvent"], object]]) -> Outcome:
    """Count an attributed complaint once: a record in ``counted/`` holds
    the progress of each step (store claim, identity count, user count,
    locks, learning), saved as it goes, so a run stopped by a store error
    is resumed by the MTA's retry and nothing is counted twice."""
    fb = config.feedback
    user = find_user(config, origin.user)
    window = (user.policy if user is not None else config.defaults).lock.complaint_window
    digest = message_digest(origin)
    about = f"complaint about {origin.user}/{origin.identity} queue id {origin.queue_id or '-'}"
    with spool.counting():
        path = spool.record_path(digest)
        found = spool.load(path)
        if found is not None and found.get("state", "counted") == "counted":
            return Outcome(EX_OK, f"{about} was counted before; not counted again")
        progress: dict[str, Any] = found or {
            "state": "counting", "received": now, "user": origin.user,
            "identity": origin.identity, "queue_id": origin.queue_id or None, "sent": origin.time,
            **_summary(report)}
        try:
            if not progress.get("claimed"):
                if not claim(store, digest, window):
                    spool.drop(path)
                    return Outcome(EX_OK, f"{about} was counted before (the store holds its "
                                          f"claim); not counted again")
                progress["claimed"] = True
                spool.save(path, progress)
            counted: Counted = count_complaint(config, store, origin, progress,
                                               lambda: spool.save(path, progress))
        except BaseException:
            if not progress.get("claimed"):
                spool.drop(path)                # nothing done: no record left behind
            raise                               # else kept: the retry resumes it
        _report_locks(config, spool, reporter, report, origin, counted, window, now)
        learned = ""
        if fb.learn_from_complaints and not truncated and not progress.get("learned"):
            original = verified_original(report, codec, origin)
            if original is not None:
                try:
                    learn_spam(store, original)
                    learned = "; learned as spam"
                    progress["learned"] = True
                except StoreError as exc:
                    log.error("could not learn from the complaint about %s: %s", counted.target, exc)
        progress.update({"state": "counted", "identity_complaints": counted.identity_count,
                         "user_complaints": counted.user_count, "locked": list(counted.locked)})
        spool.finish(path, progress)
    spool.unkeep(raw)
    log.warning("complaint about %s (queue id %s): %d for the identity, %d for the user%s",
                counted.target, origin.queue_id or "-", counted.identity_count, counted.user_count,
                f"; locked {', '.join(counted.locked)}" if counted.locked else "")
    return Outcome(EX_OK, f"counted complaint against {counted.target} (queue id "
                          f"{origin.queue_id or '-'}): {counted.identity_count} for the identity, "
                          f"{counted.user_count} for the user"
                          + (f"; locked {', '.join(counted.locked)}" if counted.locked else "")
                          + learned)


MAX_LISTED = 20            # complaints named in the abuse report of a lock


def _report_locks(config: Config, spool: Spool, reporter: Optional[Callable[["BlockEvent"], object]],
                  report: Report, origin: Origin, counted: Counted, window: float, now: float) -> None:
    """An abuse report for each lock this complaint set (as the automatic
    lock of spam verdicts and rate-limit hits sends one), naming the
    complaints counted (those this host recorded in the window, and this
    one) and the window.  Never raises."""
    if reporter is None or not counted.locks:
        return
    from .effects.reports import BlockEvent
    user = find_user(config, origin.user)
    for lock in counted.locks:
        target = Target.of_lock_key(lock.key)
        try:
            reporter(BlockEvent(
                kind="complaints", action="lock", user=origin.user, identity=target.identity,
                client_ip=origin.client_ip or None, queue_id=origin.queue_id or None,
                arrival_time=float(origin.time) if origin.time else now,
                evidence=complaint_lines(spool, target, now - window, report, origin, now),
                reason=lock.reason, lock_until=lock.until,
                remedy=f"outpost unlock {target}",
                report_to=user.policy.abuse_contact if user is not None else None))
        except Exception:         # a report must never turn into a lost complaint
            log.exception("could not spool the abuse report of the lock of %s", lock.key)


def complaint_lines(spool: Spool, target: Target, since: float, report: Report, origin: Origin,
                    now: float) -> tuple[str, ...]:
    """One line per complaint counted against ``target`` since ``since``
    (this host's records, newest last, at most MAX_LISTED), this one included."""
    def line(when: Any, queue_id: Any, identity: Any, ftype: Any, sender: Any) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(when or 0)))
        return (f"complaint {stamp} UTC about queue id {queue_id or '-'} from {identity}: "
                f"{ftype or 'no feedback type'}, reported by {sender or '-'}")

    items = [it for it in spool.items(COUNTED)
             if it.get("state", "counted") == "counted" and it.get("user") == target.user
             and (target.whole_user or it.get("identity") == target.identity)
             and float(it.get("received") or 0) >= since]
    lines = [line(it.get("received"), it.get("queue_id"), it.get("identity"),
                  it.get("feedback_type"), it.get("from")) for it in items]
    lines.append(line(now, origin.queue_id, origin.identity, report.feedback_type, report.sender))
    return tuple(lines[-MAX_LISTED:])


def running_as() -> str:
    """``user NAME (uid N)`` of this process."""
    import pwd
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = "?"
    return f"user {name} (uid {uid})"


def access_problems(config: Config) -> list[str]:
    """What the user this command runs as cannot do that taking a complaint
    needs (the MTA runs the pipe as an unprivileged user: Postfix's
    ``default_privs`` or the alias file's owner, Sendmail's ``DefaultUser``,
    unless a pipe transport names ``user=outpost``): read the secret, write
    ``feedback.spool_dir``, the SQLite store and its folder, and
    ``reports.spool_dir``.  Empty when all is well."""
    from .store.url import StoreURLError, parse_store_url
    problems = []
    if not os.access(config.secret_file, os.R_OK):
        problems.append(f"cannot read secret_file {config.secret_file}")
    fb = config.feedback.spool_dir
    need: list[tuple[str, str]] = [("feedback.spool_dir", fb)] + [
        ("feedback.spool_dir", os.path.join(fb, sub)) for sub in (KEPT, COUNTED)
        if os.path.isdir(os.path.join(fb, sub))]
    try:
        db = parse_store_url(config.store).path
    except StoreURLError:
        db = None
    if db:
        need.append(("the store's folder", os.path.dirname(os.path.abspath(db)) or "/"))
        if os.path.exists(db):
            need.append(("the store", db))
    if config.reports is not None:                  # a report is written to tmp/, moved to new/
        need += [("reports.spool_dir", path) for path in
                 [config.reports.spool_dir] + [os.path.join(config.reports.spool_dir, sub)
                                               for sub in ("tmp", "new")]
                 if path == config.reports.spool_dir or os.path.isdir(path)]
    for what, path in need:
        probe = path                      # a folder not made yet: its parent must be writable
        while probe != "/" and not os.path.exists(probe):
            probe = os.path.dirname(probe) or "/"
        mode = os.W_OK | (os.X_OK if os.path.isdir(probe) else 0)
        if not os.access(probe, mode):
            problems.append(f"cannot write {what} {probe}")
    return problems


def maildir_files(path: str) -> list[Path]:
    """The messages of a Maildir (``new/`` and ``cur/``), or of a plain
    directory of message files."""
    root = Path(path)
    if not root.is_dir():
        raise NotADirectoryError(f"{path}: not a directory")
    subdirs = [root / "new", root / "cur"]
    dirs = [d for d in subdirs if d.is_dir()] or [root]
    return sorted(p for d in dirs for p in d.iterdir() if p.is_file() and not p.name.startswith("."))


def list_data(spool: Spool) -> dict[str, Any]:
    """The kept reports, the counted complaints, and those whose counting
    was interrupted (a store error: the MTA's retry completes them)."""
    records = spool.items(COUNTED)
    return {"unattributed": spool.items(KEPT),
            "counted": [r for r in records if r.get("state", "counted") == "counted"],
            "counting": [r for r in records if r.get("state", "counted") != "counted"]}


def list_text(data: dict[str, Any]) -> str:
    def when(t: Any) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t or 0)))

    lines = [f"unattributed complaints ({len(data['unattributed'])}):"]
    for it in data["unattributed"]:
        lines.append(f"  {it.get('id')}  {when(it.get('received'))}  {it.get('feedback_type') or '-':8} "
                     f"from {it.get('from') or '-'}: {it.get('reason')}")
    lines.append(f"counted complaints ({len(data['counted'])}):")
    for it in data["counted"]:
        lines.append(f"  {when(it.get('received'))}  {it.get('user')}/{it.get('identity')}  "
                     f"queue id {it.get('queue_id') or '-'}  {it.get('feedback_type') or '-':8} "
                     f"identity {it.get('identity_complaints')}, user {it.get('user_complaints')}"
                     + (f"  locked {', '.join(it['locked'])}" if it.get("locked") else ""))
    if data.get("counting"):
        lines.append(f"interrupted by a store error, completed by the MTA's retry ({len(data['counting'])}):")
        for it in data["counting"]:
            lines.append(f"  {when(it.get('received'))}  {it.get('user')}/{it.get('identity')}  "
                         f"queue id {it.get('queue_id') or '-'}")
    return "\n".join(lines)
