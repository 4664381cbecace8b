"""One SMTP transaction driven through the policy core the way the MTA
adapter drives it (connect, MAIL FROM, RCPT TO, headers, end of headers,
body, end of message, close), without an MTA.  Used by ``outpost scan``
(:mod:`outpost.offline`), the core tests and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

from .types import Decision, Session

if TYPE_CHECKING:
    from .policy import Policy

Headers = Sequence[tuple[str, str]]


def split_message(raw: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """(header fields as (name, value) as received: the value keeps its
    leading blank and its folding as CRLF, the body with CRLF line ends).
    LF-only input is read as CRLF."""
    data = raw.replace(b"\r\n", b"\n")
    head, _, body = data.partition(b"\n\n")
    headers: list[tuple[str, str]] = []
    for line in head.split(b"\n"):
        text = line.decode("utf-8", "surrogateescape")
        if text[:1] in (" ", "\t") and headers:
            n, v = headers[-1]
            headers[-1] = (n, v + "\r\n" + text)
        elif ":" in text:
            n, _, v = text.partition(":")
            headers.append((n, v))
    return headers, body.replace(b"\n", b"\r\n")


@dataclass(frozen=True)
class Transaction:
    """What one connection with one message carries."""

    sender: str                               # as in MAIL FROM: <addr>, <> for the null sender
    recipients: Sequence[str] = ()            # as in RCPT TO: <addr>
    headers: Headers = ()                     # (name, value as received)
    body: bytes = b""
    login: Optional[str] = None               # SMTP AUTH login
    client_ip: Optional[str] = None           # None: a unix-socket client
    hostname: str = ""
    client_port: Optional[str] = None         # "0" on loopback: mail with no SMTP client
    queue_id: str = ""
    chunk: int = 0                            # body chunk size (0: one chunk)

    @classmethod
    def of_message(cls, raw: bytes, sender: str, recipients: Sequence[str] = (),
                   **kw: object) -> "Transaction":
        """A transaction carrying the message ``raw`` (header block, blank
        line, body; CRLF or LF)."""
        headers, body = split_message(raw)
        return cls(sender=sender, recipients=tuple(recipients), headers=headers, body=body,
                   **kw)  # type: ignore[arg-type]


@dataclass
class Outcome:
    """How a transaction ended: the stage and decision that ended it, and
    every stage's decision in order."""

    session: Session
    stage: str = "connect"
    decision: Optional[Decision] = None
    decisions: list[tuple[str, Decision]] = field(default_factory=list)

    def at(self, stage: str) -> list[Decision]:
        return [d for s, d in self.decisions if s == stage]

    def _end(self, stage: str, decision: Decision) -> "Outcome":
        self.decisions.append((stage, decision))
        self.stage, self.decision = stage, decision
        return self


def drive(policy: "Policy", tx: Transaction, session: Optional[Session] = None, *,
          stop_at_refused_rcpt: bool = False, close: bool = True) -> Outcome:
    """Run ``tx`` through ``policy`` on a new connection (``session``, or a
    new one), stopping at the first stage that blocks.  A refused recipient
    ends the transaction only when all were refused, or with
    ``stop_at_refused_rcpt``.  The connection is closed at the end unless
    ``close`` is false."""
    session = session if session is not None else Session()
    out = Outcome(session)
    try:
        d = policy.connect(session, tx.client_ip, tx.hostname, tx.client_port)
        if d.blocks:
            return out._end("connect", d)
        out.decisions.append(("connect", d))
        d = policy.mail_from(session, tx.sender, tx.login)
        if d.blocks:
            return out._end("mail", d)
        out.decisions.append(("mail", d))
        accepted = 0
        for rcpt in tx.recipients:
            d = policy.rcpt(session, rcpt)
            out.decisions.append(("rcpt", d))
            if d.blocks and stop_at_refused_rcpt:
                out.stage, out.decision = "rcpt", d
                return out
            accepted += not d.blocks
        if not accepted:
            out.stage, out.decision = "rcpt", d
            return out
        for name, value in tx.headers:
            policy.header(session, name, value)
        out.decisions.append(("end of headers", policy.end_of_headers(session)))
        step = tx.chunk or max(1, len(tx.body))
        for i in range(0, len(tx.body), step):
            policy.body(session, tx.body[i:i + step])
        return out._end("end of message", policy.end_of_message(session, tx.queue_id))
    finally:
        if close:
            policy.close(session)
