"""SQLite store: one host, shared safely by many processes and threads.

The database runs in WAL mode; every operation that reads and then writes
is one ``BEGIN IMMEDIATE`` transaction, so a check and its count are atomic
across processes.  Connections come from a small per-process pool (pymilter
runs each SMTP session on its own short-lived thread).  Time is this host's
clock.  Connection slots are not in the database but in a table shared
through ``<db>-conn`` (:mod:`outpost.store.slots`); slots of processes that
no longer exist are reclaimed when their IP reaches its limit or is counted.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import time
from types import TracebackType
from typing import Iterator, Optional, Sequence

from . import volume as vol
from .base import (
    STAT_PERIODS,
    Bucket,
    BucketState,
    DecisionEntry,
    FingerprintStats,
    HitResult,
    Lock,
    Store,
    StoreError,
    VolumeCounts,
    VolumeSpec,
    stat_buckets,
)
from .filelock import FileLock
from .locks import LockRecord
from .owners import slot_owner
from .settings import StoreSettings
from .slots import SlotTable
from .windows import (
    SUBWINDOWS,
    WindowCounts,
    bucket_id,
    bucket_key_of,
    bucket_state,
    check_recipients,
    check_window,
    key_in_prefix,
    subwindow_expiry,
    subwindow_index,
    validate_buckets,
    window_decide,
)

#: The rate-limit subwindows (:mod:`outpost.store.windows`): ``n`` units
#: admitted in subwindow ``subwindow`` of bucket ``id``.  Earlier versions
#: kept them in ``rl_slot (id, slot, n, expires)``: the first start of this
#: version copies the ones still counting (:meth:`SqliteStore._upgrade`); the
#: old table stays, unused (docs/upgrading.rst).
_RL_SUBWINDOW = """
CREATE TABLE IF NOT EXISTS rl_subwindow (
    id TEXT NOT NULL, subwindow INTEGER NOT NULL, n INTEGER NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (id, subwindow)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rl_subwindow_expires ON rl_subwindow (expires);
"""

_SCHEMA = _RL_SUBWINDOW + """
CREATE TABLE IF NOT EXISTS event (key TEXT NOT NULL, t REAL NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS event_key_t ON event (key, t);
CREATE INDEX IF NOT EXISTS event_expires ON event (expires);
CREATE TABLE IF NOT EXISTS lock (
    key TEXT PRIMARY KEY, locked INTEGER NOT NULL, reason TEXT, since REAL, until REAL,
    by TEXT, auto_unlocks INTEGER NOT NULL, touched REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lock_locked_until ON lock (locked, until);
CREATE INDEX IF NOT EXISTS lock_locked_touched ON lock (locked, touched);
CREATE TABLE IF NOT EXISTS fingerprint (
    fp TEXT NOT NULL, t REAL NOT NULL, expires REAL NOT NULL, member TEXT NOT NULL,
    recipients INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS fingerprint_fp_t ON fingerprint (fp, t);
CREATE INDEX IF NOT EXISTS fingerprint_expires ON fingerprint (expires);
CREATE TABLE IF NOT EXISTS fingerprint_member (
    fp TEXT NOT NULL, member TEXT NOT NULL, messages INTEGER NOT NULL, recipients INTEGER NOT NULL,
    PRIMARY KEY (fp, member)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fingerprint_total (
    fp TEXT PRIMARY KEY, messages INTEGER NOT NULL, recipients INTEGER NOT NULL,
    members INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stat (
    period TEXT NOT NULL, idx INTEGER NOT NULL, name TEXT NOT NULL, n INTEGER NOT NULL,
    expires REAL NOT NULL, PRIMARY KEY (period, idx, name)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS stat_expires ON stat (expires);
CREATE TABLE IF NOT EXISTS blob (name TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS volume (
    key TEXT PRIMARY KEY, data TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS volume_expires ON volume (expires);
CREATE TABLE IF NOT EXISTS decision (id INTEGER PRIMARY KEY, t REAL NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS decision_t ON decision (t);
"""

_POOL_SIZE = 16

#: Page cache of each connection, in pages (``PRAGMA cache_size``).  A
#: connection's cache is emptied whenever another connection (any worker)
#: has committed, i.e. before nearly every transaction here, so a big cache
#: holds nothing worth keeping; with SQLite's default (-2000: up to 2 MB)
#: every page past the first 20 is malloc'ed for one transaction and freed
#: at the next.  Up to 20 pages (SQLITE_DEFAULT_PCACHE_INITSZ) come from one
#: block allocated when the connection opens and are recycled, never freed;
#: 16 pages cover the deepest transaction here (three B-tree indexes and a
#: table), and the file stays in the OS page cache.  Measured with 8 threads
#: adding fingerprints to a growing file: a smaller glibc heap, and slightly
#: more writes per second (docs/benchmarks.rst, the soak).
_CACHE_PAGES = 16

#: Most expired rows of one table a sweep deletes.  A sweep runs in a
#: message's transaction and holds the write lock: at 100 msgs/s a minute
#: leaves 36 000 fingerprint rows to expire, which took 0.9-1.1 s in one
#: statement (every worker waiting; their entries sit at random places of
#: the ``fp`` index); 250 take 10-20 ms (up to 97 ms with the WAL checkpoint
#: that follows some), and a backlog goes on in the next transactions until
#: it is gone (same machine, loaded).
_SWEEP_ROWS = 250

#: Locked identities a process keeps in memory to answer "not locked"
#: without a query; with more, every message asks the database.
_LOCKED_KEYS_MAX = 10000


class SqliteStore(Store):
    """Store in one SQLite database file (absolute path)."""

    def __init__(self, path: str, settings: Optional[StoreSettings] = None) -> None:
        if not os.path.isabs(path):
            raise ValueError(f"sqlite store path must be absolute, got {path!r}")
        self.path = path
        self.url = f"sqlite://{path}"
        self.settings = settings or StoreSettings()
        self.host = socket.gethostname()
        self._pool_mutex = threading.Lock()
        self._pool: list[sqlite3.Connection] = []
        self._pool_pid = os.getpid()
        self._sweep_mutex = threading.Lock()
        # Writers take turns here before asking SQLite for its write lock.
        # SQLite's own busy handler polls (it sleeps 1, 2, 5, 10 ms...
        # between tries), which leaves cores idle while connections queue;
        # the lock wakes the next writer as soon as it is free.
        self._writer = FileLock(path + "-writer", path, f"sqlite store {path}: writer lock")
        self._next_sweep = 0.0
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as exc:
            raise StoreError(f"sqlite store {path}: cannot create its directory: {exc}") from exc
        with self._write() as db:
            self._upgrade(db)
            totals_missing = self._fingerprint_totals_missing(db)
            db.executescript(_SCHEMA)
            if totals_missing:
                self._build_fingerprint_totals(db)
        self._conn_slots = SlotTable(path + "-conn", like=path)
        self._locks_changed = False
        self._locked_keys: Optional[tuple[int, Optional[frozenset[str]]]] = None

    @staticmethod
    def _upgrade(db: sqlite3.Connection) -> None:
        """A database of an earlier version (``rl_slot``, no
        ``rl_subwindow``): create ``rl_subwindow`` with the subwindows that
        still count, in one transaction under the writer lock, so that
        exactly one process copies them and the limits go on across the
        upgrade."""
        def tables() -> set[str]:
            return {name for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name IN ('rl_slot', 'rl_subwindow')")}

        if tables() != {"rl_slot"}:             # new, or upgraded: nothing to write
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            if tables() == {"rl_slot"}:
                for statement in _RL_SUBWINDOW.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO rl_subwindow (id, subwindow, n, expires) "
                           "SELECT id, slot, n, expires FROM rl_slot WHERE expires > ?", (time.time(),))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.rollback()
            raise

    @staticmethod
    def _fingerprint_totals_missing(db: sqlite3.Connection) -> bool:
        """A database of an earlier version: fingerprint entries, no totals."""
        names = {name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name IN ('fingerprint', 'fingerprint_total')")}
        return names == {"fingerprint"}

    @staticmethod
    def _build_fingerprint_totals(db: sqlite3.Connection) -> None:
        """The running totals of the entries an earlier version left (under
        the writer lock: one process builds them, the others find them)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM fingerprint_total LIMIT 1").fetchone() is None:
                db.execute("INSERT INTO fingerprint_member (fp, member, messages, recipients) "
                           "SELECT fp, member, count(*), sum(recipients) FROM fingerprint "
                           "GROUP BY fp, member")
                db.execute("INSERT INTO fingerprint_total (fp, messages, recipients, members) "
                           "SELECT fp, sum(messages), sum(recipients), count(*) "
                           "FROM fingerprint_member GROUP BY fp")
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.rollback()
            raise

    # -- plumbing ------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.settings.busy_timeout,
                             isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {int(self.settings.busy_timeout * 1000)}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute(f"PRAGMA cache_size = {_CACHE_PAGES}")
        return db

    def _conn(self) -> "_Use":
        """``with self._conn() as db``: a pooled connection for reads."""
        return _Use(self, False)

    def _write(self) -> "_Use":
        """``with self._write() as db``: a pooled connection for one write
        statement (autocommit), taken with the writer lock."""
        return _Use(self, True)

    def _take(self) -> sqlite3.Connection:
        with self._pool_mutex:
            if self._pool_pid != os.getpid():   # forked: never share a connection
                self._pool, self._pool_pid = [], os.getpid()
            db = self._pool.pop() if self._pool else None
        return db if db is not None else self._connect()

    def _give_back(self, db: sqlite3.Connection, reuse: bool) -> None:
        """Return a connection to the pool, or close it."""
        if reuse:
            with self._pool_mutex:
                if len(self._pool) < _POOL_SIZE and self._pool_pid == os.getpid():
                    self._pool.append(db)
                    return
        with contextlib.suppress(sqlite3.Error):
            db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction (write lock taken up front)."""
        with self._write() as db:
            db.execute("BEGIN IMMEDIATE")
            self._locks_changed = False             # the writer lock guards it
            try:
                yield db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.rollback()
                raise
            db.execute("COMMIT")
            if self._locks_changed:
                # after the commit: a reader that sees the new generation
                # reads the new locks
                self._conn_slots.advance()

    def now(self) -> float:
        return time.time()

    def close(self) -> None:
        with self._pool_mutex:
            pool, self._pool = self._pool, []
        for db in pool:
            db.close()
        self._writer.close()
        self._conn_slots.close()

    def _sweep(self, db: sqlite3.Connection, now: float) -> None:
        """Delete expired state inside the caller's transaction, at most once
        per ``sweep_interval`` per process, at most :data:`_SWEEP_ROWS` rows
        of a table at a time (a larger backlog goes on in the next
        transactions)."""
        with self._sweep_mutex:
            if now < self._next_sweep:
                return
            self._next_sweep = now + self.settings.sweep_interval
        backlog = False
        for table, key in (("rl_subwindow", "id, subwindow"), ("event", "rowid"), ("volume", "key")):
            done = db.execute(f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} "
                              "WHERE expires <= ? LIMIT ?)", (now, _SWEEP_ROWS)).rowcount
            backlog = backlog or done >= _SWEEP_ROWS
        expired = db.execute("SELECT rowid, fp, member, recipients FROM fingerprint "
                             "WHERE expires <= ? LIMIT ?", (now, _SWEEP_ROWS)).fetchall()
        self._fingerprint_forget(db, expired)
        backlog = backlog or len(expired) >= _SWEEP_ROWS
        if backlog:                  # the next transaction deletes the next rows
            with self._sweep_mutex:
                self._next_sweep = now
        for (key,) in db.execute("SELECT key FROM lock WHERE locked = 1 "
                                 "AND until IS NOT NULL AND until <= ?", (now,)).fetchall():
            self._settle(db, key, now)
        db.execute("DELETE FROM lock WHERE locked = 0 AND touched <= ?",
                   (now - self.settings.lock_history_ttl,))

    # -- connection slots ----------------------------------------------------------
    # In a table shared through ``<db>-conn`` (store/slots.py): a slot lives
    # as long as an SMTP connection and needs no journal; two SQLite commits
    # per connection cost 11 % of the messages/s end to end (median of 22
    # same-run rounds, docs/benchmarks.rst).
    def conn_acquire(self, ip: str, limit: int, slot: str) -> tuple[bool, int]:
        return self._conn_slots.acquire(ip, limit, slot, slot_owner(slot)[1])

    def conn_release(self, ip: str, slot: str) -> None:
        self._conn_slots.release(slot)

    def conn_count(self, ip: str) -> int:
        return self._conn_slots.count(ip, os.getpid())

    def process_alive(self, host: str, pid: int) -> None:
        """Nothing to store: liveness is the pid existing on this host."""

    def process_gone(self, host: str, pid: int) -> None:
        self._conn_slots.process_gone(pid)

    # -- rate limits ------------------------------------------------------------------
    @staticmethod
    def _subwindows(db: sqlite3.Connection,
                    buckets: Sequence[Bucket]) -> dict[str, dict[int, int]]:
        """Stored subwindows of the buckets: ``{bucket id: {subwindow index: count}}``."""
        ids = sorted({bucket_id(b) for b in buckets})
        marks = ",".join("?" * len(ids))
        stored: dict[str, dict[int, int]] = {}
        for bid, index, n in db.execute(
                f"SELECT id, subwindow, n FROM rl_subwindow WHERE id IN ({marks})", ids):
            stored.setdefault(bid, {})[index] = n
        return stored

    def hit(self, buckets: Sequence[Bucket], dry_run: bool = False) -> HitResult:
        validate_buckets(buckets)
        if not buckets:
            return HitResult(True)
        if dry_run:
            # Writes nothing: one read (a consistent snapshot) without the
            # write lock, like peek.  Every message asks at its first RCPT.
            # A refusal reads the subwindows again and answers from them
            # alone (a later snapshot, as consistent).
            with self._conn() as db:
                now = time.time()
                fits = self._fits(db, buckets, now)
                if fits is not None:
                    return HitResult(True)
                stored = self._subwindows(db, buckets)
            return window_decide(buckets, lambda bid, window: WindowCounts(window, stored.get(bid)),
                                 now, dry_run=True)[0]
        with self._tx() as db:
            now = time.time()
            fits = self._fits(db, buckets, now)
            if fits is None:
                return self._hit_subwindows(db, buckets, now)
            rows, expired = fits
            for bid, lowest in expired:
                db.execute("DELETE FROM rl_subwindow WHERE id = ? AND subwindow < ?", (bid, lowest))
            if rows:
                db.executemany("INSERT INTO rl_subwindow (id, subwindow, n, expires) VALUES (?, ?, ?, ?) "
                               "ON CONFLICT (id, subwindow) DO UPDATE SET n = n + excluded.n", rows)
                self._sweep(db, now)
            return HitResult(True)

    @staticmethod
    def _fits(db: sqlite3.Connection, buckets: Sequence[Bucket], now: float
              ) -> Optional[tuple[list[tuple[str, int, int, float]], list[tuple[str, int]]]]:
        """The common case of :meth:`hit` without the subwindows in Python:
        SQLite sums each bucket's subwindows ``cur-SUBWINDOWS .. cur`` (the
        count of :mod:`outpost.store.windows`).  When every bucket fits,
        returns the rows that count the costs (``(id, cur, cost,
        expires)``, added to the current subwindow) and ``(id, lowest
        subwindow that counts)`` of the buckets with expired subwindows to
        delete.  None when a bucket would refuse (the wait needs its
        subwindows) or holds a subwindow ahead of ``cur`` (the clock went
        back: :meth:`WindowCounts.settle` folds them): then the caller
        decides over every subwindow.  The answer is the same."""
        lowest: dict[str, tuple[int, float]] = {}        # id -> (cur - SUBWINDOWS, window)
        ids: list[object] = []
        bids = [bucket_id(b) for b in buckets]
        for bid, b in zip(bids, buckets):
            if bid not in lowest:
                lowest[bid] = (subwindow_index(now, b.window) - SUBWINDOWS, b.window)
                ids += (bid, lowest[bid][0])
        # One subquery per bucket and column: min and max are one index
        # lookup each, and no temporary B-tree groups the rows (a join
        # with GROUP BY took 2.7x the CPU on four buckets of 61 rows).
        totals = {bid: (total or 0, first, last) for bid, total, first, last in db.execute(
            f"WITH q (id, lo) AS (VALUES {','.join(['(?, ?)'] * len(lowest))}) "
            "SELECT id, (SELECT sum(n) FROM rl_subwindow r WHERE r.id = q.id AND r.subwindow >= q.lo), "
            "(SELECT min(subwindow) FROM rl_subwindow r WHERE r.id = q.id), "
            "(SELECT max(subwindow) FROM rl_subwindow r WHERE r.id = q.id) FROM q", ids)}
        pending: dict[str, int] = {}
        for bid, b in zip(bids, buckets):
            cost = pending.get(bid, 0) + b.cost
            if cost + totals[bid][0] > b.limit:
                return None
            pending[bid] = cost
        expired = []
        for bid, (_, first, last) in totals.items():
            if first is None:
                continue
            if last > lowest[bid][0] + SUBWINDOWS:
                return None
            if first < lowest[bid][0]:
                expired.append((bid, lowest[bid][0]))
        rows = [(bid, lowest[bid][0] + SUBWINDOWS, cost,
                 subwindow_expiry(lowest[bid][0] + SUBWINDOWS, lowest[bid][1]))
                for bid, cost in pending.items() if cost]
        return rows, expired

    def _hit_subwindows(self, db: sqlite3.Connection, buckets: Sequence[Bucket],
                        now: float) -> HitResult:
        """:meth:`hit` (not a dry run) over every stored subwindow, in the
        caller's transaction: :func:`window_decide` as in the memory store."""
        stored = self._subwindows(db, buckets)
        result, touched = window_decide(
            buckets, lambda bid, window: WindowCounts(window, stored.get(bid)), now)
        rows = []
        for bid, (counts, cur) in touched.items():
            if counts.pruned:      # expired subwindows, or ahead of a clock that went back
                db.execute("DELETE FROM rl_subwindow WHERE id = ? AND (subwindow < ? OR subwindow > ?)",
                           (bid, cur - SUBWINDOWS, cur))
            if cur in counts.subwindows:
                rows.append((bid, cur, counts.subwindows[cur],
                             subwindow_expiry(cur, counts.window)))
        if rows:
            db.executemany("INSERT INTO rl_subwindow (id, subwindow, n, expires) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (id, subwindow) DO UPDATE SET n = excluded.n", rows)
            self._sweep(db, now)
        return result

    def peek(self, buckets: Sequence[Bucket]) -> list[BucketState]:
        validate_buckets(buckets)
        if not buckets:
            return []
        with self._conn() as db:
            stored = self._subwindows(db, buckets)
            now = time.time()
            return [bucket_state(b, WindowCounts(b.window, stored.get(bucket_id(b))), now)
                    for b in buckets]

    def reset(self, key_prefix: str) -> int:
        pattern = (key_prefix.replace("\\", "\\\\").replace("%", "\\%")
                   .replace("_", "\\_") + "%")
        with self._tx() as db:
            ids = [bid for (bid,) in db.execute(
                       "SELECT DISTINCT id FROM rl_subwindow WHERE id LIKE ? ESCAPE '\\'", (pattern,))
                   if key_in_prefix(bucket_key_of(bid), key_prefix)]
            db.executemany("DELETE FROM rl_subwindow WHERE id = ?", [(bid,) for bid in ids])
            keys = [key for (key,) in db.execute(
                        "SELECT DISTINCT key FROM event WHERE key LIKE ? ESCAPE '\\'", (pattern,))
                    if key_in_prefix(key, key_prefix)]
            db.executemany("DELETE FROM event WHERE key = ?", [(key,) for key in keys])
            volumes = [key for (key,) in db.execute(
                           "SELECT key FROM volume WHERE (? || key) LIKE ? ESCAPE '\\'",
                           (vol.VOLUME_PREFIX, pattern))
                       if key_in_prefix(vol.VOLUME_PREFIX + key, key_prefix)]
            db.executemany("DELETE FROM volume WHERE key = ?", [(key,) for key in volumes])
            return len(ids) + len(keys) + len(volumes)

    # -- events -------------------------------------------------------------------------
    def record_event(self, key: str, window: float) -> int:
        check_window(window)
        with self._tx() as db:
            now = time.time()
            db.execute("DELETE FROM event WHERE key = ? AND t <= ?", (key, now - window))
            db.execute("INSERT INTO event (key, t, expires) VALUES (?, ?, ?)",
                       (key, now, now + window))
            count = db.execute("SELECT count(*) FROM event WHERE key = ?", (key,)).fetchone()[0]
            excess = count - self.settings.max_events
            if excess > 0:
                db.execute("DELETE FROM event WHERE rowid IN (SELECT rowid FROM event "
                           "WHERE key = ? ORDER BY t LIMIT ?)", (key, excess))
                count -= excess
            self._sweep(db, now)
            return count

    # -- locks ----------------------------------------------------------------------------
    @staticmethod
    def _load(db: sqlite3.Connection, key: str) -> LockRecord:
        row = db.execute("SELECT locked, reason, since, until, by, auto_unlocks FROM lock "
                         "WHERE key = ?", (key,)).fetchone()
        if row is None:
            return LockRecord(None)
        locked, reason, since, until, by, auto = row
        lock = Lock(key=key, reason=reason, since=since, until=until, by=by,
                    auto_unlocks=auto) if locked else None
        return LockRecord(lock, auto)

    def _save(self, db: sqlite3.Connection, key: str, rec: LockRecord, now: float) -> None:
        self._locks_changed = True
        lk = rec.lock
        if lk is None and rec.auto_unlocks == 0:
            db.execute("DELETE FROM lock WHERE key = ?", (key,))
            return
        db.execute(
            "INSERT OR REPLACE INTO lock (key, locked, reason, since, until, by, auto_unlocks,"
            " touched) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, int(lk is not None), lk and lk.reason, lk and lk.since, lk and lk.until,
             lk and lk.by, rec.auto_unlocks, now))

    def _settle(self, db: sqlite3.Connection, key: str, now: float) -> LockRecord:
        rec, changed = self._load(db, key).settle(now)
        if changed:
            self._save(db, key, rec, now)
        return rec

    def _maybe_locked(self, key: str) -> bool:
        """False when ``key`` is surely not locked: every message asks, few
        identities are locked, and the locked keys change only when the
        generation in ``<db>-conn`` moves (read before the keys, so a change
        committed meanwhile is seen at the next call)."""
        gen = self._conn_slots.generation()
        known = self._locked_keys
        if known is None or known[0] != gen:
            with self._conn() as db:
                rows = db.execute("SELECT key FROM lock WHERE locked = 1 LIMIT ?",
                                  (_LOCKED_KEYS_MAX + 1,)).fetchall()
            keys = frozenset(r[0] for r in rows) if len(rows) <= _LOCKED_KEYS_MAX else None
            known = self._locked_keys = (gen, keys)
        return known[1] is None or key in known[1]

    def get_lock(self, key: str) -> Optional[Lock]:
        if not self._maybe_locked(key):
            return None
        with self._conn() as db:
            rec = self._load(db, key)
        if rec.lock is None or not rec.settle(time.time())[1]:
            return rec.in_force()
        with self._tx() as db:       # expired: count the auto-unlock
            return self._settle(db, key, time.time()).in_force()

    def set_lock(self, key: str, reason: str, duration: Optional[float],
                 by: str = "auto", max_auto_unlocks: Optional[int] = None) -> Lock:
        with self._tx() as db:
            now = time.time()
            rec = self._settle(db, key, now).locked(key, reason, duration, by,
                                                    max_auto_unlocks, now)
            self._save(db, key, rec, now)
        lock = rec.in_force()
        assert lock is not None
        return lock

    def remove_lock(self, key: str) -> bool:
        with self._tx() as db:
            now = time.time()
            rec = self._settle(db, key, now)
            self._save(db, key, LockRecord(None), now)      # no lock, no history: deleted
            return rec.lock is not None

    def list_locks(self) -> list[Lock]:
        with self._tx() as db:
            now = time.time()
            keys = [r[0] for r in db.execute("SELECT key FROM lock WHERE locked = 1 ORDER BY key")]
            locks = [self._settle(db, key, now).in_force() for key in keys]
        return [lk for lk in locks if lk is not None]

    # -- fingerprints ------------------------------------------------------------------------
    def fingerprint_add(self, fp: str, member: str, recipients: int,
                        window: float) -> FingerprintStats:
        return self.fingerprint_add_many([(fp, member, recipients)], window)[0]

    def fingerprint_add_many(self, items: Sequence[tuple[str, str, int]],
                             window: float) -> list[FingerprintStats]:
        check_window(window)
        for _, _, recipients in items:
            check_recipients(recipients)
        if not items:
            return []
        with self._tx() as db:
            now = time.time()
            out = [totals[0] for totals in self._fingerprints_add(db, items, "", window, now)]
            self._sweep(db, now)
            return out

    def fingerprint_add_message(self, fps: Sequence[str], member: str, recipients: int,
                                window: float) -> list[tuple[FingerprintStats, FingerprintStats]]:
        """One entry per fingerprint (not two, as the default does): the
        member's totals are read from everybody's entries, in the same
        query.  Half the rows written: with the dry run as a read, the
        store's CPU per message 0.69-0.76x the previous code's
        (``bench/limiter.py --op message``, docs/benchmarks.rst)."""
        check_window(window)
        check_recipients(recipients)
        if not fps:
            return []
        with self._tx() as db:
            now = time.time()
            out = self._fingerprints_add(db, [(fp, member, recipients) for fp in fps],
                                         member, window, now)
            self._sweep(db, now)
            return out

    def _fingerprints_add(self, db: sqlite3.Connection, items: Sequence[tuple[str, str, int]],
                          member: str, window: float, now: float
                          ) -> list[tuple[FingerprintStats, FingerprintStats]]:
        """Count the messages, then read every fingerprint's totals in the
        window, everybody's and ``member``'s.

        The totals are kept as running sums (``fingerprint_total``, and
        ``fingerprint_member`` per member), updated as entries come and go,
        so a count reads two rows whatever the fingerprint's volume: summing
        its entries instead cost 3.6 ms a message at 1 000 entries per
        fingerprint and 67 ms at 10 000 (``max_fingerprint_entries``), a
        bulk run making every message slow (docs/benchmarks.rst).  The
        entries stay, for the window's end and the cap: an entry leaves the
        totals when it is deleted (out of the window, past the cap, or by
        the sweep), in the same transaction."""
        fps = [fp for fp, _, _ in items]
        if len(set(fps)) < len(fps):       # a fingerprint twice: each sees the ones before it
            return [self._fingerprints_add(db, [item], member, window, now)[0] for item in items]
        marks = ",".join("?" * len(fps))
        cutoff = now - window
        self._fingerprint_forget(db, db.execute(
            f"SELECT rowid, fp, member, recipients FROM fingerprint WHERE fp IN ({marks}) AND t <= ?",
            (*fps, cutoff)).fetchall())
        db.executemany("INSERT INTO fingerprint (fp, t, expires, member, recipients) "
                       "VALUES (?, ?, ?, ?, ?)",
                       [(fp, now, now + window, who, recipients) for fp, who, recipients in items])
        # the (fp, member) pairs already counted: one lookup per member in
        # the primary key (a row-value ``(fp, member) IN (VALUES ...)``
        # scanned the whole table, 5.9 ms a message at 10 000 messages in
        # the window; tests/store/test_sqlite_query_plans.py)
        by_member: dict[str, list[str]] = {}
        for fp, who, _ in items:
            by_member.setdefault(who, []).append(fp)
        known = {(fp, who) for who, its in by_member.items() for (fp,) in db.execute(
            f"SELECT fp FROM fingerprint_member WHERE member = ? AND fp IN ({','.join('?' * len(its))})",
            (who, *its))}
        db.executemany("INSERT INTO fingerprint_member (fp, member, messages, recipients) "
                       "VALUES (?, ?, 1, ?) ON CONFLICT (fp, member) DO UPDATE SET "
                       "messages = messages + 1, recipients = recipients + excluded.recipients",
                       items)
        db.executemany("INSERT INTO fingerprint_total (fp, messages, recipients, members) "
                       "VALUES (?, 1, ?, ?) ON CONFLICT (fp) DO UPDATE SET "
                       "messages = messages + 1, recipients = recipients + excluded.recipients, "
                       "members = members + excluded.members",
                       [(fp, recipients, int((fp, who) not in known)) for fp, who, recipients in items])
        cap = self.settings.max_fingerprint_entries
        for fp, n in db.execute(f"SELECT fp, messages FROM fingerprint_total WHERE fp IN ({marks}) "
                                "AND messages > ?", (*fps, cap)).fetchall():
            # keep the newest ``cap`` of the window
            self._fingerprint_forget(db, db.execute(
                "SELECT rowid, fp, member, recipients FROM fingerprint WHERE fp = ? "
                "ORDER BY t LIMIT ?", (fp, n - cap)).fetchall())
        return self._fingerprint_totals(db, fps, member)

    @staticmethod
    def _fingerprint_forget(db: sqlite3.Connection, rows: Sequence[tuple[int, str, str, int]]) -> None:
        """Delete the entries ``(rowid, fp, member, recipients)`` and take
        them out of the running totals."""
        if not rows:
            return
        db.executemany("DELETE FROM fingerprint WHERE rowid = ?", [(rowid,) for rowid, _, _, _ in rows])
        gone: dict[tuple[str, str], list[int]] = {}
        for _, fp, who, recipients in rows:
            n_r = gone.setdefault((fp, who), [0, 0])
            n_r[0] += 1
            n_r[1] += recipients
        db.executemany("UPDATE fingerprint_member SET messages = messages - ?, "
                       "recipients = recipients - ? WHERE fp = ? AND member = ?",
                       [(n, r, fp, who) for (fp, who), (n, r) in gone.items()])
        per_fp: dict[str, list[int]] = {}         # fp -> [messages, recipients, members] gone
        for (fp, who), (n, r) in gone.items():
            t = per_fp.setdefault(fp, [0, 0, 0])
            t[0] += n
            t[1] += r
            t[2] += db.execute("DELETE FROM fingerprint_member WHERE fp = ? AND member = ? "
                               "AND messages <= 0", (fp, who)).rowcount
        db.executemany("UPDATE fingerprint_total SET messages = messages - ?, "
                       "recipients = recipients - ?, members = members - ? WHERE fp = ?",
                       [(n, r, m, fp) for fp, (n, r, m) in per_fp.items()])
        db.executemany("DELETE FROM fingerprint_total WHERE fp = ? AND messages <= 0",
                       [(fp,) for fp in per_fp])

    @staticmethod
    def _fingerprint_totals(db: sqlite3.Connection, fps: Sequence[str], member: str
                            ) -> list[tuple[FingerprintStats, FingerprintStats]]:
        """(everybody's, ``member``'s) running totals of each fingerprint."""
        marks = ",".join("?" * len(fps))
        everybody = {fp: FingerprintStats(messages=n, recipients=r, members=m)
                     for fp, n, r, m in db.execute(
                         "SELECT fp, messages, recipients, members FROM fingerprint_total "
                         f"WHERE fp IN ({marks})", fps)}
        mine = {fp: FingerprintStats(messages=n, recipients=r, members=min(n, 1))
                for fp, n, r in db.execute(
                    "SELECT fp, messages, recipients FROM fingerprint_member "
                    f"WHERE member = ? AND fp IN ({marks})", (member, *fps))}
        none = FingerprintStats(messages=0, recipients=0, members=0)
        return [(everybody.get(fp, none), mine.get(fp, none)) for fp in fps]

    # -- volume per identity ----------------------------------------------------------------------
    @staticmethod
    def _volume_record(db: sqlite3.Connection, key: str, now: float) -> Optional[vol.Record]:
        row = db.execute("SELECT data FROM volume WHERE key = ? AND expires > ?", (key, now)).fetchone()
        return vol.load(row[0]) if row is not None else None

    def volume_add(self, key: str, domains: Sequence[str], recipients: int, spec: VolumeSpec,
                   dry_run: bool = False) -> VolumeCounts:
        check_recipients(recipients)
        hashes = vol.check_domains(domains, spec)
        if dry_run:
            with self._conn() as db:
                now = time.time()
                return vol.apply(self._volume_record(db, key, now), now, hashes, recipients, spec)[1]
        with self._tx() as db:
            now = time.time()
            rec, counts = vol.apply(self._volume_record(db, key, now), now, hashes, recipients, spec)
            db.execute("INSERT OR REPLACE INTO volume (key, data, expires) VALUES (?, ?, ?)",
                       (key, vol.dump(rec), now + spec.ttl))
            self._sweep(db, now)
            return counts

    # -- blobs ----------------------------------------------------------------------------------
    # -- message statistics (period "r": the recent names of a minute) ----------------------------
    def stat_add(self, counts: Sequence[tuple[str, int]],
                 recent: Sequence[tuple[str, int]] = ()) -> None:
        upsert = ("INSERT INTO stat (period, idx, name, n, expires) VALUES (?, ?, ?, ?, ?) "
                  "ON CONFLICT (period, idx, name) DO UPDATE SET n = n + excluded.n")
        with self._tx() as db:
            now = time.time()
            db.execute("DELETE FROM stat WHERE expires <= ?", (now,))
            for period, (width, kept) in STAT_PERIODS.items():
                cur = int(now // width)
                expires = (cur + kept) * width
                db.executemany(upsert, [(period, cur, name, n, expires) for name, n in counts])
                if period != "m" or not recent:
                    continue
                known = {name for (name,) in db.execute(
                    "SELECT name FROM stat WHERE period = 'r' AND idx = ?", (cur,))}
                room = self.settings.max_stat_names - len(known)
                new = [(name, n) for name, n in recent if name not in known][:max(room, 0)]
                db.executemany(upsert, [("r", cur, name, n, expires) for name, n in recent
                                        if name in known] +
                               [("r", cur, name, n, expires) for name, n in new])

    def stat_read(self, period: str, count: int) -> dict[str, int]:
        now = time.time()
        index = stat_buckets(period, now, count)
        periods = (period, "r") if period == "m" else (period,)
        marks = ",".join("?" * len(periods))
        with self._conn() as db:
            rows = db.execute(
                f"SELECT name, sum(n) FROM stat WHERE period IN ({marks}) AND idx BETWEEN ? AND ? "
                f"AND expires > ? GROUP BY name", (*periods, index[-1], index[0], now)).fetchall()
        return {name: int(n) for name, n in rows}

    def stat_series(self, period: str, count: int,
                    names: Sequence[str]) -> list[dict[str, int]]:
        now = time.time()
        index = stat_buckets(period, now, count)
        names = list(dict.fromkeys(names))
        out: list[dict[str, int]] = [{} for _ in index]
        if not names:
            return out
        periods = (period, "r") if period == "m" else (period,)
        with self._conn() as db:
            rows = db.execute(
                f"SELECT idx, name, sum(n) FROM stat WHERE period IN ({','.join('?' * len(periods))}) "
                f"AND idx BETWEEN ? AND ? AND expires > ? AND name IN ({','.join('?' * len(names))}) "
                f"GROUP BY idx, name", (*periods, index[-1], index[0], now, *names)).fetchall()
        for idx, name, n in rows:
            out[index[0] - int(idx)][name] = int(n)
        return out

    # -- decision log ---------------------------------------------------------------------------
    def decision_add(self, entries: Sequence[DecisionEntry]) -> None:
        if not entries:
            return
        keep = self.settings.max_decisions
        with self._tx() as db:
            now = time.time()
            db.executemany("INSERT INTO decision (t, data) VALUES (?, ?)",
                           [(now, e.to_json()) for e in entries])
            db.execute("DELETE FROM decision WHERE id <= (SELECT max(id) FROM decision) - ?", (keep,))
            db.execute("DELETE FROM decision WHERE t <= ?", (now - self.settings.decision_ttl,))

    def decision_read(self, limit: int, offset: int = 0) -> list[DecisionEntry]:
        now = time.time()
        with self._conn() as db:
            rows = db.execute("SELECT data FROM decision WHERE t > ? ORDER BY id DESC LIMIT ? OFFSET ?",
                              (now - self.settings.decision_ttl, max(0, int(limit)),
                               max(0, int(offset)))).fetchall()
        return [DecisionEntry.from_json(data) for (data,) in rows]

    def put_blob(self, name: str, data: bytes) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO blob (name, data) VALUES (?, ?)",
                       (name, bytes(data)))

    def get_blob(self, name: str) -> Optional[bytes]:
        with self._conn() as db:
            row = db.execute("SELECT data FROM blob WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def swap_blob(self, name: str, expected: Optional[bytes], data: bytes) -> bool:
        with self._tx() as db:                  # BEGIN IMMEDIATE: no writer in between
            row = db.execute("SELECT data FROM blob WHERE name = ?", (name,)).fetchone()
            if (None if row is None else bytes(row[0])) != expected:
                return False
            db.execute("INSERT OR REPLACE INTO blob (name, data) VALUES (?, ?)",
                       (name, bytes(data)))
            return True


class _Use:
    """A pooled connection of a :class:`SqliteStore` for one ``with`` block
    (a class, not a generator: it sits on every message's path).  Writes
    hold the writer lock throughout.  sqlite errors become StoreError; a
    connection that failed, or is left inside a transaction, is closed."""

    __slots__ = ("store", "write", "db")

    def __init__(self, store: SqliteStore, write: bool) -> None:
        self.store = store
        self.write = write
        self.db: Optional[sqlite3.Connection] = None

    def __enter__(self) -> sqlite3.Connection:
        store = self.store
        if self.write:
            store._writer.acquire()
        try:
            self.db = store._take()
        except BaseException as exc:
            if self.write:
                store._writer.release()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"sqlite store {store.path}: {exc}") from exc
            raise
        return self.db

    def __exit__(self, etype: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        store, db = self.store, self.db
        try:
            if db is not None:
                store._give_back(db, etype is None and not db.in_transaction)
        finally:
            if self.write:
                store._writer.release()
        if exc is not None and isinstance(exc, sqlite3.Error):
            raise StoreError(f"sqlite store {store.path}: {exc}") from exc
