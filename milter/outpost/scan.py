"""``outpost scan``: the whole decision pipeline on a message file, without
an MTA — mapping, domain policy, limits (read-only), locks, spam checks —
printing the decision, the class, every check's points and the headers that
would be added or removed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .core.policy import Policy, header_from_address, split_address
from .core.types import Decision, Session
from .store.base import Bucket, HitResult, Lock, Store
from .store.memory import MemoryStore


class ReadOnlyStore(Store):
    """Reads the real store but writes nothing: limits are checked with
    ``dry_run``, events and locks are not recorded, connection slots are not
    taken, and bulk fingerprints are counted in a private memory store (so
    ``bulk_*`` evidence reflects this message alone)."""

    def __init__(self, real: Store) -> None:
        self.real = real
        self.scratch = MemoryStore()

    def now(self) -> float:
        return self.real.now()

    def conn_acquire(self, ip: str, limit: int, slot: str) -> tuple[bool, int]:
        return True, self.real.conn_count(ip)

    def conn_release(self, ip: str, slot: str) -> None:
        pass

    def conn_count(self, ip: str) -> int:
        return self.real.conn_count(ip)

    def process_alive(self, host: str, pid: int) -> None:
        pass

    def process_gone(self, host: str, pid: int) -> None:
        pass

    def hit(self, buckets: Sequence[Bucket], dry_run: bool = False) -> HitResult:
        return self.real.hit(buckets, dry_run=True)

    def peek(self, buckets):
        return self.real.peek(buckets)

    def reset(self, key_prefix: str) -> int:
        return 0

    def record_event(self, key: str, window: float) -> int:
        return 0

    def get_lock(self, key: str) -> Optional[Lock]:
        return self.real.get_lock(key)

    def set_lock(self, key, reason, duration, by="auto", max_auto_unlocks=None) -> Lock:
        return Lock(key=key, reason=reason, since=self.now(), until=None, by=by)

    def remove_lock(self, key: str) -> bool:
        return False

    def list_locks(self):
        return self.real.list_locks()

    def fingerprint_add(self, fp, member, recipients, window):
        return self.scratch.fingerprint_add(fp, member, recipients, window)

    def fingerprint_add_many(self, items, window):
        return self.scratch.fingerprint_add_many(items, window)

    def stat_add(self, counts, recent=()) -> None:
        pass

    def stat_read(self, period: str, count: int) -> dict[str, int]:
        return self.real.stat_read(period, count)

    def stat_series(self, period, count, names):
        return self.real.stat_series(period, count, names)

    def decision_add(self, entries) -> None:
        pass

    def decision_read(self, limit: int):
        return self.real.decision_read(limit)

    def put_blob(self, name: str, data: bytes) -> None:
        pass

    def get_blob(self, name: str) -> Optional[bytes]:
        return self.real.get_blob(name)

    def close(self) -> None:
        self.scratch.close()


@dataclass
class ScanReport:
    stage: str
    decision: Decision
    user: Optional[str] = None
    mapped_by: str = ""
    identity: str = ""
    spam_class: Optional[str] = None
    score: Optional[float] = None
    evidence: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    partial: bool = False

    def as_dict(self) -> dict:
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


def split_message(raw: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """(headers as (name, value-with-leading-space) unfolded as received, body)."""
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


def scan_message(policy: Policy, raw: bytes, *, login: Optional[str] = None,
                 client_ip: Optional[str] = None, sender: Optional[str] = None,
                 recipients: Sequence[str] = ()) -> ScanReport:
    headers, body = split_message(raw)
    if sender is None:
        addr, _ = header_from_address([v for n, v in headers if n.lower() == "from"])
        sender = addr or ""
    if not recipients:
        recipients = [split_address(v)[0] for n, v in headers if n.lower() == "to"][:1] or ["recipient@invalid"]
    session = Session()
    report = ScanReport(stage="connect", decision=policy.connect(session, client_ip))

    def done(stage: str, d: Decision) -> ScanReport:
        report.stage, report.decision = stage, d
        msg = session.message
        if msg is not None:
            report.user, report.mapped_by, report.identity = msg.user_name, msg.mapped_by, msg.identity
            if msg.verdict is not None:
                v = msg.verdict
                report.spam_class, report.score = msg.spam_class, v.score
                report.evidence, report.errors, report.partial = list(v.evidence), list(v.errors), v.partial
        return report

    if report.decision.blocks:
        return done("connect", report.decision)
    d = policy.mail_from(session, f"<{sender}>", login)
    if d.blocks:
        return done("mail", d)
    accepted = 0
    for rcpt in recipients:
        d = policy.rcpt(session, f"<{rcpt}>")
        if not d.blocks:
            accepted += 1
        last = d
    if not accepted:
        return done("rcpt", last)
    for name, value in headers:
        policy.header(session, name, value)
    policy.body(session, body)
    return done("end of message", policy.end_of_message(session, "SCAN"))


def to_json(report: ScanReport) -> str:
    return json.dumps(report.as_dict(), indent=2, ensure_ascii=False)
