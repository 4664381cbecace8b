"""Small SMTP client helpers for tests (smtplib underneath).

:func:`send` runs one bounded session and returns the reply of the stage
that ended it -- it never raises on 4xx/5xx replies, so tests assert on codes.
Posing as a given client or SASL login is done with Postfix's XCLIENT (the
test instance allows it from 127.0.0.0/8) or with a real AUTH PLAIN.
"""

from __future__ import annotations

import base64
import re
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Iterable, Literal, Mapping

STAGES = ("connect", "ehlo", "starttls", "xclient", "auth", "mail", "rcpt", "data", "end")

_QUEUED_RE = re.compile(r"queued as ([0-9A-Za-z]+)")


@dataclass(frozen=True)
class SmtpResult:
    """Outcome of a session.

    ``stage`` is the last stage reached (one of :data:`STAGES`); ``code`` and
    ``text`` its reply (code 0 if the server closed the connection).  A fully
    accepted message has ``stage == "end"`` and a 2xx code.
    ``refused_rcpts`` maps refused recipients to ``(code, text)`` when others
    were accepted.
    """

    stage: str
    code: int
    text: str
    refused_rcpts: Mapping[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.stage == "end" and 200 <= self.code < 300

    @property
    def queue_id(self) -> str | None:
        """Postfix queue id from ``250 2.0.0 Ok: queued as ID``."""
        match = _QUEUED_RE.search(self.text) if self.accepted else None
        return match.group(1) if match else None

    def __str__(self) -> str:
        return f"{self.stage}: {self.code} {self.text}"


def build_message(mail_from: str = "sender@example.com", to: str = "rcpt@example.net", *,
                  subject: str = "test", body: str = "Hello.\n",
                  headers: Mapping[str, str] | None = None) -> bytes:
    """A small RFC 5322 message as bytes (CRLF line endings)."""
    msg = EmailMessage()
    msg["From"] = mail_from
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="example.com")
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def _reply(exc_or_pair) -> tuple[int, str]:
    code, text = exc_or_pair
    return code, text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def send(port: int, *, mail_from: str = "sender@example.com",
         rcpt_tos: Iterable[str] = ("rcpt@example.net",),
         message: bytes | str | EmailMessage | None = None,
         host: str = "127.0.0.1",
         xclient: Mapping[str, str] | None = None,
         login: str | None = None, password: str | None = None,
         tls: Literal["starttls", "implicit"] | None = None,
         helo: str = "client.example.org",
         timeout: float = 15.0,
         source_address: str | None = None) -> SmtpResult:
    """Run one SMTP session and return where and how it ended.

    :param source_address: bind the client to this local address (a 127/8
        address makes the client look like that host, for MTAs without XCLIENT).
    :param xclient: e.g. ``{"LOGIN": "carol", "ADDR": "203.0.113.7", "NAME": "[UNAVAILABLE]"}``;
        sent after EHLO, followed by a new EHLO.
    :param login, password: AUTH PLAIN after (optional) XCLIENT.
    :param tls: ``"starttls"`` or ``"implicit"`` (port 465 style); the
        certificate is not verified.
    :param message: default: :func:`build_message` from ``mail_from``/first rcpt.
    :raises OSError/TimeoutError: the server did not answer (no SMTP reply).
    """
    rcpt_tos = list(rcpt_tos)
    if message is None:
        message = build_message(mail_from, rcpt_tos[0] if rcpt_tos else "rcpt@example.net")
    elif isinstance(message, EmailMessage):
        message = message.as_bytes()
    bind = (source_address, 0) if source_address else None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    stage = "connect"
    try:
        if tls == "implicit":
            client: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context,
                                                    source_address=bind)
        else:
            client = smtplib.SMTP(host, port, timeout=timeout, source_address=bind)
    except smtplib.SMTPConnectError as exc:
        return SmtpResult(stage, *_reply((exc.smtp_code, exc.smtp_error)))
    except smtplib.SMTPServerDisconnected as exc:
        return SmtpResult(stage, 0, f"connection closed: {exc}")
    try:
        steps = [("ehlo", lambda: client.ehlo(helo), 250)]
        if tls == "starttls":
            steps += [("starttls", lambda: client.starttls(context=context), 220),
                      ("ehlo", lambda: client.ehlo(helo), 250)]
        if xclient:
            args = " ".join(f"{k}={v}" for k, v in xclient.items())
            steps += [("xclient", lambda: client.docmd("XCLIENT", args), 220),
                      ("ehlo", lambda: client.ehlo(helo), 250)]
        if login is not None:
            token = base64.b64encode(f"\0{login}\0{password or ''}".encode()).decode()
            steps += [("auth", lambda: client.docmd("AUTH", f"PLAIN {token}"), 235)]
        steps += [("mail", lambda: client.docmd("MAIL", f"FROM:<{mail_from}>"), 250)]
        for stage, action, want in steps:
            code, text = _reply(action())
            if code != want:
                return SmtpResult(stage, code, text)
        stage = "rcpt"
        refused: dict[str, tuple[int, str]] = {}
        last = (0, "no recipients")
        for rcpt in rcpt_tos:
            last = _reply(client.docmd("RCPT", f"TO:<{rcpt}>"))
            if last[0] not in (250, 251):
                refused[rcpt] = last
        if len(refused) == len(rcpt_tos):
            return SmtpResult(stage, *last, refused_rcpts=refused)
        stage = "data"
        try:
            code, text = _reply(client.data(message))
        except smtplib.SMTPDataError as exc:
            return SmtpResult(stage, *_reply((exc.smtp_code, exc.smtp_error)),
                              refused_rcpts=refused)
        return SmtpResult("end", code, text, refused_rcpts=refused)
    except smtplib.SMTPServerDisconnected as exc:
        return SmtpResult(stage, 0, f"connection closed: {exc}")
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()
