"""The on-disk spool: events from milter workers, reports waiting for the
relay, and the state the single sender keeps (all of it lives here, so a
restart loses nothing).

Layout under ``spool_dir`` (every file is written to ``tmp/``, fsynced,
renamed into place and the directory fsynced)::

    .sender.lock             flock held by the one running sender
    .spool.lock              flock around state changes (sender and CLI)
    .retry                   touched by ``outpost reports retry``
    tmp/                     files being written
    new/<id>.evt             events put by workers, not yet looked at
    held/<key>/<id>.evt      events over the per-identity limit, to be folded
    folding/<id>/<id>.evt    a batch being folded into one report
    queue/<id>.rpt           rendered reports waiting for (another) attempt
    sending/<id>.rpt         the report in an SMTP transaction right now
    failed/<id>.rpt|.evt     given up (or unreadable); kept for the operator
    rate/<key>.json          creation times of recent reports per identity, per
                             user and in all (see :func:`rate_keys`)
    overflow.json            blocks counted (not spooled) while the spool was
                             full: per user, a count and the latest event

``<key>`` is a hash of ``user/identity``.  An ``.evt`` file is the line
``OUTPOST-EVENT 1``, one line of JSON and the original message bytes; an
``.rpt`` file is ``OUTPOST-REPORT 1``, one line of JSON (attempts, next
attempt, last error, Message-ID, ...) and the report as sent.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from ...store.filelock import held
from .arf import split_original
from .errors import SpoolError, SpoolItemBusy, SpoolItemNotFound
from .event import BlockEvent, clean
from .settings import ReportSettings

log = logging.getLogger("outpost.reports")

EVENT_MAGIC = b"OUTPOST-EVENT 1\n"
REPORT_MAGIC = b"OUTPOST-REPORT 1\n"
RETRY_MARK = ".retry"               # touched by retry(): the sender drops its relay back-off
OVERFLOW = "overflow.json"          # blocks counted while the spool was full
USAGE_TTL = 1.0                     # seconds a worker trusts its last count of the spool
SUBDIRS = ("tmp", "new", "held", "folding", "queue", "sending", "failed", "rate")
#: item states as shown by ``outpost reports list``
STATES = ("new", "held", "folding", "queued", "sending", "failed")
_STATE_DIR = {"new": "new", "held": "held", "folding": "folding", "queued": "queue",
              "sending": "sending", "failed": "failed"}


def new_id() -> str:
    """A unique, time-sortable item id (safe across processes and threads)."""
    return f"{time.time_ns():019d}-{os.getpid()}-{secrets.token_hex(4)}"


def key_hash(key: str) -> str:
    """Directory/file name for a ``user/identity`` key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def rate_keys(event: BlockEvent) -> tuple[str, str, str]:
    """What the report limits count per: the identity (``user/identity``,
    or ``user`` for an event about the whole user), the user (``user/``:
    user names hold no ``/`` and identities are never empty, so this is no
    identity's key) and all reports (``/``)."""
    return (event.key,) + user_rate_keys(event.user)


def user_rate_keys(user: str) -> tuple[str, str]:
    """The user's and the total key of :func:`rate_keys`."""
    return f"{user}/", "/"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SpoolItem:
    """One entry as listed by :func:`list_items`."""

    id: str
    state: str                      # one of STATES
    identity: str                   # user/identity
    kind: str
    attempts: int = 0
    next_attempt: Optional[float] = None
    last_error: str = ""
    created: Optional[float] = None
    incidents: int = 1
    message_id: str = ""
    path: str = ""


class Spool:
    """A spool directory.  ``put`` is safe from many threads and processes
    at once; everything else is for the one sender and the CLI.

    With ``settings``, ``put`` drops ``limit`` events unless ``on_limit`` is
    set and trims the original message to its header when ``include_body``
    is false or it is larger than ``max_body_size`` (so a 50 MB message never
    lands in the spool).  When the spool holds ``max_spool`` files or bytes,
    ``put`` writes no file: it counts the block for its user in
    ``overflow.json`` (the sender reports the count as ``Incidents``) and
    logs it.  Each worker counts the spool at most once a second and adds
    what it wrote since, so the bound may be passed by what the workers
    write in that second.
    """

    def __init__(self, path: str, settings: Optional[ReportSettings] = None) -> None:
        self.path = os.path.abspath(path)
        self.settings = settings
        self._usage_lock = threading.Lock()
        self._usage: Optional[list[float]] = None     # [counted at (monotonic), files, bytes]
        try:
            os.makedirs(self.path, mode=0o750, exist_ok=True)
            for sub in SUBDIRS:
                os.makedirs(os.path.join(self.path, sub), mode=0o750, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool {self.path}: {exc}") from exc

    @classmethod
    def from_settings(cls, settings: ReportSettings) -> "Spool":
        return cls(settings.spool_dir, settings)

    def dir(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    # -- writing -------------------------------------------------------
    def write_atomic(self, final: str, chunks: list[bytes]) -> None:
        """Write ``chunks`` to ``final`` via ``tmp/``: fsync, rename, fsync
        the directory."""
        tmp = self.dir("tmp", f"{new_id()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            fsync_dir(os.path.dirname(final))
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise SpoolError(f"cannot write {final}: {exc}") from exc

    def put(self, event: BlockEvent) -> Optional[str]:
        """Spool ``event`` for reporting; returns its id, or None when no
        file was written (a ``limit`` event and ``on_limit`` is off, or the
        spool is full and the block was counted instead).  Raises
        SpoolError.  Whether the blocked message was one of our own reports
        is not decided here (nor from its content): see the policy."""
        settings = self.settings
        if settings is not None and event.kind == "limit" and not settings.on_limit:
            return None
        original = event.original or b""
        meta: dict[str, Any] = {"event": event.to_json(), "has_original": event.original is not None,
                                "trimmed": ""}
        if settings is not None and original:
            if not settings.include_body:
                meta["trimmed"] = "the configuration includes headers only (include_body: false)"
            elif len(original) > settings.max_body_size:
                meta["trimmed"] = (f"the message ({len(original)} bytes) is larger than "
                                   f"max_body_size ({settings.max_body_size} bytes)")
            if meta["trimmed"]:
                head = split_original(original[: settings.max_body_size + 65536])[0]
                original = head[: settings.max_body_size]
        item_id = new_id()
        header = json.dumps(meta, ensure_ascii=True, separators=(",", ":")).encode("ascii")
        size = len(EVENT_MAGIC) + len(header) + 1 + len(original)
        if settings is not None and not self._room(size):
            self._count_overflow(event)
            return None
        self.write_atomic(self.dir("new", f"{item_id}.evt"),
                          [EVENT_MAGIC, header, b"\n", original])
        return item_id

    # -- the bound -----------------------------------------------------
    def usage(self) -> tuple[int, int]:
        """(files, bytes) of the events and reports in the spool."""
        files = size = 0
        stack = [self.dir(sub) for sub in ("new", "held", "folding", "queue", "sending", "failed")]
        while stack:
            path = stack.pop()
            try:
                entries = list(os.scandir(path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise SpoolError(f"cannot list {path}: {exc}") from exc
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)    # held/<key>/, folding/<batch>/
                        continue
                    size += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:           # moved meanwhile
                    continue
                files += 1
        return files, size

    def _room(self, size: int) -> bool:
        """True (and counted) if one more file of ``size`` bytes fits under
        ``max_spool``."""
        assert self.settings is not None
        limits = self.settings.max_spool
        now = time.monotonic()
        with self._usage_lock:
            if self._usage is None or not 0 <= now - self._usage[0] < USAGE_TTL:
                files, total = self.usage()
                self._usage = [now, float(files), float(total)]
            if self._usage[1] + 1 > limits.files or self._usage[2] + size > limits.bytes:
                return False
            self._usage[1] += 1
            self._usage[2] += size
            return True

    def read_overflow(self) -> dict[str, dict[str, Any]]:
        """``{user: {"count": n, "first": t, "event": {...}}}`` (empty when
        nothing was counted; an unreadable file is logged and started afresh)."""
        try:
            with open(self.dir(OVERFLOW), encoding="ascii") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("%s unreadable (%s); starting it afresh", self.dir(OVERFLOW), exc)
            return {}
        return data if isinstance(data, dict) else {}

    def write_overflow(self, data: dict[str, dict[str, Any]]) -> None:
        """Replace ``overflow.json`` (hold :meth:`locked`)."""
        if not data:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir(OVERFLOW))
            return
        text = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
        self.write_atomic(self.dir(OVERFLOW), [text.encode("ascii")])

    def _count_overflow(self, event: BlockEvent) -> None:
        """Count ``event`` for its user instead of spooling it.  Bounded: one
        entry per configured user, holding the latest event without its
        original and with at most ``max_list`` recipients and evidence."""
        assert self.settings is not None
        n = self.settings.max_list
        latest = event.to_json()
        latest["recipients"] = latest["recipients"][:n]
        latest["evidence"] = latest["evidence"][:n]
        with self.locked():
            data = self.read_overflow()
            rec = data.get(event.user)
            if not isinstance(rec, dict):
                rec = {"count": 0, "first": event.arrival_time}
            rec["count"] = int(rec.get("count", 0)) + 1
            rec["event"] = latest
            data[event.user] = rec
            self.write_overflow(data)
        count = rec["count"]
        if str(count).rstrip("0") == "1":                    # log the 1st, 10th, 100th, ...
            limits = self.settings.max_spool
            log.warning("report spool %s is full (max_spool: %d files, %d bytes): %d block(s) "
                        "of user %s counted, not spooled; they will be reported as Incidents",
                        self.path, limits.files, limits.bytes, count, clean(event.user, 100))

    def write_report(self, state_dir: str, item_id: str, meta: dict[str, Any],
                     data: bytes) -> str:
        """Write a report item into ``queue``/``failed``; returns its path."""
        header = json.dumps(meta, ensure_ascii=True, separators=(",", ":")).encode("ascii")
        final = self.dir(state_dir, f"{item_id}.rpt")
        self.write_atomic(final, [REPORT_MAGIC, header, b"\n", data])
        return final

    # -- reading -------------------------------------------------------
    @staticmethod
    def _read_head(path: str, magic: bytes, with_rest: bool) -> tuple[dict[str, Any], bytes]:
        try:
            with open(path, "rb") as fh:
                if fh.readline() != magic:
                    raise SpoolError(f"{path}: not a spool file")
                line = fh.readline()
                rest = fh.read() if with_rest else b""
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise SpoolItemNotFound(path) from exc
            raise SpoolError(f"cannot read {path}: {exc}") from exc
        try:
            meta = json.loads(line)
        except ValueError as exc:
            raise SpoolError(f"{path}: bad metadata: {exc}") from exc
        if not isinstance(meta, dict):
            raise SpoolError(f"{path}: bad metadata")
        return meta, rest

    def read_event(self, path: str, with_original: bool = True) -> tuple[BlockEvent, str]:
        """(event, trim note) from an ``.evt`` file."""
        meta, rest = self._read_head(path, EVENT_MAGIC, with_original)
        try:
            original = rest if (with_original and meta.get("has_original")) else None
            return BlockEvent.from_json(meta["event"], original), str(meta.get("trimmed", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise SpoolError(f"{path}: bad event: {exc}") from exc

    def read_report(self, path: str, with_data: bool = True) -> tuple[dict[str, Any], bytes]:
        """(metadata, report bytes) from an ``.rpt`` file."""
        return self._read_head(path, REPORT_MAGIC, with_data)

    def find(self, item_id: str) -> tuple[str, str]:
        """(state, path) of an item id; raises SpoolItemNotFound."""
        if not item_id or "/" in item_id or item_id.startswith("."):
            raise SpoolItemNotFound(item_id)
        for state, sub in _STATE_DIR.items():
            if state in ("held", "folding"):
                for group in self._listdir(sub):
                    path = self.dir(sub, group, f"{item_id}.evt")
                    if os.path.exists(path):
                        return state, path
                continue
            for ext in (".rpt", ".evt"):
                path = self.dir(sub, item_id + ext)
                if os.path.exists(path):
                    return state, path
        raise SpoolItemNotFound(item_id)

    def has_report(self, item_id: str) -> bool:
        """True if a report with this id is queued, being sent or failed."""
        return any(os.path.exists(self.dir(sub, f"{item_id}.rpt"))
                   for sub in ("queue", "sending", "failed"))

    def _listdir(self, *parts: str) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.dir(*parts)) if not n.startswith("."))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SpoolError(f"cannot list {self.dir(*parts)}: {exc}") from exc

    def files(self, *parts: str, ext: str) -> list[str]:
        """Sorted paths of ``*ext`` files in a spool subdirectory."""
        return [self.dir(*parts, n) for n in self._listdir(*parts) if n.endswith(ext)]

    def groups(self, sub: str) -> list[str]:
        """Subdirectory names of ``held`` or ``folding``."""
        return [n for n in self._listdir(sub) if os.path.isdir(self.dir(sub, n))]

    # -- locking -------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``.spool.lock`` (short state changes: sender and CLI)."""
        with held(self.dir(".spool.lock")):
            yield

    def remove_tree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=False)
        fsync_dir(os.path.dirname(path))


# -- CLI helpers (``outpost reports list|retry|purge``) -------------------

def _item_from_event(spool: Spool, state: str, path: str) -> SpoolItem:
    item_id = os.path.basename(path).rsplit(".", 1)[0]
    try:
        event, _ = spool.read_event(path, with_original=False)
    except SpoolError as exc:
        return SpoolItem(id=item_id, state=state, identity="?", kind="?",
                         last_error=f"unreadable: {exc}", path=path)
    return SpoolItem(id=item_id, state=state, identity=event.key, kind=event.kind,
                     created=event.arrival_time, path=path)


def _item_from_report(spool: Spool, state: str, path: str) -> SpoolItem:
    item_id = os.path.basename(path).rsplit(".", 1)[0]
    meta, _ = spool.read_report(path, with_data=False)
    return SpoolItem(id=item_id, state=state, identity=str(meta.get("identity", "?")),
                     kind=str(meta.get("kind", "?")), attempts=int(meta.get("attempts", 0)),
                     next_attempt=meta.get("next_attempt"),
                     last_error=str(meta.get("last_error", "")), created=meta.get("created"),
                     incidents=int(meta.get("incidents", 1)),
                     message_id=str(meta.get("message_id", "")), path=path)


def list_items(spool: Spool) -> list[SpoolItem]:
    """Every item in the spool, in state order then id order."""
    items: list[SpoolItem] = []
    for path in spool.files("new", ext=".evt"):
        items.append(_item_from_event(spool, "new", path))
    for state in ("held", "folding"):
        for group in spool.groups(state):
            for path in spool.files(state, group, ext=".evt"):
                items.append(_item_from_event(spool, state, path))
    for state in ("queued", "sending", "failed"):
        sub = _STATE_DIR[state]
        for path in spool.files(sub, ext=".rpt"):
            with contextlib.suppress(SpoolItemNotFound):   # sent meanwhile
                items.append(_item_from_report(spool, state, path))
        for path in spool.files(sub, ext=".evt"):
            items.append(_item_from_event(spool, state, path))
    return items


def overflow_counts(spool: Spool) -> list[tuple[str, int]]:
    """(user, blocks) counted but not spooled while the spool was full,
    waiting to be reported as one report per user."""
    out = []
    for user, rec in sorted(spool.read_overflow().items()):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            out.append((user, int(rec["count"])))
    return out


def retry(spool: Spool, item_id: Optional[str] = None, now: Optional[float] = None) -> int:
    """Make queued reports due now and move failed reports back to the
    queue (attempts and give-up clock reset).  ``item_id`` None: all of
    them.  Returns how many items changed; raises SpoolItemNotFound for an
    unknown id and SpoolError for an item that cannot be retried."""
    now = time.time() if now is None else now
    count = 0
    with spool.locked():
        if item_id is not None:
            state, path = spool.find(item_id)
            if state not in ("queued", "failed") or not path.endswith(".rpt"):
                raise SpoolError(f"{item_id} is {state}; only queued or failed reports can be retried")
            targets = [(state, path)]
        else:
            targets = [("queued", p) for p in spool.files("queue", ext=".rpt")]
            targets += [("failed", p) for p in spool.files("failed", ext=".rpt")]
        for state, path in targets:
            rid = os.path.basename(path)[:-4]
            meta, data = spool.read_report(path)
            meta["next_attempt"] = now
            if state == "failed":
                meta["attempts"] = 0
                meta["since"] = now
            spool.write_report("queue", rid, meta, data)
            if state == "failed":
                os.unlink(path)
                fsync_dir(os.path.dirname(path))
            count += 1
        if count:
            with open(spool.dir(RETRY_MARK), "a", encoding="ascii"):
                pass
            os.utime(spool.dir(RETRY_MARK))
    return count


def purge(spool: Spool, item_id: Optional[str] = None, state: Optional[str] = None) -> int:
    """Delete one item (any state but ``sending``; with ``state`` only if it
    is in that state) or, with ``item_id`` None, every item in ``state``
    (default ``failed``).  Returns how many items were deleted."""
    if item_id is None and state is None:
        state = "failed"
    with spool.locked():
        if item_id is not None:
            found, path = spool.find(item_id)
            if found == "sending":
                raise SpoolItemBusy(f"{item_id} is being sent")
            if state is not None and found != state:
                raise SpoolItemNotFound(f"{item_id} is {found}, not {state}")
            os.unlink(path)
            fsync_dir(os.path.dirname(path))
            return 1
        if state not in ("new", "held", "queued", "failed"):
            raise ValueError(f"purge: state must be new, held, queued or failed, not {state!r}")
        sub = _STATE_DIR[state]
        count = 0
        if state == "held":
            for group in spool.groups(sub):
                count += len(spool.files(sub, group, ext=".evt"))
                spool.remove_tree(spool.dir(sub, group))
            return count
        for path in spool.files(sub, ext=".rpt") + spool.files(sub, ext=".evt"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                count += 1
        fsync_dir(spool.dir(sub))
        return count
