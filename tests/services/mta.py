"""What the Postfix and Sendmail test instances share: their directory
layout, milter socket, log, waiting on it and on the queue, and the
context-manager protocol.  Subclasses call ``_layout()``, set ``error``
(their exception class) and implement ``start()``, ``cleanup()`` and
``queue()``."""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import Iterable


class MtaInstance:
    maillog_path: Path
    error: type[Exception] = RuntimeError

    def _layout(self, base_dir: str | os.PathLike | None, prefix: str, *, sink_port: int,
                milter: str | None, mynetworks: Iterable[str], hostname: str,
                require_tls: bool) -> None:
        """The instance's directories under ``base_dir`` (a fresh temporary
        one, removed at clean-up, when None) and the settings every MTA has."""
        self._owns_dir = base_dir is None
        if base_dir is None:
            base_dir = tempfile.mkdtemp(prefix=prefix)
        self.base_dir = Path(base_dir).resolve()
        self.config_dir = self.base_dir / "etc"
        self.queue_dir = self.base_dir / "queue"
        self.milter_dir = self.base_dir / "milter"
        self.maillog_path = self.base_dir / "maillog"
        self.sasldb_path = self.base_dir / "sasldb2"
        self.tls_dir = self.base_dir / "tls"
        self.sink_port = sink_port
        self.hostname = hostname
        self.mynetworks = tuple(mynetworks)
        self.require_tls = require_tls
        self.milter = f"unix:{self.milter_dir / 'outpost.sock'}" if milter is None else milter

    #: The SASL login the shipped report listener admits (contrib master.cf
    #: and outpost.mc).
    report_login = "outpost-reports"

    @property
    def report_password_file(self) -> Path:
        """Outpost's ``reports.smtp.password_file`` for this instance."""
        return self.base_dir / "report-password"

    def _make_report_credential(self) -> None:
        """Create the report listener's SASL login and its password file
        (mode 0600, as Outpost requires), once per instance."""
        if self.report_password_file.exists():
            return
        password = os.urandom(12).hex()
        fd = os.open(self.report_password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        self.add_sasl_user(self.report_login, password)

    @property
    def report_password(self) -> str:
        """The report listener's password (first line of report_password_file)."""
        return self.report_password_file.read_text().splitlines()[0]

    def reports_yaml(self) -> str:
        """Outpost's ``reports.smtp`` mapping for this instance's report listener."""
        return (f"{{host: 127.0.0.1, port: {self.reports_port}, username: {self.report_login}, "
                f"password_file: {self.report_password_file}}}")

    def add_sasl_user(self, login: str, password: str) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError

    @property
    def milter_socket(self) -> Path | None:
        """Filesystem path of a ``unix:`` milter socket, else None."""
        if self.milter.startswith("unix:"):
            return Path(self.milter[len("unix:"):])
        return None

    def start(self):  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def cleanup(self) -> None:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def queue(self) -> list:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def maillog(self) -> str:
        """The whole log text so far ('' before the first line)."""
        try:
            return self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match:
        """Wait until ``pattern`` (regex) appears in the log; return the match."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            match = rx.search(self.maillog())
            if match:
                return match
            if time.monotonic() > deadline:
                raise self.error(f"{pattern!r} not in {self.maillog_path} after {timeout}s")
            time.sleep(0.05)

    def wait_queue_empty(self, timeout: float = 20.0, *, include_hold: bool = False) -> None:
        """Wait until no message is queued (held/quarantined ones ignored unless asked)."""
        deadline = time.monotonic() + timeout
        while True:
            left = [e for e in self.queue() if include_hold or e.queue_name != "hold"]
            if not left:
                return
            if time.monotonic() > deadline:
                raise self.error(f"{len(left)} message(s) still queued after {timeout}s: "
                                 f"{[(e.queue_id, e.queue_name) for e in left][:10]}")
            time.sleep(0.1)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
