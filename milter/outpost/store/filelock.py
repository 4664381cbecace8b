"""Files next to a database, and a lock between threads and processes.

Used by the sqlite store for ``<db>-writer`` (the writers' turn) and
``<db>-conn`` (the shared connection-slot table); :func:`held` is the plain
lock file the spools (reports, feedback, training) take for a short step.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import threading
from typing import Callable, Iterator, Optional, Union

from .base import StoreError


@contextlib.contextmanager
def held(path: Union[str, "os.PathLike[str]"]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created 0640 if
    missing) for the ``with`` block, waiting for it with the GIL released.
    OSError when the file cannot be opened."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _flock_keeping_gil() -> Optional[Callable[[int, int], int]]:
    """libc's ``flock`` called *without* releasing the GIL (``ctypes.PyDLL``),
    or None where it cannot be found.

    ``fcntl.flock`` releases the GIL around the system call, as it must for
    a call that may wait.  In a milter worker, whose libmilter threads all
    want the GIL, every release hands it to another thread, and the caller
    then queues to get it back: two context switches for a lock that is
    almost always free.  So a lock is first tried with ``LOCK_NB`` through
    this function, and only when another process holds it do we wait in
    ``fcntl.flock``, with the GIL released.

    Measured end to end (docs/benchmarks.rst, "Speed tricks held to the
    bar"): plain ``fcntl.flock`` instead gave 0.925x the messages/s (median
    of 22 same-run rounds, quartiles 0.82-1.03), at the same milter CPU per
    message; the bar to keep a trick is a 3 % median gain."""
    try:
        fn = ctypes.PyDLL(None).flock
    except (OSError, AttributeError):
        return None
    # Python ints pass as C ints and an int comes back by default; declaring
    # argtypes (or use_errno) would add a conversion to every call.  The errno
    # is not needed: on failure fcntl.flock runs and raises what went wrong.
    fn.restype = ctypes.c_int
    return fn


_FLOCK_KEEPING_GIL = _flock_keeping_gil()


def _flock(fd: int, op: int) -> None:
    """``flock(fd, op)``: tried with ``LOCK_NB`` keeping the GIL, then, if
    that did not do it (held elsewhere, or an error), by ``fcntl.flock``,
    which waits with the GIL released and raises what went wrong."""
    if _FLOCK_KEEPING_GIL is None or _FLOCK_KEEPING_GIL(fd, op | fcntl.LOCK_NB) != 0:
        fcntl.flock(fd, op)


def open_beside(path: str, like: str, flags: int) -> int:
    """Open (creating) ``path`` with ``like``'s permission bits, whatever
    the umask, and, when we are root, its owner — as SQLite does for its
    ``-wal`` and ``-shm`` files — so every user of the database can use it."""
    try:
        st = os.stat(like)
    except FileNotFoundError:                        # the first opener creates both
        return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, 0o644)
    mode = st.st_mode & 0o666
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, mode)
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_mode & 0o777 != mode:
            os.fchmod(fd, mode)
        if os.geteuid() == 0:
            os.fchown(fd, st.st_uid, st.st_gid)
    return fd


class FileLock:
    """Exclusive between the threads of a process (a mutex) and between
    processes (``flock`` on ``path``); dropped by the kernel if the holder
    dies.  A forked child opens the file again: an inherited descriptor
    shares its ``flock`` with the parent."""

    def __init__(self, path: str, like: str, what: str) -> None:
        self.path, self._like, self._what = path, like, what
        self._mutex = threading.Lock()
        self._fd = -1
        self._pid = 0

    def _drop_fd(self) -> None:
        """Forget the descriptor (the next acquire opens the file again)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._pid = -1, 0

    def acquire(self) -> None:
        self._mutex.acquire()
        try:
            if self._pid != os.getpid():                   # first use, or a forked child
                self._drop_fd()
                # read-only: flock needs no more
                self._fd = open_beside(self.path, self._like, os.O_RDONLY)
                self._pid = os.getpid()
            _flock(self._fd, fcntl.LOCK_EX)
        except OSError as exc:
            self._drop_fd()
            self._mutex.release()
            raise StoreError(f"{self._what}: {exc}") from exc
        except BaseException:
            self._mutex.release()
            raise

    def release(self) -> None:
        try:
            if self._fd >= 0:
                _flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    def close(self) -> None:
        with self._mutex:
            if self._fd >= 0 and self._pid == os.getpid():
                os.close(self._fd)
            self._fd, self._pid = -1, 0
