"""An SMTP sink (aiosmtpd) on a free 127.0.0.1 port, in a background thread.

It records every delivered message; tests wait for deliveries with
:meth:`SmtpSink.wait_for`.  For outage tests it can be taken down and brought
back on the same port (:meth:`down`/:meth:`up`), or made to answer every
DATA with a given reply (:attr:`data_reply`).
"""

from __future__ import annotations

import email
import email.policy
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.services.postfix import free_port


class SinkTimeout(AssertionError):
    """The expected number of messages did not arrive in time."""


@dataclass(frozen=True)
class SinkMessage:
    """One delivered message."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    peer: tuple = field(default=(), compare=False)

    @property
    def message(self) -> EmailMessage:
        """The parsed message (``email.policy.default``)."""
        return email.message_from_bytes(self.data, policy=email.policy.default)

    def headers(self, name: str) -> list[str]:
        """All values of header ``name`` (top to bottom)."""
        return [str(v) for v in self.message.get_all(name, [])]


class _Handler:
    def __init__(self, sink: "SmtpSink") -> None:
        self._sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 (aiosmtpd API)
        reply = self._sink.data_reply
        if reply is not None:
            return reply
        self._sink._record(SinkMessage(
            envelope.mail_from or "", tuple(envelope.rcpt_tos),
            bytes(envelope.original_content or b""), tuple(session.peer or ())))
        return "250 2.0.0 Ok: stored"


class SmtpSink:
    """SMTP server capturing messages.

    :param port: fixed port (default: a free one, kept across down()/up()).
    :param data_reply: if set (e.g. ``"451 4.3.0 try later"``), DATA is
        answered with it and nothing is recorded.  May be changed at any time.
    """

    def __init__(self, port: int | None = None, *, host: str = "127.0.0.1",
                 data_reply: str | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.data_reply = data_reply
        self._messages: list[SinkMessage] = []
        self._cond = threading.Condition()
        self._controller: Controller | None = None

    # ------------------------------------------------------------ control

    def start(self) -> "SmtpSink":
        """Listen (idempotent)."""
        if self._controller is None:
            controller = Controller(_Handler(self), hostname=self.host, port=self.port,
                                    ready_timeout=10, enable_SMTPUTF8=True,
                                    data_size_limit=100 * 1024 * 1024)   # 50 MB test messages
            controller.start()
            self._controller = controller
        return self

    def stop(self) -> None:
        """Stop listening (idempotent)."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    down = stop
    up = start

    @property
    def is_up(self) -> bool:
        return self._controller is not None

    def __enter__(self) -> "SmtpSink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------- messages

    def _record(self, msg: SinkMessage) -> None:
        with self._cond:
            self._messages.append(msg)
            self._cond.notify_all()

    @property
    def messages(self) -> list[SinkMessage]:
        """A copy of the messages received so far."""
        with self._cond:
            return list(self._messages)

    def clear(self) -> None:
        """Forget received messages."""
        with self._cond:
            self._messages.clear()

    def wait_for(self, n: int = 1, timeout: float = 10.0) -> list[SinkMessage]:
        """Wait until at least ``n`` messages arrived; return them all.

        Raises :class:`SinkTimeout` (an AssertionError) otherwise.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SinkTimeout(f"sink got {len(self._messages)} message(s), "
                                      f"expected {n} within {timeout}s")
                self._cond.wait(left)
            return list(self._messages)

    def find(self, header: str, value: str) -> list[SinkMessage]:
        """Messages whose header ``header`` has exactly ``value``."""
        return [m for m in self.messages if value in m.headers(header)]
