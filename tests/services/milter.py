"""Run a milter as a subprocess listening on a unix socket for Postfix.

The process is started with umask 0 so that the socket libmilter creates is
writable by the ``postfix`` user (tests run as root); :meth:`start` waits
until the socket accepts connections, :meth:`stop` waits for the exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Mapping, Sequence


class MilterStartError(RuntimeError):
    """The milter process exited or never opened its socket."""


def unix_socket_ready(path: str | os.PathLike) -> bool:
    """True if a server accepts connections on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(os.fspath(path))
        except OSError:
            return False
        return True


class MilterProcess:
    """A milter command listening on ``socket_path``.

    :param argv: command line; the literal ``{socket}`` in any argument is
        replaced by ``unix:<socket_path>``.
    :param socket_path: the unix socket the milter creates.
    :param log_path: stdout+stderr go there (default: next to the socket).
    """

    def __init__(self, argv: Sequence[str], socket_path: str | os.PathLike, *,
                 env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
                 log_path: str | os.PathLike | None = None) -> None:
        self.socket_path = Path(socket_path)
        self.argv = [a.replace("{socket}", f"unix:{self.socket_path}") for a in argv]
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.log_path = Path(log_path) if log_path else self.socket_path.with_suffix(".log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> "MilterProcess":
        """Start and wait until the socket accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=log,
                                         stderr=subprocess.STDOUT, umask=0,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not unix_socket_ready(self.socket_path):
            if self.proc.poll() is not None:
                raise MilterStartError(f"{self.argv} exited {self.proc.returncode}: "
                                       f"{self.log()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop(graceful=False)
                raise MilterStartError(f"{self.argv}: no socket {self.socket_path} after "
                                       f"{timeout}s: {self.log()[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self, *, graceful: bool = False, timeout: float = 10.0) -> int | None:
        """Stop the process and wait for it; return its exit status.

        ``graceful=True`` sends SIGTERM and waits (libmilter needs a few
        seconds); the default SIGKILLs, which is instant (the next start
        removes the stale socket file).
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """The process output so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> "MilterProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
