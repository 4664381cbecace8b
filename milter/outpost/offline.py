"""``outpost scan``: the whole decision on a message file, without an MTA —
mapping, domain policy, limits (read-only), locks, the content verdict —
printing the decision, the class, every check's points and the headers that
would be added or removed.  The message goes through the policy core as one
transaction (:func:`outpost.core.transaction.drive`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .core.addresses import header_from_address, read_addresses, split_address
from .core.policy import Policy
from .core.transaction import Transaction, drive
from .core.types import Decision

if TYPE_CHECKING:
    from .spam.base import Evidence
    from .spam.engine import CheckFailure


#: The To header ``outpost scan`` reads its default recipients from: at most
#: this many characters (``email.utils.getaddresses`` takes about a second
#: for 64 KiB of the worst input) and this many addresses.
MAX_TO_CHARS = 65536
MAX_SCAN_RECIPIENTS = 1000


class ScanInputError(ValueError):
    """The message cannot be scanned as asked (the text says why and what to do)."""


def header_recipients(values: Sequence[str]) -> list[str]:
    """The addresses of the To header(s) ``values`` (``email.utils.getaddresses``:
    ``Name <a@x>, b@y`` gives ``a@x`` and ``b@y``), bounded; ScanInputError
    when the header is too long, holds too many addresses or cannot be read."""
    size = sum(len(v) for v in values)
    if size > MAX_TO_CHARS:
        raise ScanInputError(f"the To header is {size} characters long (outpost scan reads at most "
                             f"{MAX_TO_CHARS}); give the recipients with --rcpt")
    if not values:
        return []
    pairs = read_addresses(list(values))
    if not pairs and any(v.strip() for v in values):
        raise ScanInputError("the To header cannot be read as addresses; give the recipients with --rcpt")
    addrs = [addr for _name, addr in pairs if addr]
    if len(addrs) > MAX_SCAN_RECIPIENTS:
        raise ScanInputError(f"the To header holds {len(addrs)} addresses (outpost scan takes at most "
                             f"{MAX_SCAN_RECIPIENTS}); give the recipients with --rcpt")
    return addrs


@dataclass
class OfflineReport:
    stage: str
    decision: Decision
    user: Optional[str] = None
    mapped_by: str = ""
    identity: str = ""
    spam_class: Optional[str] = None
    score: Optional[float] = None
    evidence: list["Evidence"] = field(default_factory=list)
    errors: list["CheckFailure"] = field(default_factory=list)
    partial: bool = False

    def as_dict(self) -> dict[str, Any]:
        d = self.decision
        return {
            "stage": self.stage, "action": d.action.value, "reason": d.reason,
            "reply": str(d.reply) if d.reply else None, "quarantine": d.quarantine,
            "user": self.user, "mapped_by": self.mapped_by, "identity": self.identity,
            "class": self.spam_class, "score": self.score,
            "checks": [{"name": e.name, "points": e.points, "detail": e.detail} for e in self.evidence],
            "check_errors": [{"check": f.check, "error": f.error, "policy": f.policy} for f in self.errors],
            "partial": self.partial,
            "add_headers": [[n, v] for n, v in d.add_headers],
            "remove_headers": [[n, i] for n, i in d.remove_headers],
        }

    def format(self) -> str:
        d = self.decision
        lines = [f"decision:  {d.action.value} at {self.stage}" + (f" — {d.reply}" if d.reply else "")
                 + (f" (quarantine: {d.quarantine})" if d.quarantine else "")]
        lines.append(f"reason:    {d.reason or '-'}")
        lines.append(f"user:      {self.user or '-'}" + (f" (by {self.mapped_by})" if self.mapped_by else ""))
        lines.append(f"identity:  {self.identity or '-'}")
        if self.score is not None:
            lines.append(f"class:     {self.spam_class} (score {self.score:.1f})" +
                         ("  [partial scan]" if self.partial else ""))
            lines.append("checks:")
            for e in self.evidence or []:
                lines.append(f"  {e.points:+6.1f}  {e.name:28} {e.detail}")
            if not self.evidence:
                lines.append("  (no check fired)")
            for f in self.errors:
                lines.append(f"  failed  {f.check}: {f.error} (policy {f.policy})")
        if d.remove_headers:
            lines.append("would remove:")
            lines.extend(f"  {n} (occurrence {i})" for n, i in d.remove_headers)
        if d.add_headers:
            lines.append("would add:")
            lines.extend(f"  {n}: {v}" for n, v in d.add_headers)
        return "\n".join(lines)


def decide_offline(policy: Policy, raw: bytes, *, login: Optional[str] = None,
                   client_ip: Optional[str] = None, sender: Optional[str] = None,
                   recipients: Sequence[str] = ()) -> OfflineReport:
    """The decision on the message ``raw`` from ``sender`` (default: the
    header From) to ``recipients`` (default: the addresses of the To
    header, see :func:`header_recipients`, or ``recipient@invalid``)."""
    tx = Transaction.of_message(raw, "", login=login, client_ip=client_ip, queue_id="SCAN")
    if sender is None:
        addr, _ = header_from_address([v for n, v in tx.headers if n.lower() == "from"])
        sender = addr or ""
    if not recipients:
        to = [v for n, v in tx.headers if n.lower() == "to"]
        recipients = [split_address(a)[0] for a in header_recipients(to)] or ["recipient@invalid"]
    out = drive(policy, Transaction(sender=f"<{sender}>", recipients=[f"<{r}>" for r in recipients],
                                    headers=tx.headers, body=tx.body, login=login, client_ip=client_ip,
                                    queue_id="SCAN"))
    assert out.decision is not None
    report = OfflineReport(stage=out.stage, decision=out.decision)
    msg = out.session.message
    if msg is not None:
        report.user, report.mapped_by, report.identity = msg.user_name, msg.mapped_by, msg.identity
        if msg.verdict is not None:
            v = msg.verdict
            report.spam_class, report.score = msg.spam_class, v.score
            report.evidence, report.errors, report.partial = list(v.evidence), list(v.errors), v.partial
    return report


def to_json(report: OfflineReport) -> str:
    return json.dumps(report.as_dict(), indent=2, ensure_ascii=False)
