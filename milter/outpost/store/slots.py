"""Connection slots of one host, in a table shared through a mapped file.

The sqlite store keeps its connection slots here, not in the database: a
slot lives only as long as an SMTP connection, so it needs no journal, and
taking and freeing one is two writes per connection (a SQLite commit each).
Measured end to end (docs/benchmarks.rst, "Speed tricks held to the bar"):
slots in a SQLite table, and locks read from the database for every
message, gave 0.89x the messages/s and 1.15x the milter CPU per message
(medians of 22 same-run rounds); the bar to keep a trick is a 3 % gain.

The file (``<db>-conn``) holds three open-addressing hash tables with
linear probing and fixed-size records, all behind one ``flock`` (and a
thread mutex in each process):

* **slots**: one record per held slot, keyed by a digest of the slot id,
  with the owner's pid and a digest of the client IP;
* **ips**: per client IP the number of slots held;
* **pids**: the processes that have taken slots, so that slots of a
  process that died are found by checking a few pids, not every slot.

The header also holds a generation counter the store advances when
identity locks change, so that a process can tell "not locked" from the
locked keys it last read without asking the database for every message.

A writer sets a *dirty* mark in the header before it changes anything and
clears it after; a process killed in between leaves the mark, and the next
locker rebuilds the tables from the slot records.  The file is reset when
it was written under another boot (``/proc/sys/kernel/random/boot_id``) or
by another layout.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from types import TracebackType
from typing import Callable, Optional

from .base import StoreError
from .filelock import FileLock, open_beside
from .owners import pid_exists

_MAGIC = b"outpost-slots\x00\x00\x01"      # 16 bytes; the last one is the layout version
_HEADER = 64        # magic 16 | boot id 16 | dirty u8 | pad 3 | used u32 x 3 | pid generation u32
                    # | pad 4 | state generation u64

_SLOT = struct.Struct("<B3xI16s16s")      # used | pid | slot key | ip key
_IP = struct.Struct("<B3xI16s")           # used | slots held | ip key
_PID = struct.Struct("<B3xI")             # used | pid (key)
_USED = struct.Struct("<III")             # records used in slots, ips, pids
_USED_AT = 36
_GEN = struct.Struct("<I")                # bumped whenever a pid record goes
_GEN_AT = 48
_STATE = struct.Struct("<Q")              # the store's own change counter (advance())
_STATE_AT = 56

SLOT_RECORDS = 1 << 16
IP_RECORDS = 1 << 16
PID_RECORDS = 1 << 9
_FILL = 0.75                              # at most this share of a table is used


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).digest()


def _boot_id() -> bytes:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return bytes.fromhex(f.read().strip().replace("-", ""))[:16].ljust(16, b"\0")
    except (OSError, ValueError):
        return bytes(16)


def _increment(mm: mmap.mmap, counter: struct.Struct, at: int) -> None:
    """Add one to an unsigned counter in the header (wrapping around)."""
    value = counter.unpack_from(mm, at)[0] + 1
    counter.pack_into(mm, at, value % (1 << (8 * counter.size)))


class TableFull(StoreError):
    """More slots (or processes) than the table holds."""


class _Table:
    """Open addressing with linear probing over ``count`` fixed-size
    records at ``base`` of a shared buffer.  Byte 0 of a record is 1 when
    used; the key is ``key_len`` bytes at ``key_off``.  Deletion shifts the
    records after it back (no tombstones), copying before it clears."""

    __slots__ = ("buf", "base", "size", "mask", "key_off", "key_end", "home", "index")

    def __init__(self, buf: mmap.mmap, base: int, count: int, size: int, key_off: int,
                 key_len: int, home: Callable[[bytes], int], index: int) -> None:
        """``index``: where the table's number of used records is in the
        header's counts."""
        self.buf, self.base, self.size, self.mask = buf, base, size, count - 1
        self.key_off, self.key_end = key_off, key_off + key_len
        self.home, self.index = home, index

    @property
    def end(self) -> int:
        return self.base + (self.mask + 1) * self.size

    def locate(self, key: bytes) -> tuple[int, bool]:
        """(offset of the record with that key, True), or (offset of the
        free record where it would go, False)."""
        buf, base, size, mask, ko, ke = self.buf, self.base, self.size, self.mask, self.key_off, self.key_end
        i = self.home(key) & mask
        while True:
            off = base + i * size
            if not buf[off]:
                return off, False
            if buf[off + ko:off + ke] == key:
                return off, True
            i = (i + 1) & mask

    def room(self, used: list[int]) -> bool:
        return used[self.index] + 1 <= (self.mask + 1) * _FILL

    def put(self, off: int, record: bytes, used: list[int]) -> None:
        """Fill the free record at ``off`` (from :meth:`locate`; the caller
        checked :meth:`room`)."""
        self.buf[off:off + self.size] = record
        used[self.index] += 1

    def delete(self, off: int, used: list[int]) -> None:
        buf, base, size, mask, ko, ke = self.buf, self.base, self.size, self.mask, self.key_off, self.key_end
        i = (off - base) // size
        j = i
        while True:
            j = (j + 1) & mask
            off_j = base + j * size
            if not buf[off_j]:
                break
            k = self.home(buf[off_j + ko:off_j + ke]) & mask
            # record j stays when its home lies cyclically in (i, j]
            if (i < k <= j) if i <= j else (k > i or k <= j):
                continue
            off_i = base + i * size
            buf[off_i:off_i + size] = buf[off_j:off_j + size]
            i = j
        off_i = base + i * size
        buf[off_i:off_i + size] = bytes(size)
        used[self.index] -= 1

    def records(self) -> list[int]:
        """Offsets of the used records (a full scan)."""
        buf, size = self.buf, self.size
        return [off for off in range(self.base, self.end, size) if buf[off]]


def _home_digest(key: bytes) -> int:
    return int.from_bytes(key[:8], "little")


def _home_pid(key: bytes) -> int:
    return int.from_bytes(key, "little") * 0x9E3779B1


class SlotTable:
    """The connection slots of this host, shared by every process that opens
    the same file.  Methods are safe across threads and processes."""

    def __init__(self, path: str, like: Optional[str] = None, slots: int = SLOT_RECORDS,
                 ips: int = IP_RECORDS, pids: int = PID_RECORDS) -> None:
        """``like``: a file whose permission bits and (when root) owner the
        table file takes when it is created, as SQLite does for its ``-wal``.
        ``slots``, ``ips``, ``pids``: records per table (powers of two; every
        opener of a file must use the same, or it resets the file)."""
        for n in (slots, ips, pids):
            if n < 2 or n & (n - 1):
                raise ValueError(f"table size {n} is not a power of two")
        self._counts = (slots, ips, pids)
        self.path = path
        self._like = like
        self._flock = FileLock(path, like or path, f"connection slot table {path}")
        self._mm: mmap.mmap                      # closed by close(), never None
        self._slots: _Table
        self._ips: _Table
        self._pids: _Table
        self._registered = (0, -1)               # (pid, generation) known to have its record
        self._size = _HEADER + slots * _SLOT.size + ips * _IP.size + pids * _PID.size
        self._open()

    # -- file ----------------------------------------------------------------------------
    def _open(self) -> None:
        """Open (create, or reset) and map the file."""
        try:
            fd = open_beside(self.path, self._like or self.path, os.O_RDWR)
        except OSError as exc:
            raise StoreError(f"connection slot table {self.path}: {exc}") from exc
        try:
            self._flock.acquire()
            try:
                boot = _boot_id()
                head = os.pread(fd, 32, 0)
                if os.fstat(fd).st_size != self._size or head != _MAGIC + boot:
                    os.ftruncate(fd, 0)                  # stale: another boot or layout
                    os.ftruncate(fd, self._size)
                    os.pwrite(fd, _MAGIC + boot, 0)
                mm = mmap.mmap(fd, self._size)
            finally:
                self._flock.release()
        except OSError as exc:
            raise StoreError(f"connection slot table {self.path}: {exc}") from exc
        finally:
            os.close(fd)                                 # the mapping keeps the file
        self._mm = mm
        base = _HEADER
        n_slots, n_ips, n_pids = self._counts
        self._slots = _Table(mm, base, n_slots, _SLOT.size, 8, 16, _home_digest, 0)
        base = self._slots.end
        self._ips = _Table(mm, base, n_ips, _IP.size, 8, 16, _home_digest, 1)
        base = self._ips.end
        self._pids = _Table(mm, base, n_pids, _PID.size, 4, 4, _home_pid, 2)

    def close(self) -> None:
        self._flock.acquire()
        try:
            self._mm.close()
        finally:
            self._flock.release()
        self._flock.close()

    def _lock(self) -> list[int]:
        """Take the table (thread mutex, then ``flock``); the used counts."""
        self._flock.acquire()
        try:
            mm = self._mm
            if mm.closed:
                raise StoreError(f"connection slot table {self.path}: closed")
            if mm[32]:
                self._rebuild()
            return list(_USED.unpack_from(mm, _USED_AT))
        except BaseException:
            self._flock.release()
            raise

    def _unlock(self, used: list[int], ok: bool) -> None:
        """Let go of the table.  ``ok``: the change (if any) is complete,
        store the counts and clear the dirty mark; otherwise the mark stays
        for the next locker to rebuild."""
        try:
            if ok:
                mm = self._mm
                _USED.pack_into(mm, _USED_AT, *used)
                mm[32] = 0
        finally:
            self._flock.release()

    def _dirty(self) -> None:
        self._mm[32] = 1

    # -- operations ----------------------------------------------------------------------
    def acquire(self, ip: str, limit: int, slot: str, pid: int) -> tuple[bool, int]:
        """Take ``slot`` for ``ip`` unless ``limit`` slots are held; (taken,
        slots held now).  Taking a slot already held changes nothing."""
        sk, ik = _key(slot), _key(ip)
        with _Held(self) as used:
            self._register(pid, used)
            s_off, found = self._slots.locate(sk)
            a_off, a_found, held = self._ip(ik)
            if found:
                return True, held
            if held >= limit and self._reclaim(used, pid):     # records moved
                s_off, found = self._slots.locate(sk)
                a_off, a_found, held = self._ip(ik)
            if held >= limit:
                return False, held
            if not (self._slots.room(used) and (a_found or self._ips.room(used))):
                raise TableFull(f"connection slot table {self.path}: full")
            self._dirty()
            self._slots.put(s_off, _SLOT.pack(1, pid, sk, ik), used)
            self._set_held(a_off, a_found, ik, held + 1, used)
            return True, held + 1

    def release(self, slot: str) -> None:
        """Free a slot (nothing if it is not held)."""
        sk = _key(slot)
        with _Held(self) as used:
            off, found = self._slots.locate(sk)
            if found:
                self._dirty()
                self._drop(off, used)

    def count(self, ip: str, pid: int) -> int:
        """Slots held for ``ip``, after freeing those of dead processes."""
        ik = _key(ip)
        with _Held(self) as used:
            self._reclaim(used, pid)
            return self._ip(ik)[2]

    def process_gone(self, pid: int) -> None:
        """Free every slot of that process."""
        with _Held(self) as used:
            if self._pids.locate(pid.to_bytes(4, "little"))[1]:
                self._dirty()
                self._drop_pid(pid, used)

    def generation(self) -> int:
        """A counter the store advances after changes other processes must
        notice (identity locks); read without the lock (an aligned 8-byte
        load)."""
        try:
            return _STATE.unpack_from(self._mm, _STATE_AT)[0]
        except ValueError:                                    # closed
            raise StoreError(f"connection slot table {self.path}: closed") from None

    def advance(self) -> None:
        with _Held(self):
            _increment(self._mm, _STATE, _STATE_AT)

    # -- under the lock ------------------------------------------------------------------
    def _register(self, pid: int, used: list[int]) -> None:
        """Make sure ``pid`` has its record in the process table (checked
        once per process, again only after a process record went)."""
        mm = self._mm
        gen = _GEN.unpack_from(mm, _GEN_AT)[0]
        if self._registered == (pid, gen):
            return
        key = pid.to_bytes(4, "little")
        off, found = self._pids.locate(key)
        if not found:
            if not self._pids.room(used):
                self._reclaim(used, pid)
                off, found = self._pids.locate(key)
                if not self._pids.room(used):
                    raise TableFull(f"connection slot table {self.path}: "
                                    "no room for more processes")
            self._dirty()
            self._pids.put(off, _PID.pack(1, pid), used)
        self._registered = (pid, _GEN.unpack_from(mm, _GEN_AT)[0])

    def _ip(self, ik: bytes) -> tuple[int, bool, int]:
        """(offset, found, slots held) of an IP's record (see _Table.locate)."""
        off, found = self._ips.locate(ik)
        return off, found, _IP.unpack_from(self._mm, off)[1] if found else 0

    def _set_held(self, off: int, found: bool, ik: bytes, held: int, used: list[int]) -> None:
        """Store an IP's count at the record :meth:`_ip` found (or the free
        one it pointed to); an IP holding none has no record."""
        if not found:
            self._ips.put(off, _IP.pack(1, held, ik), used)
        elif held > 0:
            _IP.pack_into(self._mm, off, 1, held, ik)
        else:
            self._ips.delete(off, used)

    def _drop(self, off: int, used: list[int]) -> None:
        """Delete the slot record at ``off`` and count it out of its IP."""
        ik = self._mm[off + 24:off + 40]
        self._slots.delete(off, used)
        a_off, found, held = self._ip(ik)
        if found:
            self._set_held(a_off, True, ik, held - 1, used)

    def _drop_pid(self, pid: int, used: list[int]) -> None:
        """Free the slots of a process and forget it (a full scan)."""
        mm = self._mm
        keys = [_SLOT.unpack_from(mm, off)[2] for off in self._slots.records()
                if _SLOT.unpack_from(mm, off)[1] == pid]
        for sk in keys:                       # by key: deletions move records
            off, found = self._slots.locate(sk)
            if found:
                self._drop(off, used)
        off, found = self._pids.locate(pid.to_bytes(4, "little"))
        if found:
            self._pids.delete(off, used)
        _increment(mm, _GEN, _GEN_AT)

    def _reclaim(self, used: list[int], me: int) -> bool:
        """Free the slots of processes that no longer exist; whether any."""
        mm = self._mm
        dead = [pid for pid in (_PID.unpack_from(mm, off)[1] for off in self._pids.records())
                if pid != me and not pid_exists(pid)]
        if dead:
            self._dirty()
            for pid in dead:
                self._drop_pid(pid, used)
        return bool(dead)

    def _rebuild(self) -> None:
        """Rebuild the tables from the slot and process records after a
        writer died half-way (a record may be duplicated by an interrupted
        shift, and counts be off by one)."""
        mm = self._mm
        slots = {}
        for off in self._slots.records():
            _used, pid, sk, ik = _SLOT.unpack_from(mm, off)
            slots[sk] = (pid, ik)
        pids = {_PID.unpack_from(mm, off)[1] for off in self._pids.records()}
        pids.update(pid for pid, _ik in slots.values())
        mm[_HEADER:self._size] = bytes(self._size - _HEADER)      # the header stays
        used = [0, 0, 0]
        for pid in pids:
            key = pid.to_bytes(4, "little")
            self._pids.put(self._pids.locate(key)[0], _PID.pack(1, pid), used)
        for sk, (pid, ik) in slots.items():
            self._slots.put(self._slots.locate(sk)[0], _SLOT.pack(1, pid, sk, ik), used)
            a_off, found, held = self._ip(ik)
            self._set_held(a_off, found, ik, held + 1, used)
        _USED.pack_into(mm, _USED_AT, *used)
        _increment(mm, _GEN, _GEN_AT)                 # process records went and came back
        mm[32] = 0


class _Held:
    """``with _Held(table) as used``: the table locked for one operation,
    and the used counts of its tables.  A clean exit (a return included)
    stores the counts and clears the dirty mark; after an exception the mark
    stays for the next locker to rebuild.  A class, not a generator: it is on
    every connection's path."""

    __slots__ = ("table", "used")

    def __init__(self, table: SlotTable) -> None:
        self.table = table

    def __enter__(self) -> list[int]:
        self.used = self.table._lock()
        return self.used

    def __exit__(self, etype: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.table._unlock(self.used, etype is None)
