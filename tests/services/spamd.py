"""Launcher for a real SpamAssassin ``spamd`` (Debian packages ``spamd`` and
``spamassassin``) on loopback.

``Spamd()`` starts ``spamd`` in the foreground (its own process group) with
the packaged rules and::

    --listen 127.0.0.1:<free port> [--socketpath <tmp>/spamd.sock]
    --local --nouser-config --max-children 2 --min-children 1
    --pidfile <tmp>/spamd.pid --helper-home-dir <tmp> --syslog stderr
    --cf 'use_bayes 0' --cf 'bayes_auto_learn 0'

``--local`` turns off every network test (DNS lists, Razor, Pyzor), so the
daemon makes no traffic beyond loopback; Bayes is off so that results do
not depend on earlier runs.  As root spamd drops to ``nobody`` for the
children (``-u nobody``).  Readiness is a ``PING`` answered with ``PONG``
(bounded wait).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from typing import Optional

from tests.services._daemon import DaemonError, ManagedDaemon, free_tcp_port, start_with_retries, wait_until

SPAMD = shutil.which("spamd") or "/usr/sbin/spamd"
START_TIMEOUT = 60.0


class Spamd(ManagedDaemon):
    """A running spamd; use as a context manager or call start()/stop()."""

    def __init__(self, unix_socket: bool = False,
                 start_timeout: float = START_TIMEOUT) -> None:
        self.want_unix = unix_socket
        self.start_timeout = start_timeout
        self.dir: Optional[str] = None
        self.port = 0
        self.socket_path: Optional[str] = None
        self.proc: Optional[subprocess.Popen] = None
        self.start_seconds = 0.0

    @property
    def log_path(self) -> str:
        assert self.dir
        return os.path.join(self.dir, "spamd.log")

    def start(self) -> "Spamd":
        """Start the daemon and wait until it answers (bounded)."""
        start_with_retries(self._start_once)
        return self

    def _start_once(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="outpost-spamd-")
        os.chmod(self.dir, 0o755)
        self.port = self.port or free_tcp_port()     # a restart keeps its port
        args = [SPAMD, f"--listen=127.0.0.1:{self.port}", "--local",
                "--nouser-config", "--max-children=2", "--min-children=1",
                f"--pidfile={self.dir}/spamd.pid", f"--helper-home-dir={self.dir}",
                "--syslog=stderr", "--cf=use_bayes 0", "--cf=bayes_auto_learn 0"]
        if self.want_unix:
            self.socket_path = os.path.join(self.dir, "spamd.sock")
            args += [f"--socketpath={self.socket_path}", "--socketmode=0666"]
        if os.geteuid() == 0:
            args.append("--username=nobody")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        try:
            self.start_seconds = wait_until(self._ready, self.proc, self.start_timeout,
                                            "spamd", self.log_path)
        except DaemonError:
            self.stop()
            raise

    def _ping(self, family: int, address: object) -> bool:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(2.0)
                s.connect(address)
                s.sendall(b"PING SPAMC/1.5\r\n\r\n")
                return b"PONG" in s.recv(100)
        except OSError:
            return False

    def _ready(self) -> bool:
        if not self._ping(socket.AF_INET, ("127.0.0.1", self.port)):
            return False
        return self.socket_path is None or self._ping(socket.AF_UNIX, self.socket_path)
