"""``outpost feedback``: take receivers' complaints (ARF) from standard input
(a Postfix or Sendmail alias piping to the command) or from a Maildir,
count each attributable one against its identity (:mod:`outpost.core.feedback`),
keep the others in a bounded spool, and list both (``outpost feedback list``).

Exit codes, for a pipe transport: 0 when the complaint was counted or kept
(also when it could not be read: it is kept, never bounced back to the
receiver), 75 (EX_TEMPFAIL) when the store, the spool, the configuration or
the secret cannot be used now, so the MTA keeps the message and retries."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional

from .config.model import Config, FeedbackSettings
from .core.feedback import Counted, Report, ReportError, attribute, count_complaint, parse_report
from .core.idtoken import Origin, TokenCodec
from .store.base import Store, StoreError

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

    def claim(self, origin: Origin) -> Optional[Path]:
        """The record of a complaint about this message, created now; None
        when one exists already (the same message was counted before)."""
        where = self._dir(COUNTED)
        digest = hashlib.sha256("\0".join((origin.user, origin.identity, origin.queue_id,
                                           str(origin.time))).encode("utf-8", "surrogateescape"))
        path = where / f"{digest.hexdigest()[:24]}.json"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileExistsError:
            return None
        except OSError as exc:
            raise SpoolError(f"feedback spool {where}: {exc.strerror}") from None
        os.close(fd)
        return path

    def record(self, path: Path, meta: dict[str, Any]) -> None:
        try:
            path.write_text(json.dumps({"id": path.stem, **meta}))
            self._prune(path.parent)
        except OSError as exc:
            raise SpoolError(f"feedback spool {path.parent}: {exc.strerror}") from None

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
    from .spam.bayes import Model, ModelError, outbound_view, tokenize
    from .spam.from_config import MODEL_BLOB
    blob = store.get_blob(MODEL_BLOB)
    try:
        model = Model.from_bytes(blob) if blob else Model()
    except ModelError as exc:
        log.error("not learning from the complaint: the trained model is unreadable (%s)", exc)
        return
    model.learn(tokenize(outbound_view(original)), True)
    store.put_blob(MODEL_BLOB, model.pruned(min_count=1, max_tokens=60_000).to_bytes())


#: ARF feedback types that are no complaint about the mail: a receiver's
#: "this is not spam" (RFC 6650) and authentication-failure reports (RFC 6591,
#: DMARC), which carry the original headers too.  Kept, never counted.
NOT_COMPLAINTS = frozenset({"not-spam", "auth-failure"})


def handle(config: Config, store: Store, codec: TokenCodec, spool: Spool, raw: bytes,
           truncated: bool = False) -> Outcome:
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
    record = spool.claim(origin)
    if record is None:
        return Outcome(EX_OK, f"complaint about {origin.user}/{origin.identity} queue id "
                              f"{origin.queue_id or '-'} was counted before; not counted again")
    try:
        counted: Counted = count_complaint(config, store, origin)
    except StoreError:
        record.unlink(missing_ok=True)          # counted on the retry
        raise
    spool.record(record, {"received": now, "user": origin.user, "identity": origin.identity,
                          "queue_id": origin.queue_id or None, "sent": origin.time,
                          "identity_complaints": counted.identity_count,
                          "user_complaints": counted.user_count, "locked": list(counted.locked),
                          **_summary(report)})
    learned = ""
    if fb.learn_from_complaints and report.original is not None and not truncated:
        try:
            learn_spam(store, report.original)
            learned = "; learned as spam"
        except StoreError as exc:
            log.error("could not learn from the complaint about %s: %s", counted.target, exc)
    log.warning("complaint about %s (queue id %s): %d for the identity, %d for the user%s",
                counted.target, origin.queue_id or "-", counted.identity_count, counted.user_count,
                f"; locked {', '.join(counted.locked)}" if counted.locked else "")
    return Outcome(EX_OK, f"counted complaint against {counted.target} (queue id "
                          f"{origin.queue_id or '-'}): {counted.identity_count} for the identity, "
                          f"{counted.user_count} for the user"
                          + (f"; locked {', '.join(counted.locked)}" if counted.locked else "")
                          + learned)


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
    return {"unattributed": spool.items(KEPT), "counted": spool.items(COUNTED)}


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
    return "\n".join(lines)
