"""FileLock: exclusive between processes, and a free lock taken without
giving the GIL away, while a held one is waited for with the GIL released."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from typing import Iterator

import pytest

from outpost.store import filelock
from outpost.store.base import StoreError
from outpost.store.filelock import FileLock

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def lock(tmp_path) -> Iterator[FileLock]:
    db = tmp_path / "x.db"
    db.write_bytes(b"")
    lk = FileLock(str(tmp_path / "x.db-writer"), str(db), "test lock")
    yield lk
    lk.close()


def hold_elsewhere(path: str, seconds: float) -> subprocess.Popen:
    """Another process holding ``path``'s flock for ``seconds``."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, path, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_the_gil_keeping_flock_is_found() -> None:
    # On Linux with glibc it must be there, or the fast path silently never runs.
    assert filelock._FLOCK_KEEPING_GIL is not None


def test_a_free_lock_is_taken_and_released_without_fcntl_flock(lock, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(filelock.fcntl, "flock", lambda *a: calls.append(a))
    for _ in range(3):
        lock.acquire()
        lock.release()
    assert calls == []
    monkeypatch.undo()
    # and it really was taken: another descriptor cannot get it meanwhile
    lock.acquire()
    fd = os.open(lock.path, os.O_RDONLY)
    try:
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            lock.release()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)      # free again
    finally:
        os.close(fd)


def test_a_lock_held_by_another_process_is_waited_for_with_the_gil_released(lock) -> None:
    lock.acquire()
    lock.release()                                 # the file exists for the holder
    holder = hold_elsewhere(lock.path, 0.6)
    ticks = 0
    waiting = threading.Event()
    done = threading.Event()

    def spin() -> None:
        nonlocal ticks
        waiting.wait(5)
        while not done.is_set():
            ticks += 1
            time.sleep(0.005)

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        started = time.monotonic()
        waiting.set()
        lock.acquire()
        waited = time.monotonic() - started
        ticks_while_waiting = ticks
        lock.release()
    finally:
        done.set()
        spinner.join(5)
        holder.wait(10)
    assert waited >= 0.3                            # it did wait for the other process
    assert ticks_while_waiting >= 10                # and the other thread ran meanwhile


def test_a_failed_lock_is_a_store_error_and_the_next_try_reopens(lock) -> None:
    lock.acquire()
    lock.release()
    os.close(lock._fd)                       # both the fast path and the fallback fail
    with pytest.raises(StoreError, match="test lock"):
        lock.acquire()
    lock.acquire()                           # mutex released, file opened again
    try:
        fd = os.open(lock.path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        lock.release()
