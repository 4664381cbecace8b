"""What the Postfix and Sendmail test instances share: their log, waiting on
it and on the queue, and the context-manager protocol.  Subclasses set
``maillog_path``, ``error`` (their exception class) and implement
``start()``, ``cleanup()`` and ``queue()``."""

from __future__ import annotations

import re
import time
from pathlib import Path


class MtaInstance:
    maillog_path: Path
    error: type[Exception] = RuntimeError

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
