"""Small helpers shared by the launchers of real daemons used in tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Callable, Optional


class DaemonError(RuntimeError):
    """A daemon could not be started or did not become ready in time."""


class DaemonExited(DaemonError):
    """The daemon exited while starting (e.g. its free port was taken in
    between by another test process): worth one more try."""


def start_with_retries(start_once: Callable[[], None], attempts: int = 3) -> None:
    """Run ``start_once`` again (with new ports) when the daemon exited at
    start-up; a daemon that hangs is not retried."""
    for attempt in range(attempts):
        try:
            start_once()
            return
        except DaemonExited:
            if attempt == attempts - 1:
                raise


def free_tcp_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the daemon binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, timeout: float,
               what: str, log_path: Optional[str] = None) -> float:
    """Poll ``ready()`` until it returns True; return the seconds waited.

    Raises :class:`DaemonError` when the process exits or ``timeout`` passes.
    """
    start = time.monotonic()
    delay = 0.05
    while True:
        if proc.poll() is not None:
            raise DaemonExited(f"{what} exited with code {proc.returncode}"
                              f"{tail(log_path)}")
        if ready():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise DaemonError(f"{what} not ready after {timeout:.0f}s{tail(log_path)}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def tail(path: Optional[str], lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    if not path or not os.path.exists(path):
        return ""
    with open(path, "rb") as fh:
        data = fh.read()[-8000:].decode("utf-8", "replace")
    return "\n--- log tail ---\n" + "\n".join(data.splitlines()[-lines:])


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the daemon's process group, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the daemon's whole process group and reap the leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait(10)


class ManagedDaemon:
    """The end of life every daemon launcher shares: ``proc`` (the process,
    leader of its group), ``dir`` (its private directory), ``log_path`` and a
    ``start()`` returning self."""

    proc: Optional[subprocess.Popen] = None
    dir: Optional[str] = None

    def start(self):  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    @property
    def log_path(self) -> str:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def kill(self) -> None:
        """SIGKILL every process of the daemon (a crash), keep the files."""
        if self.proc is not None:
            kill_group(self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def log_tail(self) -> str:
        return tail(self.log_path)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
