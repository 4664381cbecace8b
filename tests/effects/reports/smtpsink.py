"""A small aiosmtpd SMTP sink on loopback for the report delivery tests.

It can be stopped and started again on the same port (the relay going away
and coming back) and can delay its reply to DATA (a slow relay)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import default
from typing import Optional

from aiosmtpd.controller import Controller


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message_id(self) -> str:
        msg = BytesHeaderParser(policy=default).parsebytes(self.data)
        return str(msg["Message-ID"])


@dataclass
class _Handler:
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    data_started: threading.Event = field(default_factory=threading.Event)
    in_data: int = 0                # DATA transactions not answered yet

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd API)
        import asyncio
        with self.lock:
            self.in_data += 1
        try:
            self.data_started.set()
            if self.delay:
                await asyncio.sleep(self.delay)   # cancelled if the client goes away
            with self.lock:
                self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                              bytes(envelope.original_content or envelope.content)))
        finally:
            with self.lock:
                self.in_data -= 1
        return "250 2.0.0 Ok: queued"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """``start()``/``stop()`` an SMTP server on 127.0.0.1:``port``."""

    def __init__(self, port: Optional[int] = None, delay: float = 0.0, **controller_kw) -> None:
        self.port = port or free_port()
        self.handler = _Handler(delay=delay)
        self.controller_kw = controller_kw
        self._controller: Optional[Controller] = None

    def start(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            ctl = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                             ready_timeout=5.0, **self.controller_kw)
            try:
                ctl.start()
                break
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._controller = ctl

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no DATA transaction is being answered (one whose client
        died ends when aiosmtpd notices: recorded or cancelled)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.handler.lock:
                if self.handler.in_data == 0:
                    return
            assert time.monotonic() < deadline, f"sink still in DATA after {timeout}s"
            time.sleep(0.02)

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)
